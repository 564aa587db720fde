//! The outbound service: connects to RabbitMQ, declares the topology, runs a
//! consumer per channel, and starts over after a lost connection. Stops
//! taking replies on shutdown and lets in-flight sends finish within a grace
//! period.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use rand::seq::SliceRandom as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{self as amqp, declare_topology, Publisher, TopologyPlan};
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::{ChannelStateEvent, ChannelStates};
use xbridge_core::config::Settings;
use xbridge_store::StateStore;
use xbridge_x_api::{XClient, XHttp};

use crate::context::ChannelContext;
use crate::credits::CreditsGate;
use crate::fate::Policy;
use crate::media::MediaFetcher;
use crate::ordering::ParkedReplies;
use crate::report::Reporter;
use crate::state_sync::PublishedStates;
use crate::unsettled::Unsettled;
use crate::worker;
use crate::{unrouted, OutboundError};

/// The outbound side of one bridge process.
pub struct Outbound {
    settings: Arc<Settings>,
    states: Arc<ChannelStates>,
    channels: Vec<Arc<ChannelContext>>,
    ready: watch::Sender<bool>,
    published_states: Arc<PublishedStates>,
}

impl Outbound {
    /// Builds every channel's X client and state, the clients on the
    /// process's shared HTTP stack `http` (one connection pool and TLS
    /// configuration for all channels, since they all talk to X), sharing the
    /// channels' accounts through `identities`. Fails only on a client that
    /// cannot be built (bad base URL).
    pub fn new(
        settings: Arc<Settings>,
        store: Arc<dyn StateStore>,
        states: Arc<ChannelStates>,
        http: XHttp,
        identities: Arc<ChannelIdentities>,
    ) -> Result<Outbound, OutboundError> {
        let policy = Policy {
            retry: settings.outbound.retry.clone(),
            credits: settings.outbound.credits.clone(),
        };
        let media = Arc::new(MediaFetcher::new(settings.outbound.media.clone())?);
        let channels = settings
            .channels
            .iter()
            .map(|channel| {
                let client = XClient::with_http((&settings.x).into(), channel.into(), http.clone())
                    .map_err(|e| OutboundError::Client {
                        channel: channel.name.clone(),
                        detail: e.to_string(),
                    })?;
                Ok(Arc::new(ChannelContext {
                    name: channel.name.clone(),
                    client,
                    gate: CreditsGate::new(settings.outbound.credits.clone()),
                    parked: ParkedReplies::default(),
                    store: store.clone(),
                    policy: policy.clone(),
                    states: states.clone(),
                    media: media.clone(),
                    identities: identities.clone(),
                    recent_events: Default::default(),
                    unrecorded: Default::default(),
                    max_reply_bytes: settings.outbound.max_reply_bytes,
                }))
            })
            .collect::<Result<Vec<_>, OutboundError>>()?;
        // Reply queues are single-active-consumer queues: of the replicas
        // consuming a channel's queue, the one that registered first is the
        // active one. Registering in an order of this process's own makes
        // replicas started together split the channels between them instead
        // of one replica winning every channel.
        let mut channels = channels;
        channels.shuffle(&mut rand::rng());
        Ok(Outbound {
            settings,
            states,
            channels,
            ready: watch::Sender::new(false),
            published_states: Arc::default(),
        })
    }

    /// `true` while connected with the topology declared and every consumer
    /// running: what a readiness probe (or a test) waits for.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` is cancelled, reconnecting as often as needed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), OutboundError> {
        let mut reconnect = amqp::reconnect_backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.session(&shutdown).await {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Failed(reason) => {
                    let wait = reconnect.next().unwrap_or(Duration::from_secs(15));
                    tracing::warn!(error = %reason, retry_in_ms = wait.as_millis() as u64, "RabbitMQ session ended; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                SessionEnd::Healthy => {
                    // A session that ran a while resets the backoff.
                    reconnect = amqp::reconnect_backoff();
                }
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let connection = match amqp::connect(&self.settings.amqp.url, "xbridge outbound").await {
            Ok(connection) => connection,
            Err(e) => return SessionEnd::Failed(e.to_string()),
        };
        let stop = shutdown.child_token();
        // Every channel of the session, closed before the connection.
        let mut channels = Vec::new();
        let mut tasks = match self.start(&connection, &stop, &mut channels).await {
            Ok(tasks) => tasks,
            Err(e) => {
                amqp::close_channels(&channels).await;
                amqp::close(&connection, 320, "setup failed").await;
                return SessionEnd::Failed(e);
            }
        };
        tracing::info!(
            channels = self.channels.len(),
            "outbound running: topology declared, consuming replies"
        );
        self.ready.send_replace(true);
        let started = tokio::time::Instant::now();

        let failure = tokio::select! {
            // Consumers stop on the same signal: a shutdown must not read as a
            // consumer that failed.
            biased;
            _ = shutdown.cancelled() => None,
            Some(joined) = tasks.join_next() => Some(match joined {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "a consumer stopped".to_owned(),
                Err(e) => format!("a consumer task failed: {e}"),
            }),
        }
        .filter(|_| !shutdown.is_cancelled());
        self.ready.send_replace(false);
        stop.cancel();
        let grace = self.settings.outbound.shutdown_grace;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight replies did not finish in time; they will be redelivered"
            );
            tasks.abort_all();
        }
        amqp::close_channels(&channels).await;
        amqp::close(&connection, 200, "xbridge stopping").await;
        match failure {
            None => {
                tracing::info!("outbound stopped");
                SessionEnd::Shutdown
            }
            Some(reason) if started.elapsed() > Duration::from_secs(30) => {
                tracing::warn!(error = %reason, "RabbitMQ session lost");
                SessionEnd::Healthy
            }
            Some(reason) => SessionEnd::Failed(reason),
        }
    }

    /// Declares the topology and starts one consumer per channel plus the
    /// unrouted one. Every AMQP channel it opens goes into `channels`, for the
    /// session to close.
    async fn start(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
        channels: &mut Vec<lapin::Channel>,
    ) -> Result<JoinSet<Result<(), Unsettled>>, String> {
        let names = self.settings.amqp.topology.clone();
        let publisher = Publisher::open(connection)
            .await
            .map_err(|e| e.to_string())?;
        channels.push(publisher.channel().clone());
        if publisher.frame_max() < amqp::MIN_FRAME_MAX {
            return Err(format!(
                "RabbitMQ negotiated a frame_max of {} bytes; xbridge needs at least {} to dead-letter and park replies (RabbitMQ's default is 131072)",
                publisher.frame_max(),
                amqp::MIN_FRAME_MAX
            ));
        }
        let plan = TopologyPlan::for_settings(&self.settings);
        declare_topology(publisher.channel(), &plan)
            .await
            .map_err(|e| format!("declaring the topology failed: {e}"))?;
        let reporter = Reporter::new(publisher, names.clone());

        let mut tasks = JoinSet::new();
        for ctx in &self.channels {
            let consumer = self
                .consumer(
                    connection,
                    &names.outgoing_queue(&ctx.name),
                    &ctx.name,
                    channels,
                )
                .await?;
            tasks.spawn(worker::consume(
                ctx.clone(),
                reporter.clone(),
                consumer,
                stop.clone(),
            ));
        }
        let consumer = self
            .consumer(connection, &names.unrouted, "unrouted", channels)
            .await?;
        tasks.spawn(unrouted::consume(reporter.clone(), consumer, stop.clone()));
        tasks.spawn(report_states(
            self.states.clone(),
            self.published_states.clone(),
            reporter,
            self.settings.outbound.retry.delays.clone(),
            stop.clone(),
        ));
        Ok(tasks)
    }

    async fn consumer(
        &self,
        connection: &Connection,
        queue: &str,
        label: &str,
        channels: &mut Vec<lapin::Channel>,
    ) -> Result<lapin::Consumer, String> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channels.push(channel.clone());
        channel
            .basic_qos(self.settings.amqp.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        channel
            .basic_consume(
                queue.into(),
                format!("xbridge-{label}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming {queue} failed: {e}"))
    }
}

/// How often the dead-letter queue's depth is sampled for metrics.
const DEPTH_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Tells the CRM of every channel state change while the session lasts, so
/// it can warn agents that replies on a channel are not going out; first the
/// states it has not been told yet (all of them in the first session).
async fn report_states(
    states: Arc<ChannelStates>,
    published: Arc<PublishedStates>,
    reporter: Reporter,
    delays: Vec<Duration>,
    stop: CancellationToken,
) -> Result<(), Unsettled> {
    let mut changes = states.subscribe();
    let tell = |event: ChannelStateEvent| {
        let reporter = reporter.clone();
        let published = published.clone();
        async move {
            if published.already_told(&event) {
                return;
            }
            match reporter.channel_state(&event).await {
                Ok(()) => published.record(&event),
                Err(e) => {
                    tracing::warn!(channel = %event.channel, error = %e, "channel.state not published; told again on the next session")
                }
            }
        }
    };
    for event in published.untold(&states.snapshot()) {
        tell(event).await;
    }
    // Also keeps the queue depth gauges fresh (after replays and purges too).
    let mut sample = tokio::time::interval(DEPTH_SAMPLE_INTERVAL);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = sample.tick() => {
                reporter.sample_queue_depths(&delays).await;
                continue;
            }
            _ = reporter.queues_changed() => {
                reporter.sample_queue_depths(&delays).await;
                continue;
            }
            event = changes.recv() => event,
        };
        match event {
            Ok(event) => tell(event).await,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "channel.state changes came faster than they were published; telling the current states"
                );
                for event in published.untold(&states.snapshot()) {
                    tell(event).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

enum SessionEnd {
    Shutdown,
    Failed(String),
    Healthy,
}
