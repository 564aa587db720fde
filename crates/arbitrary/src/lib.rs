//! Hostile inputs for the property tests of xbridge's parsers of outside input: replies
//! from the CRM, X's webhook bodies and API answers, signed URLs and headers.
//!
//! Hand-written cases cover what someone thought of; these strategies cover the rest of
//! the class: arbitrary bytes, and JSON that has the right general shape but wrong
//! types, missing and extra fields, huge and negative numbers, ids of 25 digits or of
//! letters, very long and non-ASCII strings, nesting deeper than any parser allows, and
//! nulls. Each crate's tests start from a valid body of their parser ([`mutated`],
//! [`body`]) so that most cases get past the first check and reach the deeper ones.
//!
//! Used only by tests (a dev-dependency), never shipped.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value};

/// A test runner's configuration with `cases` cases, unless `PROPTEST_CASES` asks for
/// another count (a longer local run). Failures are not written to
/// `proptest-regressions/` files: a failing case found once is kept as an ordinary
/// regression test next to the fix.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Marks a string for [`to_bytes`] to write as a bare number literal: numbers that a
/// `serde_json::Value` cannot hold exactly (25 digits, 400 digits) still reach the parser
/// as X or a CRM could send them.
const RAW_NUMBER: &str = "\u{1}raw-number:";

/// Strings a parser may be handed where it expects a name, an id or a text: empty,
/// blank, control characters, quotes and escapes, right-to-left and astral characters,
/// a NUL, lone surrogates' replacement, and some very long ones.
pub fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z0-9_.-]{0,12}",
        1 => Just(String::new()),
        1 => Just(" \t\r\n ".to_owned()),
        1 => Just("\u{0}\u{7f}\u{85}\u{2028}\u{202e}\u{feff}".to_owned()),
        1 => Just("\"'\\/<>&%00%2F../..".to_owned()),
        1 => Just("é🙂\u{10ffff}\u{fffd}".to_owned()),
        // Long: past every length limit of the contract (10,000 characters of text,
        // 2,048 of a URL), in one-byte and four-byte characters.
        3 => (prop_oneof![Just('x'), Just('é'), Just('🙂'), any::<char>()], 300usize..12_000)
            .prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

/// A fixed set of hostile leaves, for sweeps that put each of them in every field of a
/// template ([`each_field`]): the cases a random run may take long to draw, such as a
/// string far longer than any limit where an id or a name belongs.
pub fn samples() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Bool(true),
        Value::from(-1),
        Value::from(u64::MAX),
        Value::from(1.5),
        raw_number("1234567890123456789012345"),
        Value::String(String::new()),
        Value::String(" ".to_owned()),
        Value::String("1234567890123456789012345".to_owned()),
        Value::String("abc".to_owned()),
        Value::String("\u{0}\n\u{202e}\"".to_owned()),
        Value::String("x".repeat(20_000)),
        Value::String("🙂".repeat(5_000)),
        Value::Array(vec![Value::Null; 3]),
        Value::Object(Map::new()),
    ]
}

/// `template` with one value replaced by each of `replacements` in turn, at every place
/// in it (the root included), and with each field removed: a deterministic sweep.
pub fn each_field(template: &Value, replacements: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    let paths = pointers(template);
    for path in &paths {
        for replacement in replacements {
            let mut changed = template.clone();
            if let Some(slot) = changed.pointer_mut(path) {
                *slot = replacement.clone();
            }
            out.push(changed);
        }
    }
    for path in &paths[1..] {
        let mut changed = template.clone();
        remove(&mut changed, path);
        out.push(changed);
    }
    out
}

/// Values where an X id is expected: valid ones, and every way one can be wrong: too
/// long (20 and 25 digits), letters, signs, floats, exponents, as a number or a string.
pub fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => "[0-9]{1,19}".prop_map(Value::String),
        1 => "[0-9]{20,25}".prop_map(Value::String),
        1 => "[0-9]{1,25}".prop_map(|digits| raw_number(&digits)),
        1 => "[0-9a-zA-Z_-]{1,25}".prop_map(Value::String),
        1 => "-[0-9]{1,19}".prop_map(Value::String),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::from(1.2210928719415583e18)),
        1 => Just(Value::String(String::new())),
        1 => Just(Value::String("0".repeat(400))),
    ]
}

/// Numbers at and beyond every edge: 0, -1, `i64::MIN`, `u64::MAX`, floats, and literals
/// of 25 and 400 digits (which become floats, or infinity, in a parser's hands).
pub fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1e308)),
        Just(Value::from(-0.0)),
        Just(raw_number("1234567890123456789012345")),
        Just(raw_number(&"9".repeat(400))),
        Just(raw_number("-1e999")),
    ]
}

/// Any JSON leaf, hostile ones preferred.
pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        id(),
        string().prop_map(Value::String),
    ]
}

/// Any JSON value: leaves of [`scalar`] in arrays and objects a few levels deep, with
/// keys that are sometimes the fields X and the CRM use.
pub fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Object keys: the fields the parsers look for (so that an extra or replaced field is
/// often one they read), and anything else.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(KNOWN_KEYS).prop_map(str::to_owned),
        1 => string(),
    ]
}

/// Field names of the bodies the bridge reads, from the CRM's replies to X's webhook
/// bodies, pages, upload answers and error bodies.
const KNOWN_KEYS: &[&str] = &[
    "id",
    "data",
    "type",
    "text",
    "message_id",
    "recipient_id",
    "conversation_id",
    "channel",
    "attachments",
    "mime_type",
    "url",
    "filename",
    "for_user_id",
    "users",
    "direct_message_events",
    "direct_message_indicate_typing_events",
    "direct_message_mark_read_events",
    "event_type",
    "filter",
    "user_id",
    "payload",
    "message_create",
    "sender_id",
    "target",
    "message_data",
    "created_timestamp",
    "created_at",
    "dm_conversation_id",
    "includes",
    "media",
    "media_key",
    "media_keys",
    "meta",
    "next_token",
    "result_count",
    "errors",
    "title",
    "detail",
    "status",
    "reason",
    "message",
    "processing_info",
    "state",
    "check_after_secs",
    "error",
    "username",
    "name",
    "valid",
    "variants",
];

/// `[[[…]]]` or `{"a":{"a":…}}` nested `depth` deep: serde_json refuses nesting beyond
/// 128 levels, and a parser that recursed on its own could overflow the stack.
pub fn deep(depth: usize, arrays: bool) -> Vec<u8> {
    let (open, close) = if arrays {
        ("[", "]")
    } else {
        ("{\"data\":", "}")
    };
    let mut text = open.repeat(depth);
    text.push_str("null");
    text.push_str(&close.repeat(depth));
    text.into_bytes()
}

/// One change to a JSON document, at a place chosen by an [`Index`] into its values.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Put another value in its place.
    Replace(Index, Value),
    /// Leave the field out (or the array item).
    Remove(Index),
    /// Add a field to the object there (or an item to the array).
    Add(Index, String, Value),
    /// Repeat an array's items until it holds many.
    Grow(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), value()).prop_map(|(at, v)| Edit::Replace(at, v)),
        2 => any::<Index>().prop_map(Edit::Remove),
        2 => (any::<Index>(), key(), value()).prop_map(|(at, k, v)| Edit::Add(at, k, v)),
        1 => (any::<Index>(), 2usize..200).prop_map(|(at, n)| Edit::Grow(at, n)),
    ]
}

/// `template` with one to four [`Edit`]s: the right general shape, wrong in a few places.
pub fn mutated(template: Value) -> impl Strategy<Value = Value> {
    prop::collection::vec(edit(), 1..5).prop_map(move |edits| {
        let mut value = template.clone();
        for edit in &edits {
            apply(&mut value, edit);
        }
        value
    })
}

/// A request or answer body for a parser whose valid input looks like one of `templates`:
/// arbitrary bytes, JSON of any shape, a template with a few [`Edit`]s, a template cut
/// short or with a byte flipped, and nesting too deep to parse.
pub fn body(templates: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    let originals: Vec<Vec<u8>> = templates.iter().map(to_bytes).collect();
    let chosen = prop::sample::select(templates);
    let raw = prop::sample::select(originals);
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        2 => value().prop_map(|v| to_bytes(&v)),
        8 => chosen.prop_flat_map(mutated).prop_map(|v| to_bytes(&v)),
        1 => (raw.clone(), any::<Index>()).prop_map(|(bytes, at)| {
            let end = at.index(bytes.len() + 1);
            bytes[..end].to_vec()
        }),
        1 => (raw, any::<Index>(), any::<u8>()).prop_map(|(mut bytes, at, byte)| {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        }),
        1 => (100usize..2_000, any::<bool>()).prop_map(|(depth, arrays)| deep(depth, arrays)),
    ]
}

/// `value` as JSON bytes, with the markers of [`number`] and [`id`] written as the bare
/// number literals they stand for.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    let text = value.to_string();
    if !text.contains("\\u0001raw-number:") {
        return text.into_bytes();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"\\u0001raw-number:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "\"\\u0001raw-number:".len()..];
        let end = after.find('"').unwrap_or(after.len());
        out.push_str(&after[..end]);
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out.into_bytes()
}

fn raw_number(literal: &str) -> Value {
    Value::String(format!("{RAW_NUMBER}{literal}"))
}

/// Every value inside `root` as a JSON pointer, the root itself first.
pub fn pointers(root: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    walk(child, format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(root, String::new(), &mut out);
    out
}

/// Takes the value at `path` out of its object or array (the root becomes `null`).
fn remove(root: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('/') else {
        *root = Value::Null;
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match root.pointer_mut(parent) {
        Some(Value::Object(object)) => {
            object.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < items.len() {
                    items.remove(i);
                }
            }
        }
        _ => {}
    }
}

fn apply(root: &mut Value, edit: &Edit) {
    let paths = pointers(root);
    let at = match edit {
        Edit::Replace(at, _) | Edit::Remove(at) | Edit::Add(at, _, _) | Edit::Grow(at, _) => at,
    };
    let path = paths[at.index(paths.len())].clone();
    match edit {
        Edit::Replace(_, replacement) => {
            if let Some(slot) = root.pointer_mut(&path) {
                *slot = replacement.clone();
            }
        }
        Edit::Remove(_) => remove(root, &path),
        Edit::Add(_, key, extra) => match root.pointer_mut(&path) {
            Some(Value::Object(object)) => {
                object.insert(key.clone(), extra.clone());
            }
            Some(Value::Array(items)) => items.push(extra.clone()),
            _ => {}
        },
        Edit::Grow(_, times) => {
            if let Some(Value::Array(items)) = root.pointer_mut(&path) {
                if !items.is_empty() {
                    let copy = items.clone();
                    while items.len() < *times {
                        items.extend(copy.iter().cloned());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_numbers_are_written_bare() {
        let value = serde_json::json!({"a": raw_number("1234567890123456789012345"), "b": "x"});
        assert_eq!(
            String::from_utf8(to_bytes(&value)).unwrap(),
            r#"{"a":1234567890123456789012345,"b":"x"}"#
        );
    }

    #[test]
    fn deep_nesting_is_refused_by_serde_json() {
        assert!(serde_json::from_slice::<Value>(&deep(200, true)).is_err());
        assert!(serde_json::from_slice::<Value>(&deep(200, false)).is_err());
        assert!(serde_json::from_slice::<Value>(&deep(10, false)).is_ok());
    }

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn edits_keep_documents_serializable(value in mutated(serde_json::json!({"a": [1, {"b": "c"}], "d": null}))) {
            prop_assert!(!to_bytes(&value).is_empty());
        }
    }
}
