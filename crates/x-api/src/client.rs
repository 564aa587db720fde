//! The HTTP client of one X account ("channel").

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::Method;
use url::Url;

use crate::auth::{Authorization, XAuth};
use crate::dm::{self, Attachment, SendDmBody, SendDmResponse};
use crate::error::body_snippet;
use crate::http::error_chain;
use crate::oauth;
use crate::read::{classify_read_error, DmEventsRequest, DmEventsResponse, XUser};
use crate::{
    classify_send_error, DmTarget, Pacer, RateLimit, SentDm, UserCredentials, XError, XHttp,
};

/// Where X lives and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XClientConfig {
    /// X's API root; `https://api.x.com` in production, a local simulator in tests.
    pub base_url: Url,
    /// Upper bound for one request including the body, so a hung connection turns into a
    /// retryable error instead of a stuck sender.
    pub request_timeout: Duration,
    /// How [`XClient::upload_media`] cuts media into APPENDs and how long it waits for X to
    /// process a video or GIF.
    pub media: MediaUploadConfig,
}

impl Default for XClientConfig {
    fn default() -> XClientConfig {
        XClientConfig {
            base_url: Url::parse("https://api.x.com").expect("a valid URL"),
            request_timeout: Duration::from_secs(30),
            media: MediaUploadConfig::default(),
        }
    }
}

/// X's bound on one APPEND's `media` (5 MB, documented for the chunked upload); the largest
/// segment size [`MediaUploadConfig`] accepts.
pub const MAX_SEGMENT_BYTES: usize = 5 * 1024 * 1024;

/// How [`XClient::upload_media`] cuts and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaUploadConfig {
    /// Bytes per APPEND (default 4 MiB): below X's 5 MB bound with room to spare, and the
    /// most the client holds in memory per upload. 1 byte to [`MAX_SEGMENT_BYTES`].
    pub segment_bytes: usize,
    /// How long to wait in all for X to process a video or GIF after FINALIZE (default 10
    /// minutes) before giving up with [`XError::Transient`].
    pub processing_timeout: Duration,
    /// The longest single wait between STATUS polls (default 10 s), whatever
    /// `check_after_secs` X asks for, so a glitch in X's hint cannot park an upload.
    pub max_status_wait: Duration,
}

impl Default for MediaUploadConfig {
    fn default() -> MediaUploadConfig {
        MediaUploadConfig {
            segment_bytes: 4 * 1024 * 1024,
            processing_timeout: Duration::from_secs(10 * 60),
            max_status_wait: Duration::from_secs(10),
        }
    }
}

impl MediaUploadConfig {
    /// Refuses a segment size X would refuse (or that could not make progress).
    pub(crate) fn check(&self) -> Result<(), XError> {
        if (1..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            Ok(())
        } else {
            Err(dm::local_invalid(format!(
                "the media segment size {} is not between 1 and {MAX_SEGMENT_BYTES} bytes",
                self.segment_bytes
            )))
        }
    }
}

/// X's API as one account sees it: signs every request with the account's credentials and
/// paces DM sends and reads, each to its own rate-limit window of the account.
///
/// Cheap to clone; clones share the pacer, which is the point: all senders of a channel must
/// draw from the same rate-limit window. The connection pool may be shared further, by every
/// channel of the process ([`XClient::with_http`]).
#[derive(Clone)]
pub struct XClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: Url,
    pub(crate) request_timeout: Duration,
    /// Swapped whole by [`XClient::set_credentials`] and [`XClient::set_auth`]: each
    /// request authenticates with what is current when it starts.
    pub(crate) auth: std::sync::RwLock<XAuth>,
    pub(crate) pacer: Pacer,
    /// X counts DM reads in a window of their own, so they are paced apart from sends.
    pub(crate) read_pacer: Pacer,
    /// X counts media uploads in a window of their own too (README §2).
    pub(crate) upload_pacer: Pacer,
    pub(crate) media: MediaUploadConfig,
}

impl fmt::Debug for XClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XClient")
            .field("base_url", &self.inner.base_url.as_str())
            .field("pacer", &self.inner.pacer)
            .field("read_pacer", &self.inner.read_pacer)
            .field("upload_pacer", &self.inner.upload_pacer)
            .finish_non_exhaustive()
    }
}

impl XClient {
    /// A client for one account, with an HTTP stack of its own.
    ///
    /// Fails with [`XError::InvalidRequest`] when `base_url` is not an http(s) URL that can
    /// take a path or the media segment size is outside 1 byte to 5 MiB, and with
    /// [`XError::Transient`] when the HTTP stack cannot start (TLS). A process with many
    /// channels shares one stack between them with [`XClient::with_http`].
    pub fn new(config: XClientConfig, credentials: UserCredentials) -> Result<XClient, XError> {
        XClient::with_http(config, credentials, XHttp::new()?)
    }

    /// A client for one account on a shared HTTP stack (see [`XHttp`] for why). The client
    /// keeps its own pacers and its own `request_timeout`. Fails like [`XClient::new`] on a
    /// bad base URL or media segment size.
    pub fn with_http(
        config: XClientConfig,
        credentials: UserCredentials,
        http: XHttp,
    ) -> Result<XClient, XError> {
        XClient::with_auth(config, XAuth::from(credentials), http)
    }

    /// A client for one account authenticating with `auth`: OAuth 1.0a credentials, or an
    /// OAuth 2.0 token source (`Authorization: Bearer`). Fails like [`XClient::new`].
    pub fn with_auth(config: XClientConfig, auth: XAuth, http: XHttp) -> Result<XClient, XError> {
        if !matches!(config.base_url.scheme(), "http" | "https")
            || config.base_url.cannot_be_a_base()
        {
            return Err(dm::local_invalid(format!(
                "X base URL {} is not an http(s) URL",
                config.base_url
            )));
        }
        config.media.check()?;
        Ok(XClient {
            inner: Arc::new(Inner {
                http: http.client().clone(),
                base_url: config.base_url,
                request_timeout: config.request_timeout,
                auth: std::sync::RwLock::new(auth),
                pacer: Pacer::default(),
                read_pacer: Pacer::default(),
                upload_pacer: Pacer::default(),
                media: config.media,
            }),
        })
    }

    /// Sends a text DM: `POST /2/dm_conversations/with/:participant_id/messages` or
    /// `POST /2/dm_conversations/:dm_conversation_id/messages` with `{"text": …}`.
    ///
    /// Waits for the pacer first, signs with OAuth 1.0a, and feeds the answer's rate-limit
    /// headers (and any 429) back to the pacer. Texts X would refuse (empty, over 10,000
    /// characters) and malformed ids fail locally, without spending a request.
    ///
    /// A 2xx whose body cannot be read is reported as [`XError::Transient`] as well; the DM
    /// may then have gone out, so a retry can duplicate it.
    pub async fn send_dm(&self, target: &DmTarget, text: &str) -> Result<SentDm, XError> {
        self.send_dm_with_media(target, text, None).await
    }

    /// [`XClient::send_dm`] with an optional attachment: `media_id` is the id
    /// [`XClient::upload_media`] returned, sent as `"attachments":[{"media_id":…}]` (X takes
    /// one per DM). With media the text may be empty (X takes a DM of only media); without,
    /// it may not. A `media_id` that is not an X id fails locally.
    pub async fn send_dm_with_media(
        &self,
        target: &DmTarget,
        text: &str,
        media_id: Option<&str>,
    ) -> Result<SentDm, XError> {
        target.messages_url(&self.inner.base_url)?;
        check_dm(text, media_id)?;
        self.admit_dm_send()
            .await
            .send_dm_with_media(target, text, media_id)
            .await
    }

    /// Waits until the channel's pacer lets a DM send go, and reserves it: the request
    /// leaves when [`AdmittedSend::send_dm_with_media`] is called. Between the two the
    /// caller records that a send starts, so the record is taken when the request leaves,
    /// not before a wait for X's rate limit of unknown length: whoever later waits for that
    /// send to settle (the bridge looking for a DM it may have sent) counts from there.
    pub async fn admit_dm_send(&self) -> AdmittedSend<'_> {
        self.inner.pacer.ready().await;
        AdmittedSend {
            client: self,
            _answered: Answered(&self.inner.pacer),
        }
    }
}

/// A DM send the channel's pacer admitted ([`XClient::admit_dm_send`]). Dropped unused,
/// the pacer hears that it ended.
pub struct AdmittedSend<'a> {
    client: &'a XClient,
    _answered: Answered<'a>,
}

impl AdmittedSend<'_> {
    /// Sends the DM (see [`XClient::send_dm_with_media`]) without waiting for the pacer again.
    #[tracing::instrument(skip_all, fields(target = ?target, text_chars = text.chars().count(), media_id = media_id.unwrap_or("none")))]
    pub async fn send_dm_with_media(
        self,
        target: &DmTarget,
        text: &str,
        media_id: Option<&str>,
    ) -> Result<SentDm, XError> {
        let client = self.client;
        client.send_admitted(target, text, media_id).await
    }
}

impl XClient {
    async fn send_admitted(
        &self,
        target: &DmTarget,
        text: &str,
        media_id: Option<&str>,
    ) -> Result<SentDm, XError> {
        let url = target.messages_url(&self.inner.base_url)?;
        check_dm(text, media_id)?;
        let authorization = self.authorization("POST", &url).await?;
        let request = self
            .request(Method::POST, url)
            .header(AUTHORIZATION, authorization.header.clone())
            .json(&SendDmBody {
                text,
                attachments: media_id.map(|media_id| [Attachment { media_id }]),
            });
        let paced = Paced {
            pacer: &self.inner.pacer,
            endpoint: "dm_send",
            what: "DM send",
            learns_window: true,
        };
        let answer = self.exchange(request, paced).await?;
        authorization.answered(answer.status.as_u16());
        if answer.status.is_success() {
            return sent_dm(&answer);
        }
        Err(self.dm_refused(&answer))
    }

    /// The classified refusal of a DM send; a 429 holds the send pacer until its reset, so
    /// the channel's next sends wait instead of earning another 429.
    fn dm_refused(&self, answer: &Exchange) -> XError {
        let status = answer.status.as_u16();
        let error = classify_send_error(status, &answer.headers, &answer.body);
        hold_on_rate_limit(&self.inner.pacer, &error);
        tracing::warn!(
            status,
            problem = error.problem_type().unwrap_or("none"),
            // The token's permission as X sees it; tells a missing DM permission apart.
            access_level = access_level(&answer.headers).unwrap_or("unknown"),
            detail = %error.detail(),
            "X refused a DM send"
        );
        error
    }

    /// Sends one request the caller has signed after waiting for `paced.pacer`, and reads the
    /// answer: the pacer hears that the request is over however it ends (cancellation
    /// included), learns X's window from the headers if it is its window, and the body is read
    /// no further than [`crate::body`]'s caps. Every paced API call (DM sends, reads,
    /// uploads) goes through here so the telemetry, the pacing and the size caps cannot
    /// differ between them; media downloads and the webhook calls are not paced and have
    /// their own (`media_download.rs`, `webhooks.rs`).
    pub(crate) async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        paced: Paced<'_>,
    ) -> Result<Exchange, XError> {
        let _answered = Answered(paced.pacer);
        let started = std::time::Instant::now();
        let response = request.send().await;
        crate::telemetry::record_request(paced.endpoint, started, &response);
        let response = response.map_err(|error| self.transport_error(&error, paced.what))?;
        let status = response.status();
        let headers = response.headers().clone();
        if paced.learns_window {
            if let Some(rate_limit) = RateLimit::from_headers(&headers) {
                paced.pacer.observe(&rate_limit);
            }
        }
        paced.pacer.completed();
        let body = crate::body::read(response)
            .await
            .map_err(|error| self.transport_error(&error, paced.what))?;
        if let Some(error) = body.too_large(status.as_u16(), paced.what) {
            return Err(error);
        }
        Ok(Exchange {
            status,
            headers,
            body: body.bytes,
        })
    }

    /// The shared HTTP client (connection pool, no redirects, no timeout of its own), for the
    /// request kinds that live in modules of their own and set their own timeout (media
    /// downloads).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// A request to X bounded by this client's `request_timeout`: the shared HTTP stack has no
    /// timeout of its own, so every API call goes through here.
    pub(crate) fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.inner
            .http
            .request(method, url)
            .timeout(self.inner.request_timeout)
    }

    /// How the account authenticates now.
    pub(crate) fn auth(&self) -> XAuth {
        self.inner
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The `Authorization` of one request to `url`: OAuth 1.0a-signed (query parameters
    /// included), or the OAuth 2.0 source's current access token (refreshed first if
    /// needed; a grant X refused is [`XError::Unauthorized`]).
    pub(crate) async fn authorization(
        &self,
        method: &str,
        url: &Url,
    ) -> Result<Authorization, XError> {
        match self.auth() {
            XAuth::OAuth1(credentials) => oauth::signed_header(method, url, &credentials)
                .map(Authorization::oauth1)
                .ok_or(XError::Unauthorized { problem: None }),
            XAuth::OAuth2(source) => Authorization::bearer(source).await,
        }
    }

    /// Whether the account authenticates with OAuth 2.0 (which changes some paths, such as
    /// the DM media download).
    pub fn uses_oauth2(&self) -> bool {
        matches!(self.auth(), XAuth::OAuth2(_))
    }

    /// The API root the client talks to.
    pub(crate) fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// Replaces the account's credentials (a rotated token, a channel the CRM
    /// updated): requests that start from now on sign with `credentials`, those
    /// already signed finish with the old ones. The pacers are kept: the rate
    /// limit windows belong to the account, not to the token.
    pub fn set_credentials(&self, credentials: UserCredentials) {
        self.set_auth(XAuth::from(credentials));
    }

    /// Replaces how the account authenticates, like [`XClient::set_credentials`] (a channel
    /// moved between OAuth 1.0a and OAuth 2.0, or a new token source).
    pub fn set_auth(&self, auth: XAuth) {
        *self
            .inner
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = auth;
    }

    /// How long one request to X may take before the client gives up on it: a DM whose
    /// send started longer ago than this (plus clock skew) has reached X or never will.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.inner.request_timeout
    }

    /// The pacer of this channel's DM sends, for status reports.
    pub fn pacer(&self) -> &Pacer {
        &self.inner.pacer
    }

    /// The pacer of this channel's reads (DM events and user lookups), for status reports.
    /// Separate from [`XClient::pacer`] because X counts reads in a window of their own: a
    /// poller running out of reads must not hold up replies, nor a send backlog the poller.
    pub fn read_pacer(&self) -> &Pacer {
        &self.inner.read_pacer
    }

    /// Fetches one page of the account's DM messages, newest first: `GET /2/dm_events` with
    /// `event_types=MessageCreate`, the event fields, and the sender's profile and the media
    /// expanded into `includes`, so the inbound side needs no further reads per event.
    ///
    /// The body is handed back raw for the inbound crate to parse. Waits for the read pacer
    /// and feeds it the answer. Failures are sorted as for sends, except that a plain 403 is
    /// [`XError::Unauthorized`] (a read has no recipient to refuse). A `max_results` outside
    /// 1–100 or a malformed token fails locally, without spending a request.
    #[tracing::instrument(skip_all, fields(max_results = page.max_results, first = page.pagination_token.is_none()))]
    pub async fn list_dm_events(&self, page: &DmEventsRequest) -> Result<DmEventsResponse, XError> {
        let url = page.url(&self.inner.base_url)?;
        let ReadAnswer {
            body, rate_limit, ..
        } = self.read(url, "DM events read", Window::DmEvents).await?;
        if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return Err(XError::Transient {
                status: Some(200),
                detail: format!(
                    "X answered a DM events read with a body that is not JSON ({error}): {}",
                    body_snippet(200, &body)
                ),
            });
        }
        Ok(DmEventsResponse { body, rate_limit })
    }

    /// Looks up the profile the CRM shows for a contact: `GET /2/users/:id` with
    /// `user.fields=username,name,profile_image_url`, signed with the user context and paced
    /// with the other reads.
    ///
    /// A lookup waits for the read pacer and takes a request from it, but does not teach it
    /// its rate-limit headers: X counts user lookups in a window of their own, and its
    /// numbers would overwrite what the pacer knows of the DM-read window. A 429 still holds
    /// all reads until its reset, erring on the side of fewer 429s.
    ///
    /// An unknown user is [`XError::InvalidRequest`] with status 404, whether X says so with a
    /// 404 or with a 200 carrying only `errors[]`; a non-numeric id fails locally with 400.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn get_user(&self, user_id: &str) -> Result<XUser, XError> {
        let url = XUser::url(&self.inner.base_url, user_id)?;
        let answer = self.read(url, "user lookup", Window::Other).await?;
        XUser::from_body(&answer.body)
    }

    /// Who the channel's access token belongs to (`GET /2/users/me`), and the token's
    /// permission as X reports it in `x-access-level` (`read`, `read-write` or
    /// `read-write-directmessages`), for the credential check. X answers 200 here even
    /// when the token lacks DM permission or the account has no credits, so a check must
    /// also probe a DM endpoint.
    pub async fn me(&self) -> Result<(XUser, Option<String>), XError> {
        let mut url = self
            .inner
            .base_url
            .join("2/users/me")
            .map_err(|e| XError::Transient {
                status: None,
                detail: format!("bad base URL: {e}"),
            })?;
        url.query_pairs_mut()
            .append_pair("user.fields", "username,name,profile_image_url");
        let answer = self.read(url, "own account lookup", Window::Other).await?;
        Ok((XUser::from_body(&answer.body)?, answer.access_level))
    }

    /// One signed, read-paced `GET`: the body of a 2xx with the window X announced, or the
    /// classified error (a 429 also blocks the read pacer until its reset). The read pacer
    /// learns the announced window only if it is the DM-read window.
    async fn read(
        &self,
        url: Url,
        what: &'static str,
        window: Window,
    ) -> Result<ReadAnswer, XError> {
        let pacer = &self.inner.read_pacer;
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            pacer.ready().await;
            let authorization = self.authorization("GET", &url).await?;
            let request = self
                .request(Method::GET, url.clone())
                .header(AUTHORIZATION, authorization.header.clone());
            let paced = Paced {
                pacer,
                endpoint: window.endpoint(),
                what,
                learns_window: window == Window::DmEvents,
            };
            let answer = self.exchange(request, paced).await?;
            authorization.answered(answer.status.as_u16());
            // An OAuth 2.0 access token X ended early (revoked, or expired before its
            // time): read once more with a refreshed one, as a send does. A read changes
            // nothing at X, so asking again is safe.
            if answer.status.as_u16() == 401 && authorization.is_bearer_user() && tries == 1 {
                continue;
            }
            break answer;
        };
        if answer.status.is_success() {
            return Ok(ReadAnswer {
                rate_limit: RateLimit::from_headers(&answer.headers),
                access_level: access_level(&answer.headers).map(str::to_owned),
                body: answer.body,
            });
        }
        Err(self.read_refused(&answer, what))
    }

    /// The classified refusal of a read; a 429 holds the read pacer until its reset.
    fn read_refused(&self, answer: &Exchange, what: &'static str) -> XError {
        let status = answer.status.as_u16();
        let error = classify_read_error(status, &answer.headers, &answer.body);
        hold_on_rate_limit(&self.inner.read_pacer, &error);
        tracing::warn!(
            status,
            problem = error.problem_type().unwrap_or("none"),
            access_level = access_level(&answer.headers).unwrap_or("unknown"),
            detail = %error.detail(),
            what,
            "X refused a read"
        );
        error
    }

    pub(crate) fn transport_error(&self, error: &reqwest::Error, what: &'static str) -> XError {
        transport_error(error, self.inner.request_timeout, what)
    }
}

/// A request that got no usable answer, sorted by whether it can have reached X: a
/// connection that never opened ([`reqwest::Error::is_connect`]: refused, no route, a failed
/// lookup or TLS handshake) sent nothing ([`XError::NotConnected`]); anything later (a
/// timeout, a connection broken mid-request, an unreadable body) may have ([`XError::Transient`]).
pub(crate) fn transport_error(
    error: &reqwest::Error,
    timeout: Duration,
    what: &'static str,
) -> XError {
    if error.is_connect() {
        let detail = error_chain(error);
        tracing::warn!(%detail, what, "could not connect to X; nothing was sent");
        return XError::NotConnected { detail };
    }
    let detail = if error.is_timeout() {
        format!("no answer from X within {timeout:?}")
    } else {
        error_chain(error)
    };
    tracing::warn!(%detail, what, "request to X did not get an answer");
    XError::Transient {
        status: error.status().map(|status| status.as_u16()),
        detail,
    }
}

/// A successful read: its body, the window X announced and the token's access level.
struct ReadAnswer {
    body: Vec<u8>,
    rate_limit: Option<RateLimit>,
    access_level: Option<String>,
}

/// Which of X's rate-limit windows a read's answer announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// The DM-read window the read pacer paces.
    DmEvents,
    /// Some other window (user lookups), not the read pacer's to learn.
    Other,
}

impl Window {
    /// The `endpoint` label of the read in `xbridge_x_requests_total`.
    fn endpoint(self) -> &'static str {
        match self {
            Window::DmEvents => "dm_events",
            Window::Other => "users",
        }
    }
}

/// What X answered to one request: the status, the headers and the body as far as it was read.
pub(crate) struct Exchange {
    pub(crate) status: reqwest::StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// How one request is paced and named: the pacer it waited for, its `endpoint` label in the
/// request metrics, what errors call it, and whether the pacer learns X's window from its
/// answer (only the window the pacer paces).
pub(crate) struct Paced<'a> {
    pub(crate) pacer: &'a Pacer,
    pub(crate) endpoint: &'static str,
    pub(crate) what: &'static str,
    pub(crate) learns_window: bool,
}

/// Texts and media ids X would refuse fail locally, without spending a request: a DM needs
/// a text or media, the text at most [`dm::MAX_TEXT_CHARS`] characters, and a media id is
/// digits.
fn check_dm(text: &str, media_id: Option<&str>) -> Result<(), XError> {
    if text.is_empty() && media_id.is_none() {
        return Err(dm::local_invalid("the DM text is empty".to_owned()));
    }
    if let Some(media_id) = media_id.filter(|id| !dm::is_user_id(id)) {
        return Err(dm::local_invalid(format!(
            "{media_id:?} is not an X media id"
        )));
    }
    let text_chars = text.chars().count();
    if text_chars > dm::MAX_TEXT_CHARS {
        return Err(dm::local_invalid(format!(
            "the DM text has {text_chars} characters; X allows at most {}",
            dm::MAX_TEXT_CHARS
        )));
    }
    Ok(())
}

/// The DM X reports sent in a 2xx. A 2xx whose body cannot be read is transient, though
/// the DM may then have gone out.
fn sent_dm(answer: &Exchange) -> Result<SentDm, XError> {
    let status = answer.status;
    match serde_json::from_slice::<SendDmResponse>(&answer.body) {
        Ok(answer) => {
            tracing::info!(
                dm_event_id = %answer.data.dm_event_id,
                dm_conversation_id = %answer.data.dm_conversation_id,
                "DM sent"
            );
            Ok(answer.data)
        }
        Err(error) => {
            tracing::warn!(
                status = status.as_u16(),
                %error,
                "X accepted a DM with an unreadable answer"
            );
            Err(XError::Transient {
                status: Some(status.as_u16()),
                detail: format!(
                    "X answered {status} with an unexpected body ({error}): {}",
                    body_snippet(status.as_u16(), &answer.body)
                ),
            })
        }
    }
}

/// A 429 holds `pacer` until X's reset, so the channel's next request of the kind waits
/// instead of earning another 429.
pub(crate) fn hold_on_rate_limit(pacer: &Pacer, error: &XError) {
    if let XError::RateLimited { reset_at, .. } = error {
        pacer.block_until(*reset_at);
    }
}

/// The token's permission as X reports it in `x-access-level`.
fn access_level(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-access-level")
        .and_then(|level| level.to_str().ok())
}

/// Calls [`Pacer::completed`] when a request ends, even when its future is dropped.
pub(crate) struct Answered<'a>(pub(crate) &'a Pacer);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.completed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;
    use reqwest::header::HeaderValue;

    /// What the local server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        authorization: String,
        content_type: String,
        body: String,
    }

    /// A canned answer: status, headers, body.
    type Answer = (u16, Vec<(&'static str, String)>, String);

    #[derive(Default)]
    struct Server {
        answers: Mutex<VecDeque<Answer>>,
        seen: Mutex<Vec<Seen>>,
    }

    async fn answer(
        State(server): State<Arc<Server>>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        let header = |name| {
            headers
                .get(name)
                .map(|value: &HeaderValue| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        server.seen.lock().unwrap().push(Seen {
            path: uri.path().to_owned(),
            authorization: header(AUTHORIZATION.as_str()),
            content_type: header("content-type"),
            body: String::from_utf8(body.to_vec()).unwrap(),
        });
        let (status, extra, body) = server
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("an answer for every request");
        let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
        for (name, value) in extra {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_str(&value).unwrap());
        }
        response
    }

    /// Starts a server that answers every POST with the next canned answer.
    async fn serve(answers: Vec<Answer>) -> (Arc<Server>, Url) {
        let server = Arc::new(Server {
            answers: Mutex::new(answers.into()),
            ..Server::default()
        });
        let app = axum::Router::new()
            .fallback(axum::routing::post(answer))
            .with_state(Arc::clone(&server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, url)
    }

    fn credentials() -> UserCredentials {
        UserCredentials {
            consumer_key: "consumer-key".into(),
            consumer_secret: "consumer-secret".into(),
            access_token: "1-access-token".into(),
            access_token_secret: "token-secret".into(),
        }
    }

    fn client(base_url: Url) -> XClient {
        XClient::new(
            XClientConfig {
                base_url,
                request_timeout: Duration::from_secs(10),
                ..XClientConfig::default()
            },
            credentials(),
        )
        .unwrap()
    }

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../../tests/fixtures/x-api/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn epoch_in(secs: i64) -> String {
        (chrono::Utc::now().timestamp() + secs).to_string()
    }

    /// The value of `key="…"` in an OAuth header.
    fn oauth_param<'a>(header: &'a str, key: &str) -> &'a str {
        let start = header.find(&format!("{key}=\"")).expect(key) + key.len() + 2;
        let len = header[start..].find('"').unwrap();
        &header[start..start + len]
    }

    #[tokio::test]
    async fn send_dm_posts_signed_json_and_learns_the_rate_limit() {
        let (server, base_url) = serve(vec![(
            201,
            vec![
                ("x-rate-limit-limit", "15".to_owned()),
                ("x-rate-limit-remaining", "0".to_owned()),
                ("x-rate-limit-reset", epoch_in(600)),
            ],
            fixture("send_dm_201.json"),
        )])
        .await;
        let client = client(base_url.clone());

        let sent = client
            .send_dm(
                &DmTarget::Participant("944480690".into()),
                "Hello \"you\" ☃",
            )
            .await
            .unwrap();

        assert_eq!(sent.dm_event_id, "1585800613253812228");
        assert_eq!(
            sent.dm_conversation_id,
            "750362064426721281-1072250532645998596"
        );
        let seen = server.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.path, "/2/dm_conversations/with/944480690/messages");
        assert_eq!(seen.content_type, "application/json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&seen.body).unwrap(),
            serde_json::json!({"text": "Hello \"you\" ☃"})
        );
        // The signature covers the URL X sees (with its port) and no JSON body.
        let nonce = oauth_param(&seen.authorization, "oauth_nonce");
        let timestamp = oauth_param(&seen.authorization, "oauth_timestamp");
        assert_eq!(nonce.len(), 32);
        let expected = oauth::authorization_header_with(
            "POST",
            &base_url.join(&seen.path).unwrap(),
            &[],
            &credentials(),
            nonce,
            timestamp.parse().unwrap(),
        );
        assert_eq!(seen.authorization, expected);
        assert_eq!(
            oauth_param(&seen.authorization, "oauth_token"),
            "1-access-token"
        );
        // X said the window is used up: the next send has to wait for the reset.
        let blocked_until = client.pacer().blocked_until().expect("blocked");
        assert!(blocked_until > chrono::Utc::now() + chrono::Duration::seconds(590));
    }

    #[tokio::test]
    async fn a_429_blocks_the_pacer_until_its_reset() {
        let reset = epoch_in(300);
        let (_server, base_url) = serve(vec![(
            429,
            vec![
                ("x-rate-limit-remaining", "0".to_owned()),
                ("x-rate-limit-reset", reset.clone()),
            ],
            fixture("error_429_rate_limited.json"),
        )])
        .await;
        let client = client(base_url);

        let error = client
            .send_dm(&DmTarget::Conversation("1-2".into()), "hi")
            .await
            .unwrap_err();

        let XError::RateLimited { reset_at, .. } = error else {
            panic!("{error:?}")
        };
        assert_eq!(reset_at.unwrap().timestamp().to_string(), reset);
        assert!(client.pacer().blocked_until().unwrap() >= reset_at.unwrap());
    }

    #[tokio::test]
    async fn errors_are_classified_from_the_body() {
        let (_server, base_url) = serve(vec![
            (403, vec![], fixture("error_403_oauth1_permissions.json")),
            (402, vec![], fixture("error_402_credits_depleted.json")),
            (201, vec![], "<html>ok</html>".to_owned()),
        ])
        .await;
        let client = client(base_url);
        let target = DmTarget::Participant("42".into());

        let error = client.send_dm(&target, "hi").await.unwrap_err();
        assert!(
            matches!(error, XError::MissingDmPermission { .. }),
            "{error:?}"
        );
        let error = client.send_dm(&target, "hi").await.unwrap_err();
        assert!(
            matches!(error, XError::CreditsExhausted { status: 402, .. }),
            "{error:?}"
        );
        let error = client.send_dm(&target, "hi").await.unwrap_err();
        assert!(
            matches!(
                error,
                XError::Transient {
                    status: Some(201),
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn media_goes_in_attachments_and_an_empty_text_is_left_out() {
        let (server, base_url) = serve(vec![
            (201, vec![], fixture("send_dm_201.json")),
            (201, vec![], fixture("send_dm_201.json")),
        ])
        .await;
        let client = client(base_url);
        let target = DmTarget::Participant("42".into());

        client
            .send_dm_with_media(&target, "", Some("1583157113245011970"))
            .await
            .unwrap();
        client
            .send_dm_with_media(&target, "see", Some("1583157113245011970"))
            .await
            .unwrap();

        let bodies: Vec<serde_json::Value> = server
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|seen| serde_json::from_str(&seen.body).unwrap())
            .collect();
        assert_eq!(
            bodies,
            [
                serde_json::json!({"attachments": [{"media_id": "1583157113245011970"}]}),
                serde_json::json!({"text": "see", "attachments": [{"media_id": "1583157113245011970"}]}),
            ]
        );
    }

    #[tokio::test]
    async fn texts_x_would_refuse_are_not_sent() {
        let (server, base_url) = serve(vec![]).await;
        let client = client(base_url);
        let target = DmTarget::Participant("42".into());

        for text in [String::new(), "x".repeat(10_001)] {
            let error = client.send_dm(&target, &text).await.unwrap_err();
            assert!(
                matches!(error, XError::InvalidRequest { status: 400, .. }),
                "{error:?}"
            );
        }
        assert!(client
            .send_dm(&DmTarget::Participant("a/b".into()), "hi")
            .await
            .is_err());
        assert!(server.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_says_nothing_was_sent_and_shows_no_credential() {
        // Bind and drop: nothing listens on this port any more.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = client(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());

        let error = client
            .send_dm(&DmTarget::Participant("42".into()), "hi")
            .await
            .unwrap_err();

        assert!(matches!(error, XError::NotConnected { .. }), "{error:?}");
        assert_eq!(error.http_status(), None);
        let shown = format!("{error} {error:?} {client:?}");
        for secret in [
            "consumer-key",
            "consumer-secret",
            "1-access-token",
            "token-secret",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn a_base_url_that_cannot_take_a_path_is_refused() {
        let config = XClientConfig {
            base_url: Url::parse("mailto:x@example.com").unwrap(),
            ..XClientConfig::default()
        };
        assert!(XClient::new(config, credentials()).is_err());
    }

    #[test]
    fn segment_sizes_x_would_refuse_are_refused() {
        let config = |segment_bytes| MediaUploadConfig {
            segment_bytes,
            ..MediaUploadConfig::default()
        };
        assert!(config(0).check().is_err());
        assert!(config(MAX_SEGMENT_BYTES + 1).check().is_err());
        assert!(config(1).check().is_ok());
        assert!(MediaUploadConfig::default().check().is_ok());
    }
}
