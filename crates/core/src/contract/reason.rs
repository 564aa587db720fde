//! Why a reply failed: the closed set of reasons of the `message.failed` event
//! (`docs/schemas/message-failed.json`) and of the `x-xbridge-reason` header of a dead
//! letter (`docs/schemas/dead-letter-headers.json`), listed for operators in
//! `docs/integrator.md#reasons`.

use serde::{Deserialize, Serialize};

/// Why a reply ended in the dead-letter queue. A closed set: these are
/// documented for operators and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The reply body broke the contract.
    InvalidMessage,
    /// The routing key names no configured channel.
    UnknownChannel,
    /// Transient X failures outlasted the retry budget.
    RetriesExhausted,
    /// The account had no credits (or hit a cap) for longer than allowed.
    CreditsExhausted,
    /// X refused the request as invalid (400 and other 4xx).
    InvalidRequest,
    /// The recipient does not accept DMs from this account (403).
    RecipientRefuses,
    /// X refused the credentials (401).
    Unauthorized,
    /// The access token lacks DM permission (403 oauth1-permissions).
    MissingPermission,
    /// The X App is not enrolled / attached to a Project (403 client-forbidden).
    NotEnrolled,
}

impl FailureReason {
    /// The wire name (`credits_exhausted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidMessage => "invalid_message",
            FailureReason::UnknownChannel => "unknown_channel",
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::CreditsExhausted => "credits_exhausted",
            FailureReason::InvalidRequest => "invalid_request",
            FailureReason::RecipientRefuses => "recipient_refuses",
            FailureReason::Unauthorized => "unauthorized",
            FailureReason::MissingPermission => "missing_permission",
            FailureReason::NotEnrolled => "not_enrolled",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
