//! The media proxy: `GET /media/{channel}/{token}` serves a DM's media to the CRM, which
//! cannot fetch X's URLs itself (they need the channel's OAuth 1.0a signature).
//!
//! A request is checked ([`MediaLinks::verify`]: signature, expiry, X's DM media origin and
//! path; 403 when any fails, before anything is asked of X), then X's URL is fetched with an OAuth-signed GET under the channel's user
//! credentials and its body streamed through as it arrives, with X's `Content-Type` and,
//! when X gives it, `Content-Length`. Nothing is buffered beyond a chunk in flight.
//!
//! Bounds and answers:
//!
//! | What happened | Answer |
//! |---|---|
//! | URL altered, foreign key, expired, origin not allowed, not a DM media path | 403 |
//! | channel no longer configured | 404 |
//! | X answers nothing within `timeout` | 504 |
//! | X answers an error (401, 403, 404, 5xx, a redirect elsewhere or to anything but DM media), cannot be reached | 502 |
//! | X announces more than `max_bytes` | 502 |
//! | the body grows past `max_bytes`, stalls longer than `timeout`, or breaks | the stream is cut |
//!
//! Refusals have a short JSON body `{"error": "<cause>", "detail": "<sentence>"}` that
//! never holds a credential, the signing key or X's URL. Each request is counted in
//! `xbridge_media_proxy_requests_total{channel, outcome}` (an unconfigured channel is
//! counted as `unknown`, so a client cannot grow the label set). Refusals are logged at a
//! bounded rate, names shown bounded ([`crate::untrusted_log`]): the metric counts them all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use xbridge_x_api::{MediaDownloadError, XClient};

use crate::media::links::{LinkError, MediaLinks};
use crate::untrusted_log::{shown, LogLimiter};

/// What the proxy needs: the links to check, each channel's X client, and the bounds.
pub struct MediaProxy {
    links: Arc<MediaLinks>,
    /// Changed while the bridge runs, as channels come and go.
    clients: std::sync::RwLock<HashMap<String, XClient>>,
    max_bytes: u64,
    timeout: Duration,
    /// Refusals are logged at a bounded rate: anyone can ask for any URL.
    refusal_log: LogLimiter,
}

impl MediaProxy {
    /// A proxy checking URLs with `links`, fetching with `clients` (channel name → the
    /// channel's X client, whose credentials sign the download), passing at most
    /// `max_bytes` per media and waiting at most `timeout` for X's answer and between two
    /// pieces of its body.
    pub fn new(
        links: Arc<MediaLinks>,
        clients: HashMap<String, XClient>,
        max_bytes: u64,
        timeout: Duration,
    ) -> MediaProxy {
        MediaProxy {
            links,
            clients: std::sync::RwLock::new(clients),
            max_bytes,
            timeout,
            refusal_log: LogLimiter::for_requests("media proxy refusals"),
        }
    }
}

impl MediaProxy {
    /// Fetches `channel`'s media with `client` from now on (a channel added while
    /// the bridge runs; a changed one keeps its client, whose credentials change).
    pub fn serve_channel(&self, channel: &str, client: XClient) {
        self.write_clients().insert(channel.to_owned(), client);
    }

    /// Stops serving `channel`'s media: its URLs are answered as an unknown channel's.
    pub fn stop_serving(&self, channel: &str) {
        self.write_clients().remove(channel);
    }

    fn client(&self, channel: &str) -> Option<XClient> {
        let clients = self
            .clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.get(channel).cloned()
    }

    fn write_clients(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, XClient>> {
        // Nothing panics while holding it.
        self.clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The proxy's route, `GET /media/{channel}/{token}`, to merge into the inbound HTTP server.
pub fn router(proxy: Arc<MediaProxy>) -> Router {
    Router::new()
        .route("/media/{channel}/{token}", get(serve))
        .with_state(proxy)
}

/// How a request ended: the `outcome` label of `xbridge_media_proxy_requests_total`, a
/// fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The whole body reached the client.
    Ok,
    /// The URL was altered or signed with another key.
    Invalid,
    /// The URL's lifetime was over.
    Expired,
    /// The URL named media outside the allowed origins.
    OriginRefused,
    /// The URL named something other than DM media on an allowed origin.
    NotDmMedia,
    /// The channel is not configured (any more).
    UnknownChannel,
    /// X did not answer in time.
    Timeout,
    /// X answered with an error status or a foreign redirect.
    XError,
    /// X could not be reached.
    Unreachable,
    /// The media was larger than `max_bytes` (announced or counted).
    TooLarge,
    /// X's body stalled or broke mid-stream; the client got a cut body.
    UpstreamCut,
    /// The client went away before the end.
    ClientGone,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Expired => "expired",
            Outcome::OriginRefused => "origin_refused",
            Outcome::NotDmMedia => "not_dm_media",
            Outcome::UnknownChannel => "unknown_channel",
            Outcome::Timeout => "timeout",
            Outcome::XError => "x_error",
            Outcome::Unreachable => "unreachable",
            Outcome::TooLarge => "too_large",
            Outcome::UpstreamCut => "upstream_cut",
            Outcome::ClientGone => "client_gone",
        }
    }
}

fn count(channel: &str, outcome: Outcome) {
    metrics::counter!(
        "xbridge_media_proxy_requests_total",
        "channel" => channel.to_owned(),
        "outcome" => outcome.label()
    )
    .increment(1);
}

fn refusal(status: StatusCode, cause: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": cause, "detail": detail.into() })),
    )
        .into_response()
}

async fn serve(
    State(proxy): State<Arc<MediaProxy>>,
    Path((channel, token)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    // Only configured channels become label values.
    let Some(client) = proxy.client(&channel) else {
        return unknown_channel(&proxy, &channel);
    };
    let media = match proxy
        .links
        .verify(&channel, &token, uri.query(), SystemTime::now())
    {
        Ok(media) => media,
        Err(error) => return link_refused(&proxy, &channel, error),
    };
    // A redirect is followed only to what the same check lets through.
    let links = proxy.links.clone();
    let may_fetch = move |url: &url::Url| links.is_allowed(url);
    let response = match client
        .download_media(&media.x_url, proxy.timeout, &may_fetch)
        .await
    {
        Ok(response) => response,
        Err(error) => return download_failed(&channel, &media.dm_event_id, error),
    };
    if let Some(length) = response
        .content_length()
        .filter(|length| *length > proxy.max_bytes)
    {
        return too_large(&proxy, &channel, &media.dm_event_id, length);
    }
    stream(&proxy, channel, media.dm_event_id, response)
}

/// The 404 for a channel that is not configured here.
fn unknown_channel(proxy: &MediaProxy, channel: &str) -> Response {
    count("unknown", Outcome::UnknownChannel);
    if proxy.refusal_log.allow() {
        tracing::warn!(
            channel = %shown(channel),
            status = 404,
            "media request for an unknown channel"
        );
    }
    refusal(
        StatusCode::NOT_FOUND,
        "unknown_channel",
        "no channel by this name",
    )
}

/// The 403 for a URL the bridge did not sign, or signed for another time or place.
fn link_refused(proxy: &MediaProxy, channel: &str, error: LinkError) -> Response {
    let (outcome, cause) = match error {
        LinkError::Invalid => (Outcome::Invalid, "invalid_url"),
        LinkError::Expired => (Outcome::Expired, "expired"),
        LinkError::OriginNotAllowed => (Outcome::OriginRefused, "origin_not_allowed"),
        LinkError::NotDmMedia => (Outcome::NotDmMedia, "not_dm_media"),
    };
    count(channel, outcome);
    if proxy.refusal_log.allow() {
        tracing::warn!(channel, status = 403, cause, "media request refused");
    }
    refusal(StatusCode::FORBIDDEN, cause, error.to_string())
}

/// The 502 or 504 for a download X did not give.
fn download_failed(channel: &str, dm_event_id: &str, error: MediaDownloadError) -> Response {
    let (status, outcome, cause, detail) = match &error {
        MediaDownloadError::Timeout { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            Outcome::Timeout,
            "x_timeout",
            error.to_string(),
        ),
        MediaDownloadError::Refused { status } => (
            StatusCode::BAD_GATEWAY,
            Outcome::XError,
            "x_error",
            format!("{error} ({})", why_x_refused(*status)),
        ),
        MediaDownloadError::Redirected { .. } | MediaDownloadError::InvalidUrl => (
            StatusCode::BAD_GATEWAY,
            Outcome::XError,
            "x_error",
            error.to_string(),
        ),
        MediaDownloadError::Unreachable { .. } => (
            StatusCode::BAD_GATEWAY,
            Outcome::Unreachable,
            "x_unreachable",
            "X could not be reached for the media download".to_owned(),
        ),
    };
    count(channel, outcome);
    tracing::warn!(
        channel,
        dm_event_id,
        status = status.as_u16(),
        x_status = match &error {
            MediaDownloadError::Refused { status } => Some(*status),
            _ => None,
        },
        %error,
        "media download from X failed"
    );
    refusal(status, cause, detail)
}

/// The 502 for media X says is larger than allowed, before any of it is read.
fn too_large(proxy: &MediaProxy, channel: &str, dm_event_id: &str, length: u64) -> Response {
    count(channel, Outcome::TooLarge);
    tracing::warn!(
        channel,
        dm_event_id,
        status = 502,
        length,
        max_bytes = proxy.max_bytes,
        "media larger than allowed; refused"
    );
    refusal(
        StatusCode::BAD_GATEWAY,
        "too_large",
        format!(
            "the media has {length} bytes, more than the {} allowed",
            proxy.max_bytes
        ),
    )
}

/// The 200 that streams X's `response` through, bounded in size and time.
fn stream(
    proxy: &MediaProxy,
    channel: String,
    dm_event_id: String,
    response: reqwest::Response,
) -> Response {
    let length = response.content_length();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    tracing::info!(
        channel,
        dm_event_id,
        status = 200,
        length,
        "streaming media from X"
    );
    let pump = Pump {
        response,
        sent: 0,
        max_bytes: proxy.max_bytes,
        timeout: proxy.timeout,
        tally: Tally {
            channel,
            dm_event_id,
            outcome: Outcome::ClientGone,
        },
    };
    let mut answer = Response::new(Body::from_stream(futures::stream::unfold(
        Some(pump),
        Pump::next,
    )));
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    // The media is one customer's: no shared cache should keep it.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    answer
}

/// What an X status says about the media, for the client's problem body.
fn why_x_refused(status: u16) -> &'static str {
    match status {
        401 => "X rejected the channel's credentials",
        403 => "the channel's account may not see this media",
        404 | 410 => "X no longer has this media",
        429 => "X is rate limiting the channel",
        500..=599 => "X failed",
        _ => "unexpected answer from X",
    }
}

/// Counts a streamed request once, however it ends (a client going away drops the
/// stream mid-way).
struct Tally {
    channel: String,
    dm_event_id: String,
    outcome: Outcome,
}

impl Drop for Tally {
    fn drop(&mut self) {
        count(&self.channel, self.outcome);
        if self.outcome == Outcome::ClientGone {
            tracing::debug!(
                channel = self.channel,
                dm_event_id = self.dm_event_id,
                "the client left before the media ended"
            );
        }
    }
}

/// Moves X's body to the client one chunk at a time, counting bytes.
struct Pump {
    response: reqwest::Response,
    sent: u64,
    max_bytes: u64,
    timeout: Duration,
    tally: Tally,
}

type Chunk = Result<axum::body::Bytes, std::io::Error>;

impl Pump {
    /// The next chunk of X's body for the client, or the end: a body that passes
    /// `max_bytes`, breaks off or stalls past `timeout` cuts the stream with an error, so the
    /// client sees a broken download rather than a short file.
    async fn next(state: Option<Pump>) -> Option<(Chunk, Option<Pump>)> {
        let mut pump = state?;
        match tokio::time::timeout(pump.timeout, pump.response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                pump.sent += bytes.len() as u64;
                if pump.sent > pump.max_bytes {
                    let error = pump.cut(Outcome::TooLarge, "the media grew past max_bytes");
                    return Some((Err(error), None));
                }
                Some((Ok(bytes), Some(pump)))
            }
            Ok(Ok(None)) => {
                pump.tally.outcome = Outcome::Ok;
                tracing::debug!(
                    channel = pump.tally.channel,
                    dm_event_id = pump.tally.dm_event_id,
                    sent = pump.sent,
                    "media streamed"
                );
                None
            }
            Ok(Err(_)) => Some((
                Err(pump.cut(Outcome::UpstreamCut, "X's body broke off")),
                None,
            )),
            Err(_) => Some((
                Err(pump.cut(Outcome::UpstreamCut, "X's body stalled")),
                None,
            )),
        }
    }

    /// Ends the stream with `outcome`: logged with how much was sent, and the error the
    /// client's body ends with.
    fn cut(&mut self, outcome: Outcome, why: &str) -> std::io::Error {
        self.tally.outcome = outcome;
        tracing::warn!(
            channel = self.tally.channel,
            dm_event_id = self.tally.dm_event_id,
            sent = self.sent,
            outcome = outcome.label(),
            why,
            "media stream cut"
        );
        std::io::Error::other(why.to_owned())
    }
}
