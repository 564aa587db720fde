//! Whether this process answers X's CRC for a channel, asked of its own webhook
//! server the way X asks: before the bridge makes X run a CRC (a webhook
//! revalidation), it proves it would pass one, so it never asks X to validate a
//! URL that cannot answer. What lies between X and the bridge (ingress, TLS,
//! DNS) is not seen from here; X's own CRC tells that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use rand::distr::{Alphanumeric, SampleString as _};
use secrecy::SecretString;
use url::Url;

use crate::webhook::auth::crc_response_token;

/// Whether the CRC for a channel is answered right, now.
#[async_trait]
pub trait CrcSelfCheck: Send + Sync {
    /// `Ok` when the answer is the one X expects; else why not, in words.
    async fn answers(&self) -> Result<(), String>;
}

/// How long the own server may take; X allows 10 s.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the webhook server on `addr` for a channel's CRC over HTTP, as X would.
pub struct LocalCrc {
    url: Url,
    consumer_secret: SecretString,
    http: reqwest::Client,
}

impl LocalCrc {
    /// The check of `channel`'s CRC at `GET /webhooks/{channel}` of the server bound
    /// to `addr` (a wildcard address is asked on loopback), keyed with the App's
    /// `consumer_secret`. `None` only when the HTTP client cannot be built.
    pub fn new(addr: SocketAddr, channel: &str, consumer_secret: SecretString) -> Option<LocalCrc> {
        let mut url = Url::parse(&format!("http://{}/", loopback_if_wildcard(addr))).ok()?;
        url.path_segments_mut().ok()?.extend(["webhooks", channel]);
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            // The own server, never through a proxy the environment names.
            .no_proxy()
            .build()
            .ok()?;
        Some(LocalCrc {
            url,
            consumer_secret,
            http,
        })
    }
}

#[async_trait]
impl CrcSelfCheck for LocalCrc {
    async fn answers(&self) -> Result<(), String> {
        // Shaped like X's tokens, which are the only ones answered.
        let token = Alphanumeric.sample_string(&mut rand::rng(), 48);
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("crc_token", &token);
        let response =
            self.http.get(url).send().await.map_err(|error| {
                format!("GET {} got no answer: {}", self.url.path(), why(error))
            })?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("GET {} answered {status}", self.url.path()));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|_| format!("GET {} answered no JSON", self.url.path()))?;
        let expected = crc_response_token(&self.consumer_secret, &token);
        match body.get("response_token").and_then(|t| t.as_str()) {
            Some(answered) if answered == expected => Ok(()),
            _ => Err(format!(
                "GET {} answered a response_token X would reject",
                self.url.path()
            )),
        }
    }
}

/// Why a request failed, the same words each time it fails the same way:
/// reqwest's own text names the URL, whose `crc_token` is new on every check,
/// and the failure becomes the channel's `webhook_invalid` detail, so a
/// changing text would publish a new `channel.state` to the CRM at every
/// check. The causes (connection refused, timed out) are what tells why.
fn why(error: reqwest::Error) -> String {
    xbridge_x_api::error_chain(&error.without_url())
}

/// Where this host reaches a server bound to `addr`: a wildcard (`0.0.0.0`, `::`)
/// is reached on loopback.
pub fn loopback_if_wildcard(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_address_is_asked_on_loopback() {
        let check = LocalCrc::new("0.0.0.0:8080".parse().unwrap(), "acme", "s".into()).unwrap();
        assert_eq!(check.url.as_str(), "http://127.0.0.1:8080/webhooks/acme");
        let check = LocalCrc::new("[::]:8080".parse().unwrap(), "acme", "s".into()).unwrap();
        assert_eq!(check.url.as_str(), "http://[::1]:8080/webhooks/acme");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_failure_that_says_where() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let why = LocalCrc::new(addr, "acme", "s".into())
            .unwrap()
            .answers()
            .await
            .unwrap_err();
        assert!(why.contains("/webhooks/acme"), "{why}");
    }

    #[tokio::test]
    async fn the_same_failure_is_told_in_the_same_words() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let check = LocalCrc::new(addr, "acme", "s".into()).unwrap();
        let first = check.answers().await.unwrap_err();
        let second = check.answers().await.unwrap_err();
        assert_eq!(
            first, second,
            "a new channel.state at every check otherwise"
        );
        assert!(!first.contains("crc_token"), "{first}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_own_server_fails_the_check_instead_of_holding_it() {
        // Accepts connections (the kernel's backlog) and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let check = LocalCrc::new(listener.local_addr().unwrap(), "acme", "s".into()).unwrap();
        let why = check.answers().await.unwrap_err();
        assert!(why.contains("got no answer"), "{why}");
        drop(listener);
    }
}
