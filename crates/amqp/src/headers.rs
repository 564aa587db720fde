//! Our own attempt and failure headers on parked and dead-lettered replies.
//!
//! RabbitMQ's `x-death` counts are not continued for messages a client
//! republishes (3.13+), so the bridge carries its own history: how many
//! requests were made, when the first and last failure happened, and, on a
//! dead letter, why it ended there.
//!
//! Everything the bridge adds is bounded ([`MAX_DETAIL_BYTES`],
//! [`MAX_NAME_BYTES`], [`MAX_DROPPED_BYTES`]), and a republished reply's own
//! headers are kept only as far as they fit in one AMQP frame beside ours
//! ([`FailureHeaders::apply_within`]): the largest are dropped first, and the
//! letter names them in `x-xbridge-dropped-headers`. Without that, a reply
//! whose headers nearly filled a frame made the bridge's republish exceed
//! `frame_max`, and RabbitMQ closed the bridge's whole connection for it.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::wire;

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
const DROPPED: &str = "x-xbridge-dropped-headers";

/// Longest `x-xbridge-detail`, in bytes: X's error texts (and the detail of a
/// reply that names a huge field) can be long, and every byte of it travels
/// in the one frame the headers must fit in. Longer details are cut at a
/// character boundary and end with `…`.
pub const MAX_DETAIL_BYTES: usize = 2048;
/// Longest value of our other string headers (reason, channel, X's problem
/// type, original exchange and routing key), in bytes: AMQP's short-string
/// limit, which the names come from anyway.
pub const MAX_NAME_BYTES: usize = wire::MAX_SHORT_STRING;
/// Longest `x-xbridge-dropped-headers`, in bytes.
pub const MAX_DROPPED_BYTES: usize = 1024;
/// What the detail of a letter that lost headers ends with.
const DROPPED_NOTE: &str = " (headers of the reply that did not fit in one AMQP frame were dropped: see x-xbridge-dropped-headers)";

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
    /// The reply's own headers the bridge dropped on a republish because they
    /// did not fit in one frame, as `name (N bytes)`, comma-separated.
    pub dropped_headers: Option<String>,
}

/// A republished reply's headers: ours and the reply's own that fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The whole headers table to publish.
    pub table: FieldTable,
    /// The reply's own headers dropped by this republish, largest first.
    pub dropped: Vec<DroppedHeader>,
}

/// One of the reply's own headers that was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedHeader {
    /// Its name.
    pub name: String,
    /// Its encoded size (name and value), in bytes.
    pub bytes: usize,
}

impl std::fmt::Display for DroppedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", self.name, self.bytes)
    }
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
            dropped_headers: string(DROPPED),
        }
    }

    /// Counts one more request to X. The count comes from a header anyone
    /// publishing a reply can set, so it saturates instead of overflowing.
    pub fn count_attempt(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// Counts one more parking in a delay queue, saturating like
    /// [`FailureHeaders::count_attempt`].
    pub fn count_park(&mut self) {
        self.times_parked = self.times_parked.saturating_add(1);
    }

    /// A copy of `table` with our old headers replaced by these, however
    /// large (for tools and tests; the bridge republishes with
    /// [`FailureHeaders::apply_within`]).
    pub fn apply_to(&self, table: Option<&FieldTable>) -> FieldTable {
        self.apply_within(table, usize::MAX).table
    }

    /// A copy of `table` with our old headers replaced by these, whose
    /// encoding takes at most `budget` bytes: when the reply's own headers do
    /// not fit beside ours, the largest are dropped first until they do, and
    /// [`FailureHeaders::dropped_headers`] (and a note in the detail) names
    /// them. Our headers are bounded, so they always fit in a budget of a few
    /// kilobytes; a smaller budget than ours alone is exceeded.
    pub fn apply_within(&self, table: Option<&FieldTable>, budget: usize) -> Applied {
        let mut foreign = foreign_entries(table);
        let foreign_len: usize = foreign.iter().map(|(_, _, len)| len).sum();
        let ours = self.own_headers();
        if wire::EMPTY_TABLE_LEN + foreign_len + entries_len(&ours) <= budget {
            return Applied {
                table: merged(ours, &foreign),
                dropped: Vec::new(),
            };
        }
        let widest = self.widest().own_headers();
        let room = budget.saturating_sub(wire::EMPTY_TABLE_LEN + entries_len(&widest));
        let dropped = drop_largest(&mut foreign, foreign_len, room);
        Applied {
            table: merged(self.noting(&dropped).own_headers(), &foreign),
            dropped,
        }
    }

    /// These headers at their largest once they name what was dropped, so
    /// what is kept fits whatever the list of dropped headers turns out to be.
    fn widest(&self) -> FailureHeaders {
        FailureHeaders {
            detail: self.detail.as_ref().map(|_| "x".repeat(MAX_DETAIL_BYTES)),
            dropped_headers: Some("x".repeat(MAX_DROPPED_BYTES)),
            ..self.clone()
        }
    }

    /// These headers with `dropped` added to the list of dropped headers, so
    /// a letter republished more than once still names all it lost.
    fn noting(&self, dropped: &[DroppedHeader]) -> FailureHeaders {
        let listed = dropped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        FailureHeaders {
            dropped_headers: Some(match &self.dropped_headers {
                Some(earlier) if !earlier.is_empty() => format!("{earlier}, {listed}"),
                _ => listed,
            }),
            ..self.clone()
        }
    }

    /// Our headers alone, each value within its bound.
    fn own_headers(&self) -> FieldTable {
        let mut out = FieldTable::default();
        let mut put = |key: &str, value: AMQPValue| {
            out.insert(ShortString::from(key), value);
        };
        put(ATTEMPTS, AMQPValue::LongLongInt(i64::from(self.attempts)));
        if self.times_parked > 0 {
            put(PARKED, AMQPValue::LongLongInt(i64::from(self.times_parked)));
        }
        for (key, value) in self.own_strings() {
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

    /// Our string headers in the order they are written, each within its
    /// bound (a frame must hold them whatever X or the CRM sent).
    fn own_strings(&self) -> [(&'static str, Option<String>); 10] {
        let name = |value: &Option<String>| {
            value
                .as_deref()
                .map(|value| wire::truncate(value, MAX_NAME_BYTES))
        };
        [
            (FIRST_SEEN, self.first_seen_at.map(rfc3339)),
            (FIRST_FAILURE, self.first_failure_at.map(rfc3339)),
            (LAST_FAILURE, self.last_failure_at.map(rfc3339)),
            (REASON, name(&self.reason)),
            (DETAIL, self.bounded_detail()),
            (CHANNEL, name(&self.channel)),
            (PROBLEM_TYPE, name(&self.problem_type)),
            (ORIGINAL_EXCHANGE, name(&self.original_exchange)),
            (ORIGINAL_ROUTING_KEY, name(&self.original_routing_key)),
            (
                DROPPED,
                self.dropped_headers
                    .as_deref()
                    .map(|list| wire::truncate(list, MAX_DROPPED_BYTES)),
            ),
        ]
    }

    /// The detail within [`MAX_DETAIL_BYTES`], ending with a note when
    /// headers were dropped.
    fn bounded_detail(&self) -> Option<String> {
        let detail = self.detail.as_deref()?;
        if self.dropped_headers.is_none() || detail.ends_with(DROPPED_NOTE) {
            return Some(wire::truncate(detail, MAX_DETAIL_BYTES));
        }
        let mut bounded = wire::truncate(detail, MAX_DETAIL_BYTES - DROPPED_NOTE.len());
        bounded.push_str(DROPPED_NOTE);
        Some(bounded)
    }
}

/// One of the reply's own headers: its name, value and encoded size.
type Entry<'a> = (&'a ShortString, &'a AMQPValue, usize);

/// The reply's own headers (not ours) with their encoded sizes, the
/// candidates for dropping when the frame is too small for all.
fn foreign_entries(table: Option<&FieldTable>) -> Vec<Entry<'_>> {
    table
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(key, _)| !key.as_str().starts_with(HEADER_PREFIX))
                .map(|(key, value)| (key, value, wire::entry_len(key, value)))
                .collect()
        })
        .unwrap_or_default()
}

/// The encoded size of a table's entries, without the table's own length.
fn entries_len(table: &FieldTable) -> usize {
    wire::table_len(table) - wire::EMPTY_TABLE_LEN
}

/// Removes the largest of `foreign` (ties by name) until the rest, of
/// `foreign_len` bytes in all, fits in `room`: dropping the fewest headers
/// keeps the most of what the CRM sent.
fn drop_largest(
    foreign: &mut Vec<Entry<'_>>,
    foreign_len: usize,
    room: usize,
) -> Vec<DroppedHeader> {
    foreign.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    let mut kept_len = foreign_len;
    let mut cut = 0;
    while kept_len > room && cut < foreign.len() {
        kept_len -= foreign[cut].2;
        cut += 1;
    }
    foreign
        .drain(..cut)
        .map(|(name, _, bytes)| DroppedHeader {
            name: name.as_str().to_owned(),
            bytes,
        })
        .collect()
}

/// `ours` and the kept entries of the reply's own headers in one table.
fn merged(mut ours: FieldTable, foreign: &[Entry<'_>]) -> FieldTable {
    for (key, value, _) in foreign {
        ours.insert((*key).clone(), (*value).clone());
    }
    ours
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
            dropped_headers: None,
        };
        let table = headers.apply_to(Some(&original));
        assert_eq!(FailureHeaders::read(Some(&table)), headers);
        assert!(table.contains_key("x-crm-trace"));
    }

    #[test]
    fn counts_from_a_crafted_header_saturate() {
        let mut table = FieldTable::default();
        table.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(u32::MAX)));
        table.insert(PARKED.into(), AMQPValue::LongUInt(u32::MAX));
        let mut headers = FailureHeaders::read(Some(&table));
        headers.count_attempt();
        headers.count_park();
        assert_eq!(
            (headers.attempts, headers.times_parked),
            (u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn a_fresh_reply_has_no_history() {
        assert_eq!(FailureHeaders::read(None).attempts, 0);
    }

    fn long_string(len: usize) -> AMQPValue {
        AMQPValue::LongString(LongString::from(vec![b'x'; len]))
    }

    fn dead_letter() -> FailureHeaders {
        FailureHeaders {
            attempts: 1,
            reason: Some("invalid_message".into()),
            detail: Some("text is missing".into()),
            channel: Some("acme".into()),
            original_exchange: Some("xbridge.outgoing".into()),
            original_routing_key: Some("acme".into()),
            ..FailureHeaders::default()
        }
    }

    #[test]
    fn headers_that_fit_are_all_kept() {
        let mut original = FieldTable::default();
        original.insert("x-crm-trace".into(), long_string(1000));
        let applied = dead_letter().apply_within(Some(&original), 8 * 1024);
        assert!(applied.dropped.is_empty());
        assert!(applied.table.contains_key("x-crm-trace"));
        assert!(!applied.table.contains_key(DROPPED));
        assert_eq!(applied.table, dead_letter().apply_to(Some(&original)));
    }

    #[test]
    fn the_largest_foreign_headers_are_dropped_until_the_rest_fits_and_the_letter_says_so() {
        let mut original = FieldTable::default();
        original.insert("pad".into(), long_string(130_700));
        original.insert("medium".into(), long_string(20_000));
        original.insert("x-crm-trace".into(), long_string(100));
        original.insert(
            "x-xbridge-detail".into(),
            long_string(500_000), // ours are rewritten, never counted as theirs
        );
        let budget = 64 * 1024;
        let applied = dead_letter().apply_within(Some(&original), budget);

        assert!(wire::table_len(&applied.table) <= budget);
        let dropped: Vec<&str> = applied.dropped.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(dropped, ["pad"], "only what has to go, largest first");
        assert_eq!(applied.dropped[0].bytes, 1 + 3 + 1 + 4 + 130_700);
        assert!(applied.table.contains_key("medium"));
        assert!(applied.table.contains_key("x-crm-trace"));
        let read = FailureHeaders::read(Some(&applied.table));
        assert_eq!(read.dropped_headers.as_deref(), Some("pad (130709 bytes)"));
        let detail = read.detail.clone().unwrap();
        assert!(detail.starts_with("text is missing"), "{detail}");
        assert!(detail.contains("x-xbridge-dropped-headers"), "{detail}");

        // A tighter budget drops the next largest too, and a later republish
        // (a parked reply dead-lettered) keeps the earlier list.
        let applied = read.apply_within(Some(&applied.table), 16 * 1024);
        assert!(wire::table_len(&applied.table) <= 16 * 1024);
        let read = FailureHeaders::read(Some(&applied.table));
        assert_eq!(
            read.dropped_headers.as_deref(),
            Some("pad (130709 bytes), medium (20012 bytes)")
        );
        assert_eq!(
            read.detail
                .clone()
                .unwrap()
                .matches("x-xbridge-dropped-headers")
                .count(),
            1,
            "the note is not repeated"
        );
        assert!(read
            .apply_within(Some(&applied.table), 16 * 1024)
            .dropped
            .is_empty());
    }

    #[test]
    fn many_small_headers_are_dropped_as_needed_and_the_list_stays_bounded() {
        let mut original = FieldTable::default();
        for i in 0..2000 {
            original.insert(format!("h{i:04}").into(), long_string(60));
        }
        for budget in [8 * 1024, 20_000, 50_000, 100_000, 200_000] {
            let applied = dead_letter().apply_within(Some(&original), budget);
            assert!(wire::table_len(&applied.table) <= budget, "{budget}");
            let kept = applied
                .table
                .inner()
                .keys()
                .filter(|k| k.as_str().starts_with('h'))
                .count();
            assert_eq!(kept + applied.dropped.len(), 2000);
            let read = FailureHeaders::read(Some(&applied.table));
            assert!(read.dropped_headers.map_or(0, |d| d.len()) <= MAX_DROPPED_BYTES);
        }
    }

    #[test]
    fn our_own_headers_are_bounded_whatever_they_say() {
        let mut headers = dead_letter();
        headers.detail = Some("é".repeat(100_000));
        headers.problem_type = Some("p".repeat(100_000));
        headers.channel = Some("c".repeat(300));
        let table = headers.apply_to(None);
        let read = FailureHeaders::read(Some(&table));
        let detail = read.detail.unwrap();
        assert!(detail.len() <= MAX_DETAIL_BYTES && detail.ends_with('…'));
        assert!(read.problem_type.unwrap().len() <= MAX_NAME_BYTES);
        assert!(read.channel.unwrap().len() <= MAX_NAME_BYTES);
        assert!(
            wire::table_len(&table) < 4 * 1024,
            "{}",
            wire::table_len(&table)
        );
    }
}
