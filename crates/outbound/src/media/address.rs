//! Which IP addresses the bridge may download attachments from.
//!
//! A URL the CRM names is fetched from inside the deployment's network, where
//! the broker, metrics endpoints and cloud metadata services listen. Only
//! globally routable unicast addresses are fair game; this module names every
//! range that is not, so a refusal can say which rule it broke. It is pure, so
//! every range is unit-tested without a network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is out of reach for downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `0.0.0.0`, `::`: "any address", which connects to the local host.
    Unspecified,
    /// `127.0.0.0/8`, `::1`: this machine.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16` (RFC 1918): the internal network.
    Private,
    /// `100.64/10` (RFC 6598): carrier-grade NAT, internal to a provider.
    SharedAddressSpace,
    /// `169.254/16`, `fe80::/10`: the local link, where cloud metadata
    /// services (169.254.169.254) answer.
    LinkLocal,
    /// `fc00::/7` (RFC 4193): IPv6's private networks.
    UniqueLocal,
    /// `fec0::/10`: IPv6's deprecated site-local networks.
    SiteLocal,
    /// `224/4`, `ff00::/8`: not a single host.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`,
    /// `3fff::/20`: examples only, never real hosts.
    Documentation,
    /// The rest of the special-purpose registries: `0/8`, `192.0.0/24`,
    /// `192.88.99/24`, `198.18/15`, `240/4`, `100::/64`, `2001::/23`, IPv4-compatible `::/96`.
    Reserved,
}

impl AddressClass {
    /// How a refusal names the range.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private (RFC 1918) address",
            AddressClass::SharedAddressSpace => "a shared (CGNAT, RFC 6598) address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::UniqueLocal => "a unique local (fc00::/7) address",
            AddressClass::SiteLocal => "a site-local address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Documentation => "a documentation address",
            AddressClass::Reserved => "a reserved special-purpose address",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class that puts `address` out of reach, or `None` when it is an
/// ordinary public unicast address. IPv6 forms that carry an IPv4 address
/// (mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4
/// `2002::/16`) are judged by the IPv4 address they lead to.
pub fn classify(address: IpAddr) -> Option<AddressClass> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, b, _) if (16..32).contains(&b) => AddressClass::Private,
        (100, b, _) if (64..128).contains(&b) => AddressClass::SharedAddressSpace,
        (169, 254, _) => AddressClass::LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (224..=239, _, _) => AddressClass::Multicast,
        (0, _, _) | (240..=255, _, _) | (192, 0, 0) | (192, 88, 99) => AddressClass::Reserved,
        (198, 18 | 19, _) => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let class = match s[0] {
        0xff00..=0xffff => AddressClass::Multicast,
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfec0..=0xfeff => AddressClass::SiteLocal,
        0xfc00..=0xfdff => AddressClass::UniqueLocal,
        0x2001 if s[1] == 0x0db8 => AddressClass::Documentation,
        0x3fff if s[1] < 0x1000 => AddressClass::Documentation,
        // 2001::/23: Teredo tunnels, ORCHID, benchmarking and the like.
        0x2001 if s[1] < 0x0200 => AddressClass::Reserved,
        0x0100 if s[1..4] == [0, 0, 0] => AddressClass::Reserved,
        // IPv4-compatible ::a.b.c.d (deprecated) and the rest of ::/8.
        0x0000 => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

/// The IPv4 address an IPv6 address leads to, for the forms that embed one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d, IPv4-mapped.
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // 64:ff9b::a.b.c.d, the well-known NAT64 prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // 64:ff9b:1::/48, local-use NAT64: the IPv4 address is in the last 32 bits.
        [0x64, 0xff9b, 1, _, _, _, _, _] => Some(tail),
        // 2002:AABB:CCDD::/48, 6to4.
        [0x2002, hi, lo, _, _, _, _, _] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<AddressClass> {
        classify(text.parse().unwrap())
    }

    #[test]
    fn each_range_is_refused_with_its_name() {
        use AddressClass::*;
        for (address, expected) in [
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.254", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fec0::1", SiteLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("192.0.2.10", Documentation),
            ("198.51.100.10", Documentation),
            ("203.0.113.10", Documentation),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("0.1.2.3", Reserved),
            ("192.0.0.8", Reserved),
            ("192.88.99.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.1", Reserved),
            ("240.0.0.1", Reserved),
            ("100::1", Reserved),
            ("2001::1", Reserved),
            ("::7f00:1", Reserved),
            // IPv6 forms that lead to a refused IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("64:ff9b::a00:1", Private),
            ("64:ff9b:1::7f00:1", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2002:7f00:1::1", Loopback),
        ] {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_unicast_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(class(address), None, "{address}");
        }
    }

    #[test]
    fn classes_read_as_phrases() {
        assert_eq!(
            AddressClass::Private.to_string(),
            "a private (RFC 1918) address"
        );
    }
}
