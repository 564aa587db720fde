//! The outbound side's RabbitMQ session, run by the shared supervisor
//! ([`xbridge_amqp::Supervisor`]): on each new connection it declares the
//! topology and starts one consumer per channel, the unrouted one and the
//! channel state reports; it ends when one of them stops, and on shutdown lets
//! the in-flight sends finish within the grace period.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{
    declare, open_publisher, ConnectError, Session, SessionLog, SetupError, Supervisor,
};
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::Settings;
use xbridge_core::contract::ChannelStateEvent;

use crate::context::ChannelContext;
use crate::report::Reporter;
use crate::state_sync::PublishedStates;
use crate::unsettled::Unsettled;
use crate::{unrouted, worker};

/// The supervisor of the outbound session, in the words operators and the
/// docs know. A session that ran 30 s reconnects at once; one that ends
/// sooner waits, so a consumer that fails at once does not spin.
pub(crate) fn supervisor(settings: &Settings) -> Supervisor {
    let log = SessionLog {
        retrying: "RabbitMQ session ended; reconnecting",
        lost: "RabbitMQ session lost",
    };
    let healthy_after = Duration::from_secs(30);
    Supervisor::new(
        settings.amqp.url.clone(),
        "xbridge outbound",
        log,
        healthy_after,
    )
}

/// Why the outbound session could not start or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// RabbitMQ could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The publisher or the topology could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The broker's frames are too small for the failure headers.
    #[error("RabbitMQ negotiated a frame_max of {negotiated} bytes; xbridge needs at least {needed} to dead-letter and park replies (RabbitMQ's default is 131072)")]
    FrameMax {
        /// What the connection negotiated.
        negotiated: usize,
        /// [`xbridge_amqp::MIN_FRAME_MAX`].
        needed: usize,
    },
    /// A consumer's channel could not be opened or given its prefetch.
    #[error("{0}")]
    Channel(lapin::Error),
    /// A queue could not be consumed (a missing queue, for one).
    #[error("consuming {queue} failed: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// A consumer stopped on a delivery it could not settle.
    #[error(transparent)]
    Consumer(#[from] Unsettled),
    /// A consumer stopped without a reason (its queue's consumer was cancelled).
    #[error("a consumer stopped")]
    ConsumerStopped,
    /// A consumer's task panicked.
    #[error("a consumer task failed: {0}")]
    ConsumerPanicked(JoinError),
}

/// The outbound session: what it starts on each connection.
pub(crate) struct ReplySession {
    pub(crate) settings: Arc<Settings>,
    pub(crate) states: Arc<ChannelStates>,
    pub(crate) channels: Vec<Arc<ChannelContext>>,
    pub(crate) published_states: Arc<PublishedStates>,
}

/// A running session's tasks, and the signal that stops them.
pub(crate) struct Consuming {
    tasks: JoinSet<Result<(), Unsettled>>,
    stop: CancellationToken,
}

impl Session for ReplySession {
    type Error = SessionError;
    type Running = Consuming;

    /// Declares the topology and starts one consumer per channel plus the
    /// unrouted one, and the state reports.
    async fn start(
        &mut self,
        connection: &Arc<Connection>,
        channels: &mut Vec<lapin::Channel>,
        shutdown: &CancellationToken,
    ) -> Result<Consuming, SessionError> {
        let publisher = open_publisher(connection, channels).await?;
        if publisher.frame_max() < xbridge_amqp::MIN_FRAME_MAX {
            return Err(SessionError::FrameMax {
                negotiated: publisher.frame_max(),
                needed: xbridge_amqp::MIN_FRAME_MAX,
            });
        }
        declare(&publisher, &self.settings).await?;
        let names = self.settings.amqp.topology.clone();
        let reporter = Reporter::new(publisher, names.clone());
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        for ctx in &self.channels {
            let queue = names.outgoing_queue(&ctx.name);
            let consumer = self
                .consumer(connection, &queue, &ctx.name, channels)
                .await?;
            let (ctx, reporter) = (ctx.clone(), reporter.clone());
            tasks.spawn(worker::consume(ctx, reporter, consumer, stop.clone()));
        }
        let consumer = self
            .consumer(connection, &names.unrouted, "unrouted", channels)
            .await?;
        tasks.spawn(unrouted::consume(reporter.clone(), consumer, stop.clone()));
        let reports = StateReports {
            states: self.states.clone(),
            published: self.published_states.clone(),
            reporter,
        };
        let delays = self.settings.outbound.retry.delays.clone();
        tasks.spawn(reports.run(delays, stop.clone()));
        Ok(Consuming { tasks, stop })
    }

    async fn run(
        &mut self,
        running: &mut Consuming,
        shutdown: &CancellationToken,
    ) -> Option<SessionError> {
        tracing::info!(
            channels = self.channels.len(),
            "outbound running: topology declared, consuming replies"
        );
        tokio::select! {
            // Consumers stop on the same signal: a shutdown must not read as a
            // consumer that failed.
            biased;
            _ = shutdown.cancelled() => None,
            Some(joined) = running.tasks.join_next() => Some(match joined {
                Ok(Err(e)) => SessionError::Consumer(e),
                Ok(Ok(())) => SessionError::ConsumerStopped,
                Err(e) => SessionError::ConsumerPanicked(e),
            }),
        }
    }

    /// Stops taking replies and lets the in-flight ones finish within
    /// `outbound.shutdown_grace`; what does not is redelivered.
    async fn stop(&mut self, mut running: Consuming) {
        running.stop.cancel();
        let grace = self.settings.outbound.shutdown_grace;
        let tasks = &mut running.tasks;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight replies did not finish in time; they will be redelivered"
            );
            running.tasks.abort_all();
        }
    }
}

impl ReplySession {
    /// A consumer of `queue` on a channel of its own (kept in `channels`),
    /// with the configured prefetch, tagged `xbridge-{label}`.
    async fn consumer(
        &self,
        connection: &Connection,
        queue: &str,
        label: &str,
        channels: &mut Vec<lapin::Channel>,
    ) -> Result<lapin::Consumer, SessionError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(SessionError::Channel)?;
        channels.push(channel.clone());
        channel
            .basic_qos(self.settings.amqp.prefetch, BasicQosOptions::default())
            .await
            .map_err(SessionError::Channel)?;
        channel
            .basic_consume(
                queue.into(),
                format!("xbridge-{label}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| SessionError::Consume {
                queue: queue.to_owned(),
                source,
            })
    }
}

/// How often the dead-letter queue's depth is sampled for metrics.
const DEPTH_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Tells the CRM of every channel state change while the session lasts, so it
/// can warn agents that replies on a channel are not going out.
struct StateReports {
    states: Arc<ChannelStates>,
    published: Arc<PublishedStates>,
    reporter: Reporter,
}

impl StateReports {
    /// First the states the CRM has not been told yet (all of them in the
    /// first session), then each change; also keeps the queue depth gauges
    /// fresh (after replays and purges too).
    async fn run(self, delays: Vec<Duration>, stop: CancellationToken) -> Result<(), Unsettled> {
        let mut changes = self.states.subscribe();
        self.tell_untold().await;
        let mut sample = tokio::time::interval(DEPTH_SAMPLE_INTERVAL);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sample.tick() => {
                    self.reporter.sample_queue_depths(&delays).await;
                    continue;
                }
                _ = self.reporter.queues_changed() => {
                    self.reporter.sample_queue_depths(&delays).await;
                    continue;
                }
                event = changes.recv() => event,
            };
            match event {
                Ok(event) => self.tell(event).await,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "channel.state changes came faster than they were published; telling the current states"
                    );
                    self.tell_untold().await;
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }

    /// Every current state the CRM was not told yet.
    async fn tell_untold(&self) {
        for event in self.published.untold(&self.states.snapshot()) {
            self.tell(event).await;
        }
    }

    /// `event`, unless the CRM was told it already; one that cannot be
    /// published is told again on the next session.
    async fn tell(&self, event: ChannelStateEvent) {
        if self.published.already_told(&event) {
            return;
        }
        match self.reporter.channel_state(&event).await {
            Ok(()) => self.published.record(&event),
            Err(e) => {
                tracing::warn!(channel = %event.channel, error = %e, "channel.state not published; told again on the next session")
            }
        }
    }
}
