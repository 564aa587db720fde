//! `[outbound.media]`: where and how reply attachments given by URL may be
//! downloaded, and the host patterns that name where.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Largest download worth allowing: X's largest media (a `dm_video`).
pub const MAX_MEDIA_BYTES: u64 = 512 * 1024 * 1024;

/// Downloading reply attachments given by URL. The bridge fetches URLs the
/// CRM names, from inside the deployment's network, so by default it fetches
/// from nowhere: an operator names the hosts (the CRM's media store, a CDN),
/// and internal addresses stay out of reach whatever the names resolve to.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSettings {
    /// Hosts the bridge may download from: exact names (or IP addresses) and
    /// `*.example.com` patterns. Empty (the default) refuses every URL
    /// attachment; inline `data` still works.
    pub allowed_hosts: Vec<HostPattern>,
    /// Also fetch plain `http://` URLs. Off: media travel over TLS.
    pub allow_http: bool,
    /// Fetch from loopback, private and other internal addresses too. Only for
    /// tests and a media store on a private network the operator vouches for:
    /// with it, an allowed host name that resolves inward is fetched.
    pub allow_private_networks: bool,
    /// Bound on one whole download (connect, headers and body).
    pub download_timeout: Duration,
    /// Bound on one download's size on top of the media category's limit.
    pub max_download_bytes: u64,
    /// Where downloads are spooled before the upload to X; the system's
    /// temporary directory when unset. The files have no name and vanish when
    /// closed, even after a crash.
    pub spool_dir: Option<PathBuf>,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            allowed_hosts: Vec::new(),
            allow_http: false,
            allow_private_networks: false,
            download_timeout: Duration::from_secs(60),
            max_download_bytes: MAX_MEDIA_BYTES,
            spool_dir: None,
        }
    }
}

/// One entry of `outbound.media.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host name or IP address only (lower case; IPv6 without brackets).
    Exact(String),
    /// Any host name under this domain (`*.example.com` holds `example.com`
    /// here): `a.example.com`, `a.b.example.com`, not `example.com` itself.
    Subdomains(String),
}

impl HostPattern {
    /// Reads `cdn.example.com`, `*.example.com`, `203.0.113.7` or `[::1]`.
    /// Refuses what could only be a mistake: URLs, ports, bare `*`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let unbracketed = lower
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&lower);
        if unbracketed.parse::<std::net::IpAddr>().is_ok() {
            return Ok(HostPattern::Exact(unbracketed.to_owned()));
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a host name, an IP address or *.domain"
            ));
        }
        Ok(if wildcard {
            HostPattern::Subdomains(name.to_owned())
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether `host` (as a URL holds it: lower case, IPv6 in brackets or
    /// not) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host);
        match self {
            HostPattern::Exact(name) => {
                name == host
                    || matches!(
                        (name.parse::<std::net::IpAddr>(), host.parse::<std::net::IpAddr>()),
                        (Ok(a), Ok(b)) if a == b
                    )
            }
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawMedia {
    pub(super) allowed_hosts: Vec<String>,
    pub(super) allow_http: bool,
    pub(super) allow_private_networks: bool,
    #[serde(with = "humantime_serde")]
    pub(super) download_timeout: Duration,
    pub(super) max_download_bytes: u64,
    pub(super) spool_dir: Option<PathBuf>,
}

impl Default for RawMedia {
    fn default() -> Self {
        let defaults = MediaSettings::default();
        RawMedia {
            allowed_hosts: Vec::new(),
            allow_http: defaults.allow_http,
            allow_private_networks: defaults.allow_private_networks,
            download_timeout: defaults.download_timeout,
            max_download_bytes: defaults.max_download_bytes,
            spool_dir: defaults.spool_dir,
        }
    }
}

/// Validates `[outbound.media]`.
pub(super) fn validate(raw: RawMedia, errors: &mut Vec<String>) -> MediaSettings {
    let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
    for (i, text) in raw.allowed_hosts.iter().enumerate() {
        match HostPattern::parse(text) {
            Ok(pattern) => allowed_hosts.push(pattern),
            Err(e) => errors.push(format!("outbound.media.allowed_hosts[{i}]: {e}")),
        }
    }
    if raw.download_timeout.is_zero() {
        errors.push("outbound.media.download_timeout: must be greater than zero".into());
    }
    if raw.max_download_bytes == 0 || raw.max_download_bytes > MAX_MEDIA_BYTES {
        errors.push(format!(
            "outbound.media.max_download_bytes: must be 1 to {MAX_MEDIA_BYTES} (X's largest media, a 512 MiB video)"
        ));
    }
    if let Some(dir) = &raw.spool_dir {
        if !dir.is_dir() {
            errors.push(format!(
                "outbound.media.spool_dir: {} is not a directory",
                dir.display()
            ));
        }
    }
    MediaSettings {
        allowed_hosts,
        allow_http: raw.allow_http,
        allow_private_networks: raw.allow_private_networks,
        download_timeout: raw.download_timeout,
        max_download_bytes: raw.max_download_bytes,
        spool_dir: raw.spool_dir,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Settings, VALID};

    #[test]
    fn media_downloads_are_off_until_hosts_are_named() {
        let media = Settings::from_toml(VALID).unwrap().outbound.media;
        assert_eq!(media, MediaSettings::default());
        assert!(media.allowed_hosts.is_empty());
        assert!(!media.allow_http && !media.allow_private_networks);
        assert_eq!(media.download_timeout, Duration::from_secs(60));
        assert_eq!(media.max_download_bytes, 512 * 1024 * 1024);

        let toml = VALID.replace(
            "[[channels]]",
            r#"[outbound.media]
            allowed_hosts = ["CDN.example.com", "*.media.example.net", "[::1]", "203.0.113.7"]
            allow_http = true
            download_timeout = "5s"
            max_download_bytes = 1000
            [[channels]]"#,
        );
        let media = Settings::from_toml(&toml).unwrap().outbound.media;
        assert_eq!(
            media.allowed_hosts,
            vec![
                HostPattern::Exact("cdn.example.com".into()),
                HostPattern::Subdomains("media.example.net".into()),
                HostPattern::Exact("::1".into()),
                HostPattern::Exact("203.0.113.7".into()),
            ]
        );
        assert!(media.allow_http);
        assert_eq!(media.download_timeout, Duration::from_secs(5));
        assert_eq!(media.max_download_bytes, 1000);
    }

    #[test]
    fn bad_media_settings_name_their_field() {
        let toml = VALID.replace(
            "[[channels]]",
            r#"[outbound.media]
            allowed_hosts = ["ok.example.com", "https://cdn.example.com/", "*", "a..b"]
            download_timeout = "0s"
            max_download_bytes = 0
            spool_dir = "/nonexistent/xbridge-spool"
            [[channels]]"#,
        );
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        for expected in [
            "outbound.media.allowed_hosts[1]: \"https://cdn.example.com/\" is not a host name",
            "outbound.media.allowed_hosts[2]",
            "outbound.media.allowed_hosts[3]",
            "outbound.media.download_timeout",
            "outbound.media.max_download_bytes",
            "outbound.media.spool_dir: /nonexistent/xbridge-spool is not a directory",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        assert!(!err.contains("allowed_hosts[0]"), "{err}");
    }

    #[test]
    fn host_patterns_match_exact_names_and_subdomains() {
        let exact = HostPattern::parse("cdn.example.com").unwrap();
        assert!(exact.matches("cdn.example.com"));
        assert!(exact.matches("CDN.example.com."));
        assert!(!exact.matches("a.cdn.example.com"));
        assert!(!exact.matches("evilcdn.example.com"));

        let wildcard = HostPattern::parse("*.example.com").unwrap();
        assert_eq!(wildcard.to_string(), "*.example.com");
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("badexample.com"));
        assert!(!wildcard.matches("example.com.evil.net"));

        let v6 = HostPattern::parse("[::1]").unwrap();
        assert!(v6.matches("[::1]"));
        assert!(v6.matches("0:0:0:0:0:0:0:1"));
        let v4 = HostPattern::parse("127.0.0.1").unwrap();
        assert!(v4.matches("127.0.0.1"));
        assert!(!v4.matches("127.0.0.2"));
        for bad in [
            "",
            "*",
            "*.",
            "a b",
            "cdn.example.com:443",
            "-a.com",
            "http://a.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
