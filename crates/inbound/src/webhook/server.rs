//! The HTTP endpoint X's webhooks call: `GET /webhooks/{channel}` answers the CRC
//! challenge, `POST /webhooks/{channel}` takes DM activity and publishes it for the CRM.
//!
//! X allows one webhook per App, so one URL (say `/webhooks/alpha`) receives the events
//! of every account subscribed to that App's webhook. A POST's signature is checked with
//! the consumer secret of the channel whose URL was called (its App's), then the body is
//! routed by the account it names to the channel of that App which is that account
//! (`routing.rs`). A body for an account no channel of the App is, is kept as a
//! dead letter (reason `unknown_account`) rather than dropped; one that may belong to a
//! channel whose account X has not told yet is answered 503, so X sends it again.
//!
//! X retries what it could not deliver (and may deliver twice anyway), so a POST is
//! answered 200 only once every event of its body is confirmed by the broker and
//! recorded as delivered (or the body is confirmed kept); anything else is a 503 and X
//! sends the body again, when the events already delivered are skipped. Events reach
//! the CRM at least once: a crash between a confirmed publish and its record can repeat
//! one, with the same AMQP `message_id`.
//!
//! Requests that are not signed are logged bounded in size and rate
//! ([`crate::untrusted_log`]); the metrics count every one.
//!
//! The channels served change while the bridge runs ([`WebhookState::serve_channel`],
//! [`WebhookState::stop_serving`]): a removed channel's URL is answered 404 like any
//! name no channel has, and a body for its account at another channel's URL of its
//! App is kept as an `unknown_account` dead letter.
//!
//! The inbound service ([`crate::service`]) serves it on `inbound.listen`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use xbridge_core::channel_identity::{ChannelAccount, ChannelIdentities};
use xbridge_core::contract::{ConversationTyping, DirectMessage, EventToCrm, MessageRead};
use xbridge_store::StateStore;
use xbridge_x_api::UserId;

use crate::delivery::dm::{Delivery, DeliveryError};
use crate::delivery::in_flight::InFlightDeliveries;
use crate::delivery::sink::{EventSink, InboundDeadLetter};
use crate::untrusted_log::{shown, shown_within, LogLimiter};
use crate::webhook::auth::{crc_response_token, is_crc_token, verify_signature, SIGNATURE_HEADER};
use crate::webhook::body::{BodyBudget, BodyRefusal, HeldBody};
use crate::webhook::routing::{route, Route};
use crate::x::error::PayloadError;
use crate::x::item::InboundItem;
use crate::x::webhook_body::{parse_webhook, WebhookDelivery};

/// The reason of a kept body for an account no channel of its App is.
pub const UNKNOWN_ACCOUNT: &str = "unknown_account";

/// One configured X account as the webhook sees it: the path segment X calls, the App
/// it belongs to, the secret X signs with, and the account's user id.
#[derive(Debug, Clone)]
pub struct WebhookChannel {
    /// The channel name: the `{channel}` of the webhook URL and the first word of the
    /// routing keys.
    pub name: String,
    /// The X App's consumer (API) key: channels with the same key are one App, whose
    /// one webhook brings the events of all their accounts.
    pub consumer_key: SecretString,
    /// The X App's consumer (API) secret: X keys both the CRC answer and the body
    /// signatures with it.
    pub consumer_secret: SecretString,
    /// The account's X user id, when configured. Bodies are routed by it; a channel
    /// without one gets bodies only once its id is learnt (see
    /// [`WebhookState::with_identities`]).
    pub own_user_id: Option<String>,
}

/// What the webhook accepts and what it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Largest POST body taken, in bytes (default 1 MiB); larger ones get 413 before
    /// they are read in full, so nobody can make the bridge buffer without bound.
    pub body_limit: usize,
    /// Bytes all POST bodies being read or handled may hold together (default 64
    /// MiB): a body is read whole before its signature can vouch for it, so without
    /// this, `body_limit` times the connection cap could be held for anyone. A body
    /// that does not fit is answered 503 (X sends it again).
    pub body_memory: usize,
    /// Publish `message.echo` for DMs the company's account sent outside the bridge
    /// (default true), so the CRM sees the whole conversation.
    pub publish_echoes: bool,
    /// Publish `conversation.typing` and `message.read` (default false: they are
    /// chatty and not every CRM wants them).
    pub publish_activity: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            body_limit: 1024 * 1024,
            body_memory: 64 * 1024 * 1024,
            publish_echoes: true,
            publish_activity: false,
        }
    }
}

/// One limiter per kind of log line a request can cause, so a flood of one kind
/// does not silence the others.
struct Logs {
    unknown_channel: LogLimiter,
    bad_crc_token: LogLimiter,
    bad_signature: LogLimiter,
    unreadable_body: LogLimiter,
    no_body_memory: LogLimiter,
    account_not_known_yet: LogLimiter,
    unknown_account: LogLimiter,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            unknown_channel: LogLimiter::for_requests("webhook requests for an unknown channel"),
            bad_crc_token: LogLimiter::for_requests("CRC challenges with a token X does not send"),
            bad_signature: LogLimiter::for_requests("webhook POSTs with a bad signature"),
            unreadable_body: LogLimiter::for_requests("webhook POSTs with an unreadable body"),
            no_body_memory: LogLimiter::for_requests(
                "webhook POSTs refused for want of memory for bodies",
            ),
            account_not_known_yet: LogLimiter::for_requests(
                "webhook bodies waiting for a channel's account",
            ),
            unknown_account: LogLimiter::for_requests("webhook bodies for an unknown X account"),
        }
    }
}

/// Everything the webhook's handlers share.
pub struct WebhookState {
    /// The channels served at `/webhooks/{name}`: changed while the bridge runs
    /// ([`WebhookState::serve_channel`]), so a request reads it once and works on
    /// the copy it took.
    channels: RwLock<HashMap<String, WebhookChannel>>,
    /// Every channel's account and App: where bodies are routed.
    identities: Arc<ChannelIdentities>,
    sink: Arc<dyn EventSink>,
    store: Arc<dyn StateStore>,
    config: WebhookConfig,
    /// The memory bodies being read and handled may hold together.
    bodies: BodyBudget,
    signature_failures: AtomicU64,
    in_flight: Arc<InFlightDeliveries>,
    profiles: RwLock<HashMap<String, Arc<crate::delivery::profiles::Profiles>>>,
    media: Option<Arc<crate::media::links::MediaLinks>>,
    logs: Logs,
}

impl WebhookState {
    /// The state for `channels`, publishing to `sink` and deduplicating through
    /// `store`. A channel name given twice keeps its last entry. Bodies are routed
    /// among `channels` by their configured ids, unless
    /// [`WebhookState::with_identities`] gives the process's.
    pub fn new(
        channels: Vec<WebhookChannel>,
        sink: Arc<dyn EventSink>,
        store: Arc<dyn StateStore>,
        config: WebhookConfig,
    ) -> WebhookState {
        let mut by_name = HashMap::new();
        for channel in &channels {
            if let Some(previous) = by_name.insert(channel.name.clone(), channel.clone()) {
                tracing::warn!(
                    channel = %previous.name,
                    "webhook channel configured twice; the last entry wins"
                );
            }
        }
        // The last entry of a name wins here too; the order of the others is kept.
        let last_entries = channels
            .iter()
            .enumerate()
            .filter(|(i, c)| !channels[i + 1..].iter().any(|later| later.name == c.name));
        let identities = ChannelIdentities::new(last_entries.map(|(_, c)| ChannelAccount {
            name: &c.name,
            consumer_key: &c.consumer_key,
            user_id: c.own_user_id.as_deref(),
        }));
        WebhookState {
            channels: RwLock::new(by_name),
            identities: Arc::new(identities),
            sink,
            store,
            bodies: BodyBudget::new(config.body_memory, config.body_limit),
            config,
            signature_failures: AtomicU64::new(0),
            in_flight: Arc::default(),
            profiles: RwLock::default(),
            media: None,
            logs: Logs::default(),
        }
    }

    /// Routes bodies by the process's `identities`: every configured channel (those
    /// that poll too, whose accounts may be subscribed to an App's webhook) with the
    /// ids configured or learnt from X.
    pub fn with_identities(mut self, identities: Arc<ChannelIdentities>) -> WebhookState {
        self.identities = identities;
        self
    }

    /// Shares `in_flight` with the channels' pollers, so the webhook and a poll
    /// delivering the same event at once cannot both publish it.
    pub fn with_in_flight(mut self, in_flight: Arc<InFlightDeliveries>) -> WebhookState {
        self.in_flight = in_flight;
        self
    }

    /// Gives the attachments of published DMs signed URLs of the bridge's media proxy
    /// (`media`); without it they are published with `url: null`, since X's URLs are of
    /// no use to the CRM.
    pub fn with_media(mut self, media: Arc<crate::media::links::MediaLinks>) -> WebhookState {
        self.media = Some(media);
        self
    }

    /// Looks up the sender's profile through `profiles` when a delivery to
    /// `channel` lacks it.
    pub fn with_profiles(
        self,
        channel: &str,
        profiles: Arc<crate::delivery::profiles::Profiles>,
    ) -> WebhookState {
        write(&self.profiles).insert(channel.to_owned(), profiles);
        self
    }

    /// Serves `channel` at its URL from the next request on, or replaces what it
    /// was served with (new secrets: the next signature is checked with them); its
    /// senders' profiles are looked up through `profiles`. Requests in flight
    /// finish with what they started with. Routing by account is the shared
    /// identities' (see [`WebhookState::with_identities`]): the caller keeps them.
    pub fn serve_channel(
        &self,
        channel: WebhookChannel,
        profiles: Option<Arc<crate::delivery::profiles::Profiles>>,
    ) {
        let name = channel.name.clone();
        write(&self.channels).insert(name.clone(), channel);
        if let Some(profiles) = profiles {
            write(&self.profiles).insert(name, profiles);
        }
    }

    /// Stops serving `channel`'s URL (a channel removed while the bridge runs): its
    /// requests are answered from then on as for a name no channel has (404).
    pub fn stop_serving(&self, channel: &str) {
        write(&self.channels).remove(channel);
        write(&self.profiles).remove(channel);
    }

    /// The channel served at `/webhooks/{name}`, as it is now.
    fn channel(&self, name: &str) -> Option<WebhookChannel> {
        read(&self.channels).get(name).cloned()
    }

    /// How many POSTs were refused for a missing, malformed or wrong signature since
    /// start: a rising count means a misconfigured secret or someone probing the URL.
    pub fn signature_failures(&self) -> u64 {
        self.signature_failures.load(Ordering::Relaxed)
    }

    /// The configuration the webhook runs with.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }
}

/// The webhook's routes, `GET` and `POST /webhooks/{channel}`; POST bodies are read
/// within the limits of `state`'s config (`body.rs`). The caller serves it (and may
/// nest it under another router).
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(
            "/webhooks/{channel}",
            get(crc_challenge).post(receive_events),
        )
        .with_state(state)
}

/// The lock's map: nothing panics while holding these locks, and a poisoned one
/// still holds a whole map.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Deserialize)]
struct CrcQuery {
    crc_token: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Counts a request refused before its signature could vouch for it, under a fixed
/// set of `reason`s, so a client cannot grow the label set.
fn count_refused(reason: &'static str) {
    metrics::counter!("xbridge_webhook_requests_refused_total", "reason" => reason).increment(1);
}

/// 404 for a name no served channel has; the name is anyone's to choose, so it is
/// logged shortened and escaped, and only so often.
fn unknown_channel(state: &WebhookState, request: &'static str, channel: &str) -> Response {
    count_refused("unknown_channel");
    if state.logs.unknown_channel.allow() {
        tracing::warn!(channel = %shown(channel), request, "webhook request for an unknown channel");
    }
    error(StatusCode::NOT_FOUND, "no webhook channel by this name")
}

/// The answer to a body that was not read: 413 over the limit, 503 when the bodies
/// being read hold all the memory for bodies (X sends it again), 400 when it broke off
/// or stopped arriving.
fn refused_body(state: &WebhookState, channel: &str, refusal: BodyRefusal) -> Response {
    match refusal {
        BodyRefusal::TooLarge => {
            count_refused("too_large");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes", state.config.body_limit),
            )
        }
        BodyRefusal::NoRoom => {
            count_refused("no_body_memory");
            if state.logs.no_body_memory.allow() {
                tracing::warn!(
                    channel,
                    body_memory = state.config.body_memory,
                    "webhook POST answered 503: the bodies being read hold all of inbound.body_memory"
                );
            }
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many bodies are being read at once; retry later",
            )
        }
        BodyRefusal::Unreadable => {
            count_refused("unreadable_body");
            error(
                StatusCode::BAD_REQUEST,
                "the body broke off or stopped arriving",
            )
        }
    }
}

/// `GET ?crc_token=…`: proves to X that we hold the consumer secret.
async fn crc_challenge(
    State(state): State<Arc<WebhookState>>,
    Path(channel): Path<String>,
    Query(query): Query<CrcQuery>,
) -> Response {
    let Some(config) = state.channel(&channel) else {
        return unknown_channel(&state, "CRC challenge", &channel);
    };
    match query.crc_token.filter(|token| !token.is_empty()) {
        // The answer would be a valid signature of `token` as a body (see
        // `webhook_auth`): only X's kind of token gets one.
        Some(token) if !is_crc_token(&token) => {
            count_refused("bad_crc_token");
            if state.logs.bad_crc_token.allow() {
                tracing::warn!(channel, token = %shown(&token), "CRC challenge refused: not a token X sends");
            }
            error(
                StatusCode::BAD_REQUEST,
                "the crc_token is not one X sends (letters, digits, + / = - _, at most 256)",
            )
        }
        Some(token) => {
            tracing::debug!(channel, "answering X's CRC challenge");
            let response_token = crc_response_token(&config.consumer_secret, &token);
            Json(json!({ "response_token": response_token })).into_response()
        }
        None => error(
            StatusCode::BAD_REQUEST,
            "the crc_token parameter is missing",
        ),
    }
}

/// `POST`: reads the body within the budget, checks the signature, parses, routes and
/// publishes, answers.
async fn receive_events(
    State(state): State<Arc<WebhookState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(config) = state.channel(&channel) else {
        return unknown_channel(&state, "POST", &channel);
    };
    let held = match state.bodies.read(&headers, body).await {
        Ok(held) => held,
        Err(refusal) => return refused_body(&state, &channel, refusal),
    };
    let body = held.bytes.clone();
    if let Some(refused) = bad_signature(&state, &channel, &config, &headers, &body) {
        return refused;
    }
    let delivery = match parse_webhook(&body) {
        Ok(delivery) => delivery,
        Err(problem) => return unreadable_body(&state, &channel, &problem),
    };
    deliver_in_task(state, channel, delivery, held).await
}

/// The 400 for a body that is not a webhook body X sends; logged within the log budget,
/// as anyone can post one.
fn unreadable_body(state: &WebhookState, channel: &str, problem: &PayloadError) -> Response {
    count_refused("unreadable_body");
    if state.logs.unreadable_body.allow() {
        let problem = shown_within(&problem.to_string(), 200);
        tracing::warn!(channel, %problem, "webhook POST refused: unreadable body");
    }
    error(StatusCode::BAD_REQUEST, problem.to_string())
}

/// Delivers the body's events in a task of their own, so the work finishes even when X
/// hangs up first (its retry then finds the events delivered), and a bug cannot take the
/// server down; 200 once they reached the CRM, else 503 for X to send them again.
async fn deliver_in_task(
    state: Arc<WebhookState>,
    channel: String,
    delivery: WebhookDelivery,
    held: HeldBody,
) -> Response {
    let task = {
        let state = state.clone();
        let channel = channel.clone();
        let body = held.bytes.clone();
        // The body's memory stays taken until its events are handled.
        tokio::spawn(async move {
            let delivered = state.deliver(&channel, delivery, &body).await;
            drop(held);
            delivered
        })
    };
    match task.await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        // `deliver` logged the cause with the event id.
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the events could not be handed to the CRM; retry later",
        ),
        Err(failure) => {
            tracing::error!(channel, %failure, "webhook delivery task failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the events could not be handed to the CRM; retry later",
            )
        }
    }
}

/// Checks the body's signature with the channel's consumer secret: the 401 to
/// answer when it is not X's, `None` when it is.
fn bad_signature(
    state: &WebhookState,
    channel: &str,
    config: &WebhookChannel,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    // A header that is not text cannot be a valid signature: treat it as malformed.
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    let Err(reason) = verify_signature(&config.consumer_secret, body, signature) else {
        return None;
    };
    state.signature_failures.fetch_add(1, Ordering::Relaxed);
    count_refused("bad_signature");
    metrics::counter!("xbridge_webhook_signature_failures_total", "channel" => channel.to_string())
        .increment(1);
    if state.logs.bad_signature.allow() {
        tracing::warn!(channel, %reason, "webhook POST refused: bad signature");
    }
    Some(error(StatusCode::UNAUTHORIZED, reason.to_string()))
}

/// What became of a stream line ([`WebhookState::deliver_streamed`]).
#[derive(Debug)]
pub(crate) enum Streamed {
    /// Its events reached the CRM (or were kept as a dead letter), or it had none to publish.
    Delivered,
    /// Not an X body: skipped (why, bounded).
    Unreadable(String),
    /// Not taken (broker, store): read it again from the stream's backfill.
    Failed(String),
}

/// Why a body could not be delivered in full: X must send it again.
#[derive(Debug, thiserror::Error)]
enum BodyDeliveryError {
    /// An event of it, or the body itself as a dead letter, was not taken.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// The body may be for a channel whose account X has not told yet.
    #[error("X account {account} may be channel {}'s, whose account is not known yet", .pending.join(" or "))]
    AccountNotKnownYet {
        account: String,
        pending: Vec<String>,
    },
}

impl WebhookState {
    /// Routes one body that arrived at `url_channel`'s URL to the channel that is its
    /// account and publishes its events there in order, stopping at the first failure
    /// (the retry skips what was delivered before it); or keeps it, when no channel of
    /// the App is its account.
    async fn deliver(
        &self,
        url_channel: &str,
        delivery: WebhookDelivery,
        body: &[u8],
    ) -> Result<(), BodyDeliveryError> {
        let WebhookDelivery { for_user_id, items } = delivery;
        let Some(account) = for_user_id.filter(|_| self.has_work(&items)) else {
            // Tweets, follows, activity while it is off: nothing to publish, whoever
            // the body is for.
            tracing::debug!(
                channel = url_channel,
                events = items.len(),
                "webhook body with nothing to publish"
            );
            return Ok(());
        };
        let channel = match route(&self.identities.snapshot(), url_channel, &account) {
            Route::Channel(channel) => channel,
            Route::Wait { pending } => {
                let error = BodyDeliveryError::AccountNotKnownYet { account, pending };
                if self.logs.account_not_known_yet.allow() {
                    tracing::warn!(channel = url_channel, %error, "webhook body answered 503 until X tells the channel's account");
                }
                return Err(error);
            }
            Route::Keep { detail } => {
                return self
                    .keep_unknown_account(url_channel, &account, detail, &items, body)
                    .await;
            }
        };
        if channel != url_channel {
            tracing::debug!(
                url_channel,
                channel,
                for_user_id = account,
                "webhook body routed to the channel of its account"
            );
        }
        self.publish_items(channel.as_str(), &account, items).await
    }

    /// One event line of an App's activity stream ([`crate::stream`]): the same envelope a
    /// webhook POST carries, routed and delivered exactly as one, with `via_channel` (one of
    /// the App's stream channels) standing for the URL's channel. No signature to check: the
    /// line came over the App's own Bearer-authenticated connection to X.
    pub(crate) async fn deliver_streamed(&self, via_channel: &str, body: &[u8]) -> Streamed {
        let delivery = match parse_webhook(body) {
            Ok(delivery) => delivery,
            Err(problem) => return Streamed::Unreadable(shown_within(&problem.to_string(), 200)),
        };
        match self.deliver(via_channel, delivery, body).await {
            Ok(()) => Streamed::Delivered,
            Err(error) => Streamed::Failed(error.to_string()),
        }
    }

    /// Publishes a routed body's events for `channel`, in order, stopping at the
    /// first failure.
    async fn publish_items(
        &self,
        channel: &str,
        account: &str,
        items: Vec<InboundItem>,
    ) -> Result<(), BodyDeliveryError> {
        // The body's `for_user_id`, read as an id and routed to this channel's account.
        let account = &UserId::from(account);
        for item in items {
            match item {
                InboundItem::Message(dm) => {
                    let event_id = dm.event_id.clone();
                    self.message(channel, account, dm)
                        .await
                        .inspect_err(|error| {
                            tracing::error!(channel, %event_id, %error, "inbound DM not delivered");
                        })?;
                }
                InboundItem::Typing(typing) => {
                    let event = ConversationTyping::new(channel, typing);
                    self.activity(channel, account, EventToCrm::typing(&event))
                        .await?;
                }
                InboundItem::Read(read) => {
                    let event = MessageRead::new(channel, read);
                    self.activity(channel, account, EventToCrm::read(&event))
                        .await?;
                }
                InboundItem::Ignored { event_id, reason } => {
                    tracing::debug!(
                        channel,
                        event_id = event_id.as_ref().map(|id| id.as_str()),
                        %reason,
                        "webhook event ignored"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether `items` hold anything that would be published.
    fn has_work(&self, items: &[InboundItem]) -> bool {
        items.iter().any(|item| match item {
            InboundItem::Message(_) => true,
            InboundItem::Typing(_) | InboundItem::Read(_) => self.config.publish_activity,
            InboundItem::Ignored { .. } => false,
        })
    }

    fn delivery<'a>(
        &'a self,
        channel: &'a str,
        own_user_id: &'a UserId,
        profiles: Option<&'a crate::delivery::profiles::Profiles>,
    ) -> Delivery<'a> {
        Delivery {
            channel,
            own_user_id,
            store: self.store.as_ref(),
            sink: self.sink.as_ref(),
            profiles,
            publish_echoes: self.config.publish_echoes,
            media: self.media.as_deref(),
            in_flight: &self.in_flight,
        }
    }

    /// Where `channel`'s senders' profiles are looked up, as it is now.
    fn profiles_of(&self, channel: &str) -> Option<Arc<crate::delivery::profiles::Profiles>> {
        read(&self.profiles).get(channel).cloned()
    }

    /// One DM: deduplicated, classified, published, recorded.
    async fn message(
        &self,
        channel: &str,
        own_user_id: &UserId,
        dm: DirectMessage,
    ) -> Result<(), BodyDeliveryError> {
        let profiles = self.profiles_of(channel);
        self.delivery(channel, own_user_id, profiles.as_deref())
            .deliver(dm)
            .await?;
        Ok(())
    }

    /// A typing or read event: published once, when activity is on.
    async fn activity(
        &self,
        channel: &str,
        own_user_id: &UserId,
        event: EventToCrm,
    ) -> Result<(), BodyDeliveryError> {
        if !self.config.publish_activity {
            tracing::debug!(
                channel,
                event_type = event.event_type,
                "activity event; activity is off, dropped"
            );
            return Ok(());
        }
        let profiles = self.profiles_of(channel);
        self.delivery(channel, own_user_id, profiles.as_deref())
            .deliver_activity(&event)
            .await
            .inspect_err(|error| {
                tracing::error!(
                    channel,
                    message_id = event.message_id,
                    %error,
                    "inbound activity event not delivered"
                );
            })?;
        Ok(())
    }

    /// A body for an X account no channel of its App is: never published under a
    /// channel, never dropped. It is kept in the dead-letter queue as X sent it, and
    /// the answer is 200 only once the broker confirmed that.
    async fn keep_unknown_account(
        &self,
        url_channel: &str,
        account: &str,
        detail: String,
        items: &[InboundItem],
        body: &[u8],
    ) -> Result<(), BodyDeliveryError> {
        let first_event = items.iter().find_map(|item| match item {
            InboundItem::Message(dm) => Some(dm.event_id.to_string()),
            _ => None,
        });
        // The event id tells the operator which DM it is; a body of activity only
        // has none, and a digest of the body stands in.
        let which = first_event.unwrap_or_else(|| {
            let digest = Sha256::digest(body);
            digest[..8].iter().map(|b| format!("{b:02x}")).collect()
        });
        let letter = InboundDeadLetter {
            channel: url_channel.to_owned(),
            message_id: format!("{UNKNOWN_ACCOUNT}:{account}:{which}"),
            reason: UNKNOWN_ACCOUNT,
            detail,
            body: body.to_vec(),
        };
        metrics::counter!(
            "xbridge_webhook_unknown_account_total",
            "channel" => url_channel.to_owned()
        )
        .increment(1);
        self.sink
            .dead_letter(&letter)
            .await
            .inspect_err(|error| {
                tracing::error!(channel = url_channel, for_user_id = account, %error, "webhook body for an unknown X account not kept; X will send it again");
            })
            .map_err(DeliveryError::from)?;
        if self.logs.unknown_account.allow() {
            tracing::warn!(
                channel = url_channel,
                for_user_id = account,
                message_id = letter.message_id,
                detail = letter.detail,
                "webhook body for an X account no channel of the App is; kept as a dead letter"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_one_mebibyte_echoes_on_activity_off() {
        let config = WebhookConfig::default();
        assert_eq!(config.body_limit, 1_048_576);
        assert!(config.publish_echoes);
        assert!(!config.publish_activity);
    }
}
