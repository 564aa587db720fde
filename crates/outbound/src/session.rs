//! The outbound side's RabbitMQ session, run by the shared supervisor
//! ([`xbridge_amqp::Supervisor`]): on each new connection it declares the
//! topology every side shares and starts one consumer per channel served
//! (declaring its reply queue first), the unrouted one and the channel state
//! reports; while it runs it follows the channels served (`LiveChannels`),
//! starting and stopping one channel's consumer at a time
//! ([`crate::channel_consumers`]). A channel whose queue the broker refuses
//! waits and is tried again on its own ([`crate::refused_channels`]). The
//! session ends when a consumer fails, and on shutdown lets the in-flight
//! sends finish within the grace period.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{
    declare_plan, in_flight, open_publisher, ConnectError, Session, SessionLog, SetupError,
    Supervisor, TopologyPlan,
};
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::Settings;
use xbridge_core::contract::{ChannelState, ChannelStateEvent};
use xbridge_core::live_channels::{ChannelMap, LiveChannel, LiveChannels};
use xbridge_sharing::Shares;

use crate::channel_consumers::{open_consumer, sleep_until, ChannelConsumers, ConsumeError, Ended};
use crate::channel_contexts::{ChannelContexts, Upserted};
use crate::refused_channels::RefusedChannels;
use crate::report::Reporter;
use crate::state_sync::PublishedStates;
use crate::unrouted;
use crate::unsettled::Unsettled;

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
        settings.amqp.brokers.clone(),
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
    /// A consumer could not be started (its channel, its queues, its queue
    /// missing).
    #[error(transparent)]
    Consume(#[from] ConsumeError),
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

/// A channel whose consumer [`ReplySession::serve`] found to start: its
/// context, and whether it was added just now (to be announced once taking
/// replies).
struct Starting {
    ctx: Arc<crate::context::ChannelContext>,
    added: bool,
}

/// How a channel's start failed (see `ReplySession::refusal`).
enum Refusal {
    /// The broker refused the channel's queue: that channel waits alone.
    Channel(ConsumeError),
    /// The session cannot go on.
    Session(SessionError),
}

impl SessionError {
    /// Why a consumer task that ended on its own ends the session.
    fn ended(joined: Result<Result<(), Unsettled>, JoinError>) -> SessionError {
        match joined {
            Ok(Err(e)) => SessionError::Consumer(e),
            Ok(Ok(())) => SessionError::ConsumerStopped,
            Err(e) => SessionError::ConsumerPanicked(e),
        }
    }
}

/// The outbound session: what it starts on each connection, and what it
/// keeps across them (every channel's context, what the CRM was told).
pub(crate) struct ReplySession {
    pub(crate) settings: Arc<Settings>,
    pub(crate) states: Arc<ChannelStates>,
    pub(crate) live: Arc<LiveChannels>,
    pub(crate) contexts: ChannelContexts,
    pub(crate) published_states: Arc<PublishedStates>,
    /// The channels this replica serves of those `live` lists: the others'
    /// reply queues are declared here but consumed by another replica.
    pub(crate) shares: Arc<Shares>,
}

/// A running session's tasks, the channels' consumers, the registry it
/// follows, and the signal that stops them.
pub(crate) struct Consuming {
    tasks: JoinSet<Result<(), Unsettled>>,
    consumers: ChannelConsumers,
    refused: RefusedChannels,
    live: watch::Receiver<ChannelMap>,
    shares: watch::Receiver<Option<Arc<BTreeSet<String>>>>,
    stop: CancellationToken,
}

impl Session for ReplySession {
    type Error = SessionError;
    type Running = Consuming;

    /// Declares the topology of the channels served now and starts one
    /// consumer per channel not paused, plus the unrouted one, and the state
    /// reports.
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
        let live = self.live.subscribe();
        let shares = self.shares.subscribe();
        self.shares.begin();
        declare_plan(&publisher, &TopologyPlan::shared(&self.settings)).await?;
        let reporter = Reporter::new(publisher, self.settings.amqp.topology.clone());
        let stop = shutdown.child_token();
        let mut consumers = ChannelConsumers::new(
            connection.clone(),
            reporter.clone(),
            &self.settings,
            stop.clone(),
        );
        // Every served channel's reply queue (paused ones too) before the
        // unrouted consumer starts: on a broker that lost its definitions, a
        // reply published meanwhile would be dead-lettered `unknown_channel`.
        // A refusal is met again, and handled, when the channel is served.
        // Declared several at a time (`declare_many`): one after another,
        // ten thousand took minutes (issue 16).
        let names: Vec<String> = self.live.current().keys().cloned().collect();
        consumers.declare_many(&names).await?;
        let tasks = self
            .side_tasks(connection, channels, &reporter, &stop)
            .await?;
        let mut running = Consuming {
            tasks,
            consumers,
            refused: RefusedChannels::default(),
            live,
            shares,
            stop,
        };
        if let Err(e) = self.apply(&mut running).await {
            self.stop(running).await;
            return Err(e);
        }
        Ok(running)
    }

    async fn run(
        &mut self,
        running: &mut Consuming,
        shutdown: &CancellationToken,
    ) -> Option<SessionError> {
        tracing::info!(
            channels = self.contexts.len(),
            "outbound running: topology declared, consuming replies"
        );
        loop {
            tokio::select! {
                // Consumers stop on the same signal: a shutdown must not read
                // as a consumer that failed.
                biased;
                _ = shutdown.cancelled() => return None,
                Some(joined) = running.tasks.join_next() => {
                    return Some(SessionError::ended(joined));
                }
                joined = running.consumers.next_end() => {
                    if let Ended::Failed(joined) = running.consumers.ended(joined).await {
                        return Some(SessionError::ended(joined));
                    }
                }
                Ok(()) = running.live.changed() => {}
                Ok(()) = running.shares.changed() => {}
                () = sleep_until(running.refused.next_retry()) => {}
            }
            if let Err(e) = self.apply(running).await {
                return Some(e);
            }
        }
    }

    /// Stops taking replies and lets the in-flight ones finish within
    /// `outbound.shutdown_grace`; what does not is redelivered.
    async fn stop(&mut self, mut running: Consuming) {
        running.stop.cancel();
        let grace = self.settings.outbound.shutdown_grace;
        let (tasks, consumers) = (&mut running.tasks, &mut running.consumers);
        let all_ended = async {
            while tasks.join_next().await.is_some() {}
            consumers.wait_all().await;
        };
        if tokio::time::timeout(grace, all_ended).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight replies did not finish in time; they will be redelivered"
            );
            running.tasks.abort_all();
            running.consumers.abort_all();
        }
        running.consumers.close_all().await;
        self.shares.idle();
    }
}

impl ReplySession {
    /// The tasks beside the channels' consumers: the unrouted queue's
    /// consumer (its AMQP channel in `channels`) and the state reports.
    async fn side_tasks(
        &self,
        connection: &Connection,
        channels: &mut Vec<lapin::Channel>,
        reporter: &Reporter,
        stop: &CancellationToken,
    ) -> Result<JoinSet<Result<(), Unsettled>>, SessionError> {
        let names = &self.settings.amqp.topology;
        let prefetch = self.settings.amqp.prefetch;
        let (channel, consumer) =
            open_consumer(connection, &names.unrouted, "unrouted", prefetch).await?;
        channels.push(channel);
        let mut tasks = JoinSet::new();
        tasks.spawn(unrouted::consume(reporter.clone(), consumer, stop.clone()));
        let reports = StateReports {
            // Subscribed now: the changes this session's start makes are told too.
            changes: self.states.subscribe(),
            states: self.states.clone(),
            published: self.published_states.clone(),
            reporter: reporter.clone(),
        };
        let delays = self.settings.outbound.retry.delays.clone();
        tasks.spawn(reports.run(delays, stop.clone()));
        Ok(tasks)
    }

    /// Brings the channels' contexts and consumers in line with the channels
    /// served now, one channel at a time: the others never notice. A consumer
    /// still stopping is left to finish; its end applies the registry again.
    async fn apply(&mut self, running: &mut Consuming) -> Result<(), SessionError> {
        // The version first: what is decided below is of it or a later one.
        let version = self.shares.version();
        let served = running.live.borrow_and_update().clone();
        running.shares.borrow_and_update();
        for name in self.contexts.names() {
            if !served.contains_key(&name) {
                self.remove(running, &name).await;
            }
        }
        let applied = async {
            let mut starting = Vec::new();
            for channel in served.values() {
                starting.extend(self.serve(running, channel).await?);
            }
            self.start_consumers(running, starting).await
        }
        .await;
        // What still consumes here, stopping ones included: the membership
        // lets a channel go only once its consumer is gone, as of a served
        // set that no longer has it.
        self.shares
            .set_consuming(running.consumers.names(), version);
        applied
    }

    /// `name` is served no more: its consumer stops first (its in-flight
    /// replies settle), then its context goes and its state with it. What is
    /// in its queue stays there.
    async fn remove(&mut self, running: &mut Consuming, name: &str) {
        if running.consumers.has(name) {
            running.consumers.begin_stop(name).await;
            return;
        }
        running.consumers.forget(name);
        running.refused.forget(name);
        if self.contexts.remove(name) {
            self.states.set(name, ChannelState::Removed, None, None);
            self.states.remove(name);
            tracing::info!(channel = name, "channel removed");
        }
    }

    /// Serves `channel` as the registry has it: its context (new, or with
    /// new credentials), and its consumer running unless it is paused. A
    /// consumer to start is returned, for [`ReplySession::start_consumers`]
    /// to start with the others.
    async fn serve(
        &mut self,
        running: &mut Consuming,
        channel: &LiveChannel,
    ) -> Result<Option<Starting>, SessionError> {
        let name = channel.name();
        let (ctx, upserted) = match self.contexts.upsert(channel) {
            Ok(upserted) => upserted,
            Err(e) => {
                tracing::error!(channel = name, error = %e, "channel not served");
                return Ok(None);
            }
        };
        match upserted {
            Upserted::Added => {
                tracing::info!(channel = name, paused = channel.paused, "channel added")
            }
            Upserted::CredentialsChanged => {
                tracing::info!(channel = name, "channel credentials changed")
            }
            Upserted::Same => {}
        }
        let added = upserted == Upserted::Added;
        if channel.paused {
            self.hold(running, name, added, ChannelState::Paused)
                .await?;
            return Ok(None);
        }
        if !self.shares.serves(name) {
            // Another replica's share: the channel is served, not here.
            self.hold(running, name, added, ChannelState::Ok).await?;
            return Ok(None);
        }
        if running.consumers.has(name) || running.refused.waiting(name, Instant::now()) {
            return Ok(None);
        }
        self.shares.starting(name);
        Ok(Some(Starting { ctx, added }))
    }

    /// Starts the consumers [`ReplySession::serve`] returned, all together
    /// (`ChannelConsumers::start_many`), then tells each channel's outcome as
    /// its own: taking replies, or refused by the broker and waiting alone.
    /// When the session cannot go on, every channel is still told, and the
    /// first such error returned; a channel added now whose start it cut
    /// short is forgotten, so the next session adds (and announces) it.
    async fn start_consumers(
        &mut self,
        running: &mut Consuming,
        starting: Vec<Starting>,
    ) -> Result<(), SessionError> {
        if starting.is_empty() {
            return Ok(());
        }
        let added: HashSet<String> = starting
            .iter()
            .filter(|s| s.added)
            .map(|s| s.ctx.name.clone())
            .collect();
        let ctxs = starting.into_iter().map(|s| s.ctx).collect();
        let mut failed = None;
        for (ctx, started) in running.consumers.start_many(ctxs).await {
            let name = ctx.name.as_str();
            let added = added.contains(name);
            match self.refusal(running, started) {
                Ok(()) => {
                    running.refused.forget(name);
                    if self.is_refused(name) {
                        tracing::info!(channel = name, "RabbitMQ took the channel's reply queue");
                        self.states.set(name, ChannelState::Ok, None, None);
                    }
                    self.tell(name, ChannelState::Ok, added);
                }
                Err(Refusal::Channel(e)) => self.refused(running, name, &e, added),
                Err(Refusal::Session(e)) => {
                    if added {
                        self.contexts.remove(name);
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// A channel not consumed here, paused (`state` says so) or another
    /// replica's share (`ok`): its consumer stops, and its reply queue is
    /// declared (replies wait there, not in `unrouted`), tried again like a
    /// consumer's when the broker refuses it.
    async fn hold(
        &mut self,
        running: &mut Consuming,
        name: &str,
        added: bool,
        state: ChannelState,
    ) -> Result<(), SessionError> {
        if running.consumers.has(name) {
            running.consumers.begin_stop(name).await;
            return Ok(());
        }
        if !running.refused.waiting(name, Instant::now()) {
            let declared = running.consumers.declare(name).await;
            match self.refusal(running, declared) {
                Ok(()) => {
                    running.refused.forget(name);
                }
                Err(Refusal::Channel(e)) => {
                    let retry_in = running.refused.refuse(name, Instant::now());
                    tracing::error!(channel = name, error = %e, retry_in_secs = retry_in.as_secs(), "RabbitMQ refused the reply queue of a channel not consumed here");
                }
                Err(Refusal::Session(e)) => return Err(e),
            }
        }
        self.tell(name, state, added);
        Ok(())
    }

    /// Whether a failed start or declaration is the channel's own refusal
    /// (the broker closed the AMQP channel it was made on) or the session's
    /// trouble (the connection is gone: every channel would fail alike, and
    /// the session reconnects).
    fn refusal(
        &self,
        running: &Consuming,
        result: Result<(), ConsumeError>,
    ) -> Result<(), Refusal> {
        match result {
            Ok(()) => Ok(()),
            Err(e @ (ConsumeError::Declare { .. } | ConsumeError::Consume { .. }))
                if running.consumers.connected() =>
            {
                Err(Refusal::Channel(e))
            }
            Err(e) => Err(Refusal::Session(e.into())),
        }
    }

    fn is_refused(&self, name: &str) -> bool {
        self.states
            .get(name)
            .is_some_and(|status| status.state == ChannelState::BrokerRefused)
    }

    /// The broker refused `name`'s reply queue: the channel alone waits and is
    /// tried again, `broker_refused` with the broker's words meanwhile.
    fn refused(&mut self, running: &mut Consuming, name: &str, e: &ConsumeError, added: bool) {
        let retry_in = running.refused.refuse(name, Instant::now());
        let detail = xbridge_core::excerpt::cut(&e.to_string(), 300);
        tracing::error!(
            channel = name,
            error = %detail,
            retry_in_secs = retry_in.as_secs(),
            "RabbitMQ refused the channel's reply queue; its replies wait, the other channels go on"
        );
        let state = ChannelState::BrokerRefused;
        if added {
            self.states.add(name, state, Some(detail.clone()));
        }
        self.states.report(name, state, detail);
    }

    /// Tells operators and the CRM that `name` is now `paused` or taking
    /// replies (`ok`) once that is so: a channel added is announced, a
    /// pause or resume of a known one changes its state, and a consumer only
    /// restarted (a reconnect) keeps the state it had.
    fn tell(&mut self, name: &str, state: ChannelState, added: bool) {
        let paused = state == ChannelState::Paused;
        if added {
            self.states.add(name, state, None);
        }
        if self.contexts.set_paused(name, paused) {
            self.states.set(name, state, None, None);
            if !added {
                let change = if paused { "paused" } else { "resumed" };
                tracing::info!(channel = name, "channel {change}");
            }
        }
    }
}

/// How many `channel.state` events [`StateReports::tell_untold`] has in
/// flight at once.
const STATES_IN_FLIGHT: usize = 256;

/// How often the dead-letter queue's depth is sampled for metrics.
const DEPTH_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Tells the CRM of every channel state change while the session lasts, so it
/// can warn agents that replies on a channel are not going out.
struct StateReports {
    changes: broadcast::Receiver<ChannelStateEvent>,
    states: Arc<ChannelStates>,
    published: Arc<PublishedStates>,
    reporter: Reporter,
}

impl StateReports {
    /// First the states the CRM has not been told yet (all of them in the
    /// first session), then each change; also keeps the queue depth gauges
    /// fresh (after replays and purges too).
    async fn run(
        mut self,
        delays: Vec<Duration>,
        stop: CancellationToken,
    ) -> Result<(), Unsettled> {
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
                event = self.changes.recv() => event,
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

    /// Every current state the CRM was not told yet, several in flight at
    /// once: each is another channel's, and one after another (a confirmed
    /// publish each) 10,000 channels kept the process busy well after it
    /// was ready (issue 16).
    async fn tell_untold(&self) {
        let untold = self.published.untold(&self.states.snapshot());
        let tells = untold.into_iter().map(|event| self.tell(event)).collect();
        in_flight(tells, STATES_IN_FLIGHT).await;
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
