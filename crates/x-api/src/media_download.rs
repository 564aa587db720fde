//! Downloading the media of a DM: X serves a DM photo at a `ton.twitter.com` URL that only
//! answers a GET signed with OAuth 1.0a by one of the conversation's accounts (README §5), so
//! the bridge fetches it with the channel's user token and hands the response on for
//! streaming.
//!
//! The response is returned before its body is read: media go up to X's 512 MB video limit,
//! and the caller streams them rather than holding them in memory. `timeout` bounds the time
//! to X's response head (connect, TLS, headers); the body is bounded only by
//! [`MAX_TRANSFER`], since a large video on a slow link legitimately takes long, and the
//! caller is expected to watch for a stalled body itself.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, LOCATION};
use url::{Origin, Url};

use crate::http::error_chain;
use crate::{oauth, XClient};

/// Upper bound on one whole media transfer, body included: it replaces the client's short
/// API `request_timeout`, which would cut a large video mid-stream.
pub const MAX_TRANSFER: Duration = Duration::from_secs(60 * 60);

/// How many same-origin redirects a download follows, each signed anew (a signature binds the
/// URL it was made for).
const MAX_REDIRECTS: usize = 3;

/// Why a media download got no usable response. Typed so the caller can answer its own
/// client precisely: a timeout is not a refusal. No variant carries a credential or a
/// signature; URLs are reported by origin only.
#[derive(Debug, thiserror::Error)]
pub enum MediaDownloadError {
    /// The URL is not an absolute http(s) URL; nothing was sent.
    #[error("the media URL is not an http(s) URL")]
    InvalidUrl,
    /// X did not answer with a response head within the timeout.
    #[error("X did not answer the media download within {after:?}")]
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
    /// The connection failed (DNS, refused, TLS, reset) before a response head arrived.
    #[error("X could not be reached for the media download: {detail}")]
    Unreachable {
        /// The transport's chain of causes.
        detail: String,
    },
    /// X answered with an error status (401, 403, 404, 5xx, …).
    #[error("X refused the media download with HTTP {status}")]
    Refused {
        /// X's HTTP status.
        status: u16,
    },
    /// X redirected to another origin, or too often. A signed request is never replayed to
    /// a host other than the one it was signed for.
    #[error("X redirected the media download ({reason})")]
    Redirected {
        /// What was wrong with the redirect, naming the target's origin only.
        reason: String,
    },
}

impl XClient {
    /// Starts downloading DM media at `url` with an OAuth 1.0a-signed GET (query parameters
    /// included in the signature) under the channel's user credentials, and returns X's 2xx
    /// response with its body unread, for streaming.
    ///
    /// `timeout` bounds connecting and waiting for the response head. Redirects to the same
    /// origin are followed (signed again for their URL, at most three) if `may_fetch`
    /// allows their target as it allowed `url` (the media proxy's check that a URL is DM
    /// media); a redirect elsewhere, or to a URL `may_fetch` refuses, is
    /// [`MediaDownloadError::Redirected`], so the signature never travels to a foreign
    /// host nor signs a request for anything but media. Media downloads are not paced:
    /// they do not count against X's API rate limits.
    #[tracing::instrument(skip_all, fields(origin = %url.origin().ascii_serialization()))]
    pub async fn download_media(
        &self,
        url: &Url,
        timeout: Duration,
        may_fetch: &(dyn Fn(&Url) -> bool + Sync),
    ) -> Result<reqwest::Response, MediaDownloadError> {
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || !may_fetch(url) {
            return Err(MediaDownloadError::InvalidUrl);
        }
        let origin = url.origin();
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.signed_media_get(&current, timeout).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if !status.is_redirection() {
                tracing::warn!(status = status.as_u16(), "X refused a media download");
                return Err(MediaDownloadError::Refused {
                    status: status.as_u16(),
                });
            }
            current = same_origin_location(&current, &origin, response.headers().get(LOCATION))?;
            if !may_fetch(&current) {
                tracing::warn!(
                    "X redirected a media download to a URL that is not media; not followed"
                );
                return Err(MediaDownloadError::Redirected {
                    reason: "to a URL that is not DM media".to_owned(),
                });
            }
        }
        Err(MediaDownloadError::Redirected {
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    async fn signed_media_get(
        &self,
        url: &Url,
        timeout: Duration,
    ) -> Result<reqwest::Response, MediaDownloadError> {
        let authorization = oauth::signed_header("GET", url, &self.credentials())
            // Only `None` with control characters in a credential; the header is not shown.
            .ok_or(MediaDownloadError::Refused { status: 401 })?;
        let started = std::time::Instant::now();
        let request = self
            .http()
            .get(url.clone())
            .header(AUTHORIZATION, authorization)
            .timeout(MAX_TRANSFER)
            .send();
        let response = match tokio::time::timeout(timeout, request).await {
            Ok(response) => response,
            Err(_) => {
                metrics::counter!("xbridge_x_requests_total", "endpoint" => "media", "status" => "timeout")
                    .increment(1);
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "X did not answer a media download in time"
                );
                return Err(MediaDownloadError::Timeout { after: timeout });
            }
        };
        crate::telemetry::record_request("media", started, &response);
        response.map_err(|error| {
            if error.is_timeout() {
                MediaDownloadError::Timeout { after: timeout }
            } else {
                // Without the URL: a TON URL names the DM and the media.
                let detail = error_chain(&error.without_url());
                tracing::warn!(%detail, "a media download did not reach X");
                MediaDownloadError::Unreachable { detail }
            }
        })
    }
}

/// The target of a redirect, if it stays on `origin`.
fn same_origin_location(
    from: &Url,
    origin: &Origin,
    location: Option<&HeaderValue>,
) -> Result<Url, MediaDownloadError> {
    let target = location
        .and_then(|value| value.to_str().ok())
        .and_then(|location| from.join(location).ok())
        .ok_or_else(|| MediaDownloadError::Redirected {
            reason: "without a usable Location".to_owned(),
        })?;
    if &target.origin() != origin {
        tracing::warn!(
            to = %target.origin().ascii_serialization(),
            "X redirected a media download to another origin; not followed"
        );
        return Err(MediaDownloadError::Redirected {
            reason: format!(
                "to another origin, {}",
                target.origin().ascii_serialization()
            ),
        });
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn only_same_origin_redirects_are_followed() {
        let from = Url::parse("https://ton.twitter.com/1.1/ton/data/dm/1/2/a.jpg").unwrap();
        let origin = from.origin();
        let relative = same_origin_location(
            &from,
            &origin,
            Some(&location("/1.1/ton/data/dm/1/2/b.jpg")),
        )
        .unwrap();
        assert_eq!(
            relative.as_str(),
            "https://ton.twitter.com/1.1/ton/data/dm/1/2/b.jpg"
        );
        let foreign = same_origin_location(
            &from,
            &origin,
            Some(&location("https://evil.example/steal?x=1")),
        )
        .unwrap_err();
        assert!(foreign.to_string().contains("https://evil.example"));
        assert!(!foreign.to_string().contains("steal"));
        // Another scheme or port is another origin.
        assert!(
            same_origin_location(&from, &origin, Some(&location("http://ton.twitter.com/x")))
                .is_err()
        );
        assert!(same_origin_location(&from, &origin, None).is_err());
    }
}
