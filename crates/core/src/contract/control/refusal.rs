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
    /// The bridge serves `amqp.max_channels` channels already (runtime).
    TooManyChannels,
    /// The bridge's state store stayed out of reach longer than
    /// `amqp.control.store_wait`: nothing was applied, send the command again later
    /// (runtime).
    Unavailable,
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

    /// The AMQP `message_id`: `command.refused:<command_id>`, the same whichever replica
    /// refuses the command and however often it is redelivered, so the CRM's dedupe by
    /// `message_id` keeps one. A command whose id could not be read gives
    /// `command.refused:unread:<the command's own AMQP message_id>` when it has one that
    /// fits the 255-byte short string, and no `message_id` otherwise.
    pub fn message_id(&self, command_message_id: Option<&str>) -> Option<String> {
        match (&self.command_id, command_message_id) {
            (Some(id), _) => Some(format!("command.refused:{id}")),
            (None, Some(theirs)) if theirs.len() <= 255 - "command.refused:unread:".len() => {
                Some(format!("command.refused:unread:{theirs}"))
            }
            (None, _) => None,
        }
    }

    /// Routing key on the incoming exchange: one for every refusal, as a refused command
    /// may name no valid channel.
    pub fn routing_key(&self) -> &'static str {
        "command.refused"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_comes_from_the_command() {
        let mut refused = CommandRefused::unread(RefusalReason::InvalidField, "x".into());
        assert_eq!(refused.message_id(None), None);
        assert_eq!(
            refused.message_id(Some("m-1")).as_deref(),
            Some("command.refused:unread:m-1")
        );
        assert_eq!(refused.message_id(Some(&"m".repeat(233))), None);
        refused.command_id = Some("c".repeat(super::super::MAX_COMMAND_ID_BYTES));
        let id = refused.message_id(Some("ignored")).unwrap();
        assert!(id.starts_with("command.refused:c") && id.len() <= 255);
    }
}
