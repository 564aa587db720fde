//! Reading X's JSON bodies field by field.
//!
//! The parsers walk a `serde_json::Value` instead of deriving `Deserialize`, so that one
//! bad event costs only that event (the others in the body are still delivered) and every
//! problem is reported with the path of the field it is about.
//!
//! Ids are kept as strings of digits. X sends them as strings, but some bodies also carry
//! bare numbers of up to 19 digits; an `f64` would round those, so a number is accepted
//! only when it is a whole number that fits a `u64`, and floats are refused.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use xbridge_core::excerpt::quoted;
use xbridge_x_api::ConversationId;

use crate::x::error::PayloadError;

/// A JSON object.
pub(crate) type Object = Map<String, Value>;

/// The body as a JSON object, or why it is not one.
pub(crate) fn parse_object(body: &[u8]) -> Result<Object, PayloadError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(PayloadError::NotAnObject(kind(&other))),
        Err(e) => Err(PayloadError::NotJson(e.to_string())),
    }
}

/// `object[field]` when it is an array; absent or null is no array, any other type is
/// an error in the body's structure (`path` names the object).
pub(crate) fn optional_array<'a>(
    object: &'a Object,
    field: &str,
    path: &str,
) -> Result<Option<&'a Vec<Value>>, PayloadError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(PayloadError::WrongType {
            field: format!("{path}{field}"),
            expected: "an array",
            found: kind(other),
        }),
    }
}

/// `object[field]` when it is an object; absent or null is none, any other type is an
/// error in the body's structure (`path` names the object).
pub(crate) fn optional_object<'a>(
    object: &'a Object,
    field: &str,
    path: &str,
) -> Result<Option<&'a Object>, PayloadError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(other) => Err(PayloadError::WrongType {
            field: format!("{path}{field}"),
            expected: "an object",
            found: kind(other),
        }),
    }
}

/// How a value is named in error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value of the body as an error or a reason shows it: strings quoted and cut short
/// (they may be of any length), arrays and objects by their kind only.
pub(crate) fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => quoted(s),
        Value::Array(_) | Value::Object(_) => kind(value).to_owned(),
        other => other.to_string(),
    }
}

/// An X user or event id: 1 to 19 decimal digits (the contract's `^[0-9]{1,19}$`).
pub(crate) fn is_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// X's `dm_conversation_id`: `^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$`.
pub(crate) fn is_conversation_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((a, b)) => is_id(a) && is_id(b),
        None => (15..=19).contains(&id.len()) && is_id(id),
    }
}

/// The id of the 1:1 conversation between two users, as X forms it: the smaller id, a
/// dash, the larger one. Ids are compared as numbers (`"9" < "10"`), not as text.
pub(crate) fn one_to_one_conversation_id(a: &str, b: &str) -> ConversationId {
    let (low, high) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) if x <= y => (a, b),
        (Ok(_), Ok(_)) => (b, a),
        // Unreachable for validated ids; keeps the function total.
        _ if a <= b => (a, b),
        _ => (b, a),
    };
    ConversationId::from(format!("{low}-{high}"))
}

/// `value` read as an id, or why it is not one.
pub(crate) fn id(value: &Value) -> Result<String, String> {
    match value {
        Value::String(id) if is_id(id) => Ok(id.clone()),
        Value::String(id) => Err(format!("{} is not an X id (1 to 19 digits)", quoted(id))),
        Value::Number(n) => match n.as_u64().map(|n| n.to_string()) {
            Some(id) if is_id(&id) => Ok(id),
            _ => Err(format!(
                "must be a string of digits or a whole number, not {n} ({})",
                kind(value)
            )),
        },
        other => Err(format!("must be a string of digits, not {}", kind(other))),
    }
}

/// The id in `object[field]`, as the kind of id `T` the field holds; `path` names the
/// object in the error.
pub(crate) fn required_id<T: From<String>>(
    object: &Object,
    field: &str,
    path: &str,
) -> Result<T, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err(format!("{path}{field} is missing")),
        Some(value) => id(value)
            .map(T::from)
            .map_err(|e| format!("{path}{field} {e}")),
    }
}

/// The id in `object[field]` when there is a valid one. For fields nothing depends on.
pub(crate) fn optional_id<T: From<String>>(object: &Object, field: &str) -> Option<T> {
    object
        .get(field)
        .and_then(|value| id(value).ok().map(T::from))
}

/// The object in `object[field]`, or why there is none.
pub(crate) fn required_object<'a>(
    object: &'a Object,
    field: &str,
    path: &str,
) -> Result<&'a Object, String> {
    match object.get(field) {
        Some(Value::Object(inner)) => Ok(inner),
        None | Some(Value::Null) => Err(format!("{path}{field} is missing")),
        Some(other) => Err(format!(
            "{path}{field} must be an object, not {}",
            kind(other)
        )),
    }
}

/// The non-empty string in `object[field]`, if any. For optional profile fields: a
/// wrong type there is treated as absent, since the user lookup can fill it later.
pub(crate) fn optional_str(object: &Object, field: &str) -> Option<String> {
    match object.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A DM's text: absent or null is an empty text (a DM may be only an attachment), any
/// other non-string is an error.
pub(crate) fn text(object: &Object, field: &str, path: &str) -> Result<String, String> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(format!(
            "{path}{field} must be a string, not {}",
            kind(other)
        )),
    }
}

/// A v1.1 timestamp: milliseconds since the epoch, as a string (`"1516403560557"`) or a
/// whole number.
pub(crate) fn epoch_millis(
    object: &Object,
    field: &str,
    path: &str,
) -> Result<DateTime<Utc>, String> {
    let millis = match object.get(field) {
        None | Some(Value::Null) => return Err(format!("{path}{field} is missing")),
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        Some(_) => None,
    };
    millis
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            format!(
                "{path}{field} must be milliseconds since the epoch, not {}",
                object.get(field).map_or("nothing".into(), shown)
            )
        })
}

/// A v2 timestamp: RFC 3339 (`"2022-10-25T23:16:15.000Z"`), converted to UTC.
pub(crate) fn rfc3339(object: &Object, field: &str, path: &str) -> Result<DateTime<Utc>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err(format!("{path}{field} is missing")),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|e| format!("{path}{field} {} is not an RFC 3339 time: {e}", quoted(s))),
        Some(other) => Err(format!(
            "{path}{field} must be a string, not {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_keep_every_digit_and_refuse_floats() {
        assert_eq!(
            id(&json!("1585800613253812228")).unwrap(),
            "1585800613253812228"
        );
        let exact: Value = serde_json::from_str("1221092866912550912").unwrap();
        assert_eq!(id(&exact).unwrap(), "1221092866912550912");
        let float: Value = serde_json::from_str("1.2210928669125509e18").unwrap();
        assert!(id(&float).unwrap_err().contains("a float"));
        assert!(id(&json!("12a")).is_err());
        assert!(id(&json!("")).is_err());
        assert!(id(&json!("12345678901234567890")).is_err());
        assert!(id(&json!(-5)).is_err());
        assert!(id(&json!(true)).is_err());
    }

    #[test]
    fn one_to_one_ids_order_numerically() {
        assert_eq!(one_to_one_conversation_id("10", "9"), "9-10");
        assert_eq!(
            one_to_one_conversation_id("4337869213", "3001969357"),
            "3001969357-4337869213"
        );
        assert_eq!(
            one_to_one_conversation_id("944480690", "906948460078698496"),
            "944480690-906948460078698496"
        );
    }

    #[test]
    fn conversation_ids() {
        assert!(is_conversation_id("944480690-906948460078698496"));
        assert!(is_conversation_id("1585047616894574596"));
        assert!(!is_conversation_id("12345"));
        assert!(!is_conversation_id("1-2-3"));
        assert!(!is_conversation_id("a-1"));
    }

    #[test]
    fn timestamps() {
        let object = json!({"ms":"1516403560557","n":1516403560557u64,"bad":"soon","v2":"2022-10-25T23:16:15.000Z"});
        let object = object.as_object().unwrap();
        let expected = DateTime::parse_from_rfc3339("2018-01-19T23:12:40.557Z").unwrap();
        assert_eq!(epoch_millis(object, "ms", "").unwrap(), expected);
        assert_eq!(epoch_millis(object, "n", "").unwrap(), expected);
        assert!(epoch_millis(object, "bad", "")
            .unwrap_err()
            .contains("milliseconds"));
        assert!(epoch_millis(object, "none", "x.")
            .unwrap_err()
            .contains("x.none is missing"));
        assert_eq!(
            rfc3339(object, "v2", "").unwrap(),
            DateTime::parse_from_rfc3339("2022-10-25T23:16:15Z").unwrap()
        );
        assert!(rfc3339(object, "bad", "").is_err());
    }
}
