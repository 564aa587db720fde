//! The reconnecting session both directions run on RabbitMQ: connect, set up, run until
//! the session ends (its connection fails, the broker closes it, or shutdown), record
//! readiness, close, back off, and connect again. Given several RabbitMQ nodes (a
//! cluster, `amqp.hosts`), it connects to the first that answers and, once a session
//! ends, tries the next one first, round robin. A direction says only what its session
//! does ([`Session`]) and the words its operators know it by ([`SessionLog`]); the loop,
//! the pauses, the readiness and the closing are the same for both.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xbridge_core::config::{BrokerAddress, Settings};

use crate::connection::{close, close_channels, connect_any, ConnectError};
use crate::publisher::Publisher;
use crate::topology::{declare_topology, TopologyPlan};

/// What one direction does on a live connection. The supervisor calls
/// [`start`](Session::start) on each new connection, then [`run`](Session::run)
/// until the session ends, then [`stop`](Session::stop); it closes the channels
/// and the connection itself.
pub trait Session: Send {
    /// Why a session could not start or ended; logged as the `error` field. A
    /// failed connect is one too.
    type Error: std::fmt::Display + From<ConnectError> + Send;
    /// What a started session holds until it stops (its tasks, its watches).
    type Running: Send;

    /// Sets up on a new connection. Every AMQP channel it opens also goes into
    /// `channels`, which the supervisor closes before the connection (lapin
    /// logs a channel dropped while its connection closes as an error). Tasks
    /// it spawns stop on `shutdown` (a child token of it), so a shutdown that
    /// comes while it still sets up stops what already runs.
    fn start(
        &mut self,
        connection: &Arc<Connection>,
        channels: &mut Vec<Channel>,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Running, Self::Error>> + Send;

    /// Runs until the session ends: `None` on `shutdown`, else why it ended.
    /// Readiness is already recorded: this is where a session says it runs.
    fn run(
        &mut self,
        running: &mut Self::Running,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Option<Self::Error>> + Send;

    /// Winds the session down once it ended, before its channels close.
    fn stop(&mut self, running: Self::Running) -> impl Future<Output = ()> + Send;
}

/// The two `WARN` lines of a session that ends, in the direction's words, which
/// operators and the tests know.
#[derive(Debug, Clone, Copy)]
pub struct SessionLog {
    /// Connecting or setting up failed, or a session ended before it counted
    /// as healthy: logged with `error` and `retry_in_ms`, and the next attempt
    /// waits.
    pub retrying: &'static str,
    /// A healthy session ended: logged with `error`, and the next attempt comes
    /// at once.
    pub lost: &'static str,
}

/// Keeps one direction's session on a live connection for as long as the
/// process runs, and tells whether it is up.
pub struct Supervisor {
    brokers: Vec<BrokerAddress>,
    /// The node the next attempt tries first: the first one at start, the
    /// one after the node of the last session afterwards.
    next: usize,
    connection_name: &'static str,
    log: SessionLog,
    healthy_after: Duration,
    ready: watch::Sender<bool>,
}

/// How one attempt ended.
enum Attempt<E> {
    Shutdown,
    /// A session that had run at least `healthy_after` ended (already logged).
    Lost,
    /// Connecting or the setup failed, or the session ended too soon; on
    /// the node (`host:port`) it was connected to, if any.
    Failed(E, Option<String>),
}

impl Supervisor {
    /// A supervisor of sessions on connections to one of `brokers` (tried in
    /// turn; at least one) named `connection_name` (what the management UI
    /// shows). A session that ends after running at
    /// least `healthy_after` is reconnected at once with the pauses reset; one
    /// that ends sooner waits its turn, so a session that cannot stay up does
    /// not reconnect in a tight loop.
    pub fn new(
        brokers: impl IntoIterator<Item = BrokerAddress>,
        connection_name: &'static str,
        log: SessionLog,
        healthy_after: Duration,
    ) -> Supervisor {
        let brokers: Vec<BrokerAddress> = brokers.into_iter().collect();
        assert!(!brokers.is_empty(), "a supervisor needs a broker");
        Supervisor {
            brokers,
            next: 0,
            connection_name,
            log,
            healthy_after,
            ready: watch::Sender::new(false),
        }
    }

    /// `true` while a session runs: connected, and its setup done.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs `session` on connection after connection until `shutdown`, which
    /// ends it without an error logged. Readiness ends with it.
    pub async fn run<S: Session>(mut self, mut session: S, shutdown: CancellationToken) {
        let (session, shutdown) = (&mut session, &shutdown);
        let mut pauses = reconnect_backoff();
        while !shutdown.is_cancelled() {
            match self.attempt(session, shutdown).await {
                Attempt::Shutdown => return,
                // Logged when the loss was seen, before the session wound down.
                Attempt::Lost => pauses = reconnect_backoff(),
                Attempt::Failed(error, node) => {
                    let wait = pauses.next().unwrap_or(MAX_PAUSE);
                    tracing::warn!(
                        connection = self.connection_name,
                        node = node.as_deref().unwrap_or("none"),
                        error = %error,
                        retry_in_ms = wait.as_millis() as u64,
                        "{}",
                        self.log.retrying
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One connection: connects, starts `session` on it, runs it until it
    /// ends, and closes the session's channels and the connection.
    async fn attempt<S: Session>(
        &mut self,
        session: &mut S,
        shutdown: &CancellationToken,
    ) -> Attempt<S::Error> {
        let connecting = connect_any(&self.brokers, self.next, self.connection_name);
        let (connection, at) = match connecting.await {
            Ok((connection, at)) => (Arc::new(connection), at),
            Err(error) => return Attempt::Failed(error.into(), None),
        };
        // Whatever ends this session (its node lost, most often), the next
        // attempt starts with another node; the round comes back to this one.
        self.next = (at + 1) % self.brokers.len();
        let mut channels = Vec::new();
        let end = match session.start(&connection, &mut channels, shutdown).await {
            Ok(running) => {
                let node = &self.brokers[at].node;
                self.serve(session, running, node, shutdown).await
            }
            Err(error) => {
                close_channels(&channels).await;
                close(&connection, 320, "setup failed").await;
                return Attempt::Failed(error, Some(self.brokers[at].node.clone()));
            }
        };
        close_channels(&channels).await;
        close(
            &connection,
            200,
            &format!("{} stopping", self.connection_name),
        )
        .await;
        end
    }

    /// Runs a started session with readiness recorded, and stops it.
    async fn serve<S: Session>(
        &self,
        session: &mut S,
        mut running: S::Running,
        node: &str,
        shutdown: &CancellationToken,
    ) -> Attempt<S::Error> {
        self.ready.send_replace(true);
        let started = tokio::time::Instant::now();
        // A session's tasks stop on the same signal: an end that races the
        // shutdown is the shutdown, not a failure.
        let failure = session
            .run(&mut running, shutdown)
            .await
            .filter(|_| !shutdown.is_cancelled());
        self.ready.send_replace(false);
        let end = match failure {
            None => Attempt::Shutdown,
            Some(error) if started.elapsed() >= self.healthy_after => {
                // Said at once: closing on a dead broker can take a while, and
                // what the loss causes (leases lost) is logged meanwhile.
                tracing::warn!(connection = self.connection_name, node, error = %error, "{}", self.log.lost);
                Attempt::Lost
            }
            Some(error) => Attempt::Failed(error, Some(node.to_owned())),
        };
        session.stop(running).await;
        end
    }
}

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(15);

/// The pause schedule between reconnection attempts: from 200 ms, doubling
/// with jitter, up to 15 s, forever (the broker will come back).
pub fn reconnect_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Why the setup every session starts with failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The publisher's channel could not be opened in confirm mode.
    #[error("{0}")]
    Channel(lapin::Error),
    /// The exchanges and queues of `[amqp]` could not be declared (a queue
    /// declared before with other arguments, for one).
    #[error("declaring the topology failed: {0}")]
    Topology(lapin::Error),
}

/// What every session starts with: a confirm-mode publisher (its channel in
/// `channels`), on which the topology every side shares is declared.
pub async fn declared_publisher(
    connection: &Connection,
    settings: &Settings,
    channels: &mut Vec<Channel>,
) -> Result<Publisher, SetupError> {
    let publisher = open_publisher(connection, channels).await?;
    declare(&publisher, settings).await?;
    Ok(publisher)
}

/// A confirm-mode publisher, its channel in `channels`; for a session that
/// checks the connection (its `frame_max`) before it declares anything.
pub async fn open_publisher(
    connection: &Connection,
    channels: &mut Vec<Channel>,
) -> Result<Publisher, SetupError> {
    let publisher = Publisher::open(connection)
        .await
        .map_err(SetupError::Channel)?;
    channels.push(publisher.channel().clone());
    Ok(publisher)
}

/// Declares on `publisher`'s channel the topology every side shares
/// ([`TopologyPlan::shared`]).
pub async fn declare(publisher: &Publisher, settings: &Settings) -> Result<(), SetupError> {
    declare_plan(publisher, &TopologyPlan::shared(settings)).await
}

/// Declares on `publisher`'s channel the topology `plan` describes (a session
/// serving the channels of the moment makes its own plan).
pub async fn declare_plan(publisher: &Publisher, plan: &TopologyPlan) -> Result<(), SetupError> {
    declare_topology(publisher.channel(), plan)
        .await
        .map_err(SetupError::Topology)
}
