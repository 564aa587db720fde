//! The sizes AMQP puts on what the bridge publishes, measured with lapin's
//! own encoder (`lapin::protocol::basic::gen_properties` and the field-table
//! generators of `lapin::types::generation`), so a size is the exact number of
//! bytes lapin will write, not an estimate.
//!
//! Why it matters: a message's properties, headers included, travel in one
//! content-header frame, which AMQP never splits. A frame over the
//! connection's negotiated `frame_max` makes RabbitMQ close the whole
//! connection (`frame_too_large`), taking every channel's consumer with it,
//! and a reply that caused it comes back and does it again. Short strings
//! (routing keys, `message_id`, `correlation_id`, …) carry their length in one
//! byte: lapin panics when asked to build one over 255 bytes.

use lapin::protocol::basic::gen_properties;
use lapin::types::generation::{gen_field_table, gen_value, SerializeFn};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// The longest AMQP short string, in bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// What a content-header frame carries besides the properties: frame type
/// (1), channel (2), payload size (4) and frame end (1), then class id (2),
/// weight (2) and body size (8).
const HEADER_FRAME_OVERHEAD: usize = 20;

/// The bytes `generate` writes.
fn encoded_len<F: SerializeFn<Vec<u8>>>(generate: F) -> usize {
    match generate(Vec::new().into()) {
        Ok(written) => usize::try_from(written.position).unwrap_or(usize::MAX),
        // Writing to a Vec does not fail; if it ever did, the size is unknown
        // and the largest answer keeps every check on the safe side.
        Err(_) => usize::MAX,
    }
}

/// The size of the content-header frame lapin sends for `properties`.
pub fn header_frame_len(properties: &BasicProperties) -> usize {
    encoded_len(gen_properties(properties)).saturating_add(HEADER_FRAME_OVERHEAD)
}

/// The encoded size of a headers table: its 4-byte length and its entries.
pub fn table_len(table: &FieldTable) -> usize {
    encoded_len(gen_field_table(table))
}

/// The encoded size of one table entry: the key as a short string and the
/// value with its type tag.
pub fn entry_len(key: &ShortString, value: &AMQPValue) -> usize {
    (1 + key.as_str().len()).saturating_add(encoded_len(gen_value(value)))
}

/// The size of an empty table.
pub const EMPTY_TABLE_LEN: usize = 4;

/// `value` as a short string, or `None` when it is over 255 bytes (where
/// lapin's own conversion would panic).
pub fn short_string(value: impl Into<String>) -> Option<ShortString> {
    ShortString::try_new(value).ok()
}

/// Room a delivered message's content-header frame must leave below the
/// connection's `frame_max`: what RabbitMQ adds to a message it delivers again
/// (`x-delivery-count` from a quorum queue, about 30 bytes, and on RabbitMQ 4
/// `x-acquired-count`), with room to spare. Less than the room the bridge keeps
/// in the replies it parks (4 KiB, for the `x-death` a delay queue adds), so a
/// parked reply coming back always passes.
pub const REDELIVERY_HEADROOM: usize = 1024;

/// A delivered message whose properties leave less than
/// [`REDELIVERY_HEADROOM`] of the frame free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("its AMQP properties (headers included) take {size} bytes of the {frame_max}-byte frame this connection allows; RabbitMQ adds headers when it delivers a message again, and one that no longer fits in a frame makes the bridge's connection close each time, so a reply's properties must stay under {limit} bytes")]
pub struct NoRoomForRedelivery {
    /// The content-header frame as delivered.
    pub size: usize,
    /// The connection's negotiated `frame_max`.
    pub frame_max: usize,
    /// The largest frame that passes.
    pub limit: usize,
}

/// Whether a message delivered with `properties` could be delivered again on
/// a connection with `frame_max`.
///
/// RabbitMQ takes a message whose header frame is just under `frame_max`, and
/// delivers it fine the first time; but a quorum queue adds `x-delivery-count`
/// when it delivers it again (after a restart of the bridge, a lost
/// connection, a reply held unacknowledged), the frame is then over
/// `frame_max`, and lapin closes the whole connection for it, every channel's
/// consumer with it. The message stays at the head of its queue, so this
/// repeats on every reconnect. Such a message must be taken out of its queue
/// at its first delivery.
pub fn check_redelivery(
    properties: &BasicProperties,
    frame_max: usize,
) -> Result<(), NoRoomForRedelivery> {
    let size = header_frame_len(properties);
    let limit = frame_max.saturating_sub(REDELIVERY_HEADROOM);
    if size <= limit {
        Ok(())
    } else {
        Err(NoRoomForRedelivery {
            size,
            frame_max,
            limit,
        })
    }
}

/// At most `max` bytes of `text`, cut at a character boundary, ending with `…`
/// when something was cut (the mark counts towards `max`).
pub fn truncate(text: &str, max: usize) -> String {
    const MARK: &str = "…";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text[..end].to_owned();
    if max >= MARK.len() {
        cut.push_str(MARK);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn an_empty_header_frame_is_the_size_the_spec_gives() {
        // 7 bytes of frame header, 12 of content header, 2 of property flags,
        // the frame end: what amq-protocol's own test expects.
        assert_eq!(header_frame_len(&BasicProperties::default()), 22);
    }

    #[test]
    fn a_table_is_its_length_and_its_entries() {
        let mut table = FieldTable::default();
        assert_eq!(table_len(&table), EMPTY_TABLE_LEN);
        let key = ShortString::from("pad");
        let value = AMQPValue::LongString(LongString::from(vec![b'x'; 1000]));
        // key: 1 + 3; value: tag 1 + length 4 + 1000.
        assert_eq!(entry_len(&key, &value), 1009);
        table.insert(key, value);
        assert_eq!(table_len(&table), EMPTY_TABLE_LEN + 1009);
        let with_headers = BasicProperties::default().with_headers(table.clone());
        assert_eq!(header_frame_len(&with_headers), 22 + table_len(&table));
    }

    #[test]
    fn truncation_keeps_whole_characters_and_says_so() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6, "{cut}");
        assert_eq!(cut, "é…");
        assert_eq!(truncate(&"x".repeat(100), 10).len(), 10);
    }

    #[test]
    fn a_message_near_frame_max_has_no_room_for_a_redelivery() {
        let frame_max = 131_072;
        let padded = |frame: usize| {
            let mut table = FieldTable::default();
            // An empty table's frame is 22 + 4; the entry is 1 + 3 + 1 + 4 + n.
            let n = frame - 26 - 9;
            table.insert(
                "pad".into(),
                AMQPValue::LongString(LongString::from(vec![b'p'; n])),
            );
            let properties = BasicProperties::default().with_headers(table);
            assert_eq!(header_frame_len(&properties), frame);
            properties
        };
        let limit = frame_max - REDELIVERY_HEADROOM;
        assert_eq!(check_redelivery(&padded(limit), frame_max), Ok(()));
        assert_eq!(
            check_redelivery(&padded(limit + 1), frame_max),
            Err(NoRoomForRedelivery {
                size: limit + 1,
                frame_max,
                limit
            })
        );
        // What the reply was: RabbitMQ took it, a redelivery would not fit.
        assert!(check_redelivery(&padded(frame_max - 8), frame_max).is_err());
        assert_eq!(
            check_redelivery(&BasicProperties::default(), frame_max),
            Ok(())
        );
    }

    #[test]
    fn short_strings_over_255_bytes_are_refused_not_panicked_on() {
        assert!(short_string("x".repeat(255)).is_some());
        assert!(short_string("x".repeat(256)).is_none());
    }
}
