//! One command, applied: checked against what the bridge serves, written to the store
//! and the live map, its credentials checked against X, and its answer made. A command
//! that cannot be applied is refused whole before anything is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::message::Delivery;
use secrecy::ExposeSecret as _;
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, ControlSettings, XSettings};
use xbridge_core::contract::control::{
    ChannelCommand, CommandAnswer, CommandRefused, ControlCommand, RefusalReason,
};
use xbridge_core::contract::{ChannelState, ChannelStateEvent, ChannelStatus};
use xbridge_core::live_channels::{same_settings, LiveChannel, Origin};
use xbridge_core::oauth2_tokens::channel_auth;
use xbridge_store::{ChannelEntry, ChannelRecord};
use xbridge_x_api::{XClient, XClientConfig, XHttp};

use crate::diagnosis::{check_account, check_account_with, diagnose, AccountCheck};
use crate::grant_undo::GrantBefore;
use crate::record;
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
    /// `[x]`, for an OAuth 2.0 channel's token endpoint.
    pub x_settings: XSettings,
    /// Every channel's state: a check's verdict is recorded there, and answers
    /// take the state's `since` when the verdict is what it already said.
    pub states: Arc<ChannelStates>,
    /// Each channel's account, configured or learnt from X: one account is served
    /// by one channel.
    pub identities: Arc<ChannelIdentities>,
    /// `amqp.max_channels`.
    pub max_channels: usize,
    /// The last X check of each channel, when, and of which settings.
    pub checks: Mutex<HashMap<String, LastCheck>>,
}

impl Applier {
    /// An OAuth 2.0 channel's check, with a Bearer token from its grant in the store (or
    /// its configured refresh token): the same diagnosis, so a grant X refused answers
    /// `unauthorized` with the fix.
    async fn check_oauth2(&self, settings: &ChannelSettings) -> AccountCheck {
        let client = XHttp::new().and_then(|http| {
            let auth = channel_auth(
                &self.x_settings,
                settings,
                self.registry.store(),
                Some(self.registry.key()),
                &http,
            )
            .map_err(|detail| xbridge_x_api::XError::Transient {
                status: None,
                detail,
            })?;
            XClient::with_auth(self.x.clone(), auth, http)
        });
        match client {
            Ok(client) => check_account_with(&client, settings).await,
            Err(error) => AccountCheck {
                problems: vec![diagnose(&error)],
                ..AccountCheck::default()
            },
        }
    }
}

/// One channel's last X check.
pub struct LastCheck {
    at: Instant,
    settings: ChannelSettings,
    check: AccountCheck,
}

/// How long an X check of the same settings stands for the next: a CRM form's
/// "test" button pressed again, or a retry loop, does not spend the account's
/// per-user request budget, which its poller and sends need.
const CHECK_STANDS_FOR: Duration = Duration::from_secs(30);

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

    /// The refusal of a command that waited for the store longer than
    /// `amqp.control.store_wait`: nothing of it was applied.
    pub fn unavailable(&self, delivery: &Delivery, error: &WriteError) -> CommandRefused {
        let detail = format!(
            "the bridge's state store is out of reach ({error}); nothing was applied, send the command again later"
        );
        match ControlCommand::parse(&delivery.data, delivery.routing_key.as_str()) {
            Ok(command) => refusal(&command, RefusalReason::Unavailable, detail),
            Err(mut refused) => {
                refused.reason = RefusalReason::Unavailable;
                refused.detail = detail;
                refused
            }
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
        let passes = matches!(
            command.command,
            ChannelCommand::Check(_) | ChannelCommand::Remove(_)
        );
        if from_file && !passes {
            let detail = format!("channel {name} comes from the config file; change it there");
            return Ok(Outcome::Refused(refusal(
                command,
                RefusalReason::Conflict,
                detail,
            )));
        }
        match &command.command {
            ChannelCommand::Upsert(settings) => self.upsert(command, settings).await,
            ChannelCommand::Check(_) => match served {
                Some(channel) => {
                    let check = self.check(&channel.settings).await;
                    Ok(Outcome::Answered(
                        self.verdict(command, &check, channel.paused),
                        None,
                    ))
                }
                None => Ok(unknown(command)),
            },
            ChannelCommand::Remove(_) => self.remove(command).await,
            ChannelCommand::Pause(_) => self.pause(command, true).await,
            ChannelCommand::Resume(_) => self.pause(command, false).await,
        }
    }

    /// `channel.upsert`: refused whole when it contradicts what is served or what
    /// X says; else stored, served and answered with X's word. A redelivered
    /// command is answered from what the store holds, not from its body.
    async fn upsert(
        &self,
        command: &ControlCommand,
        settings: &ChannelSettings,
    ) -> Result<Outcome, WriteError> {
        let name = settings.name.as_str();
        if let Some(ChannelEntry::Live(record)) = self.registry.entry(name).await? {
            if record::command_id(&record).as_deref() == Some(command.command_id.as_str()) {
                return Ok(self.replayed(command, &record).await);
            }
        }
        let refused = |reason, detail| Ok(Outcome::Refused(refusal(command, reason, detail)));
        if let Some(detail) = self.other_app_secret(settings) {
            return refused(RefusalReason::Conflict, detail);
        }
        if let Some(detail) = self.too_many(name) {
            return refused(RefusalReason::TooManyChannels, detail);
        }
        let store = self.registry.store();
        let grant_before = GrantBefore::read(store.as_ref(), self.registry.key(), settings).await?;
        let check = self.check(settings).await;
        let account = settings
            .user_id
            .clone()
            .or_else(|| check.account.as_ref().map(|a| a.user_id.clone()));
        let refused_why = contradicted(&check, settings)
            .map(|detail| (RefusalReason::InvalidField, detail))
            .or_else(|| {
                let taken = account.and_then(|id| self.account_taken(name, &id))?;
                Some((RefusalReason::Conflict, taken))
            });
        if let Some((reason, detail)) = refused_why {
            if let Some(before) = grant_before {
                before.restore(store.as_ref()).await?;
            }
            return refused(reason, detail);
        }
        let written = match self.registry.upsert(settings, &command.command_id).await {
            Err(WriteError::Raced(_)) => return Ok(raced(command)),
            other => other?,
        };
        if written.file_holds {
            // A reload gave the file this name after the look above: the store
            // must not keep a record nobody serves, to come back later.
            self.registry.remove(name).await?;
            return Ok(file_conflict(command));
        }
        Ok(Outcome::Answered(
            self.verdict(command, &check, written.paused),
            Some((name.to_owned(), written.revision)),
        ))
    }

    /// The answer to a command the store already holds the result of: X's word on
    /// the credentials stored (the command's body may differ from them).
    async fn replayed(&self, command: &ControlCommand, record: &ChannelRecord) -> Outcome {
        self.registry.serve(record);
        let served = self
            .registry
            .live()
            .get(&record.name)
            .filter(|c| c.origin == Origin::Crm);
        let Some(channel) = served else {
            return file_conflict(command);
        };
        let check = self.check(&channel.settings).await;
        Outcome::Answered(
            self.verdict(command, &check, channel.paused),
            Some((record.name.clone(), channel.revision)),
        )
    }

    /// Why one more channel may not be served: `amqp.max_channels` reached.
    fn too_many(&self, name: &str) -> Option<String> {
        let served = self.registry.live().current();
        (!served.contains_key(name) && served.len() >= self.max_channels).then(|| {
            format!(
                "the bridge serves {} channels, its limit (amqp.max_channels); remove one first or raise the limit",
                served.len()
            )
        })
    }

    /// Another channel served for the X account `user_id` (configured, or learnt
    /// from X): two channels of one account would each poll it and publish its DMs
    /// twice, and webhook routing by account would be ambiguous.
    fn account_taken(&self, name: &str, user_id: &str) -> Option<String> {
        let served = self.registry.live().current();
        let other = served.values().find(|c| {
            c.name() != name
                && (c.settings.user_id.as_deref() == Some(user_id)
                    || self
                        .identities
                        .user_id(c.name())
                        .is_some_and(|id| id.as_str() == user_id))
        })?;
        Some(format!(
            "the X account {user_id} is served by channel {} already; one account has one channel",
            other.name()
        ))
    }

    /// `channel.remove`: a CRM channel the store holds (or held: a redelivery),
    /// also one a channel of the file hides (the file's stays served), so the CRM
    /// can delete its own record. A removed channel's OAuth 2.0 grant is deleted
    /// with it: a refresh token left in the store would still speak for the account
    /// (and a channel of that name made later would inherit it). The grant of a
    /// file channel of the same name is that channel's, and stays.
    async fn remove(&self, command: &ControlCommand) -> Result<Outcome, WriteError> {
        let name = command.command.channel();
        let from_file = self
            .registry
            .live()
            .get(name)
            .is_some_and(|c| c.origin == Origin::File);
        match self.registry.entry(name).await? {
            None => return Ok(unknown(command)),
            Some(ChannelEntry::Removed(_)) if from_file => return Ok(file_conflict(command)),
            Some(_) => {}
        }
        match self.registry.remove(name).await {
            Ok(revision) => {
                if !from_file && self.registry.store().delete_oauth2_grant(name).await? {
                    tracing::info!(
                        channel = name,
                        "the removed channel's OAuth 2.0 grant is deleted"
                    );
                }
                let detail = from_file.then(|| {
                    format!("the CRM's record of {name} is removed; the config file's channel of that name stays served")
                });
                Ok(Outcome::Answered(
                    answer(command, ChannelState::Removed, detail, None),
                    Some((name.to_owned(), revision)),
                ))
            }
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
            Ok(written) => {
                let answer = if paused {
                    answer(command, ChannelState::Paused, None, None)
                } else {
                    self.current(command)
                };
                Ok(Outcome::Answered(
                    answer,
                    Some((name.to_owned(), written.revision)),
                ))
            }
            Err(WriteError::Raced(_)) => Ok(raced(command)),
            Err(error) => Err(error),
        }
    }

    /// Another channel on the same X App (`consumer_key`) holding another
    /// `consumer_secret`: one App has one secret, which signs its webhook deliveries, so
    /// one of the two is wrong. Names the channels and how to rotate the secret, never
    /// a credential.
    fn other_app_secret(&self, settings: &ChannelSettings) -> Option<String> {
        let key = settings.consumer_key.expose_secret();
        let secret = settings.consumer_secret.expose_secret();
        let served = self.registry.live().current();
        let others: Vec<&LiveChannel> = served
            .values()
            .filter(|c| {
                c.name() != settings.name
                    && c.settings.consumer_key.expose_secret() == key
                    && c.settings.consumer_secret.expose_secret() != secret
            })
            .collect();
        let first = others.first()?;
        let names: Vec<&str> = others.iter().map(|c| c.name()).collect();
        let how = if others.iter().any(|c| c.origin == Origin::File) {
            "change it in the config file and reload, then send this upsert again"
        } else {
            "to rotate the App's secret, send channel.remove for those channels, this upsert, then channel.upsert for each of them with the new secret (their replies wait in their queues meanwhile)"
        };
        Some(format!(
            "consumer_key is the X App of channel {}, which holds another consumer_secret for it (the App's channels with it: {}); one App has one secret: {how}",
            first.name(),
            names.join(", ")
        ))
    }

    /// X's word on `settings`' credentials: the last check's when it is of the same
    /// settings and younger than [`CHECK_STANDS_FOR`], else a new one.
    async fn check(&self, settings: &ChannelSettings) -> AccountCheck {
        {
            let checks = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(last) = checks.get(&settings.name).filter(|last| {
                last.at.elapsed() < CHECK_STANDS_FOR && same_settings(&last.settings, settings)
            }) {
                return last.check.clone();
            }
        }
        let check = if settings.oauth2.is_some() {
            self.check_oauth2(settings).await
        } else {
            check_account(self.x.clone(), settings).await
        };
        let last = LastCheck {
            at: Instant::now(),
            settings: settings.clone(),
            check: check.clone(),
        };
        let mut checks = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
        checks.retain(|_, last| last.at.elapsed() < CHECK_STANDS_FOR);
        checks.insert(settings.name.clone(), last);
        check
    }

    /// The answer to a resume: the channel's state as the bridge last saw it
    /// (with its `since`), `ok` while that is still `paused`.
    fn current(&self, command: &ControlCommand) -> Box<CommandAnswer> {
        let name = command.command.channel();
        match self.states.get(name) {
            Some(status)
                if !matches!(status.state, ChannelState::Paused | ChannelState::Removed) =>
            {
                let mut answer = answer(command, status.state, status.detail, None);
                answer.state.status.since = status.since;
                answer.state.status.until = status.until;
                answer
            }
            _ => answer(command, ChannelState::Ok, None, None),
        }
    }

    /// The answer carrying X's word on a channel's credentials, recorded as the
    /// channel's state (so `/channels` says the same). A check that could not
    /// finish says nothing new: the state stays what the bridge last saw (`ok` for
    /// a channel it has not used yet), the detail says why. A paused channel is
    /// answered `paused`, X's word in the detail. A state the check only confirms
    /// keeps its `since`: the CRM keeps the latest `since` as the current state.
    fn verdict(
        &self,
        command: &ControlCommand,
        check: &AccountCheck,
        paused: bool,
    ) -> Box<CommandAnswer> {
        let name = command.command.channel();
        let known = self.states.get(name);
        let kept = || {
            known
                .as_ref()
                .filter(|s| s.state != ChannelState::Paused)
                .map_or(ChannelState::Ok, |status| status.state)
        };
        let state = match check.state() {
            // X cannot speak for the broker: its `ok` does not clear a refused queue.
            Some(ChannelState::Ok) if kept() == ChannelState::BrokerRefused => {
                ChannelState::BrokerRefused
            }
            Some(state) => state,
            None => kept(),
        };
        if !paused {
            // A channel created by this command is not in the states yet: it
            // starts in the checked state (the sides' own `add` keeps it).
            self.states.add(name, state, None);
            self.states.set(name, state, None, check.detail());
        }
        tracing::info!(
            command_id = %command.command_id,
            channel = %name,
            state = state.as_str(),
            "credentials checked against X"
        );
        let shown = if paused { ChannelState::Paused } else { state };
        // X found nothing wrong: a state of the bridge's own (`broker_refused`, say)
        // stands, and its cause with it.
        let detail = check.detail().or_else(|| {
            known
                .as_ref()
                .filter(|s| s.state == shown)
                .and_then(|s| s.detail.clone())
        });
        let mut answer = answer(command, shown, detail, check.account.clone());
        if let Some(status) = self.states.get(name).filter(|s| s.state == shown) {
            answer.state.status.since = status.since;
        }
        answer
    }
}

/// Why X's answer forbids storing `settings`: the account the access token
/// belongs to is not the `user_id` the command gives. Served, such a channel
/// would route one account's DMs as another's.
fn contradicted(check: &AccountCheck, settings: &ChannelSettings) -> Option<String> {
    let actual = check.account.as_ref()?;
    let configured = settings
        .user_id
        .as_ref()
        .filter(|c| **c != actual.user_id)?;
    Some(format!(
        "user_id is {configured}, but the access token belongs to {} (@{}): fix user_id or the credentials; nothing was stored",
        actual.user_id, actual.username
    ))
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

fn file_conflict(command: &ControlCommand) -> Outcome {
    let name = command.command.channel();
    Outcome::Refused(refusal(
        command,
        RefusalReason::Conflict,
        format!("channel {name} comes from the config file; change it there"),
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
