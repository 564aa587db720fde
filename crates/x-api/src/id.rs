//! X ids as they appear in JSON bodies.
//!
//! X sends ids as strings, but some bodies carry them as bare numbers of up to 19
//! digits (`account_id` of a 402). An `f64` would silently round those, so they are read as
//! a string or a `u64` and kept as a string.
//!
//! An answer whose id is not 1 to 19 digits is unreadable: the ids go into URL paths (a
//! media upload's APPEND), the state store and the CRM's events, whose contract says
//! digits.

use serde::de::Error as _;
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

/// Deserialises an id given as a JSON string or an unsigned integer into its exact digits;
/// anything but 1 to 19 digits is refused.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::from(StringOrU64::deserialize(deserializer)?);
    if is_id(&id) {
        Ok(id)
    } else {
        Err(D::Error::custom(format!(
            "{} is not an X id (1 to 19 digits)",
            crate::excerpt::quoted(&id)
        )))
    }
}

/// Deserialises a `dm_conversation_id`: two ids joined by `-` (1:1), or one id (group).
pub(crate) fn deserialize_conversation<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    let id = String::from(StringOrU64::deserialize(deserializer)?);
    let valid = match id.split_once('-') {
        Some((a, b)) => is_id(a) && is_id(b),
        None => is_id(&id),
    };
    if valid {
        Ok(id)
    } else {
        Err(D::Error::custom(format!(
            "{} is not an X conversation id",
            crate::excerpt::quoted(&id)
        )))
    }
}

/// 1 to 19 decimal digits: every X id (they are below 2^63).
pub(crate) fn is_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
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
        assert!(id(r#"{"id":18446744073709551615}"#).is_err());
    }

    /// Found by the property tests: any string was taken as an id.
    #[test]
    fn ids_that_are_not_digits_are_refused() {
        for bad in [
            r#""""#,
            r#""12a""#,
            r#""../1""#,
            r#""12345678901234567890""#,
            "-1",
        ] {
            assert!(id(&format!(r#"{{"id":{bad}}}"#)).is_err(), "{bad}");
        }
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
