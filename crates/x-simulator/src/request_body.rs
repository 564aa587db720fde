//! The checks X makes of a request body before reading its fields, shared by every route that
//! takes one, so a malformed body gets the same `invalid-request` message everywhere.

use axum::http::{header, HeaderMap};
use serde_json::{Map, Value};

use crate::problems;

/// Whether the request's `Content-Type` is `media_type` (parameters such as `charset` aside).
pub(crate) fn has_content_type(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().to_ascii_lowercase().starts_with(media_type))
}

/// X's refusal of a body sent with another content type than JSON.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), String> {
    if has_content_type(headers, "application/json") {
        Ok(())
    } else {
        Err(invalid(
            "Requests with bodies must have content-type of application/json.",
        ))
    }
}

/// The body as a JSON object with no field outside `known`, or X's 400 body saying why not.
pub(crate) fn json_object(body: &[u8], known: &[&str]) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| invalid(&format!("Request body is not valid JSON: {error}")))?;
    let Value::Object(fields) = value else {
        return Err(invalid("$: expected an object"));
    };
    if let Some(extra) = fields.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(invalid(&format!(
            "$.{extra}: is not defined in the schema and the schema does not allow additional properties"
        )));
    }
    Ok(fields)
}

fn invalid(message: &str) -> String {
    problems::invalid_request(message, None)
}
