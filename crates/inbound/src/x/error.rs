//! Why a whole body is refused.

/// A body that cannot be read at all: not JSON, or not shaped like any X body. The
/// webhook answers it with 400; the poller treats it as a failed request.
///
/// Problems confined to one event are not errors: that event becomes
/// [`InboundItem::Ignored`](crate::InboundItem::Ignored) and the others are still
/// delivered, because refusing the body would make X send it again, just as unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not JSON (or not UTF-8).
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// A field the body's structure rests on has the wrong type.
    #[error("{field} must be {expected}, not {found}")]
    WrongType {
        /// The field, as a path (`data.payload`, `direct_message_events`).
        field: String,
        /// What X sends there.
        expected: &'static str,
        /// What the body had.
        found: &'static str,
    },
    /// A field the body cannot be used without is missing or unreadable.
    #[error("{field} {detail}")]
    Invalid {
        /// The field, as a path.
        field: String,
        /// What is wrong with it, worded to follow the field's name.
        detail: String,
    },
}
