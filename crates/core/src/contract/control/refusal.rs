//! `command.refused` (`docs/schemas/command-refused.json`): a command the bridge will not
//! apply, and why. A refused command changes nothing: it is checked whole before any of
//! it is applied.

use serde::Serialize;

/// Why a command was refused: a closed set the CRM can branch on; the `detail` says
/// more, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The body is larger than [`MAX_COMMAND_BYTES`](super::MAX_COMMAND_BYTES).
    TooLarge,
    /// The body is not a UTF-8 JSON object.
    Malformed,
    /// `command` is missing or names no command of the contract.
    UnknownCommand,
    /// A field is missing, of the wrong type or out of its limits; the detail names it.
    InvalidField,
    /// The publisher may not manage channels (checked by the runtime, from the AMQP
    /// `user_id` the broker vouches for).
    Unauthorized,
    /// The command names a channel the bridge does not have (runtime).
    UnknownChannel,
    /// The command contradicts the running configuration, e.g. a channel of the config
    /// file, or an X App whose secret another channel holds differently (runtime).
    Conflict,
}

/// A refused command, as published to the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{detail}")]
pub struct CommandRefused {
    /// Always `command.refused`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The command's id, when it could be read: the CRM correlates by it (it is also the
    /// AMQP `correlation_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// The command, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The channel it named, when it could be read and is a valid name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The reason code.
    pub reason: RefusalReason,
    /// What is wrong, naming the field; never a credential's value.
    pub detail: String,
}

impl CommandRefused {
    /// A refusal before anything of the body could be read.
    pub(super) fn unread(reason: RefusalReason, detail: String) -> CommandRefused {
        CommandRefused {
            event_type: "command.refused",
            command_id: None,
            command: None,
            channel: None,
            reason,
            detail,
        }
    }

    /// Routing key on the incoming exchange: one for every refusal, as a refused command
    /// may name no valid channel.
    pub fn routing_key(&self) -> &'static str {
        "command.refused"
    }
}
