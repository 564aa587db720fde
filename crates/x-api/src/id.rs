//! X ids as they appear in JSON bodies.
//!
//! X sends ids as strings, but some bodies carry them as bare numbers of up to 19
//! digits (`account_id` of a 402). An `f64` would silently round those, so they are read as
//! a string or a `u64` and kept as a string.
//!
//! An answer whose id is not 1 to 19 digits is unreadable: the ids go into URL paths (a
//! media upload's APPEND), the state store and the CRM's events, whose contract says
//! digits.
//!
//! The ids a mix-up would turn into a wrong DM or a missed echo have types of their own:
//! [`UserId`], [`DmEventId`] and [`ConversationId`]. Each is the id's exact text, serialised
//! as that JSON string, so no wire format changes. Their plain `Deserialize` and
//! `From<String>` do not validate: a CRM reply's or the configuration's id is checked where
//! it always was (a send refuses a malformed target with X's 400), while X's answers are read
//! through [`deserialize`] and [`deserialize_conversation`], which do. Media and webhook ids
//! stay strings: each lives in one request/answer pair, beside no other id.

use std::borrow::Borrow;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// A newtype over an id's text: comparisons, display and JSON as the string itself.
macro_rules! x_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        // `Default` is the empty text, as for the `String` fields these replaced (a field
        // X may leave out); no valid id is empty.
        #[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as X writes it.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, for a boundary that stores or sends strings.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// Takes the text as it is, without validation (see the module doc).
        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }

        /// Takes the text as it is, without validation (see the module doc).
        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        /// As the quoted text, like the `String` it replaced, so logs and error texts that
        /// show an id with `{:?}` read as before.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Hashes and compares as the text, so maps keyed by the id look up by `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

x_id!(
    /// An X user's id: a customer, or the account a channel sends as.
    UserId
);
x_id!(
    /// A DM event's id: one message in a conversation.
    DmEventId
);
x_id!(
    /// A `dm_conversation_id`: `{user id}-{user id}` for a 1:1 conversation, one id for a
    /// group.
    ConversationId
);

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
pub(crate) fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let id = String::from(StringOrU64::deserialize(deserializer)?);
    if is_id(&id) {
        Ok(T::from(id))
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
) -> Result<ConversationId, D::Error> {
    let id = String::from(StringOrU64::deserialize(deserializer)?);
    let valid = match id.split_once('-') {
        Some((a, b)) => is_id(a) && is_id(b),
        None => is_id(&id),
    };
    if valid {
        Ok(ConversationId(id))
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
    use super::{ConversationId, DmEventId, UserId};

    /// The wire stays a JSON string, and the plain serde impls take any string as today's
    /// `String` fields did.
    #[test]
    fn typed_ids_are_their_json_string() {
        let user = UserId::from("944480690");
        assert_eq!(serde_json::to_string(&user).unwrap(), r#""944480690""#);
        assert_eq!(
            serde_json::from_str::<DmEventId>(r#""not digits""#).unwrap(),
            "not digits"
        );
        let conversation = ConversationId::from("1-2".to_owned());
        assert_eq!(conversation.to_string(), "1-2");
        assert_eq!(conversation.as_str(), "1-2");
        assert_eq!(format!("{conversation:?}"), r#""1-2""#);
    }

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
