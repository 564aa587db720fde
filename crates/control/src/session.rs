//! The control session on each RabbitMQ connection: the control exchange, the command
//! queue (quorum, single active consumer, so exactly one replica handles each command)
//! and this replica's queue of change notices; then commands and notices one at a time.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use xbridge_amqp::{bind, declare_exchange, ConnectError, PublishError, Publisher, SetupError};
use xbridge_core::config::Settings;
use xbridge_core::contract::ChannelState;

use crate::apply::{Applier, Outcome};

/// A change notice on the fanout: which channel to read again, and the revision that
/// changed it. No secret: the store has the rest.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    channel: String,
    revision: u64,
}

/// The first pause before a command whose store write failed is applied again; it
/// doubles up to [`MAX_STORE_RETRY_PAUSE`].
const STORE_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two tries of a command during a store outage.
const MAX_STORE_RETRY_PAUSE: Duration = Duration::from_secs(15);
/// How often every CRM channel is read again from the store: heals whatever a
/// notice could not bring (a notice is retried, but a replica may still miss one,
/// e.g. a reload that showed a hidden CRM channel while the store was away).
const RELOAD_ALL_EVERY: Duration = Duration::from_secs(60);

/// Why the session could not start or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The publisher or the main topology.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The control topology or a consumer.
    #[error("control setup failed: {0}")]
    Broker(#[from] lapin::Error),
    /// An answer or notice was not confirmed: the command comes back.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A consumer ended.
    #[error("the broker cancelled the {0} consumer")]
    Cancelled(&'static str),
}

/// What runs on one connection.
pub struct Running {
    publisher: Publisher,
    /// Where a channel's reply queue is declared before its answer, on an
    /// AMQP channel of its own (see [`ControlSession::declare_reply_queue`]).
    connection: Arc<Connection>,
    commands: Consumer,
    notices: Consumer,
}

/// The control session.
pub struct ControlSession {
    pub(crate) settings: Arc<Settings>,
    pub(crate) applier: Arc<Applier>,
}

impl xbridge_amqp::Session for ControlSession {
    type Error = SessionError;
    type Running = Running;

    async fn start(
        &mut self,
        connection: &Arc<Connection>,
        channels: &mut Vec<Channel>,
        _shutdown: &CancellationToken,
    ) -> Result<Running, SessionError> {
        let publisher =
            xbridge_amqp::declared_publisher(connection, &self.settings, channels).await?;
        let consuming = connection.create_channel().await?;
        channels.push(consuming.clone());
        consuming.basic_qos(1, BasicQosOptions::default()).await?;
        let notice_queue = declare(&consuming, &self.settings).await?;
        let control = &self.settings.amqp.control;
        let commands = consume(&consuming, &control.commands_queue, "xbridge-control").await?;
        let notices = consume(&consuming, &notice_queue, "xbridge-control-changes").await?;
        // Notices missed while disconnected: the store has every change.
        if let Err(error) = self.applier.registry.load_all().await {
            tracing::warn!(%error, "cannot read the CRM's channels from the store; they are read again on the next notice");
        }
        Ok(Running {
            publisher,
            connection: connection.clone(),
            commands,
            notices,
        })
    }

    async fn run(
        &mut self,
        running: &mut Running,
        shutdown: &CancellationToken,
    ) -> Option<SessionError> {
        tracing::info!("control running: consuming commands and change notices");
        let mut reload_all = tokio::time::interval(RELOAD_ALL_EVERY);
        reload_all.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reload_all.reset();
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = reload_all.tick() => {
                    if let Err(error) = self.applier.registry.load_all().await {
                        tracing::warn!(%error, "cannot read the CRM's channels from the store; read again in a minute");
                    }
                    Ok(())
                }
                next = running.commands.next() => match next {
                    Some(Ok(delivery)) => self.command(running, delivery, shutdown).await,
                    Some(Err(error)) => Err(error.into()),
                    None => Err(SessionError::Cancelled("command")),
                },
                next = running.notices.next() => match next {
                    Some(Ok(delivery)) => self.notice(delivery, shutdown).await,
                    Some(Err(error)) => Err(error.into()),
                    None => Err(SessionError::Cancelled("change notice")),
                },
            };
            if let Err(error) = result {
                return Some(error);
            }
        }
    }

    async fn stop(&mut self, _running: Running) {}
}

impl ControlSession {
    /// One command: applied and answered, then acked. While the store cannot be
    /// written the command is held and applied again after a pause (applying it again
    /// gives the same result): a nack would count against the quorum queue's delivery
    /// limit, which dead-letters the command after 20 returns on RabbitMQ 4. Held
    /// longer than `amqp.control.store_wait` it is refused `unavailable` and acked,
    /// well before RabbitMQ's `consumer_timeout` would take it back. On shutdown it
    /// stays unacked, and the broker gives it to the next consumer.
    async fn command(
        &self,
        running: &Running,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut pause = STORE_RETRY_PAUSE;
        let held = tokio::time::Instant::now();
        let wait = self.settings.amqp.control.store_wait;
        let outcome = loop {
            match self.applier.handle(&delivery).await {
                Ok(outcome) => break outcome,
                Err(error) if held.elapsed() >= wait => {
                    break Outcome::Refused(self.applier.unavailable(&delivery, &error));
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "a command could not be applied; it is tried again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_STORE_RETRY_PAUSE);
                }
            }
        };
        let mut outcome = outcome;
        if let Outcome::Answered(answer, Some(_)) = &mut outcome {
            if answer.state.status.state != ChannelState::Removed {
                let declared = self
                    .declare_reply_queue(&running.connection, &answer.state.channel)
                    .await?;
                if let Err(detail) = declared {
                    // The channel is stored and served; the outbound side tries its
                    // queue again on its own. The CRM hears why replies wait, and
                    // the channel's state says so until the queue is taken.
                    let channel = &answer.state.channel;
                    let states = &self.applier.states;
                    states.report(channel, ChannelState::BrokerRefused, detail);
                    if let Some(status) = states.get(channel) {
                        answer.state.status = status;
                    }
                }
            }
        }
        self.answer(&running.publisher, &delivery, outcome).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Declares `channel`'s reply queue and binding (as the outbound side does when it
    /// starts consuming it) before the CRM is told the channel exists: a reply the CRM
    /// publishes as soon as it reads the answer is then queued for the channel, not
    /// dead-lettered `unknown_channel` because the outbound side had not declared it yet.
    /// On an AMQP channel used for that alone: the broker closes the channel a refused
    /// declaration was made on (a queue of that name with other arguments, say), and
    /// that must not end the session, whose next start would meet the same command and
    /// the same refusal. `Ok(Err)` is the broker's refusal, in its words.
    async fn declare_reply_queue(
        &self,
        connection: &Connection,
        channel: &str,
    ) -> lapin::Result<Result<(), String>> {
        let amqp = connection.create_channel().await?;
        let names = &self.settings.amqp.topology;
        let declared = xbridge_amqp::declare_reply_queue(&amqp, names, channel).await;
        xbridge_amqp::close_channels(std::slice::from_ref(&amqp)).await;
        match declared {
            Ok(()) => Ok(Ok(())),
            Err(e) if connection.status().connected() => {
                let detail = format!("RabbitMQ refused the channel's reply queue: {e}");
                tracing::error!(channel, error = %e, "RabbitMQ refused a new channel's reply queue; its replies wait");
                Ok(Err(xbridge_core::excerpt::cut(&detail, 300)))
            }
            Err(e) => Err(e),
        }
    }

    /// Publishes a command's outcome, confirmed: the change notice first (so a
    /// replica that reads the answer's channel finds it), then the answer.
    async fn answer(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        outcome: Outcome,
    ) -> Result<(), SessionError> {
        let (key, body, properties) = match outcome {
            Outcome::Answered(answer, notice) => {
                if let Some((channel, revision)) = notice {
                    self.publish_notice(publisher, channel, revision).await?;
                }
                tracing::info!(command_id = %answer.command_id, channel = %answer.state.channel, state = answer.state.status.state.as_str(), "command answered");
                let properties = properties(
                    "channel.state",
                    Some(answer.message_id()),
                    Some(&answer.command_id),
                );
                let body = serde_json::to_vec(&answer).expect("answers serialize");
                (answer.state.routing_key(), body, properties)
            }
            Outcome::Refused(refused) => {
                tracing::warn!(command_id = ?refused.command_id, channel = ?refused.channel, reason = ?refused.reason, detail = %refused.detail, "command refused");
                let theirs = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str());
                let properties = properties(
                    "command.refused",
                    refused.message_id(theirs),
                    refused.command_id.as_deref(),
                );
                let body = serde_json::to_vec(&refused).expect("refusals serialize");
                (refused.routing_key().to_owned(), body, properties)
            }
        };
        publisher
            .publish(self.incoming(), &key, &body, properties)
            .await?;
        Ok(())
    }

    /// Tells every replica (this one too) to read `channel` again.
    async fn publish_notice(
        &self,
        publisher: &Publisher,
        channel: String,
        revision: u64,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(&Notice { channel, revision }).expect("notices serialize");
        let properties = BasicProperties::default().with_content_type("application/json".into());
        publisher
            .publish(
                &self.settings.amqp.control.changes_exchange,
                "",
                &body,
                properties,
            )
            .await
    }

    /// A change notice: read that channel again, trying again after a growing
    /// pause while the store cannot be read (acked only once read: dropped, a
    /// removed or rotated channel would stay served here). On shutdown it stays
    /// unacked; the queue goes with the connection.
    async fn notice(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        match serde_json::from_slice::<Notice>(&delivery.data) {
            Ok(notice) => {
                let mut pause = STORE_RETRY_PAUSE;
                while let Err(error) = self.applier.registry.refresh(&notice.channel).await {
                    tracing::warn!(channel = %notice.channel, %error, retry_in_ms = pause.as_millis() as u64, "cannot read a changed CRM channel from the store; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_STORE_RETRY_PAUSE);
                }
            }
            Err(error) => tracing::warn!(%error, "a change notice does not decode; ignored"),
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    fn incoming(&self) -> &str {
        &self.settings.amqp.topology.incoming_exchange
    }
}

/// An answer's AMQP properties.
fn properties(
    kind: &str,
    message_id: Option<String>,
    correlation_id: Option<&str>,
) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_type(kind.into());
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    if let Some(id) = correlation_id {
        properties = properties.with_correlation_id(id.into());
    }
    properties
}

/// The command queue's dead-letter exchange and queue (one name): where RabbitMQ
/// puts a command it gave up on (its delivery limit, 20 on RabbitMQ 4) instead of
/// dropping it. Its own, not `xbridge.dead-letter`: a command carries credentials,
/// and dead letters of replies are read by people who must not see them.
pub fn dead_letter_name(control: &xbridge_core::config::ControlSettings) -> String {
    format!("{}.dead-letter", control.exchange)
}

/// Declares the control exchange, the command queue bound to all of it (with its
/// dead-letter exchange and queue), the change fanout, and this replica's
/// exclusive queue of notices (its name returned).
async fn declare(channel: &Channel, settings: &Settings) -> lapin::Result<String> {
    let control = &settings.amqp.control;
    declare_exchange(
        channel,
        &control.exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await?;
    let dead = dead_letter_name(control);
    declare_dead_letter(channel, &dead).await?;
    let mut args = quorum();
    args.insert("x-dead-letter-exchange".into(), text(&dead));
    // At least once (not the default at most once), which RabbitMQ allows only
    // with `reject-publish` overflow.
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(control.commands_queue.as_str().into(), queue, args)
        .await?;
    bind(channel, &control.commands_queue, &control.exchange, "#").await?;
    declare_exchange(
        channel,
        &control.changes_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    // Named under the changes exchange, not by the server (`amq.gen-…`): the bridge's
    // user may configure only its own names (docs/operator.md's recipe).
    let name = format!(
        "{}.{}",
        control.changes_exchange,
        uuid::Uuid::new_v4().simple()
    );
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.as_str().into(), exclusive, FieldTable::default())
        .await?;
    bind(channel, &name, &control.changes_exchange, "").await?;
    Ok(name)
}

/// The command queue's dead-letter fanout and the quorum queue bound to it.
async fn declare_dead_letter(channel: &Channel, name: &str) -> lapin::Result<()> {
    declare_exchange(channel, name, ExchangeKind::Fanout, FieldTable::default()).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), durable, quorum())
        .await?;
    bind(channel, name, name, "").await
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn consume(channel: &Channel, queue: &str, tag: &str) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}
