//! Reading, replaying and purging the dead-letter queue, for `xbridge dlq`.
//!
//! How the queue is read: [`DeadLetterQueue::take`] takes every message (up
//! to a [`ReadBound`]) with `basic.get` and manual acknowledgement and holds
//! them all unacked on one channel, so nothing is lost if the tool dies (the broker returns what
//! a closed channel held) and nothing is read twice. Messages nobody acts on
//! are given back with one `basic.nack(multiple, requeue)` after all were
//! taken, so the queue keeps its order whether the broker requeues them at
//! the head or at the tail. `basic.nack` (not `basic.reject`) is used because
//! RabbitMQ 4.3+ does not count it towards a quorum queue's delivery limit;
//! RabbitMQ 4.0 to 4.2 count every return, so on those versions each listing
//! counts towards the default limit of 20 (set a `delivery-limit` of -1 on the
//! dead-letter queue with a policy there).
//!
//! Replay publishes a copy with confirms first and acknowledges the dead
//! letter only after the broker confirmed the copy: a crash in between leaves
//! the letter in the queue and at worst replays it twice, which the bridge's
//! idempotency record makes harmless.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use crate::{FailureHeaders, PublishError, Publisher, HEADER_PREFIX};
use xbridge_core::config::TopologyNames;

/// Says which way a dead letter was going. Absent on replies (the CRM's messages
/// to X); [`INBOUND`] on webhook bodies from X the bridge kept rather than lose
/// (e.g. reason `unknown_account`): those were never replies, so replaying them
/// to the outgoing exchange would make no sense.
pub const DIRECTION_HEADER: &str = "x-xbridge-direction";
/// [`DIRECTION_HEADER`]'s value on kept webhook bodies.
pub const INBOUND: &str = "inbound";

/// One message taken from the dead-letter queue and held (unacked) until it
/// is replayed, dropped or given back.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The broker's handle for acknowledging it on the reading channel.
    pub delivery_tag: u64,
    /// The routing key it was dead-lettered under (its channel).
    pub routing_key: String,
    /// The reply exactly as the CRM published it.
    pub body: Vec<u8>,
    /// The CRM's properties plus our failure headers.
    pub properties: BasicProperties,
    /// Our failure headers, parsed.
    pub headers: FailureHeaders,
}

impl DeadLetter {
    /// How operators name a dead letter: the reply's `message_id` from its
    /// JSON body (what the CRM knows it by), else the AMQP `message_id`, else
    /// `-` (a body that was not a reply at all).
    pub fn id(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message_id")?.as_str().map(str::to_owned))
            .or_else(|| {
                self.properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
            })
            .unwrap_or_else(|| "-".to_owned())
    }

    /// The channel the reply was for: our header, else the routing key.
    pub fn channel(&self) -> &str {
        self.headers
            .channel
            .as_deref()
            .unwrap_or(self.routing_key.as_str())
    }

    /// Why it was dead-lettered: our reason header, else `x-death`'s reason
    /// (the broker's safety net, e.g. `delivery_limit`), else `unknown`.
    pub fn reason(&self) -> String {
        if let Some(reason) = &self.headers.reason {
            return reason.clone();
        }
        self.properties
            .headers()
            .as_ref()
            .and_then(|t| t.inner().get("x-first-death-reason").cloned())
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Whether it is a webhook body from X the bridge kept (see
    /// [`DIRECTION_HEADER`]) rather than a reply.
    pub fn is_inbound(&self) -> bool {
        self.properties
            .headers()
            .as_ref()
            .and_then(|t| t.inner().get(DIRECTION_HEADER).cloned())
            .is_some_and(|v| match v {
                lapin::types::AMQPValue::LongString(s) => s.as_bytes() == INBOUND.as_bytes(),
                lapin::types::AMQPValue::ShortString(s) => s.as_str() == INBOUND,
                _ => false,
            })
    }

    /// How long ago it last failed (our header), if known.
    pub fn age(&self, now: DateTime<Utc>) -> Option<Duration> {
        let at = self
            .headers
            .last_failure_at
            .or(self.headers.first_failure_at)?;
        (now - at).to_std().ok().or(Some(Duration::ZERO))
    }

    /// [`DeadLetter::age`] as of now (for callers without a clock of their own).
    pub fn age_now(&self) -> Option<Duration> {
        self.age(Utc::now())
    }

    /// Where a replay publishes: the outgoing exchange (the bridge's input,
    /// whatever exchange the letter passed through, e.g. the unrouted one)
    /// under the CRM's original routing key, else the channel.
    pub fn replay_target(&self, names: &TopologyNames) -> (String, String) {
        let routing_key = self
            .headers
            .original_routing_key
            .clone()
            .unwrap_or_else(|| self.channel().to_owned());
        (names.outgoing_exchange.clone(), routing_key)
    }

    /// The properties of the replayed copy: the CRM's own, without any of our
    /// failure headers (so attempts start at zero) or the broker's `x-death`
    /// history, and timestamped now, so the reply gets a fresh credits wait
    /// instead of being dead-lettered at its first failure again. Without a
    /// `user_id` either: RabbitMQ refuses one that is not the replaying user's
    /// (see [`Publisher::republishable`]).
    pub fn replay_properties(&self, now: DateTime<Utc>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(table) = self.properties.headers() {
            for (key, value) in table.inner() {
                let key_str = key.as_str();
                let ours = key_str.starts_with(HEADER_PREFIX);
                let broker = key_str == "x-death"
                    || key_str.starts_with("x-first-death-")
                    || key_str.starts_with("x-last-death-");
                if !ours && !broker {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
        Publisher::republishable(&self.properties)
            .with_headers(headers)
            .with_timestamp(now.timestamp().max(0) as u64)
    }
}

/// Which dead letters a command acts on; empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this message (the [`DeadLetter::id`]).
    pub id: Option<String>,
    /// Only this channel.
    pub channel: Option<String>,
    /// Only this reason (`credits_exhausted`, …).
    pub reason: Option<String>,
    /// Only letters whose last failure is at least this old; letters without
    /// a failure time never match (we cannot tell their age).
    pub older_than: Option<Duration>,
}

impl Filter {
    /// Whether `letter` passes every filter that is set.
    pub fn matches(&self, letter: &DeadLetter, now: DateTime<Utc>) -> bool {
        self.id.as_ref().is_none_or(|id| *id == letter.id())
            && self.channel.as_ref().is_none_or(|c| c == letter.channel())
            && self.reason.as_ref().is_none_or(|r| *r == letter.reason())
            && self
                .older_than
                .is_none_or(|min| letter.age(now).is_some_and(|age| age >= min))
    }
}

impl Filter {
    /// [`Filter::matches`] as of now.
    pub fn matches_now(&self, letter: &DeadLetter) -> bool {
        self.matches(letter, Utc::now())
    }
}

/// Parses an age like `10m` or `2h 30m` (for `--older-than`).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The broker or channel failed (e.g. the queue does not exist).
    #[error("dead-letter queue {queue}: {source}")]
    Broker {
        /// The queue.
        queue: String,
        /// What the broker said.
        source: lapin::Error,
    },
    /// The letter is a kept webhook body, not a reply: there is nothing to
    /// send it to, so it stays.
    #[error("{id} is a webhook body from X (reason {reason}), not a reply: it cannot be replayed; read it with `xbridge dlq show`, drop it with `xbridge dlq purge`")]
    NotAReply {
        /// The dead letter's id.
        id: String,
        /// Why it was kept.
        reason: String,
    },
    /// The replayed copy was not confirmed; the dead letter stays.
    #[error("replaying {id}: {source}")]
    Replay {
        /// The dead letter's id.
        id: String,
        /// Why the copy is not known to be safe.
        source: PublishError,
    },
}

/// How much of the dead-letter queue one command reads at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBound {
    /// Letters.
    pub letters: usize,
    /// Bytes of their bodies (the last letter may pass it).
    pub bytes: usize,
}

impl Default for ReadBound {
    /// 10,000 letters or 256 MiB of bodies: far more than dead letters should
    /// ever number, within what an operator's machine holds in memory.
    fn default() -> Self {
        ReadBound {
            letters: 10_000,
            bytes: 256 * 1024 * 1024,
        }
    }
}

/// What [`DeadLetterQueue::take`] read.
#[derive(Debug, Default)]
pub struct Taken {
    /// The letters, oldest first, held unacked.
    pub letters: Vec<DeadLetter>,
    /// Whether reading stopped at the bound: the queue may hold more, behind these.
    pub more: bool,
}

/// The dead-letter queue, opened for one command.
pub struct DeadLetterQueue {
    reader: Channel,
    publisher: Publisher,
    names: TopologyNames,
    highest_tag: Option<u64>,
}

impl DeadLetterQueue {
    /// Opens a reading channel and a confirm-mode publishing channel.
    pub async fn open(
        connection: &Connection,
        names: TopologyNames,
    ) -> Result<DeadLetterQueue, DeadLetterError> {
        let broker = |source| DeadLetterError::Broker {
            queue: names.dead_letter_queue.clone(),
            source,
        };
        let reader = connection.create_channel().await.map_err(broker)?;
        let publisher = Publisher::open(connection).await.map_err(broker)?;
        Ok(DeadLetterQueue {
            reader,
            publisher,
            names,
            highest_tag: None,
        })
    }

    fn broker(&self, source: lapin::Error) -> DeadLetterError {
        DeadLetterError::Broker {
            queue: self.names.dead_letter_queue.clone(),
            source,
        }
    }

    /// Takes the messages now in the queue, oldest first, and holds them
    /// unacked, until the queue is empty or `bound` is reached (the dead-letter
    /// queue is outside input too: a flood of letters, or letters as large as
    /// RabbitMQ allows, must not exhaust the tool's memory).
    pub async fn take(&mut self, bound: ReadBound) -> Result<Taken, DeadLetterError> {
        let mut taken = Taken::default();
        let mut bytes = 0usize;
        loop {
            if taken.letters.len() >= bound.letters || bytes >= bound.bytes {
                taken.more = true;
                break;
            }
            let got = self
                .reader
                .basic_get(
                    self.names.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| self.broker(e))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            self.highest_tag = Some(delivery.delivery_tag);
            bytes = bytes.saturating_add(delivery.data.len());
            taken.letters.push(DeadLetter {
                delivery_tag: delivery.delivery_tag,
                routing_key: delivery.routing_key.as_str().to_owned(),
                headers: FailureHeaders::read(delivery.properties.headers().as_ref()),
                body: delivery.data,
                properties: delivery.properties,
            });
        }
        Ok(taken)
    }

    /// Republishes `letter` (see [`DeadLetter::replay_properties`]) with a
    /// confirm, then removes it from the queue.
    pub async fn replay(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        if letter.is_inbound() {
            return Err(DeadLetterError::NotAReply {
                id: letter.id(),
                reason: letter.reason(),
            });
        }
        let (exchange, routing_key) = letter.replay_target(&self.names);
        self.publisher
            .publish(
                &exchange,
                &routing_key,
                &letter.body,
                letter.replay_properties(Utc::now()),
            )
            .await
            .map_err(|source| DeadLetterError::Replay {
                id: letter.id(),
                source,
            })?;
        self.remove(letter).await
    }

    /// Removes `letter` from the queue for good.
    pub async fn remove(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        self.reader
            .basic_ack(letter.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.broker(e))
    }

    /// Gives every letter still held back to the queue, in their order.
    pub async fn release_rest(&mut self) -> Result<(), DeadLetterError> {
        if let Some(tag) = self.highest_tag.take() {
            self.reader
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .map_err(|e| self.broker(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, LongString};

    fn letter(reason: &str, channel: &str, failed: DateTime<Utc>) -> DeadLetter {
        let headers = FailureHeaders {
            attempts: 4,
            reason: Some(reason.into()),
            channel: Some(channel.into()),
            last_failure_at: Some(failed),
            original_routing_key: Some(channel.into()),
            ..FailureHeaders::default()
        };
        let mut table = headers.apply_to(None);
        table.insert(
            "x-crm-trace".into(),
            AMQPValue::LongString(LongString::from("t1")),
        );
        table.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        DeadLetter {
            delivery_tag: 1,
            routing_key: channel.into(),
            body: br#"{"message_id":"m-1","recipient_id":"1","text":"hi"}"#.to_vec(),
            properties: BasicProperties::default().with_headers(table),
            headers,
        }
    }

    #[test]
    fn filters_select_by_channel_reason_age_and_id() {
        let now = Utc::now();
        let l = letter(
            "credits_exhausted",
            "acme",
            now - chrono::Duration::minutes(20),
        );
        assert!(Filter::default().matches(&l, now));
        let by_reason = Filter {
            reason: Some("credits_exhausted".into()),
            ..Filter::default()
        };
        assert!(by_reason.matches(&l, now));
        let other_channel = Filter {
            channel: Some("beta".into()),
            ..Filter::default()
        };
        assert!(!other_channel.matches(&l, now));
        let old = Filter {
            older_than: Some(parse_age("10m").unwrap()),
            ..Filter::default()
        };
        assert!(old.matches(&l, now));
        let older = Filter {
            older_than: Some(parse_age("1h").unwrap()),
            ..Filter::default()
        };
        assert!(!older.matches(&l, now));
        let id = Filter {
            id: Some("m-1".into()),
            ..Filter::default()
        };
        assert!(id.matches(&l, now));
    }

    #[test]
    fn only_letters_marked_inbound_are_inbound() {
        let now = Utc::now();
        let mut l = letter("unknown_account", "acme", now);
        assert!(!l.is_inbound(), "replies carry no direction");
        let mut table = l.properties.headers().clone().unwrap();
        table.insert(
            DIRECTION_HEADER.into(),
            AMQPValue::LongString(LongString::from(INBOUND)),
        );
        l.properties = l.properties.clone().with_headers(table);
        assert!(l.is_inbound());
    }

    #[test]
    fn a_replay_drops_our_headers_and_x_death_but_keeps_the_crms() {
        let now = Utc::now();
        let l = letter("credits_exhausted", "acme", now);
        let properties = l.replay_properties(now);
        let headers = properties.headers().clone().unwrap();
        assert!(headers.contains_key("x-crm-trace"));
        assert!(!headers.contains_key("x-death"));
        assert!(headers
            .inner()
            .keys()
            .all(|k| !k.as_str().starts_with(HEADER_PREFIX)));
        assert_eq!(FailureHeaders::read(Some(&headers)).attempts, 0);
        let names = TopologyNames::default();
        assert_eq!(
            l.replay_target(&names),
            ("xbridge.outgoing".to_owned(), "acme".to_owned())
        );
    }

    #[test]
    fn a_replay_does_not_claim_the_crms_user() {
        let now = Utc::now();
        let mut l = letter("credits_exhausted", "acme", now);
        l.properties = l
            .properties
            .with_user_id("crm".into())
            .with_correlation_id("c-1".into());
        let properties = l.replay_properties(now);
        assert_eq!(properties.user_id(), &None);
        assert_eq!(
            properties.correlation_id().as_ref().map(|c| c.as_str()),
            Some("c-1")
        );
    }
}
