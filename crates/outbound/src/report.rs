//! Everything the outbound side publishes: status events for the CRM,
//! parked replies for the delay queues, and dead letters. All of it
//! confirmed before the delivery that caused it is acknowledged.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::BasicProperties;

use xbridge_amqp::{
    wire, DroppedHeader, FailureHeaders, PublishError, Publisher, MAX_DETAIL_BYTES,
};
use xbridge_core::config::TopologyNames;
use xbridge_core::contract::ChannelStateEvent;
use xbridge_core::contract::{FailureReason, StatusEvent};
use xbridge_x_api::XError;

/// Room kept free in a republished reply's header frame for what RabbitMQ
/// adds on the way back: `x-death` (an entry per queue) when a parked reply
/// returns from its delay queue, `x-delivery-count` when a quorum queue
/// redelivers it. A reply that only just fit when the bridge republished it
/// would otherwise come back in a frame over `frame_max`, which lapin answers
/// by closing the connection. At most an eighth of `frame_max`.
const BROKER_HEADROOM: usize = 4096;

/// Why a reply is being given up, with what operators need to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The closed-set reason.
    pub reason: FailureReason,
    /// Human-readable explanation, for the CRM's agent and the operator.
    pub detail: String,
    /// X's HTTP status, when X answered.
    pub http_status: Option<u16>,
    /// X's problem name, when X sent one.
    pub problem_type: Option<String>,
}

impl Failure {
    /// A failure caused by X's answer.
    pub fn from_x(reason: FailureReason, error: &XError) -> Failure {
        Failure {
            reason,
            detail: error.to_string(),
            http_status: error.http_status(),
            problem_type: error.problem_type().map(str::to_owned),
        }
    }

    /// A failure found by the bridge itself (bad input, unknown channel).
    pub fn local(reason: FailureReason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
            http_status: None,
            problem_type: None,
        }
    }
}

/// Publishes on behalf of the outbound side.
#[derive(Clone)]
pub struct Reporter {
    publisher: Publisher,
    names: TopologyNames,
    /// Signalled after each park or dead letter, so the depth gauges follow
    /// them instead of trailing by a sampling period.
    queues_changed: std::sync::Arc<tokio::sync::Notify>,
}

impl Reporter {
    /// A reporter publishing through `publisher` to the topology `names`.
    pub fn new(publisher: Publisher, names: TopologyNames) -> Reporter {
        Reporter {
            publisher,
            names,
            queues_changed: Default::default(),
        }
    }

    /// The connection's negotiated `frame_max`, which every delivery's
    /// properties must leave room in (see [`wire::check_redelivery`]).
    pub fn frame_max(&self) -> usize {
        self.publisher.frame_max()
    }

    /// Resolves once a reply was parked or dead-lettered since the last call.
    pub async fn queues_changed(&self) {
        self.queues_changed.notified().await
    }

    /// Tells the CRM what became of a reply. Its AMQP ids and routing key
    /// are short strings: when one would be over 255 bytes (the routing key of
    /// an unknown channel can be that long already) the event is refused with
    /// [`PublishError::FieldTooLong`], never sent malformed.
    pub async fn status(&self, event: &StatusEvent) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("status events always serialize");
        let short = |field: &'static str, value: String| {
            let len = value.len();
            wire::short_string(value).ok_or(PublishError::FieldTooLong { field, len })
        };
        let properties = BasicProperties::default()
            .with_message_id(short(
                "the event's AMQP message_id",
                event.amqp_message_id(),
            )?)
            .with_correlation_id(short(
                "the event's correlation_id",
                event.message_id().to_owned(),
            )?)
            .with_content_type("application/json".into())
            .with_type(event.event_type().into());
        self.publisher
            .publish(
                &self.names.incoming_exchange,
                &event.routing_key(),
                &body,
                properties,
            )
            .await
    }

    /// Samples the depths of the dead-letter queue (what operators must
    /// drain) and of each delay queue (replies waiting for a retry) into the
    /// `xbridge_dead_letter_queue_depth` and `xbridge_delay_queue_depth{delay}`
    /// gauges. The delay label is one of the configured steps, so it stays
    /// bounded.
    pub async fn sample_queue_depths(&self, delays: &[std::time::Duration]) {
        if let Some(depth) = self.depth(&self.names.dead_letter_queue).await {
            metrics::gauge!("xbridge_dead_letter_queue_depth").set(f64::from(depth));
        }
        for delay in delays {
            let queue = self.names.delay_queue(*delay);
            if let Some(depth) = self.depth(&queue).await {
                let label = queue
                    .strip_prefix(self.names.delay_prefix.as_str())
                    .unwrap_or(&queue)
                    .to_owned();
                metrics::gauge!("xbridge_delay_queue_depth", "delay" => label)
                    .set(f64::from(depth));
            }
        }
    }

    /// The number of ready messages in `queue`, by a passive declare (the
    /// bridge declared it, so the declare cannot close the channel).
    async fn depth(&self, queue: &str) -> Option<u32> {
        let declared = self
            .publisher
            .channel()
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        match declared {
            Ok(queue) => Some(queue.message_count()),
            Err(e) => {
                tracing::debug!(queue, error = %e, "queue depth not sampled");
                None
            }
        }
    }

    /// Tells the CRM a channel changed state.
    pub async fn channel_state(&self, event: &ChannelStateEvent) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("state events always serialize");
        let properties = BasicProperties::default()
            .with_message_id(event.amqp_message_id().into())
            .with_content_type("application/json".into())
            .with_type(event.event_type.into());
        self.publisher
            .publish(
                &self.names.incoming_exchange,
                &event.routing_key(),
                &body,
                properties,
            )
            .await
    }

    /// Puts a reply in the delay queue for `delay`; it comes back to its
    /// channel's queue under its original routing key.
    pub async fn park(
        &self,
        delivery: &Delivery,
        delay: Duration,
        history: &FailureHeaders,
    ) -> Result<(), PublishError> {
        self.republish(
            delivery,
            &self.names.delay_queue(delay),
            delivery.routing_key.as_str(),
            history,
        )
        .await
        .map(drop)
    }

    /// Publishes the delivery's body and properties again (without the
    /// CRM's `user_id`: see [`Publisher::republishable`]), with `history`
    /// in place of our old headers. The reply's own headers are kept as far
    /// as they fit in one frame beside ours with [`BROKER_HEADROOM`] to spare;
    /// the largest of the others are dropped, and returned.
    async fn republish(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        history: &FailureHeaders,
    ) -> Result<Vec<DroppedHeader>, PublishError> {
        let properties = Publisher::complete(Publisher::republishable(&delivery.properties));
        let headroom = BROKER_HEADROOM.min(self.publisher.frame_max() / 8);
        let budget = self
            .publisher
            .headers_room(&properties)
            .saturating_sub(headroom);
        let applied = history.apply_within(delivery.properties.headers().as_ref(), budget);
        if !applied.dropped.is_empty() {
            let dropped: Vec<String> = applied.dropped.iter().map(ToString::to_string).collect();
            tracing::warn!(
                exchange,
                routing_key,
                dropped = %wire::truncate(&dropped.join(", "), 512),
                "the reply's own headers do not all fit in one AMQP frame beside the bridge's; the largest were dropped"
            );
            metrics::counter!("xbridge_reply_headers_dropped_total")
                .increment(applied.dropped.len() as u64);
        }
        self.publisher
            .publish(
                exchange,
                routing_key,
                &delivery.data,
                properties.with_headers(applied.table),
            )
            .await?;
        self.queues_changed.notify_one();
        Ok(applied.dropped)
    }

    /// Moves a reply to the dead-letter queue, body and properties unchanged,
    /// with our failure headers, then tells the CRM when the reply's id is
    /// known. The caller acknowledges the delivery afterwards.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        channel: &str,
        message_id: Option<&str>,
        failure: &Failure,
        history: FailureHeaders,
    ) -> Result<(), PublishError> {
        // X's texts and a bad reply's fields can be long: the CRM's event
        // gets the same bounded detail as the letter.
        let detail = wire::truncate(&failure.detail, MAX_DETAIL_BYTES);
        let history = letter_headers(delivery, channel, failure, &detail, history);
        let dropped = self
            .republish(
                delivery,
                &self.names.dead_letter_exchange,
                channel,
                &history,
            )
            .await?;
        tracing::warn!(
            channel,
            message_id = message_id.unwrap_or("-"),
            reason = failure.reason.as_str(),
            detail = %detail,
            attempts = history.attempts,
            headers_dropped = dropped.len(),
            "reply dead-lettered"
        );
        count_dead_letter(channel, failure, message_id.is_some());
        let Some(message_id) = message_id else {
            return Ok(());
        };
        let event = StatusEvent::Failed {
            message_id: message_id.to_owned(),
            channel: channel.to_owned(),
            reason: failure.reason,
            detail,
            attempts: history.attempts,
        };
        self.tell_failed(&event, channel, message_id).await
    }

    /// Publishes a reply's `message.failed` once its dead letter is safe.
    async fn tell_failed(
        &self,
        event: &StatusEvent,
        channel: &str,
        message_id: &str,
    ) -> Result<(), PublishError> {
        match self.status(event).await {
            Ok(()) => Ok(()),
            // The letter is safe; an event that can never be published
            // must not bring the reply back to be dead-lettered again.
            Err(e) if e.is_refused_locally() => {
                tracing::warn!(
                    channel = %wire::truncate(channel, 64),
                    message_id,
                    error = %e,
                    "message.failed cannot be published for this reply; the dead letter says why it failed"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Counts a dead letter, and the failed DM when the reply's id is known
/// (`identified`).
fn count_dead_letter(channel: &str, failure: &Failure, identified: bool) {
    // Unknown channels are whatever routing key the CRM used: one label
    // value for all of them keeps the metric's cardinality bounded.
    let channel_label = if failure.reason == FailureReason::UnknownChannel {
        "unknown".to_owned()
    } else {
        channel.to_owned()
    };
    metrics::counter!(
        "xbridge_dead_letters_total",
        "channel" => channel_label.clone(),
        "reason" => failure.reason.as_str()
    )
    .increment(1);
    if identified {
        metrics::counter!(
            "xbridge_dms_failed_total",
            "channel" => channel_label,
            "reason" => failure.reason.as_str()
        )
        .increment(1);
    }
}

/// A dead letter's headers: the reply's `history` with why it failed
/// (`detail`, already bounded) and where it was published.
fn letter_headers(
    delivery: &Delivery,
    channel: &str,
    failure: &Failure,
    detail: &str,
    mut history: FailureHeaders,
) -> FailureHeaders {
    let now = chrono::Utc::now();
    history.reason = Some(failure.reason.as_str().to_owned());
    history.detail = Some(detail.to_owned());
    history.channel = Some(channel.to_owned());
    history.http_status = failure.http_status.or(history.http_status);
    history.problem_type = failure.problem_type.clone().or(history.problem_type);
    history.first_failure_at.get_or_insert(now);
    history.last_failure_at = Some(now);
    // Where this delivery was published, never what its headers claim:
    // they came with the reply (a replay follows the routing key, so a
    // header naming another channel would send the reply out of that
    // channel's account). A parked reply comes back under its own routing
    // key, through the outgoing exchange, so the delivery says it.
    history.original_exchange = Some(delivery.exchange.as_str().to_owned());
    history.original_routing_key = Some(delivery.routing_key.as_str().to_owned());
    history
}
