//! X ids as they appear in JSON bodies.
//!
//! X sends ids as strings, but some bodies carry them as bare numbers of up to 19
//! digits (`account_id` of a 402). An `f64` would silently round those, so they are read as
//! a string or a `u64` and kept as a string.

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrU64 {
    String(String),
    Number(u64),
}

impl From<StringOrU64> for String {
    fn from(id: StringOrU64) -> String {
        match id {
            StringOrU64::String(id) => id,
            StringOrU64::Number(id) => id.to_string(),
        }
    }
}

/// Deserialises an id given as a JSON string or an unsigned integer into its exact digits.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    StringOrU64::deserialize(deserializer).map(String::from)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::deserialize")]
        id: String,
    }

    fn id(json: &str) -> Result<String, serde_json::Error> {
        serde_json::from_str::<Body>(json).map(|body| body.id)
    }

    #[test]
    fn a_19_digit_bare_number_keeps_every_digit() {
        assert_eq!(
            id(r#"{"id":1553086854915936256}"#).unwrap(),
            "1553086854915936256"
        );
        assert_eq!(
            id(r#"{"id":18446744073709551615}"#).unwrap(),
            "18446744073709551615"
        );
    }

    #[test]
    fn strings_are_kept_and_floats_refused() {
        assert_eq!(
            id(r#"{"id":"1585800613253812228"}"#).unwrap(),
            "1585800613253812228"
        );
        assert!(id(r#"{"id":1.5e18}"#).is_err());
    }
}
