//! The answer to a command that was applied: the channel's `channel.state` event
//! (`docs/schemas/channel-state.json`) with the command's id, so the CRM's form can show
//! the result of the credential check (the account, or the problem and its fix).

use serde::Serialize;

use crate::contract::ChannelStateEvent;

/// A `channel.state` answering a command. It carries only what the state event carries
/// (channel, state, since, until, detail) and the command id: never a credential.
#[derive(Debug, Clone, Serialize)]
pub struct CommandAnswer {
    /// The channel's state after the command.
    #[serde(flatten)]
    pub state: ChannelStateEvent,
    /// The command's id; also the AMQP `correlation_id`.
    pub command_id: String,
    /// The X account the credentials belong to, when X said (`channel.upsert`
    /// and `channel.check`): what the CRM's form shows as "connected as".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<AnswerAccount>,
}

/// The X account behind a channel's access token, as X's `/2/users/me` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerAccount {
    /// X's numeric user id, as a string.
    pub user_id: String,
    /// The @handle, without the `@`.
    pub username: String,
}

impl CommandAnswer {
    /// The AMQP `correlation_id`: the command's id, as for `command.refused`.
    pub fn correlation_id(&self) -> &str {
        &self.command_id
    }

    /// The AMQP `message_id`: `<channel>:state:<command_id>`, from the command rather than
    /// from the state's `since`, so a redelivered command or a second replica yields the
    /// same id and the CRM's dedupe by `message_id` keeps exactly one answer (while an
    /// unprompted `channel.state` keeps `<channel>:state:<since in Unix ms>`). At most
    /// 63 + 7 + 128 bytes: an AMQP short string.
    pub fn message_id(&self) -> String {
        format!("{}:state:{}", self.state.channel, self.command_id)
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::contract::{ChannelState, ChannelStatus};

    #[test]
    fn an_answer_is_a_state_event_with_the_command_id() {
        let answer = CommandAnswer {
            state: ChannelStateEvent {
                event_type: "channel.state",
                channel: "acme".into(),
                status: ChannelStatus {
                    state: ChannelState::MissingPermission,
                    since: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
                    until: None,
                    detail: Some("enable DMs, then regenerate the token".into()),
                },
            },
            command_id: "cmd-1".into(),
            account: Some(AnswerAccount {
                user_id: "1000000000000000001".into(),
                username: "acme_support".into(),
            }),
        };
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["type"], "channel.state");
        assert_eq!(json["state"], "missing_permission");
        assert_eq!(json["command_id"], "cmd-1");
        assert_eq!(json["account"]["username"], "acme_support");
        assert_eq!(answer.correlation_id(), "cmd-1");
        assert_eq!(answer.message_id(), "acme:state:cmd-1");
        assert_eq!(answer.state.routing_key(), "acme.channel.state");
    }
}
