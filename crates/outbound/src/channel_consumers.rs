//! Each channel's consumer on the running session, started and stopped one
//! by one as the channels served change (`LiveChannels`), so that a change to
//! one channel is never a restart of the others. A channel is consumed on an
//! AMQP channel of its own: stopping it (removed, paused) cancels the
//! consumer, lets the replies in flight settle within
//! `outbound.shutdown_grace`, and closes that AMQP channel, which hands what
//! was not settled back to the queue; the queue and what it holds stay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{close_channels, declare_reply_queue};
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

/// How a channel's consumer ended.
pub(crate) enum Ended {
    /// One asked to stop has stopped, and its AMQP channel is closed.
    Stopped,
    /// One ended on its own: what its task returned. The session ends.
    Failed(Result<Result<(), Unsettled>, JoinError>),
}

/// A consumer task that ended: its id and what it returned.
pub(crate) struct Joined(Id, Result<Result<(), Unsettled>, JoinError>);

/// One channel's consumer while it runs.
struct Running {
    amqp: lapin::Channel,
    tag: String,
    stop: CancellationToken,
    abort: AbortHandle,
    /// Once asked to stop: when its in-flight replies run out of time.
    deadline: Option<Instant>,
    /// Past its deadline: aborted, its end is awaited.
    aborted: bool,
}

/// What a session's channel consumers share, and the ones running.
pub(crate) struct ChannelConsumers {
    connection: Arc<Connection>,
    reporter: Reporter,
    names: TopologyNames,
    prefetch: u16,
    grace: Duration,
    /// The session's stop: every consumer's stops with it.
    stop: CancellationToken,
    /// Channels whose reply queues this session declared.
    declared: HashSet<String>,
    /// The AMQP channel reply queues are declared on, opened at the first
    /// declaration and again after one the broker refused (which closes it).
    declarer: Option<lapin::Channel>,
    running: BTreeMap<String, Running>,
    tasks: JoinSet<Result<(), Unsettled>>,
    by_task: HashMap<Id, String>,
}

impl ChannelConsumers {
    /// No consumer yet, on `connection` with `settings`' names, prefetch and
    /// grace.
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
            grace: settings.outbound.shutdown_grace,
            stop,
            declared: HashSet::new(),
            declarer: None,
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

    /// Starts consuming `ctx`'s channel, declaring its reply queue first when
    /// this session has not. A refusal of that queue is the channel's own
    /// ([`ConsumeError::Declare`], [`ConsumeError::Consume`]).
    pub(crate) async fn start(&mut self, ctx: Arc<ChannelContext>) -> Result<(), ConsumeError> {
        let name = ctx.name.clone();
        self.declare(&name).await?;
        let queue = self.names.outgoing_queue(&name);
        let opened = open_consumer(&self.connection, &queue, &name, self.prefetch).await;
        if let Err(ConsumeError::Consume { .. }) = &opened {
            // Deleted since it was declared, perhaps: declared again next time.
            self.declared.remove(&name);
        }
        let (amqp, consumer) = opened?;
        let tag = consumer.tag().as_str().to_owned();
        let stop = self.stop.child_token();
        let task = worker::consume(ctx, self.reporter.clone(), consumer, stop.clone());
        let abort = self.tasks.spawn(task);
        self.by_task.insert(abort.id(), name.clone());
        let running = Running {
            amqp,
            tag,
            stop,
            abort,
            deadline: None,
            aborted: false,
        };
        self.running.insert(name, running);
        Ok(())
    }

    /// Declares `name`'s reply queue and binding on the AMQP channel kept for
    /// declarations: a refused declaration closes the channel it was made on,
    /// so the next one opens another. The delay queues every channel shares
    /// are the session's, declared when it started.
    pub(crate) async fn declare(&mut self, name: &str) -> Result<(), ConsumeError> {
        if self.declared.contains(name) {
            return Ok(());
        }
        let amqp = match self.declarer.take() {
            Some(amqp) if amqp.status().connected() => amqp,
            _ => self
                .connection
                .create_channel()
                .await
                .map_err(ConsumeError::Channel)?,
        };
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

    /// Forgets that this session declared `name`'s queues: the channel was
    /// removed, and an operator may delete its queue before it comes back.
    pub(crate) fn forget(&mut self, name: &str) {
        self.declared.remove(name);
    }

    /// Asks `name`'s consumer to stop: it takes no more replies, and those in
    /// flight have until `outbound.shutdown_grace` from now to settle.
    /// [`ChannelConsumers::next_end`] says when it stopped.
    pub(crate) async fn begin_stop(&mut self, name: &str) {
        let Some(running) = self.running.get_mut(name) else {
            return;
        };
        if running.deadline.is_some() {
            return;
        }
        // The worker sees the stop before the end of its delivery stream, so
        // the cancel does not read as a consumer the broker cancelled.
        running.stop.cancel();
        running.deadline = Some(Instant::now() + self.grace);
        let cancel = running
            .amqp
            .basic_cancel(running.tag.as_str().into(), BasicCancelOptions::default());
        if let Err(e) = cancel.await {
            tracing::debug!(channel = name, error = %e, "cancelling a consumer");
        }
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
                .filter(|r| !r.aborted)
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
            if !running.aborted && running.deadline.is_some_and(|d| d <= now) {
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

    /// What became of the consumer [`ChannelConsumers::next_end`] saw end,
    /// once its AMQP channel is closed.
    pub(crate) async fn ended(&mut self, Joined(id, result): Joined) -> Ended {
        let name = self.by_task.remove(&id).unwrap_or_default();
        let Some(running) = self.running.remove(&name) else {
            return Ended::Failed(result);
        };
        close_channels(std::slice::from_ref(&running.amqp)).await;
        if running.deadline.is_none() {
            return Ended::Failed(result);
        }
        if let Ok(Err(e)) = &result {
            tracing::warn!(channel = %name, error = %e, "a stopping consumer left replies unsettled; they will be redelivered");
        }
        Ended::Stopped
    }

    /// Waits until every consumer ended (the session's stop was cancelled).
    pub(crate) async fn wait_all(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Aborts every consumer still running.
    pub(crate) fn abort_all(&mut self) {
        self.tasks.abort_all();
    }

    /// Closes every consumer's AMQP channel, once they ended: the session's
    /// end, before its connection closes.
    pub(crate) async fn close_all(&mut self) {
        let mut channels: Vec<lapin::Channel> =
            self.running.values().map(|r| r.amqp.clone()).collect();
        channels.extend(self.declarer.take());
        close_channels(&channels).await;
        self.running.clear();
        self.by_task.clear();
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
