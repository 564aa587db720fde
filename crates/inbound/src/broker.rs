//! The inbound side's RabbitMQ session, run by the shared supervisor
//! ([`xbridge_amqp::Supervisor`]) for as long as the service runs, and the sink
//! that publishes through whichever connection is current. The poll leases live
//! on the same connection.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{
    connection_lost, declared_publisher, ConnectError, ConnectionLost, PublishError, Session,
    SessionLog, SetupError, Supervisor,
};
use xbridge_core::config::Settings;
use xbridge_core::contract::EventToCrm;

use crate::delivery::sink::{AmqpSink, EventSink, InboundDeadLetter, SinkError};

/// The supervisor of the inbound session, in the words operators and the tests
/// know. Every loss reconnects at once: only a failed attempt waits.
pub(crate) fn supervisor(settings: &Settings) -> Supervisor {
    let log = SessionLog {
        retrying: "inbound cannot reach RabbitMQ",
        lost: "inbound lost its RabbitMQ connection; reconnecting",
    };
    Supervisor::new(
        settings.amqp.brokers.clone(),
        "xbridge inbound",
        log,
        Duration::ZERO,
    )
}

/// Why the inbound session could not start or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    /// RabbitMQ could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The publisher or the topology could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The connection failed or closed; the poll leases on it are gone.
    #[error(transparent)]
    Lost(#[from] ConnectionLost),
    /// A publish found the connection broken.
    #[error("a publish found the connection broken")]
    PublishFailed,
}

/// The inbound session: a confirm-mode publisher for the sink on each new
/// connection, and the connection itself for the poll leases.
pub(crate) struct BrokerSession {
    pub(crate) settings: Arc<Settings>,
    pub(crate) sink: Arc<BrokerSink>,
}

/// A running inbound session's connection, and the events that tell it failed.
pub(crate) struct Connected {
    connection: Arc<lapin::Connection>,
    events: Pin<Box<dyn Stream<Item = lapin::Event> + Send>>,
}

impl Session for BrokerSession {
    type Error = BrokerError;
    type Running = Connected;

    async fn start(
        &mut self,
        connection: &Arc<lapin::Connection>,
        channels: &mut Vec<lapin::Channel>,
        _shutdown: &CancellationToken,
    ) -> Result<Connected, BrokerError> {
        let publisher = declared_publisher(connection, &self.settings, channels).await?;
        let events = Box::pin(connection.events_listener());
        let topology = &self.settings.amqp.topology;
        self.sink.set(Some(
            AmqpSink::new(publisher, topology.incoming_exchange.clone())
                .with_dead_letters(topology.dead_letter_exchange.clone()),
        ));
        // The poll leases live on this connection too.
        self.sink.connection.send_replace(Some(connection.clone()));
        let connection = connection.clone();
        Ok(Connected { connection, events })
    }

    async fn run(
        &mut self,
        running: &mut Connected,
        shutdown: &CancellationToken,
    ) -> Option<BrokerError> {
        tracing::info!("inbound connected: events can be published");
        tokio::select! {
            _ = shutdown.cancelled() => None,
            _ = self.sink.broken.notified() => Some(BrokerError::PublishFailed),
            // Without a publish to fail, only the connection tells: the poll
            // leases on it are gone, so reconnect.
            lost = connection_lost(&running.connection, &mut running.events) => Some(lost.into()),
        }
    }

    async fn stop(&mut self, _running: Connected) {
        self.sink.set(None);
        self.sink.connection.send_replace(None);
    }
}

/// An [`EventSink`] that outlives connections: publishes through the current
/// connection's publisher, refuses (so the webhook answers 503 and X retries)
/// while there is none, and reports a broken connection.
#[derive(Default)]
pub(crate) struct BrokerSink {
    current: RwLock<Option<AmqpSink>>,
    broken: Notify,
    /// The current connection, for the poll leases.
    pub(crate) connection: watch::Sender<Option<Arc<lapin::Connection>>>,
}

impl BrokerSink {
    fn set(&self, sink: Option<AmqpSink>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// The current connection's sink, or why there is none.
    fn current(&self) -> Result<AmqpSink, SinkError> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| SinkError::Unavailable("not connected to RabbitMQ".into()))
    }

    /// Passes `result` on, first reporting a broken connection.
    fn noticed<T>(&self, result: Result<T, SinkError>) -> Result<T, SinkError> {
        if let Err(SinkError::Publish(PublishError::Broker(_))) = &result {
            self.broken.notify_one();
        }
        result
    }
}

#[async_trait]
impl EventSink for BrokerSink {
    async fn publish(&self, event: &EventToCrm) -> Result<(), SinkError> {
        let sink = self.current()?;
        self.noticed(sink.publish(event).await)
    }

    async fn dead_letter(&self, letter: &InboundDeadLetter) -> Result<(), SinkError> {
        let sink = self.current()?;
        self.noticed(sink.dead_letter(letter).await)
    }
}
