//! One command, applied: checked against what the bridge serves, written to the store
//! and the live map, its credentials checked against X, and its answer made. A command
//! that cannot be applied is refused whole before anything is written.

use std::sync::Arc;

use chrono::Utc;
use lapin::message::Delivery;
use secrecy::ExposeSecret as _;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, ControlSettings};
use xbridge_core::contract::control::{
    ChannelCommand, CommandAnswer, CommandRefused, ControlCommand, RefusalReason,
};
use xbridge_core::contract::{ChannelState, ChannelStateEvent, ChannelStatus};
use xbridge_core::live_channels::Origin;
use xbridge_store::{ChannelEntry, ChannelRecord};
use xbridge_x_api::XClientConfig;

use crate::diagnosis::{check_account, AccountCheck};
use crate::registry::{Registry, WriteError};

/// What a command came to.
pub enum Outcome {
    /// Applied (or only checked): its `channel.state`, and the revision to tell the
    /// other replicas about when it changed the registry.
    Answered(Box<CommandAnswer>, Option<(String, u64)>),
    /// Refused, nothing changed.
    Refused(CommandRefused),
}

/// Applies commands for one bridge.
pub struct Applier {
    /// The store and the live map.
    pub registry: Registry,
    /// Who may send commands, and on which exchange.
    pub control: ControlSettings,
    /// How to reach X for the credential check.
    pub x: XClientConfig,
    /// Every channel's state, for the answer of a check that could not finish.
    pub states: Arc<ChannelStates>,
}

impl Applier {
    /// The command `delivery` carries, if its publisher may manage channels, else the
    /// refusal. `Err` only when the store is out of reach: the command waits.
    pub async fn handle(&self, delivery: &Delivery) -> Result<Outcome, WriteError> {
        let parsed = ControlCommand::parse(&delivery.data, delivery.routing_key.as_str());
        if let Some(why) = self.unauthorized(delivery) {
            let mut refused = match parsed {
                Ok(command) => refusal(&command, RefusalReason::Unauthorized, String::new()),
                Err(refused) => refused,
            };
            refused.reason = RefusalReason::Unauthorized;
            refused.detail = why;
            return Ok(Outcome::Refused(refused));
        }
        match parsed {
            Ok(command) => self.apply(&command).await,
            Err(refused) => Ok(Outcome::Refused(refused)),
        }
    }

    /// Why the delivery's publisher may not manage channels, if it may not: only a
    /// command routed through the control exchange with an AMQP `user_id` (which
    /// RabbitMQ checks is the publishing user) of `amqp.control.allowed_users`.
    fn unauthorized(&self, delivery: &Delivery) -> Option<String> {
        if delivery.exchange.as_str() != self.control.exchange {
            return Some(format!(
                "commands are taken only from the exchange {}",
                self.control.exchange
            ));
        }
        match delivery.properties.user_id() {
            Some(user) if self.control.allows(user.as_str()) => None,
            Some(_) => Some(
                "the publishing user may not manage channels (amqp.control.allowed_users)".into(),
            ),
            None => Some("a command must carry the publishing user as its AMQP user_id".into()),
        }
    }

    /// Applies a valid command of an allowed publisher.
    async fn apply(&self, command: &ControlCommand) -> Result<Outcome, WriteError> {
        let name = command.command.channel();
        let served = self.registry.live().get(name);
        let from_file = served.as_ref().is_some_and(|c| c.origin == Origin::File);
        if from_file && !matches!(command.command, ChannelCommand::Check(_)) {
            let detail = format!("channel {name} comes from the config file; change it there");
            return Ok(Outcome::Refused(refusal(
                command,
                RefusalReason::Conflict,
                detail,
            )));
        }
        match &command.command {
            ChannelCommand::Upsert(settings) => {
                if let Some(detail) = self.other_app_secret(settings) {
                    return Ok(Outcome::Refused(refusal(
                        command,
                        RefusalReason::Conflict,
                        detail,
                    )));
                }
                let revision = match self.registry.upsert(settings, &command.command_id).await {
                    Err(WriteError::Raced(_)) => return Ok(raced(command)),
                    other => other?,
                };
                let answer = self.checked(command, settings).await;
                Ok(Outcome::Answered(answer, Some((name.to_owned(), revision))))
            }
            ChannelCommand::Check(_) => match served {
                Some(channel) => Ok(Outcome::Answered(
                    self.checked(command, &channel.settings).await,
                    None,
                )),
                None => Ok(unknown(command)),
            },
            ChannelCommand::Remove(_) => self.remove(command).await,
            ChannelCommand::Pause(_) => self.pause(command, true).await,
            ChannelCommand::Resume(_) => self.pause(command, false).await,
        }
    }

    /// `channel.remove`: a CRM channel the store holds (or held: a redelivery).
    async fn remove(&self, command: &ControlCommand) -> Result<Outcome, WriteError> {
        let name = command.command.channel();
        if self.registry.entry(name).await?.is_none() {
            return Ok(unknown(command));
        }
        match self.registry.remove(name).await {
            Ok(revision) => Ok(Outcome::Answered(
                answer(command, ChannelState::Removed, None, None),
                Some((name.to_owned(), revision)),
            )),
            Err(WriteError::Raced(_)) => Ok(raced(command)),
            Err(error) => Err(error),
        }
    }

    /// `channel.pause` and `channel.resume` of a CRM channel the store holds.
    async fn pause(&self, command: &ControlCommand, paused: bool) -> Result<Outcome, WriteError> {
        let name = command.command.channel();
        let record: ChannelRecord = match self.registry.entry(name).await? {
            Some(ChannelEntry::Live(record)) => record,
            _ => return Ok(unknown(command)),
        };
        match self.registry.set_paused(&record, paused).await {
            Ok(revision) => {
                let state = if paused {
                    ChannelState::Paused
                } else {
                    ChannelState::Ok
                };
                Ok(Outcome::Answered(
                    answer(command, state, None, None),
                    Some((name.to_owned(), revision)),
                ))
            }
            Err(WriteError::Raced(_)) => Ok(raced(command)),
            Err(error) => Err(error),
        }
    }

    /// Another channel on the same X App (`consumer_key`) holding another
    /// `consumer_secret`: one App has one secret, which signs its webhook deliveries, so
    /// one of the two is wrong. Names the channel, never a credential.
    fn other_app_secret(&self, settings: &ChannelSettings) -> Option<String> {
        let key = settings.consumer_key.expose_secret();
        let secret = settings.consumer_secret.expose_secret();
        let served = self.registry.live().current();
        let other = served.values().find(|c| {
            c.name() != settings.name
                && c.settings.consumer_key.expose_secret() == key
                && c.settings.consumer_secret.expose_secret() != secret
        })?;
        Some(format!(
            "consumer_key is the X App of channel {}, which holds another consumer_secret for it; one App has one secret",
            other.name()
        ))
    }

    /// The answer carrying X's word on `settings`' credentials.
    async fn checked(
        &self,
        command: &ControlCommand,
        settings: &ChannelSettings,
    ) -> Box<CommandAnswer> {
        let check: AccountCheck = check_account(self.x.clone(), settings).await;
        // A check that could not finish says nothing new: the state stays what the
        // bridge last saw (`ok` for a channel it has not used yet), the detail says why.
        let state = check.state().unwrap_or_else(|| {
            self.states
                .get(&settings.name)
                .map_or(ChannelState::Ok, |status| status.state)
        });
        tracing::info!(
            command_id = %command.command_id,
            channel = %settings.name,
            state = state.as_str(),
            "credentials checked against X"
        );
        answer(command, state, check.detail(), check.account)
    }
}

/// A command's `channel.state` answer.
fn answer(
    command: &ControlCommand,
    state: ChannelState,
    detail: Option<String>,
    account: Option<xbridge_core::contract::control::AnswerAccount>,
) -> Box<CommandAnswer> {
    Box::new(CommandAnswer {
        state: ChannelStateEvent {
            event_type: "channel.state",
            channel: command.command.channel().to_owned(),
            status: ChannelStatus {
                state,
                since: Utc::now(),
                until: None,
                detail,
            },
        },
        command_id: command.command_id.clone(),
        account,
    })
}

/// A refusal of a command that was read.
fn refusal(command: &ControlCommand, reason: RefusalReason, detail: String) -> CommandRefused {
    CommandRefused {
        event_type: "command.refused",
        command_id: Some(command.command_id.clone()),
        command: Some(command.command.name().to_owned()),
        channel: Some(command.command.channel().to_owned()),
        reason,
        detail,
    }
}

fn unknown(command: &ControlCommand) -> Outcome {
    let name = command.command.channel();
    Outcome::Refused(refusal(
        command,
        RefusalReason::UnknownChannel,
        format!(
            "the bridge has no channel {name} (neither in the config file nor created by the CRM)"
        ),
    ))
}

fn raced(command: &ControlCommand) -> Outcome {
    let name = command.command.channel();
    Outcome::Refused(refusal(
        command,
        RefusalReason::Conflict,
        format!("channel {name} was changed by another command at the same time; send the command again"),
    ))
}
