//! The inbound side's RabbitMQ connection: kept alive for as long as the service runs,
//! made again when it breaks, and the sink that publishes through whichever connection
//! is current. The poll leases live on the same connection.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{self as amqp, declare_topology, PublishError, Publisher, TopologyPlan};
use xbridge_core::config::Settings;

use crate::delivery::sink::{AmqpSink, EventSink, InboundDeadLetter, OutboundEvent, SinkError};

/// Keeps a confirm-mode publisher on a live connection for the sink, and
/// makes a new one when the old one breaks.
pub(crate) async fn keep_connected(
    settings: Arc<Settings>,
    sink: Arc<BrokerSink>,
    shutdown: CancellationToken,
) {
    let mut backoff = amqp::reconnect_backoff();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match connect(&settings).await {
            Ok((connection, publisher)) => {
                backoff = amqp::reconnect_backoff();
                let mut events = Box::pin(connection.events_listener());
                let connection = Arc::new(connection);
                sink.set(Some(
                    AmqpSink::new(
                        publisher.clone(),
                        settings.amqp.topology.incoming_exchange.clone(),
                    )
                    .with_dead_letters(settings.amqp.topology.dead_letter_exchange.clone()),
                ));
                // The poll leases live on this connection too.
                sink.connection.send_replace(Some(connection.clone()));
                tracing::info!("inbound connected: events can be published");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = sink.broken.notified() => {
                        tracing::warn!("inbound lost its RabbitMQ connection; reconnecting");
                    }
                    // Without a publish to fail, only the connection tells:
                    // the poll leases on it are gone, so reconnect.
                    error = connection_failed(&connection, &mut events) => {
                        tracing::warn!(error = %error, "inbound lost its RabbitMQ connection; reconnecting");
                    }
                }
                sink.set(None);
                sink.connection.send_replace(None);
                // Held until here, so its channel is closed before the
                // connection (see amqp::close_channels).
                amqp::close_channels(&[publisher.channel().clone()]).await;
                amqp::close(&connection, 200, "xbridge inbound stopping").await;
            }
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "inbound cannot reach RabbitMQ");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// How often the inbound connection's state is looked at, for closes that
/// come without an error event (the broker closing it, for one).
const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until `connection` fails: `events` reports an error (which a broker
/// closing one of its channels also does), or its state is no longer
/// connected. What it says happened.
async fn connection_failed(
    connection: &lapin::Connection,
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> String {
    use futures::StreamExt as _;
    let mut check = tokio::time::interval(CONNECTION_CHECK_INTERVAL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => return error.to_string(),
                Some(_) => {}
                None => return "the connection closed".to_owned(),
            },
            _ = check.tick() => {
                if !connection.status().connected() {
                    return "the connection closed".to_owned();
                }
            }
        }
    }
}

async fn connect(settings: &Settings) -> Result<(lapin::Connection, Publisher), String> {
    let connection = amqp::connect(&settings.amqp.url, "xbridge inbound")
        .await
        .map_err(|e| e.to_string())?;
    let publisher = Publisher::open(&connection)
        .await
        .map_err(|e| e.to_string())?;
    let plan = TopologyPlan::for_settings(settings);
    declare_topology(publisher.channel(), &plan)
        .await
        .map_err(|e| format!("declaring the topology failed: {e}"))?;
    Ok((connection, publisher))
}

/// An [`EventSink`] that outlives connections: publishes through the current
/// connection's publisher, refuses (so the webhook answers 503 and X retries)
/// while there is none, and reports a broken connection.
#[derive(Default)]
pub(crate) struct BrokerSink {
    current: RwLock<Option<AmqpSink>>,
    ready: watch::Sender<bool>,
    broken: Notify,
    /// The current connection, for the poll leases.
    pub(crate) connection: watch::Sender<Option<Arc<lapin::Connection>>>,
}

impl BrokerSink {
    /// `true` while events can be published (connected, topology declared).
    pub(crate) fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn set(&self, sink: Option<AmqpSink>) {
        let ready = sink.is_some();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = sink;
        self.ready.send_replace(ready);
    }
}

impl BrokerSink {
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
    async fn publish(&self, event: &OutboundEvent) -> Result<(), SinkError> {
        let sink = self.current()?;
        self.noticed(sink.publish(event).await)
    }

    async fn dead_letter(&self, letter: &InboundDeadLetter) -> Result<(), SinkError> {
        let sink = self.current()?;
        self.noticed(sink.dead_letter(letter).await)
    }
}
