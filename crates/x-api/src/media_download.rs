//! Downloading the media of a DM: X serves a DM photo at a `ton.twitter.com` URL that only
//! answers a GET signed with OAuth 1.0a by one of the conversation's accounts (README §5), so
//! the bridge fetches it with the channel's user token and hands the response on for
//! streaming. A channel on OAuth 2.0 cannot use the TON URL: it fetches the same media at
//! `GET /2/dm_conversations/media/{dm_id}/{media_id}/{resource_id}` on the API host with its
//! Bearer token (docs/x-api-facts.md, "OAuth 2.0"), and sends that token nowhere else.
//!
//! The response is returned before its body is read: media go up to X's 512 MB video limit,
//! and the caller streams them rather than holding them in memory. `timeout` bounds the time
//! to X's response head (connect, TLS, headers); the body is bounded only by
//! [`MAX_TRANSFER`], since a large video on a slow link legitimately takes long, and the
//! caller is expected to watch for a stalled body itself.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, LOCATION};
use url::{Origin, Url};

use crate::auth::{Authorization, XAuth};
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
        let mut current = match self.auth() {
            XAuth::OAuth2(_) => {
                oauth2_media_url(self.base_url(), url).unwrap_or_else(|| url.clone())
            }
            XAuth::OAuth1(_) => url.clone(),
        };
        let origin = current.origin();
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
        let authorization = self.media_authorization(url).await?;
        let started = std::time::Instant::now();
        let mut request = self.http().get(url.clone()).timeout(MAX_TRANSFER);
        if let Some(authorization) = &authorization {
            request = request.header(AUTHORIZATION, authorization.header.clone());
        }
        let request = request.send();
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
        if let (Ok(response), Some(authorization)) = (&response, &authorization) {
            authorization.answered(response.status().as_u16());
        }
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

impl XClient {
    /// The `Authorization` of a media GET: OAuth 1.0a-signed for any media URL; under OAuth
    /// 2.0 the Bearer token only to the API host (the rewritten TON URL), never to another
    /// host, and no header elsewhere (video renditions).
    async fn media_authorization(
        &self,
        url: &Url,
    ) -> Result<Option<Authorization>, MediaDownloadError> {
        let refused = |_| MediaDownloadError::Refused { status: 401 };
        match self.auth() {
            // `None` only with control characters in a credential; the header is not shown.
            XAuth::OAuth1(credentials) => oauth::signed_header("GET", url, &credentials)
                .map(|header| Some(Authorization::oauth1(header)))
                .ok_or(MediaDownloadError::Refused { status: 401 }),
            XAuth::OAuth2(source) if url.origin() == self.base_url().origin() => {
                Authorization::bearer(source)
                    .await
                    .map(Some)
                    .map_err(refused)
            }
            XAuth::OAuth2(_) => Ok(None),
        }
    }
}

/// The OAuth 2.0 download URL of a TON URL (`…/1.1/ton/data/dm/{dm_id}/{media_id}/{resource_id}`):
/// `{base}/2/dm_conversations/media/{dm_id}/{media_id}/{resource_id}`; `None` for another URL.
pub(crate) fn oauth2_media_url(base: &Url, ton: &Url) -> Option<Url> {
    let segments: Vec<&str> = ton.path_segments()?.collect();
    let [.., "1.1", "ton", "data", "dm", dm_id, media_id, resource_id] = segments.as_slice() else {
        return None;
    };
    if [dm_id, media_id, resource_id].iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut url = base.clone();
    url.path_segments_mut().ok()?.pop_if_empty().extend([
        "2",
        "dm_conversations",
        "media",
        dm_id,
        media_id,
        resource_id,
    ]);
    url.set_query(ton.query());
    Some(url)
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
    fn a_ton_url_maps_to_the_oauth2_media_path() {
        let base = Url::parse("https://api.x.com").unwrap();
        let ton = Url::parse("https://ton.twitter.com/1.1/ton/data/dm/11/22/OwIPMAFC.png").unwrap();
        assert_eq!(
            oauth2_media_url(&base, &ton).unwrap().as_str(),
            "https://api.x.com/2/dm_conversations/media/11/22/OwIPMAFC.png"
        );
        let video = Url::parse("https://video.twimg.com/dm_video/22/vid/1280x720/a.mp4").unwrap();
        assert_eq!(oauth2_media_url(&base, &video), None);
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
