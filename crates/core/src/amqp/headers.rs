//! Our own attempt and failure headers on parked and dead-lettered replies.
//!
//! RabbitMQ's `x-death` counts are not continued for messages a client
//! republishes (3.13+), so the bridge carries its own history: how many
//! requests were made, when the first and last failure happened, and, on a
//! dead letter, why it ended there.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Every header the bridge writes starts with this.
pub const HEADER_PREFIX: &str = "x-xbridge-";

const ATTEMPTS: &str = "x-xbridge-attempts";
const FIRST_FAILURE: &str = "x-xbridge-first-failure-at";
const LAST_FAILURE: &str = "x-xbridge-last-failure-at";
const FIRST_SEEN: &str = "x-xbridge-first-seen-at";
const PARKED: &str = "x-xbridge-parked";
const REASON: &str = "x-xbridge-reason";
const DETAIL: &str = "x-xbridge-detail";
const CHANNEL: &str = "x-xbridge-channel";
const HTTP_STATUS: &str = "x-xbridge-http-status";
const PROBLEM_TYPE: &str = "x-xbridge-problem-type";
const ORIGINAL_EXCHANGE: &str = "x-xbridge-original-exchange";
const ORIGINAL_ROUTING_KEY: &str = "x-xbridge-original-routing-key";

/// A reply's failure history as carried in its headers. Contains no
/// credentials by construction: only counts, times, names and X's texts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureHeaders {
    /// Requests made to X for this reply so far.
    pub attempts: u32,
    /// How often the reply was parked in a delay queue (sets the next delay).
    pub times_parked: u32,
    /// When the bridge first took the reply (bounds the credits wait across
    /// parking and restarts).
    pub first_seen_at: Option<DateTime<Utc>>,
    /// First failed request.
    pub first_failure_at: Option<DateTime<Utc>>,
    /// Latest failed request.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Dead letters: the reason (`credits_exhausted`, …).
    pub reason: Option<String>,
    /// Dead letters: human-readable detail.
    pub detail: Option<String>,
    /// The channel the reply was for.
    pub channel: Option<String>,
    /// X's HTTP status of the last failure, when X answered.
    pub http_status: Option<u16>,
    /// X's problem name of the last failure (`credits`, `usage-capped`, …).
    pub problem_type: Option<String>,
    /// Where the CRM published the reply.
    pub original_exchange: Option<String>,
    /// The routing key the CRM used.
    pub original_routing_key: Option<String>,
}

impl FailureHeaders {
    /// Reads our headers, ignoring anything malformed (a reply straight from
    /// the CRM has none).
    pub fn read(table: Option<&FieldTable>) -> FailureHeaders {
        let Some(table) = table else {
            return FailureHeaders::default();
        };
        let map = table.inner();
        let string = |key: &str| map.get(key).and_then(as_string);
        let time = |key: &str| {
            string(key)
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let int = |key: &str| map.get(key).and_then(as_i64);
        FailureHeaders {
            attempts: int(ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            times_parked: int(PARKED).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            first_seen_at: time(FIRST_SEEN),
            first_failure_at: time(FIRST_FAILURE),
            last_failure_at: time(LAST_FAILURE),
            reason: string(REASON),
            detail: string(DETAIL),
            channel: string(CHANNEL),
            http_status: int(HTTP_STATUS).and_then(|n| u16::try_from(n).ok()),
            problem_type: string(PROBLEM_TYPE),
            original_exchange: string(ORIGINAL_EXCHANGE),
            original_routing_key: string(ORIGINAL_ROUTING_KEY),
        }
    }

    /// A copy of `table` with our old headers replaced by these.
    pub fn apply_to(&self, table: Option<&FieldTable>) -> FieldTable {
        let mut out = FieldTable::default();
        if let Some(table) = table {
            for (key, value) in table.inner() {
                if !key.as_str().starts_with(HEADER_PREFIX) {
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        let mut put = |key: &str, value: AMQPValue| {
            out.insert(ShortString::from(key), value);
        };
        put(ATTEMPTS, AMQPValue::LongLongInt(i64::from(self.attempts)));
        if self.times_parked > 0 {
            put(PARKED, AMQPValue::LongLongInt(i64::from(self.times_parked)));
        }
        let strings = [
            (FIRST_SEEN, self.first_seen_at.map(rfc3339)),
            (FIRST_FAILURE, self.first_failure_at.map(rfc3339)),
            (LAST_FAILURE, self.last_failure_at.map(rfc3339)),
            (REASON, self.reason.clone()),
            (DETAIL, self.detail.clone()),
            (CHANNEL, self.channel.clone()),
            (PROBLEM_TYPE, self.problem_type.clone()),
            (ORIGINAL_EXCHANGE, self.original_exchange.clone()),
            (ORIGINAL_ROUTING_KEY, self.original_routing_key.clone()),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                put(
                    key,
                    AMQPValue::LongString(LongString::from(value.into_bytes())),
                );
            }
        }
        if let Some(status) = self.http_status {
            put(HTTP_STATUS, AMQPValue::LongLongInt(i64::from(status)));
        }
        out
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn as_i64(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_a_round_trip_and_keep_foreign_ones() {
        let mut original = FieldTable::default();
        original.insert("x-crm-trace".into(), AMQPValue::LongString("abc".into()));
        original.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(99));
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let headers = FailureHeaders {
            attempts: 3,
            times_parked: 2,
            first_seen_at: Some(at),
            first_failure_at: Some(at),
            last_failure_at: Some(at),
            reason: Some("credits_exhausted".into()),
            detail: Some("no credits".into()),
            channel: Some("acme".into()),
            http_status: Some(402),
            problem_type: Some("credits".into()),
            original_exchange: Some("xbridge.outgoing".into()),
            original_routing_key: Some("acme".into()),
        };
        let table = headers.apply_to(Some(&original));
        assert_eq!(FailureHeaders::read(Some(&table)), headers);
        assert!(table.contains_key("x-crm-trace"));
    }

    #[test]
    fn a_fresh_reply_has_no_history() {
        assert_eq!(FailureHeaders::read(None).attempts, 0);
    }
}
