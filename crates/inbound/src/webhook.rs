//! The HTTP endpoint X's webhooks call: `GET /webhooks/{channel}` answers the CRC
//! challenge, `POST /webhooks/{channel}` takes DM activity and publishes it for the CRM.
//!
//! X retries what it could not deliver (and may deliver twice anyway), so a POST is
//! answered 200 only once every event of its body is confirmed by the broker and
//! recorded as delivered; anything else is a 503 and X sends the body again, when the
//! events already delivered are skipped. Events reach the CRM at least once: a crash
//! between a confirmed publish and its record can repeat one, with the same AMQP
//! `message_id`.
//!
//! The inbound service ([`crate::service`]) serves it on `inbound.listen`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use xbridge_store::{StateStore, StoreError};

use crate::delivery::{DeliverError, Delivery, InFlightDeliveries};
use crate::sink::{EventSink, OutboundEvent, SinkError};
use crate::webhook_auth::{crc_response_token, verify_signature, SIGNATURE_HEADER};
use crate::{
    parse_webhook, ConversationTyping, DirectMessage, InboundItem, MessageRead, WebhookDelivery,
};

/// One configured X account as the webhook sees it: the path segment X calls, the
/// secret X signs with, and the account's user id.
#[derive(Debug, Clone)]
pub struct WebhookChannel {
    /// The channel name: the `{channel}` of the webhook URL and the first word of the
    /// routing keys.
    pub name: String,
    /// The X App's consumer (API) secret: X keys both the CRC answer and the body
    /// signatures with it.
    pub consumer_secret: SecretString,
    /// The account's X user id. When set, a body for another account (`for_user_id`)
    /// is skipped instead of being published under this channel; when unset, the
    /// body's `for_user_id` is trusted.
    pub own_user_id: Option<String>,
}

/// What the webhook accepts and what it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Largest POST body taken, in bytes (default 1 MiB); larger ones get 413 before
    /// they are read in full, so nobody can make the bridge buffer without bound.
    pub body_limit: usize,
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
            publish_echoes: true,
            publish_activity: false,
        }
    }
}

/// Everything the webhook's handlers share.
pub struct WebhookState {
    channels: HashMap<String, WebhookChannel>,
    sink: Arc<dyn EventSink>,
    store: Arc<dyn StateStore>,
    config: WebhookConfig,
    signature_failures: AtomicU64,
    in_flight: Arc<InFlightDeliveries>,
    profiles: HashMap<String, Arc<crate::profiles::Profiles>>,
    media: Option<Arc<crate::media::MediaLinks>>,
}

impl WebhookState {
    /// The state for `channels`, publishing to `sink` and deduplicating through
    /// `store`. A channel name given twice keeps its last entry.
    pub fn new(
        channels: Vec<WebhookChannel>,
        sink: Arc<dyn EventSink>,
        store: Arc<dyn StateStore>,
        config: WebhookConfig,
    ) -> WebhookState {
        let mut by_name = HashMap::new();
        for channel in channels {
            if let Some(previous) = by_name.insert(channel.name.clone(), channel) {
                tracing::warn!(
                    channel = %previous.name,
                    "webhook channel configured twice; the last entry wins"
                );
            }
        }
        WebhookState {
            channels: by_name,
            sink,
            store,
            config,
            signature_failures: AtomicU64::new(0),
            in_flight: Arc::default(),
            profiles: HashMap::new(),
            media: None,
        }
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
    pub fn with_media(mut self, media: Arc<crate::media::MediaLinks>) -> WebhookState {
        self.media = Some(media);
        self
    }

    /// Looks up the sender's profile through `profiles` when a delivery to
    /// `channel` lacks it.
    pub fn with_profiles(
        mut self,
        channel: &str,
        profiles: Arc<crate::profiles::Profiles>,
    ) -> WebhookState {
        self.profiles.insert(channel.to_owned(), profiles);
        self
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

/// The webhook's routes, `GET` and `POST /webhooks/{channel}`, with the body limit of
/// `state`'s config. The caller serves it (and may nest it under another router).
pub fn router(state: Arc<WebhookState>) -> Router {
    let limit = DefaultBodyLimit::max(state.config.body_limit);
    Router::new()
        .route(
            "/webhooks/{channel}",
            get(crc_challenge).post(receive_events).layer(limit),
        )
        .with_state(state)
}

#[derive(Deserialize)]
struct CrcQuery {
    crc_token: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn unknown_channel() -> Response {
    error(StatusCode::NOT_FOUND, "no webhook channel by this name")
}

/// `GET ?crc_token=…`: proves to X that we hold the consumer secret.
async fn crc_challenge(
    State(state): State<Arc<WebhookState>>,
    Path(channel): Path<String>,
    Query(query): Query<CrcQuery>,
) -> Response {
    let Some(config) = state.channels.get(&channel) else {
        tracing::warn!(channel, "CRC challenge for an unknown channel");
        return unknown_channel();
    };
    match query.crc_token.filter(|token| !token.is_empty()) {
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

/// `POST`: checks the signature, parses, publishes, answers.
async fn receive_events(
    State(state): State<Arc<WebhookState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(config) = state.channels.get(&channel) else {
        tracing::warn!(channel, "webhook POST for an unknown channel");
        return unknown_channel();
    };
    // A header that is not text cannot be a valid signature: treat it as malformed.
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    if let Err(reason) = verify_signature(&config.consumer_secret, &body, signature) {
        state.signature_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("xbridge_webhook_signature_failures_total", "channel" => channel.to_string())
            .increment(1);
        tracing::warn!(channel, %reason, "webhook POST refused: bad signature");
        return error(StatusCode::UNAUTHORIZED, reason.to_string());
    }
    let delivery = match parse_webhook(&body) {
        Ok(delivery) => delivery,
        Err(problem) => {
            tracing::warn!(channel, %problem, "webhook POST refused: unreadable body");
            return error(StatusCode::BAD_REQUEST, problem.to_string());
        }
    };
    // In its own task, so the work finishes even when X hangs up first (its retry then
    // finds the events delivered), and a bug cannot take the server down.
    let own_user_id = config.own_user_id.clone();
    let task = {
        let state = state.clone();
        let channel = channel.clone();
        tokio::spawn(async move { state.deliver(&channel, own_user_id, delivery).await })
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

/// Why a body could not be delivered in full: X must send it again.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("publish failed: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeliverError> for DeliveryError {
    fn from(error: DeliverError) -> Self {
        match error {
            DeliverError::Sink(e) => DeliveryError::Sink(e),
            DeliverError::Store(e) => DeliveryError::Store(e),
        }
    }
}

impl WebhookState {
    /// Publishes the events of one body in order; stops at the first failure (the
    /// retry skips what was delivered before it).
    async fn deliver(
        &self,
        channel: &str,
        own_user_id: Option<String>,
        delivery: WebhookDelivery,
    ) -> Result<(), DeliveryError> {
        let own_user_id = match (own_user_id, delivery.for_user_id) {
            (Some(own), Some(for_user_id)) if own != for_user_id => {
                tracing::warn!(
                    channel,
                    for_user_id,
                    own_user_id = own,
                    "webhook body is for another X account; its events are skipped"
                );
                return Ok(());
            }
            (Some(own), _) => Some(own),
            (None, for_user_id) => for_user_id,
        };
        for item in delivery.items {
            match item {
                InboundItem::Message(dm) => {
                    let event_id = dm.event_id.clone();
                    let Some(own) = own_user_id.as_deref() else {
                        // parse_webhook refuses such bodies; kept for safety.
                        tracing::warn!(channel, event_id, "DM without an account id; skipped");
                        continue;
                    };
                    self.message(channel, own, dm).await.inspect_err(|error| {
                        tracing::error!(channel, event_id, %error, "inbound DM not delivered");
                    })?;
                }
                InboundItem::Typing(typing) => {
                    let event = ConversationTyping::new(channel, typing);
                    self.activity(channel, OutboundEvent::typing(&event))
                        .await?;
                }
                InboundItem::Read(read) => {
                    let event = MessageRead::new(channel, read);
                    self.activity(channel, OutboundEvent::read(&event)).await?;
                }
                InboundItem::Ignored { event_id, reason } => {
                    tracing::debug!(
                        channel,
                        event_id = event_id.as_deref(),
                        %reason,
                        "webhook event ignored"
                    );
                }
            }
        }
        Ok(())
    }

    /// One DM: deduplicated, classified, published, recorded.
    async fn message(
        &self,
        channel: &str,
        own_user_id: &str,
        dm: DirectMessage,
    ) -> Result<(), DeliveryError> {
        Delivery {
            channel,
            own_user_id,
            store: self.store.as_ref(),
            sink: self.sink.as_ref(),
            profiles: self.profiles.get(channel).map(|p| p.as_ref()),
            publish_echoes: self.config.publish_echoes,
            media: self.media.as_deref(),
            in_flight: &self.in_flight,
        }
        .deliver(dm)
        .await?;
        Ok(())
    }

    /// A typing or read event: published when activity is on. X gives these no id, so
    /// they are not deduplicated in the store; their stable AMQP `message_id` lets a
    /// consumer drop a repeat.
    async fn activity(&self, channel: &str, event: OutboundEvent) -> Result<(), DeliveryError> {
        if !self.config.publish_activity {
            tracing::debug!(
                channel,
                event_type = event.event_type,
                "activity event; activity is off, dropped"
            );
            return Ok(());
        }
        self.sink.publish(&event).await.inspect_err(|error| {
            tracing::error!(
                channel,
                message_id = event.message_id,
                %error,
                "inbound activity event not delivered"
            );
        })?;
        tracing::debug!(
            channel,
            message_id = event.message_id,
            "activity event published"
        );
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
