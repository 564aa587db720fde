//! Each channel's consumer on the running session, started and stopped one
//! by one as the channels served change (`LiveChannels`), so that a change to
//! one channel is never a restart of the others.
//!
//! **Shared AMQP channels.** Consumers share AMQP channels, at most
//! `amqp.consumers_per_channel` on one: a thousand channels on one AMQP
//! channel each made a thousand AMQP channels on one connection, and a
//! RabbitMQ 3.10 node stopped accepting connections each time such a
//! connection closed (issue 15). Each consumer keeps its own prefetch: the
//! AMQP channel's `basic.qos` is `global=false`, which RabbitMQ applies to
//! each consumer created on it afterwards, not to the channel as a whole.
//!
//! **Stopping one consumer** (its channel removed or paused) cancels it
//! (`basic.cancel`) and lets its replies in flight settle within
//! `outbound.shutdown_grace`. If it then holds nothing unsettled (an idle
//! channel, or one whose replies all settled), nothing else happens: the
//! other consumers on its AMQP channel never notice. If it still holds
//! deliveries (replies queued in its lanes, or delivered before the cancel
//! took effect), they must go back to the head of its queue, in order, and
//! only closing their AMQP channel does that: RabbitMQ 3.10 to 3.13 put a
//! reply nacked with requeue at the *tail* of a quorum queue without a
//! delivery limit (a `requeue` appended to the log; only a consumer that
//! goes away returns its deliveries to the head), behind the replies
//! published since and those beyond the prefetch, which breaks the order of
//! its conversations. So that AMQP channel is retired: it takes no new
//! consumer, its other consumers' workers stop (each lets its replies in
//! flight settle within the grace; they are not cancelled, so on a
//! single-active-consumer queue no other replica takes over before the
//! close), and once all have ended it is closed, which hands every unsettled
//! delivery back to the head of its queue in delivery order. The channels still served are then consumed
//! again on another AMQP channel ([`Ended::Stopped`] makes the session apply
//! the registry again). A channel is not consumed again before its old
//! deliveries are back: its consumer counts as running until the close.
//!
//! Ordering caveat: on a single-active-consumer queue RabbitMQ 3.10 makes the
//! next waiting consumer (another replica's) active at the `basic.cancel`,
//! while this one's unsettled deliveries are still out; whatever that one
//! takes meanwhile goes ahead of what is handed back here. On planned moves
//! the store's handover keeps other replicas from registering on the queue
//! until this one released it, so the replies handed back are at the
//! queue's head before anyone consumes again; an unplanned end (a crash, a
//! lost connection) is the broker's requeue at the connection's close, as
//! before.
//!
//! **Many at once.** A session's start declares every served channel's reply
//! queue and starts every consumer: with thousands of channels, one round
//! trip after another per declaration, check and `basic.consume` made the
//! start take minutes (issue 16). [`ChannelConsumers::declare_many`] and
//! [`ChannelConsumers::start_many`] send them without waiting for each
//! answer, on a few AMQP channels side by side. Each channel still gets its
//! own answer: whatever failed there (a refusal closes the AMQP channel it
//! came on, and everything sent after it on that channel fails with it) is
//! tried again one by one, as [`ChannelConsumers::declare`] and
//! [`ChannelConsumers::start`] do, so a refused queue is that channel's alone.
//!
//! **Other ends.** A consumer that ends on its own failure ends the session,
//! and a session's end closes every AMQP channel it opened (the broker hands
//! back what was not settled). A queue the broker
//! refuses must not close a shared AMQP channel: a reply queue is declared
//! (or, once declared, checked with a passive declare) on the AMQP channel
//! kept for declarations just before its consumer starts, so a queue deleted
//! meanwhile or declared with other arguments closes that one, and the
//! channel waits alone (`broker_refused`, [`crate::refused_channels`]). Only
//! a queue deleted between that check and the `basic.consume` still closes
//! the shared AMQP channel: its other consumers end, and with them the
//! session, which reconnects and serves them again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::Connection;
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{
    close_channels, declare_reply_queue, declare_reply_queues, in_flight, DECLARES_IN_FLIGHT,
};
use xbridge_core::config::{Settings, TopologyNames};

use crate::context::ChannelContext;
use crate::report::Reporter;
use crate::unsettled::Unsettled;
use crate::worker;

/// Why a consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Its AMQP channel could not be opened or given its prefetch: the
    /// connection's trouble, not the channel's.
    #[error("{0}")]
    Channel(lapin::Error),
    /// Its reply queue could not be declared (a queue declared before with
    /// other arguments, for one).
    #[error("declaring the reply queue of channel {channel} failed: {source}")]
    Declare {
        /// The channel.
        channel: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The queue could not be consumed (a missing queue, for one).
    #[error("consuming {queue} failed: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// lapin's error.
        source: lapin::Error,
    },
}

/// A consumer of `queue` on an AMQP channel of its own with `prefetch`,
/// tagged `xbridge-{label}`. On failure the AMQP channel is closed here.
pub(crate) async fn open_consumer(
    connection: &Connection,
    queue: &str,
    label: &str,
    prefetch: u16,
) -> Result<(lapin::Channel, lapin::Consumer), ConsumeError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(ConsumeError::Channel)?;
    let consumer = async {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(ConsumeError::Channel)?;
        channel
            .basic_consume(
                queue.into(),
                format!("xbridge-{label}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| ConsumeError::Consume {
                queue: queue.to_owned(),
                source,
            })
    }
    .await;
    match consumer {
        Ok(consumer) => Ok((channel, consumer)),
        Err(e) => {
            close_channels(std::slice::from_ref(&channel)).await;
            Err(e)
        }
    }
}

/// AMQP channels that declare reply queues side by side in
/// [`ChannelConsumers::declare_many`]: RabbitMQ handles one AMQP channel's
/// methods one after the other, and creating a quorum queue waits for its Ra
/// member to start and for the log's fsync, which queues created at the same
/// time share. Opened for the declarations and closed after them.
const BULK_DECLARERS: usize = 4;

/// A consumer's start that [`ChannelConsumers::start_many`] sends together
/// with the others: its channel, the shared AMQP channel it takes a place on.
struct Pending {
    ctx: Arc<ChannelContext>,
    shared: u64,
    amqp: lapin::Channel,
    queue: String,
}

/// `p`'s `basic.consume`, for [`ChannelConsumers::start_many`].
async fn consume_pending(p: Pending) -> (Pending, lapin::Result<lapin::Consumer>) {
    let consumed = p
        .amqp
        .basic_consume(
            p.queue.as_str().into(),
            format!("xbridge-{}", p.ctx.name).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    (p, consumed)
}

/// Whether `queue` is there (a passive declare on `amqp`), for
/// [`ChannelConsumers::start_many`].
async fn check_queue(
    amqp: &lapin::Channel,
    queue: String,
    ctx: Arc<ChannelContext>,
) -> (Arc<ChannelContext>, bool) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let there = amqp
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok();
    (ctx, there)
}

/// How a channel's consumer ended.
pub(crate) enum Ended {
    /// One asked to stop has stopped (and, if it held replies, waits for
    /// its AMQP channel's close, which hands them back): the session applies
    /// the registry again.
    Stopped,
    /// One ended on its own: what its task returned. The session ends.
    Failed(Result<Result<(), Unsettled>, JoinError>),
}

/// A consumer task that ended: its id and what it returned.
pub(crate) struct Joined(Id, Result<Result<(), Unsettled>, JoinError>);

/// One channel's consumer while it runs.
struct Running {
    /// The AMQP channel it shares ([`ChannelConsumers::shared`]'s key).
    shared: u64,
    /// lapin's consumer, a clone of the worker's: what lapin buffered for it
    /// and the worker never took is read from it when it stopped.
    consumer: lapin::Consumer,
    /// The deliveries the worker took, to hand back those left unsettled.
    held: Held,
    tag: String,
    stop: CancellationToken,
    abort: AbortHandle,
    /// Once asked to stop: when its in-flight replies run out of time.
    deadline: Option<Instant>,
    /// Past its deadline: aborted, its end is awaited.
    aborted: bool,
    /// Its task ended; it waits for its retired AMQP channel to close.
    finished: bool,
}

/// An AMQP channel that consumers share.
struct Shared {
    amqp: lapin::Channel,
    /// The consumers on it, those waiting for its close included.
    consumers: usize,
    /// A stopped consumer left deliveries on it: it takes no new consumer
    /// and closes once every consumer on it ended.
    retiring: bool,
}

/// The deliveries one consumer's worker took: one whose acker is still
/// usable was neither acked nor nacked. Kept at most about twice the
/// prefetch long (settled ones are dropped as it grows).
#[derive(Clone)]
struct Held {
    ackers: Arc<Mutex<Vec<Acker>>>,
    /// Its length at which settled deliveries are dropped.
    sweep_at: usize,
}

impl Held {
    fn new(prefetch: u16) -> Held {
        Held {
            ackers: Arc::default(),
            sweep_at: 2 * usize::from(prefetch) + 16,
        }
    }

    /// Remembers `delivery`, on its way to the worker.
    fn keep(&self, delivery: &Delivery) {
        let mut ackers = self.ackers.lock().unwrap_or_else(|e| e.into_inner());
        if ackers.len() >= self.sweep_at {
            ackers.retain(Acker::usable);
        }
        ackers.push(delivery.acker.clone());
    }

    /// How many of them are not settled.
    fn unsettled(&self) -> usize {
        let ackers = self.ackers.lock().unwrap_or_else(|e| e.into_inner());
        ackers.iter().filter(|acker| acker.usable()).count()
    }
}

/// What a session's channel consumers share, and the ones running.
pub(crate) struct ChannelConsumers {
    connection: Arc<Connection>,
    reporter: Reporter,
    names: TopologyNames,
    prefetch: u16,
    /// `amqp.consumers_per_channel`.
    per_channel: usize,
    grace: Duration,
    /// The session's stop: every consumer's stops with it.
    stop: CancellationToken,
    /// Channels whose reply queues this session declared.
    declared: HashSet<String>,
    /// The AMQP channel reply queues are declared (and checked) on, opened at
    /// the first declaration and again after one the broker refused (which
    /// closes it).
    declarer: Option<lapin::Channel>,
    /// The AMQP channels consumers share, by the order they were opened.
    shared: BTreeMap<u64, Shared>,
    next_shared: u64,
    running: BTreeMap<String, Running>,
    tasks: JoinSet<Result<(), Unsettled>>,
    by_task: HashMap<Id, String>,
}

impl ChannelConsumers {
    /// No consumer yet, on `connection` with `settings`' names, prefetch,
    /// consumers per AMQP channel and grace.
    pub(crate) fn new(
        connection: Arc<Connection>,
        reporter: Reporter,
        settings: &Settings,
        stop: CancellationToken,
    ) -> ChannelConsumers {
        ChannelConsumers {
            connection,
            reporter,
            names: settings.amqp.topology.clone(),
            prefetch: settings.amqp.prefetch,
            per_channel: usize::from(settings.amqp.consumers_per_channel.max(1)),
            grace: settings.outbound.shutdown_grace,
            stop,
            declared: HashSet::new(),
            declarer: None,
            shared: BTreeMap::new(),
            next_shared: 0,
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            by_task: HashMap::new(),
        }
    }

    /// Whether the session's connection is still up: a failure while it is
    /// is the broker's answer about one channel, not a lost connection.
    pub(crate) fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// The channels with a consumer (running, or stopping).
    pub(crate) fn names(&self) -> std::collections::BTreeSet<String> {
        self.running.keys().cloned().collect()
    }

    /// Whether `name` has a consumer (running, or stopping).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.running.contains_key(name)
    }

    /// Starts consuming `ctx`'s channel on a shared AMQP channel, its reply
    /// queue declared (or checked) first on the declarer. A refusal of that
    /// queue is the channel's own ([`ConsumeError::Declare`],
    /// [`ConsumeError::Consume`]).
    pub(crate) async fn start(&mut self, ctx: Arc<ChannelContext>) -> Result<(), ConsumeError> {
        let name = ctx.name.clone();
        let queue = self.names.outgoing_queue(&name);
        if self.declared.contains(&name) {
            self.check(&name, &queue).await?;
        } else {
            self.declare(&name).await?;
        }
        let shared = self.shared_channel().await?;
        let amqp = self.shared[&shared].amqp.clone();
        let consumed = amqp
            .basic_consume(
                queue.as_str().into(),
                format!("xbridge-{name}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let consumer = match consumed {
            Ok(consumer) => consumer,
            Err(source) => {
                // Deleted since it was checked, perhaps: declared again next
                // time. The broker closed the shared AMQP channel; one no
                // consumer is on any more is closed here.
                self.declared.remove(&name);
                self.release(shared).await;
                return Err(ConsumeError::Consume { queue, source });
            }
        };
        self.shared.get_mut(&shared).expect("just used").consumers += 1;
        self.register(ctx, shared, amqp.id(), consumer);
        Ok(())
    }

    /// Runs the worker of `ctx`'s channel on `consumer`, just started on the
    /// shared AMQP channel `shared` (its place there already counted).
    fn register(
        &mut self,
        ctx: Arc<ChannelContext>,
        shared: u64,
        amqp_channel: u16,
        consumer: lapin::Consumer,
    ) {
        let name = ctx.name.clone();
        let tag = consumer.tag().as_str().to_owned();
        let held = Held::new(self.prefetch);
        let seen = held.clone();
        let deliveries = consumer.clone().inspect(move |delivery| {
            if let Ok(delivery) = delivery {
                seen.keep(delivery);
            }
        });
        let stop = self.stop.child_token();
        let task = worker::consume(ctx, self.reporter.clone(), deliveries, stop.clone());
        let abort = self.tasks.spawn(task);
        self.by_task.insert(abort.id(), name.clone());
        tracing::debug!(channel = %name, amqp_channel, "consuming replies");
        let running = Running {
            shared,
            consumer,
            held,
            tag,
            stop,
            abort,
            deadline: None,
            aborted: false,
            finished: false,
        };
        self.running.insert(name, running);
    }

    /// Starts consuming every channel of `ctxs`, as [`ChannelConsumers::start`]
    /// does for one, with the declarations or checks of their reply queues,
    /// then their `basic.consume`s, sent without waiting for each answer
    /// (see the module's doc). What failed that way is started again one by
    /// one, so each channel's result is its own, as `start` gives it; in no
    /// particular order.
    pub(crate) async fn start_many(
        &mut self,
        ctxs: Vec<Arc<ChannelContext>>,
    ) -> Vec<(Arc<ChannelContext>, Result<(), ConsumeError>)> {
        let mut results = Vec::with_capacity(ctxs.len());
        let mut again = Vec::new();
        let (checked, failed) = self.check_many(ctxs).await;
        again.extend(failed);
        let mut pending = Vec::with_capacity(checked.len());
        let mut checked = checked.into_iter();
        for ctx in checked.by_ref() {
            let Ok(shared) = self.shared_channel().await else {
                // The connection's trouble: `start` says so for each.
                again.push(ctx);
                break;
            };
            let on = self.shared.get_mut(&shared).expect("just opened or found");
            // Its place is taken now, so the next one may need another channel.
            on.consumers += 1;
            pending.push(Pending {
                queue: self.names.outgoing_queue(&ctx.name),
                amqp: on.amqp.clone(),
                shared,
                ctx,
            });
        }
        again.extend(checked);
        let consumes = pending.into_iter().map(consume_pending).collect();
        let consumed = in_flight(consumes, DECLARES_IN_FLIGHT * BULK_DECLARERS).await;
        let mut released = Vec::new();
        for (p, consumed) in consumed {
            match consumed {
                Ok(consumer) => {
                    self.register(p.ctx.clone(), p.shared, p.amqp.id(), consumer);
                    results.push((p.ctx, Ok(())));
                }
                Err(e) => {
                    tracing::debug!(channel = %p.ctx.name, error = %e, "consuming with others failed; starting it alone");
                    if let Some(shared) = self.shared.get_mut(&p.shared) {
                        shared.consumers = shared.consumers.saturating_sub(1);
                    }
                    // Declared again, as `start` does after a failed consume.
                    self.declared.remove(&p.ctx.name);
                    released.push(p.shared);
                    again.push(p.ctx);
                }
            }
        }
        for shared in released {
            self.release(shared).await;
        }
        for ctx in again {
            let started = self.start(ctx.clone()).await;
            results.push((ctx, started));
        }
        results
    }

    /// The first step of [`ChannelConsumers::start_many`]: the reply queues
    /// of `ctxs` not declared in this session declared, the others checked
    /// (passive declares on the declarer), all sent without waiting for each
    /// answer. Those that passed, and those to start one by one.
    async fn check_many(
        &mut self,
        ctxs: Vec<Arc<ChannelContext>>,
    ) -> (Vec<Arc<ChannelContext>>, Vec<Arc<ChannelContext>>) {
        let (known, new): (Vec<_>, Vec<_>) = ctxs
            .into_iter()
            .partition(|ctx| self.declared.contains(&ctx.name));
        let new_names: Vec<String> = new.iter().map(|ctx| ctx.name.clone()).collect();
        let (mut passed, mut failed) = (Vec::new(), Vec::new());
        match self.declare_pipelined(&new_names).await {
            Ok(_) => {
                let (declared, not): (Vec<_>, Vec<_>) = new
                    .into_iter()
                    .partition(|ctx| self.declared.contains(&ctx.name));
                passed.extend(declared);
                failed.extend(not);
            }
            Err(_) => failed.extend(new),
        }
        if known.is_empty() {
            return (passed, failed);
        }
        let Ok(amqp) = self.declarer().await else {
            failed.extend(known);
            return (passed, failed);
        };
        let checks = known
            .into_iter()
            .map(|ctx| {
                let queue = self.names.outgoing_queue(&ctx.name);
                check_queue(&amqp, queue, ctx)
            })
            .collect();
        let checks = in_flight(checks, DECLARES_IN_FLIGHT).await;
        if amqp.status().connected() {
            self.declarer = Some(amqp);
        }
        for (ctx, there) in checks {
            if there {
                passed.push(ctx);
            } else {
                failed.push(ctx);
            }
        }
        (passed, failed)
    }

    /// An AMQP channel with room for one more consumer: the first opened
    /// that has some, or a new one with the consumers' prefetch.
    async fn shared_channel(&mut self) -> Result<u64, ConsumeError> {
        let room = self.shared.iter().find(|(_, s)| {
            !s.retiring && s.consumers < self.per_channel && s.amqp.status().connected()
        });
        if let Some((id, _)) = room {
            return Ok(*id);
        }
        let amqp = self
            .connection
            .create_channel()
            .await
            .map_err(ConsumeError::Channel)?;
        // global=false: the prefetch of each consumer started on it, not a
        // bound the consumers share.
        let qos = BasicQosOptions { global: false };
        if let Err(e) = amqp.basic_qos(self.prefetch, qos).await {
            close_channels(std::slice::from_ref(&amqp)).await;
            return Err(ConsumeError::Channel(e));
        }
        let id = self.next_shared;
        self.next_shared += 1;
        tracing::debug!(
            amqp_channel = amqp.id(),
            "opened an AMQP channel for reply consumers"
        );
        let shared = Shared {
            amqp,
            consumers: 0,
            retiring: false,
        };
        self.shared.insert(id, shared);
        Ok(id)
    }

    /// Closes the shared AMQP channel `id` once no consumer is on it.
    async fn release(&mut self, id: u64) {
        if self.shared.get(&id).is_some_and(|s| s.consumers == 0) {
            if let Some(shared) = self.shared.remove(&id) {
                close_channels(std::slice::from_ref(&shared.amqp)).await;
            }
        }
    }

    /// Declares `name`'s reply queue and binding on the AMQP channel kept for
    /// declarations: a refused declaration closes the channel it was made on,
    /// so the next one opens another. The delay queues every channel shares
    /// are the session's, declared when it started.
    pub(crate) async fn declare(&mut self, name: &str) -> Result<(), ConsumeError> {
        if self.declared.contains(name) {
            return Ok(());
        }
        let amqp = self.declarer().await?;
        match declare_reply_queue(&amqp, &self.names, name).await {
            Ok(()) => {
                self.declarer = Some(amqp);
                self.declared.insert(name.to_owned());
                Ok(())
            }
            Err(source) => {
                close_channels(std::slice::from_ref(&amqp)).await;
                Err(ConsumeError::Declare {
                    channel: name.to_owned(),
                    source,
                })
            }
        }
    }

    /// Declares the reply queues of `names` not declared in this session yet,
    /// as [`ChannelConsumers::declare`] does for one, several at a time on
    /// [`BULK_DECLARERS`] AMQP channels (see the module's doc). A queue the
    /// broker refuses stays undeclared: its channel meets the refusal again,
    /// and waits alone, when it is served. Fails only for the connection's
    /// trouble ([`ConsumeError::Channel`]).
    pub(crate) async fn declare_many(&mut self, names: &[String]) -> Result<(), ConsumeError> {
        let new: Vec<String> = names
            .iter()
            .filter(|name| !self.declared.contains(*name))
            .cloned()
            .collect();
        for name in self.declare_pipelined(&new).await? {
            if let Err(e @ ConsumeError::Channel(_)) = self.declare(&name).await {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Declares `names` on AMQP channels of their own, closed afterwards,
    /// and records those declared; returns the others, to be tried again one
    /// by one.
    async fn declare_pipelined(&mut self, names: &[String]) -> Result<Vec<String>, ConsumeError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let lanes = names
            .len()
            .div_ceil(DECLARES_IN_FLIGHT)
            .clamp(1, BULK_DECLARERS);
        let mut amqps = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            match self.connection.create_channel().await {
                Ok(amqp) => amqps.push(amqp),
                Err(e) => {
                    close_channels(&amqps).await;
                    return Err(ConsumeError::Channel(e));
                }
            }
        }
        let per_lane = names.len().div_ceil(lanes);
        let declared = futures::future::join_all(
            amqps
                .iter()
                .zip(names.chunks(per_lane))
                .map(|(amqp, chunk)| declare_reply_queues(amqp, &self.names, chunk)),
        )
        .await;
        close_channels(&amqps).await;
        let mut failed = Vec::new();
        for (name, result) in declared.into_iter().flatten() {
            match result {
                Ok(()) => {
                    self.declared.insert(name);
                }
                Err(e) => {
                    tracing::debug!(channel = %name, error = %e, "declaring with others failed; declaring it alone");
                    failed.push(name);
                }
            }
        }
        Ok(failed)
    }

    /// Checks that `name`'s reply queue, declared before, is still there (a
    /// passive declare on the declarer), so an operator's deletion closes the
    /// declarer and not a shared AMQP channel; it is declared again next time.
    async fn check(&mut self, name: &str, queue: &str) -> Result<(), ConsumeError> {
        let amqp = self.declarer().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match amqp
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                self.declarer = Some(amqp);
                Ok(())
            }
            Err(source) => {
                close_channels(std::slice::from_ref(&amqp)).await;
                self.declared.remove(name);
                Err(ConsumeError::Consume {
                    queue: queue.to_owned(),
                    source,
                })
            }
        }
    }

    /// The declarer, opened again when the broker closed it.
    async fn declarer(&mut self) -> Result<lapin::Channel, ConsumeError> {
        match self.declarer.take() {
            Some(amqp) if amqp.status().connected() => Ok(amqp),
            _ => self
                .connection
                .create_channel()
                .await
                .map_err(ConsumeError::Channel),
        }
    }

    /// Forgets that this session declared `name`'s queues: the channel was
    /// removed, and an operator may delete its queue before it comes back.
    pub(crate) fn forget(&mut self, name: &str) {
        self.declared.remove(name);
    }

    /// Asks `name`'s consumer to stop: it takes no more replies, and those in
    /// flight have until `outbound.shutdown_grace` from now to settle.
    /// [`ChannelConsumers::next_end`] says when it stopped.
    pub(crate) async fn begin_stop(&mut self, name: &str) {
        if !self.stop_worker(name) {
            return;
        }
        let Some(running) = self.running.get(name) else {
            return;
        };
        let Some(shared) = self.shared.get(&running.shared) else {
            return;
        };
        // Awaits the broker's cancel-ok: nothing is delivered to it after.
        let cancel = shared
            .amqp
            .basic_cancel(running.tag.as_str().into(), BasicCancelOptions::default());
        if let Err(e) = cancel.await {
            tracing::debug!(channel = name, error = %e, "cancelling a consumer");
        }
    }

    /// Stops `name`'s worker (it takes no more replies, those in flight have
    /// the grace to settle), leaving its consumer registered; whether it was
    /// running and not stopping yet.
    fn stop_worker(&mut self, name: &str) -> bool {
        let Some(running) = self.running.get_mut(name) else {
            return false;
        };
        if running.deadline.is_some() {
            return false;
        }
        // The worker sees the stop before the end of its delivery stream, so
        // a cancel does not read as a consumer the broker cancelled.
        running.stop.cancel();
        running.deadline = Some(Instant::now() + self.grace);
        true
    }

    /// The next consumer task to end (one asked to stop, or one that ended
    /// on its own), for [`ChannelConsumers::ended`]. Aborts a stopping
    /// consumer whose in-flight replies ran out of time. Never ends while
    /// there is no consumer. Cancel-safe: a session selects on it.
    pub(crate) async fn next_end(&mut self) -> Joined {
        loop {
            if self.tasks.is_empty() {
                std::future::pending::<()>().await;
            }
            let deadline = self
                .running
                .values()
                .filter(|r| !r.aborted && !r.finished)
                .filter_map(|r| r.deadline)
                .min();
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => joined,
                _ = sleep_until(deadline) => {
                    self.abort_late();
                    continue;
                }
            };
            match joined {
                Some(Ok((id, result))) => return Joined(id, Ok(result)),
                Some(Err(e)) => return Joined(e.id(), Err(e)),
                None => continue,
            }
        }
    }

    /// Aborts the stopping consumers past their deadline.
    fn abort_late(&mut self) {
        let now = Instant::now();
        for (name, running) in &mut self.running {
            let late = running.deadline.is_some_and(|d| d <= now);
            if late && !running.aborted && !running.finished {
                tracing::warn!(
                    channel = %name,
                    grace_ms = self.grace.as_millis() as u64,
                    "in-flight replies did not finish in time; they will be redelivered"
                );
                running.abort.abort();
                running.aborted = true;
            }
        }
    }

    /// What became of the consumer [`ChannelConsumers::next_end`] saw end.
    /// One asked to stop that holds nothing unsettled is gone, and its AMQP
    /// channel closed if no other consumer is on it; one that holds
    /// deliveries retires its AMQP channel (see the module's doc) and waits
    /// for its close. One that ended on its own is left to the session's
    /// end, which closes every AMQP channel.
    pub(crate) async fn ended(&mut self, Joined(id, result): Joined) -> Ended {
        let name = self.by_task.remove(&id).unwrap_or_default();
        let Some(running) = self.running.get_mut(&name) else {
            return Ended::Failed(result);
        };
        if running.deadline.is_none() {
            self.running.remove(&name);
            return Ended::Failed(result);
        }
        running.finished = true;
        let shared = running.shared;
        let unsettled = unsettled(running);
        if let Ok(Err(e)) = &result {
            tracing::warn!(channel = %name, error = %e, "a stopping consumer left replies unsettled; they go back to its queue");
        }
        let retiring = self.shared.get(&shared).is_none_or(|s| s.retiring);
        if !retiring && unsettled == 0 {
            self.running.remove(&name);
            if let Some(shared) = self.shared.get_mut(&shared) {
                shared.consumers = shared.consumers.saturating_sub(1);
            }
            self.release(shared).await;
            return Ended::Stopped;
        }
        if !retiring {
            self.retire(shared, &name, unsettled);
        }
        self.close_retired(shared).await;
        Ended::Stopped
    }

    /// `name`'s consumer stopped holding `unsettled` deliveries on the AMQP
    /// channel `id`: it takes no new consumer, and its other consumers' workers
    /// stop (their consumers stay registered until the close).
    fn retire(&mut self, id: u64, name: &str, unsettled: usize) {
        let Some(shared) = self.shared.get_mut(&id) else {
            return;
        };
        shared.retiring = true;
        let others: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.shared == id && r.deadline.is_none())
            .map(|(other, _)| other.clone())
            .collect();
        tracing::info!(
            channel = name,
            unsettled,
            amqp_channel = shared.amqp.id(),
            others = others.len(),
            "a stopped consumer holds replies: its AMQP channel closes to hand them back to the head of the queue, and the other channels on it are consumed again on another"
        );
        // Not cancelled: on a single-active-consumer queue a cancel would make
        // another replica's waiting consumer active while these still hold
        // replies; the close hands them back first, then lets it take over.
        for other in others {
            self.stop_worker(&other);
        }
    }

    /// Closes the retired AMQP channel `id` once every consumer on it ended:
    /// the broker hands their unsettled deliveries back to the head of their
    /// queues, in order. They are gone then, and the session serves again
    /// those of their channels still served.
    async fn close_retired(&mut self, id: u64) {
        let on_it = |r: &Running| r.shared == id;
        if self.running.values().any(|r| on_it(r) && !r.finished) {
            return;
        }
        if let Some(shared) = self.shared.remove(&id) {
            close_channels(std::slice::from_ref(&shared.amqp)).await;
        }
        self.running.retain(|_, r| !on_it(r));
    }

    /// Waits until every consumer ended (the session's stop was cancelled).
    pub(crate) async fn wait_all(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Aborts every consumer still running.
    pub(crate) fn abort_all(&mut self) {
        self.tasks.abort_all();
    }

    /// Closes every AMQP channel consumers share, and the declarer, once the
    /// consumers ended: the session's end, before its connection closes.
    /// The broker requeues what was not settled.
    pub(crate) async fn close_all(&mut self) {
        let mut channels: Vec<lapin::Channel> =
            self.shared.values().map(|s| s.amqp.clone()).collect();
        channels.extend(self.declarer.take());
        close_channels(&channels).await;
        self.shared.clear();
        self.running.clear();
        self.by_task.clear();
    }
}

/// How many deliveries the stopped consumer `running` holds unsettled:
/// those its worker took and left, and those lapin buffered for it and the
/// worker never took (the broker sent nothing for it after its cancel-ok).
fn unsettled(running: &Running) -> usize {
    let mut consumer = running.consumer.clone();
    let mut buffered = 0;
    while let Some(Some(Ok(_))) = consumer.next().now_or_never() {
        buffered += 1;
    }
    running.held.unsettled() + buffered
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
