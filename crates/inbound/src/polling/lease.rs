//! The poll lease: which replica polls a channel, decided by RabbitMQ.
//!
//! Several replicas on one broker must not poll one X account at the same time
//! (X bills every event read, and two pollers would race on the cursor). Rather
//! than an election of its own, the bridge uses RabbitMQ's **single active
//! consumer**: each polled channel has a quorum queue
//! `<poll_lease_prefix><channel>` declared with `x-single-active-consumer`, and
//! every replica consumes it (prefetch 1, manual acks). The broker delivers
//! only to the active consumer, the first one registered; when it goes away, the
//! broker activates the next one.
//!
//! A consumer learns that it is the active one only by receiving a message, so
//! the queue holds a **token**: receiving it is acquiring the lease, and the
//! lease is held for as long as the consumer stays registered. In detail:
//!
//! - **Seeding.** A contender that starts while the queue has no ready message
//!   publishes a token. One already held by another replica is not counted, so
//!   this may make an extra token; that is harmless, since only the active
//!   consumer ever receives tokens, and it acks extras (a delivery while another
//!   token is ready in the queue) so one remains. A waiting contender seeds again
//!   every renewal period when the queue is empty, so a token that was lost
//!   (purged, or dropped by RabbitMQ 4's delivery limit after many crashes) is
//!   replaced within one period.
//! - **Renewal.** RabbitMQ's `consumer_timeout` (30 minutes by default) closes a
//!   channel that keeps a delivery unacknowledged that long, so the holder
//!   renews every [`RENEW_EVERY`]: it publishes a new token (confirmed) and only
//!   then acks the old one, which keeps at least one token in the queue at all
//!   times. The broker hands the new token to the same, still active, consumer.
//! - **Takeover.** When the holder's connection closes (a clean stop, a crash,
//!   SIGKILL: the kernel closes the socket) the broker requeues its token at once
//!   and activates the next contender, which receives it and starts polling from
//!   the cursor in the state store. On a silent network partition the broker
//!   notices the holder is gone after the AMQP heartbeat timeout (60 s by
//!   default), then hands over the same way. The holder checks with the broker
//!   before every poll ([`PollLease::confirm`]), so a partitioned holder stops
//!   polling at its next poll instead of competing with its successor.
//! - **Loss.** A closed channel or connection, a failed renewal, or a consumer
//!   the broker cancelled (the queue was deleted) ends the lease for good; the
//!   caller contends again on a new connection.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, Consumer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::declare_poll_lease_queue;

/// How often the holder renews its token: well inside RabbitMQ's default
/// `consumer_timeout` of 30 minutes (a broker configured below this would
/// close the holder's channel and move the lease around).
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);

/// How long [`PollLease::confirm`] waits for the broker by default before it
/// counts the lease as lost.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a lease could not be contended for, or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Opening the lease's AMQP channel, declaring its queue or consuming it failed.
    #[error("channel {channel}: cannot contend for the poll lease on {queue}: {detail}")]
    Setup {
        /// The polled channel.
        channel: String,
        /// The lease queue.
        queue: String,
        /// What failed.
        detail: String,
    },
    /// The lease ended (or was never acquired): the broker connection or channel
    /// closed, a renewal failed, or the broker cancelled the consumer.
    #[error("channel {channel}: poll lease lost: {reason}")]
    Lost {
        /// The polled channel.
        channel: String,
        /// What ended it.
        reason: String,
    },
    /// [`PollLease::release`] or dropping the lease ended it.
    #[error("channel {channel}: poll lease released")]
    Released {
        /// The polled channel.
        channel: String,
    },
}

/// Where a contender stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Consuming the lease queue, but another replica is the active consumer.
    Waiting,
    /// The broker made this contender the active consumer: this replica polls.
    Held {
        /// Renewals since the lease was acquired (tests wait on it).
        renewals: u64,
    },
    /// Over: contend again (on a new connection, if that one is gone).
    Ended(LeaseError),
}

/// One replica's claim on one channel's poll lease. Contending starts a task
/// that consumes the lease queue and renews the token while held; dropping the
/// lease (or [`release`](PollLease::release)) closes its AMQP channel, which
/// hands the token to the next replica.
pub struct PollLease {
    channel: String,
    queue: String,
    amqp: Channel,
    state: watch::Receiver<LeaseState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PollLease {
    /// Starts contending for `channel`'s lease on `connection`: opens an AMQP
    /// channel of its own (confirm mode, prefetch 1), declares the lease queue
    /// `queue` (idempotent), consumes it, and seeds a token when the queue has
    /// none ready. The holder renews every `renew_every` ([`RENEW_EVERY`] in
    /// the service; tests use less).
    pub async fn contend(
        connection: &Connection,
        queue: &str,
        channel: &str,
        renew_every: Duration,
    ) -> Result<PollLease, LeaseError> {
        let setup = |e: lapin::Error| LeaseError::Setup {
            channel: channel.to_owned(),
            queue: queue.to_owned(),
            detail: e.to_string(),
        };
        let amqp = connection.create_channel().await.map_err(setup)?;
        let started = start_consuming(&amqp, queue, channel).await;
        let (consumer, seed) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = amqp.close(200, "poll lease setup failed".into()).await;
                return Err(setup(e));
            }
        };
        let (state_tx, state) = watch::channel(LeaseState::Waiting);
        let stop = CancellationToken::new();
        let driver = Driver {
            channel: channel.to_owned(),
            queue: queue.to_owned(),
            amqp: amqp.clone(),
            renew_every,
        };
        let task = tokio::spawn(driver.run(consumer, seed, state_tx, stop.clone()));
        Ok(PollLease {
            channel: channel.to_owned(),
            queue: queue.to_owned(),
            amqp,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The polled channel this lease is for.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Where the contender stands now.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// `true` while this replica holds the lease.
    pub fn is_held(&self) -> bool {
        matches!(*self.state.borrow(), LeaseState::Held { .. })
    }

    /// A watch of the state, for waiting on a particular one (tests wait for a
    /// number of renewals).
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Waits until the broker makes this contender the holder; an error when
    /// the lease ended first.
    pub async fn acquired(&mut self) -> Result<(), LeaseError> {
        let state = self
            .state
            .wait_for(|s| !matches!(s, LeaseState::Waiting))
            .await
            .map(|s| s.clone());
        match state {
            Ok(LeaseState::Held { .. }) => Ok(()),
            Ok(LeaseState::Ended(error)) => Err(error),
            Ok(LeaseState::Waiting) | Err(_) => Err(self.released()),
        }
    }

    /// Waits until the lease ends (the holder keeps it across renewals) and
    /// tells why.
    pub async fn ended(&mut self) -> LeaseError {
        let state = self
            .state
            .wait_for(|s| matches!(s, LeaseState::Ended(_)))
            .await
            .map(|s| s.clone());
        match state {
            Ok(LeaseState::Ended(error)) => error,
            _ => self.released(),
        }
    }

    /// Checks with the broker, within `timeout`, that the lease is still held:
    /// a round trip on the lease's own AMQP channel. It succeeds only while the
    /// broker still has this channel, and so this consumer as the active one;
    /// the poller calls it before each poll so that a holder cut off from the
    /// broker (whose lease the broker may already have given to another
    /// replica) does not poll.
    pub async fn confirm(&self, timeout: Duration) -> Result<(), LeaseError> {
        if !self.is_held() {
            return Err(self.lost("not the holder"));
        }
        match tokio::time::timeout(timeout, ready_tokens(&self.amqp, &self.queue)).await {
            Ok(Ok(_)) if self.is_held() => Ok(()),
            Ok(Ok(_)) => Err(self.lost("the lease ended")),
            Ok(Err(e)) => Err(self.lost(&format!("the broker did not confirm the lease: {e}"))),
            Err(_) => Err(self.lost(&format!(
                "the broker did not answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Gives the lease up (or stops waiting for it): closes the lease's AMQP
    /// channel, so the broker hands an unacked token to the next contender at
    /// once.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn lost(&self, reason: &str) -> LeaseError {
        LeaseError::Lost {
            channel: self.channel.clone(),
            reason: reason.to_owned(),
        }
    }

    fn released(&self) -> LeaseError {
        LeaseError::Released {
            channel: self.channel.clone(),
        }
    }
}

impl Drop for PollLease {
    fn drop(&mut self) {
        // The task closes the AMQP channel on its way out.
        self.stop.cancel();
    }
}

/// Ready (not delivered) messages in the lease queue, by a passive declare.
async fn ready_tokens(amqp: &Channel, queue: &str) -> lapin::Result<u32> {
    amqp.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map(|q| q.message_count())
}

/// Sets up the contender's AMQP channel (confirm mode, prefetch 1), declares the lease
/// queue and consumes it; also says whether to seed a token, when the queue has none ready.
async fn start_consuming(
    amqp: &Channel,
    queue: &str,
    channel: &str,
) -> Result<(Consumer, bool), lapin::Error> {
    amqp.confirm_select(ConfirmSelectOptions::default()).await?;
    amqp.basic_qos(1, BasicQosOptions::default()).await?;
    declare_poll_lease_queue(amqp, queue).await?;
    let seed = ready_tokens(amqp, queue).await? == 0;
    let consumer = amqp
        .basic_consume(
            queue.into(),
            format!("xbridge-poll-lease-{channel}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((consumer, seed))
}

/// The token this contender keeps unacked while it holds the lease, how often it renewed
/// it, and when it renews next.
struct Kept {
    token: Option<Acker>,
    renewals: u64,
    next_tick: Instant,
}

/// The lease's background task: consumes the lease queue, keeps one token,
/// renews it while held, seeds one while waiting on an empty queue.
struct Driver {
    channel: String,
    queue: String,
    amqp: Channel,
    renew_every: Duration,
}

impl Driver {
    async fn run(
        self,
        mut consumer: Consumer,
        seed: bool,
        state: watch::Sender<LeaseState>,
        stop: CancellationToken,
    ) {
        let outcome = self.hold(&mut consumer, seed, &state, &stop).await;
        let ended = match outcome {
            Ok(()) => LeaseError::Released {
                channel: self.channel.clone(),
            },
            Err(reason) => LeaseError::Lost {
                channel: self.channel.clone(),
                reason,
            },
        };
        // Closing the channel requeues an unacked token for the next replica;
        // on a dead connection there is nothing to close, and nothing to wait for.
        if self.amqp.status().connected() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.amqp.close(200, "poll lease released".into()),
            )
            .await;
        }
        state.send_replace(LeaseState::Ended(ended));
    }

    /// Runs until `stop` (Ok) or until the lease is lost (the reason).
    async fn hold(
        &self,
        consumer: &mut Consumer,
        seed: bool,
        state: &watch::Sender<LeaseState>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        if seed {
            self.publish_token()
                .await
                .map_err(|e| format!("seeding the lease queue: {e}"))?;
        }
        let mut kept = Kept {
            token: None,
            renewals: 0,
            next_tick: Instant::now() + self.renew_every,
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = consumer.next() => {
                    let delivery = match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => return Err(format!("the lease consumer failed: {e}")),
                        None => return Err("the broker cancelled the lease consumer".into()),
                    };
                    self.receive(delivery.acker, &mut kept, state).await?;
                }
                _ = tokio::time::sleep_until(kept.next_tick) => {
                    kept.next_tick = Instant::now() + self.renew_every;
                    if matches!(*state.borrow(), LeaseState::Held { .. }) {
                        self.renew(&mut kept, state).await?;
                    } else {
                        self.seed_if_empty().await?;
                    }
                }
            }
        }
    }

    /// A token arrived, and only the active consumer receives any: the lease is held.
    /// Keeps one token: the new one, or none of them when another is ready (a spare one
    /// from seeding, or the renewal's new one), which is then kept instead.
    async fn receive(
        &self,
        token: Acker,
        kept: &mut Kept,
        state: &watch::Sender<LeaseState>,
    ) -> Result<(), String> {
        if !matches!(*state.borrow(), LeaseState::Held { .. }) {
            state.send_replace(LeaseState::Held {
                renewals: kept.renewals,
            });
            kept.next_tick = Instant::now() + self.renew_every;
        }
        if let Some(old) = kept.token.take() {
            ack(&old).await?;
        }
        let spare = ready_tokens(&self.amqp, &self.queue)
            .await
            .map_err(|e| format!("counting lease tokens: {e}"))?;
        if spare > 0 {
            ack(&token).await?;
        } else {
            kept.token = Some(token);
        }
        Ok(())
    }

    /// Renews a held lease: the new token first, so the queue is never without one, then
    /// the old one acked.
    async fn renew(
        &self,
        kept: &mut Kept,
        state: &watch::Sender<LeaseState>,
    ) -> Result<(), String> {
        self.publish_token()
            .await
            .map_err(|e| format!("renewing the lease: {e}"))?;
        if let Some(old) = kept.token.take() {
            ack(&old).await?;
        }
        kept.renewals += 1;
        let renewals = kept.renewals;
        state.send_replace(LeaseState::Held { renewals });
        tracing::debug!(channel = %self.channel, renewals, "poll lease renewed");
        Ok(())
    }

    /// While waiting, puts a token in an empty queue (its holder may have taken the last
    /// one with it), so the lease cannot be lost to everyone.
    async fn seed_if_empty(&self) -> Result<(), String> {
        let ready = ready_tokens(&self.amqp, &self.queue)
            .await
            .map_err(|e| format!("counting lease tokens: {e}"))?;
        if ready == 0 {
            self.publish_token()
                .await
                .map_err(|e| format!("seeding the lease queue: {e}"))?;
        }
        Ok(())
    }

    /// Publishes a token to the lease queue (default exchange) and waits for the
    /// broker's confirm.
    async fn publish_token(&self) -> Result<(), String> {
        let confirmation = self
            .amqp
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"poll lease token",
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_app_id("xbridge".into())
                    .with_content_type("text/plain".into()),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err("the lease queue is gone (token returned)".into()),
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                Err("the broker did not take the token".into())
            }
        }
    }
}

async fn ack(acker: &Acker) -> Result<(), String> {
    acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("acking a lease token: {e}"))
}
