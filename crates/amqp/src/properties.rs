//! Property tests of the AMQP headers a reply arrives with: whatever headers the CRM (or
//! anyone who can publish to the outgoing exchange) puts on a message, reading the
//! bridge's failure history from them gives an answer, never a panic, and what the bridge
//! writes back stays within its bounds.
//!
//! The generic hostile values come from `xbridge-arbitrary`; this module adds the shapes of
//! this crate's inputs (AMQP field tables, failure histories).

use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use proptest::prelude::*;
use xbridge_arbitrary as arbitrary;

use crate::FailureHeaders;

/// Any AMQP field value, nested a little: what a publisher may put in a header.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        "[ -~]{0,40}".prop_map(|s| AMQPValue::ShortString(s.as_str().into())),
        arbitrary::string().prop_map(|s| AMQPValue::LongString(LongString::from(s.into_bytes()))),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        // Numbers and times as text, the way a header may be written by hand.
        prop_oneof![
            "-?[0-9]{1,25}",
            Just("2026-11-25T10:00:00.123Z".to_owned()),
            Just("0000-01-01T00:00:00Z".to_owned()),
            Just("9999-12-31T23:59:59.999+14:00".to_owned()),
            Just("1970-01-01T00:00:00Z".to_owned()),
        ]
        .prop_map(|s| AMQPValue::LongString(LongString::from(s.into_bytes()))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..32)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| AMQPValue::FieldArray(FieldArray::from(items))),
            field_table_of(inner).prop_map(AMQPValue::FieldTable),
        ]
    })
}

/// Our header names (so that a generated table often has them, with any type) and others.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "x-xbridge-attempts",
            "x-xbridge-parked",
            "x-xbridge-first-seen-at",
            "x-xbridge-first-failure-at",
            "x-xbridge-last-failure-at",
            "x-xbridge-reason",
            "x-xbridge-detail",
            "x-xbridge-channel",
            "x-xbridge-http-status",
            "x-xbridge-problem-type",
            "x-xbridge-original-exchange",
            "x-xbridge-original-routing-key",
            "x-death",
            "x-first-death-reason",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,40}",
    ]
}

fn field_table_of(value: impl Strategy<Value = AMQPValue>) -> impl Strategy<Value = FieldTable> {
    prop::collection::vec((header_name(), value), 0..8).prop_map(|entries| {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(name.as_str().into(), value);
        }
        table
    })
}

/// A reply's headers as any publisher may set them.
fn field_table() -> impl Strategy<Value = FieldTable> {
    field_table_of(amqp_value())
}

/// A failure history the bridge itself could write: times at millisecond precision within
/// the years RFC 3339 can write, texts within the bounds of the headers they go to
/// ([`crate::MAX_NAME_BYTES`], the tightest).
fn failure_headers() -> impl Strategy<Value = FailureHeaders> {
    failure_headers_with(|| {
        arbitrary::string().prop_map(|text| crate::wire::truncate(&text, crate::MAX_NAME_BYTES))
    })
}

/// A failure history with texts from `text()`, however long.
fn failure_headers_with<S: Strategy<Value = String>>(
    text: impl Fn() -> S,
) -> impl Strategy<Value = FailureHeaders> {
    let time = prop::option::of(
        (0i64..253_402_300_799_999)
            .prop_map(|ms| chrono::DateTime::from_timestamp_millis(ms).expect("in range")),
    );
    let text = || prop::option::of(text());
    (
        (any::<u32>(), any::<u32>(), time.clone(), time.clone(), time),
        (text(), text(), text(), prop::option::of(any::<u16>())),
        (text(), text(), text()),
    )
        .prop_map(
            |(
                (attempts, times_parked, first_seen_at, first_failure_at, last_failure_at),
                (reason, detail, channel, http_status),
                (problem_type, original_exchange, original_routing_key),
            )| FailureHeaders {
                attempts,
                times_parked,
                first_seen_at,
                first_failure_at,
                last_failure_at,
                reason,
                detail,
                channel,
                http_status,
                problem_type,
                original_exchange,
                original_routing_key,
                dropped_headers: None,
            },
        )
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Whatever headers a reply carries, reading its history gives an answer: the
    /// headers of the wrong type count as absent.
    #[test]
    fn any_headers_give_a_failure_history(table in prop::option::of(field_table())) {
        let history = FailureHeaders::read(table.as_ref());
        // What the bridge writes back is its bounded form of that history (a publisher's
        // own x-xbridge-* headers may be of any size); reading that and writing it again
        // changes nothing.
        let written = history.apply_to(table.as_ref());
        let bounded = FailureHeaders::read(Some(&written));
        let again = bounded.apply_to(Some(&written));
        prop_assert_eq!(FailureHeaders::read(Some(&again)), bounded);
    }

    /// The history the bridge writes reads back exactly, next to any foreign headers,
    /// which are kept.
    #[test]
    fn the_bridges_own_history_survives_a_round_trip(
        headers in failure_headers(),
        foreign in field_table(),
    ) {
        let written = headers.apply_to(Some(&foreign));
        prop_assert_eq!(FailureHeaders::read(Some(&written)), headers);
        for (name, value) in foreign.inner() {
            if !name.as_str().starts_with("x-xbridge-") {
                prop_assert_eq!(written.inner().get(name), Some(value));
            }
        }
    }

    /// Whatever texts a history holds (X's long error texts, a huge routing key), the
    /// headers written for it stay within their bounds, and reading them back and
    /// writing again changes nothing.
    #[test]
    fn the_bridges_own_headers_stay_bounded(
        mut headers in failure_headers_with(arbitrary::string),
        dropped in prop::option::of(arbitrary::string()),
    ) {
        headers.dropped_headers = dropped;
        let written = headers.apply_to(None);
        for (name, value) in written.inner() {
            if let AMQPValue::LongString(text) = value {
                let bound = match name.as_str() {
                    "x-xbridge-detail" => crate::MAX_DETAIL_BYTES,
                    "x-xbridge-dropped-headers" => crate::MAX_DROPPED_BYTES,
                    _ => crate::MAX_NAME_BYTES,
                };
                prop_assert!(text.as_bytes().len() <= bound, "{name}: {} bytes", text.as_bytes().len());
            }
        }
        let again = FailureHeaders::read(Some(&written)).apply_to(None);
        prop_assert_eq!(again, written);
    }
}
