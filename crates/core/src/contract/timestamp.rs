//! The contract's one time format: RFC 3339 in UTC with milliseconds
//! (`2018-01-19T23:12:40.557Z`), for every timestamp of every event to the CRM.

use chrono::{DateTime, SecondsFormat, Utc};

/// Serializes `at` in the contract's time format.
pub(crate) fn rfc3339_millis<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// [`rfc3339_millis`] for an optional time; `None` is `null` (or, with
/// `skip_serializing_if`, absent).
pub(crate) fn rfc3339_millis_opt<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339_millis(at, serializer),
        None => serializer.serialize_none(),
    }
}
