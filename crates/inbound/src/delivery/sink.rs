//! Where inbound events go: the CRM's incoming exchange.
//!
//! The webhook only answers X with 200 once every event of a body is safe in the
//! broker, so publishing sits behind a small trait: the real [`AmqpSink`] publishes
//! persistent, `mandatory` and confirmed; tests can put a failing sink in its place.

use async_trait::async_trait;
use chrono::Utc;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use xbridge_amqp::dead_letters::{DIRECTION_HEADER, INBOUND};
use xbridge_amqp::{FailureHeaders, PublishError, Publisher};
use xbridge_core::contract::EventToCrm;

/// Why an event is not known to be safe in the broker. The webhook answers 503 and X
/// sends the body again later.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker did not confirm the publish (returned, nacked, channel or
    /// connection gone).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The sink cannot publish at all right now (e.g. reconnecting).
    #[error("event sink unavailable: {0}")]
    Unavailable(String),
}

/// A webhook body the bridge cannot publish as events but must not lose (one for an
/// X account no channel is): kept in the dead-letter queue exactly as X sent it, with
/// the reason in the `x-xbridge-*` headers and `x-xbridge-direction: inbound`, so
/// `xbridge dlq` shows it and never replays it as a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundDeadLetter {
    /// The channel whose webhook URL it arrived at; its routing key.
    pub channel: String,
    /// Its AMQP `message_id`, what `xbridge dlq show` finds it by.
    pub message_id: String,
    /// One of the reasons of docs/integrator.md#reasons (`unknown_account`).
    pub reason: &'static str,
    /// Why, for the operator.
    pub detail: String,
    /// The body as X sent it.
    pub body: Vec<u8>,
}

impl InboundDeadLetter {
    /// Its AMQP properties: our failure headers (no attempts: it never was a
    /// request to X) and the direction.
    pub fn properties(&self, now: chrono::DateTime<Utc>) -> BasicProperties {
        let mut headers = FailureHeaders {
            reason: Some(self.reason.to_owned()),
            detail: Some(self.detail.clone()),
            channel: Some(self.channel.clone()),
            first_failure_at: Some(now),
            last_failure_at: Some(now),
            ..FailureHeaders::default()
        }
        .apply_to(None);
        headers.insert(
            DIRECTION_HEADER.into(),
            AMQPValue::LongString(INBOUND.into()),
        );
        BasicProperties::default()
            .with_message_id(self.message_id.as_str().into())
            .with_content_type("application/json".into())
            .with_timestamp(now.timestamp().max(0) as u64)
            .with_headers(headers)
    }
}

/// Takes events for the CRM. `publish` returns only once the event is safe (for AMQP:
/// confirmed by the broker), since the caller acknowledges X's delivery right after.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Publishes one event and waits until it is safe.
    async fn publish(&self, event: &EventToCrm) -> Result<(), SinkError>;

    /// Keeps `letter` in the dead-letter queue and waits until it is safe. A sink
    /// without one refuses, so the webhook answers 503 and X sends the body again.
    async fn dead_letter(&self, letter: &InboundDeadLetter) -> Result<(), SinkError> {
        Err(SinkError::Unavailable(format!(
            "no dead-letter queue to keep {} in",
            letter.message_id
        )))
    }
}

/// Publishes to the incoming exchange through a confirm-mode [`Publisher`]
/// (persistent, `mandatory`, confirmed).
#[derive(Clone)]
pub struct AmqpSink {
    publisher: Publisher,
    exchange: String,
    dead_letter_exchange: Option<String>,
}

impl AmqpSink {
    /// A sink publishing to `exchange` (the topology's `incoming_exchange`).
    pub fn new(publisher: Publisher, exchange: impl Into<String>) -> AmqpSink {
        AmqpSink {
            publisher,
            exchange: exchange.into(),
            dead_letter_exchange: None,
        }
    }

    /// Keeps [`InboundDeadLetter`]s on `exchange` (the topology's
    /// `dead_letter_exchange`); without it they are refused.
    pub fn with_dead_letters(mut self, exchange: impl Into<String>) -> AmqpSink {
        self.dead_letter_exchange = Some(exchange.into());
        self
    }
}

#[async_trait]
impl EventSink for AmqpSink {
    async fn publish(&self, event: &EventToCrm) -> Result<(), SinkError> {
        let properties = BasicProperties::default()
            .with_message_id(event.message_id.as_str().into())
            .with_content_type("application/json".into())
            .with_type(event.event_type.into())
            .with_timestamp(Utc::now().timestamp().max(0) as u64);
        self.publisher
            .publish(&self.exchange, &event.routing_key, &event.body, properties)
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, letter: &InboundDeadLetter) -> Result<(), SinkError> {
        let Some(exchange) = &self.dead_letter_exchange else {
            return Err(SinkError::Unavailable(
                "no dead-letter exchange configured".into(),
            ));
        };
        self.publisher
            .publish(
                exchange,
                &letter.channel,
                &letter.body,
                letter.properties(Utc::now()),
            )
            .await?;
        Ok(())
    }
}
