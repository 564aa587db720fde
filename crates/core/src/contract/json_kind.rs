//! How the reply parsers name a JSON value that has the wrong type, in the refusal the
//! CRM reads back (`recipient_id must be a string of digits, not an array`).

use serde_json::Value;

/// How a JSON value is named in a refusal (`a string`, `an array`, …).
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
