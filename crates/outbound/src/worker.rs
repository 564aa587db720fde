//! One channel's consumer: takes replies from the channel's queue, keeps each
//! conversation in order on its own lane, and takes each reply through its
//! life: `process` decides what becomes of it (sent, parked, dead-lettered:
//! a [`Settlement`]) and [`Settler::settle`] carries that out and acks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use lapin::message::Delivery;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use xbridge_amqp::{wire, FailureHeaders};
use xbridge_core::contract::{FailureReason, InvalidReply, OutgoingReply};

use crate::context::ChannelContext;
use crate::fence::{self, Claim};
use crate::parts::{PrepareError, ReplyParts};
use crate::report::{Failure, Reporter};
use crate::send::{send, Received};
use crate::settle::{self, Settlement, Settler};
use crate::store_outage;
use crate::unsettled::Unsettled;

/// A reply taken off the channel's queue, on its way through its lane.
struct Job {
    delivery: Delivery,
    reply: OutgoingReply,
    /// The reply's conversation, whose lane it goes through (see
    /// [`xbridge_core::contract::ReplyTarget::ordering_key`]).
    conversation: String,
    /// When the bridge took the delivery off the queue: a reply waiting in
    /// its lane behind others is already waiting for credits.
    received_at: DateTime<Utc>,
    /// The consumer's claim of the channel, which the reply's send intents
    /// carry: refused once another consumer claimed it since.
    claim: Claim,
}

struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    pending: Arc<AtomicUsize>,
}

/// Consumes `consumer` until `stop` is cancelled or something fails; then
/// lets the lanes finish what they hold. Returns the failure, if any, so the
/// caller can reconnect. Claims the channel at the first delivery, before
/// any lane sees it (see [`crate::fence`]): each consumer makes its own
/// claim, which fences every earlier consumer's lanes. `consumer` is a
/// lapin consumer's deliveries, seen on their way by whoever must hand back
/// what this one leaves unsettled (see [`crate::channel_consumers`]).
pub async fn consume(
    ctx: Arc<ChannelContext>,
    reporter: Reporter,
    mut consumer: impl Stream<Item = lapin::Result<Delivery>> + Unpin,
    stop: CancellationToken,
) -> Result<(), Unsettled> {
    let (failures_tx, mut failures) = mpsc::unbounded_channel::<Unsettled>();
    let mut lanes = Lanes {
        ctx,
        reporter,
        stop: stop.clone(),
        failures: failures_tx,
        by_conversation: HashMap::new(),
        tasks: JoinSet::new(),
        since_sweep: 0,
    };
    let mut claim: Option<Claim> = None;
    let outcome = loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            Some(failure) = failures.recv() => break Err(failure),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break Err(Unsettled::Broker(e)),
                None => break Err(Unsettled::Broker(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ))),
            },
        };
        let claim = match claim {
            Some(claim) => claim,
            None => match fence::claim(&lanes.ctx, &stop).await {
                Ok(claimed) => *claim.insert(claimed),
                // Stopped while the store could not write: the delivery goes back.
                Err(Unsettled::Interrupted) => break Ok(()),
                Err(e) => break Err(e),
            },
        };
        lanes.take(delivery, claim);
    };
    lanes.close().await;
    outcome
}

/// One channel's lanes, one per conversation with replies in hand, and the
/// tasks that run them.
struct Lanes {
    ctx: Arc<ChannelContext>,
    reporter: Reporter,
    stop: CancellationToken,
    /// Where a lane's failure goes: the consumer then stops.
    failures: mpsc::UnboundedSender<Unsettled>,
    by_conversation: HashMap<String, Lane>,
    tasks: JoinSet<()>,
    /// Deliveries since idle lanes were last let go.
    since_sweep: usize,
}

impl Lanes {
    /// Hands `delivery` to its conversation's lane, or dead-letters it at
    /// once if it holds no reply the bridge can take.
    fn take(&mut self, delivery: Delivery, claim: Claim) {
        match accept(&delivery, &self.ctx, self.reporter.frame_max()) {
            Err(invalid) => {
                let (ctx, reporter) = (self.ctx.clone(), self.reporter.clone());
                let failures = self.failures.clone();
                self.tasks.spawn(async move {
                    let result =
                        settle::dead_letter_invalid(&reporter, &delivery, &ctx.name, invalid).await;
                    if let Err(e) = result {
                        let _ = failures.send(e);
                    }
                });
            }
            Ok(reply) => self.enqueue(delivery, reply, claim),
        }
        self.since_sweep += 1;
        if self.since_sweep >= 256 {
            self.since_sweep = 0;
            self.by_conversation
                .retain(|_, lane| lane.pending.load(Ordering::SeqCst) > 0);
        }
    }

    fn enqueue(&mut self, delivery: Delivery, reply: OutgoingReply, claim: Claim) {
        let conversation = reply.target.ordering_key();
        // At debug, the order the broker delivered in, before any lane: a
        // reply redelivered, or out of its conversation's turn, shows here.
        tracing::debug!(
            channel = %self.ctx.name,
            message_id = %reply.message_id,
            delivery_tag = delivery.delivery_tag,
            redelivered = delivery.redelivered,
            "reply delivered"
        );
        let lane = self
            .by_conversation
            .entry(conversation.clone())
            .or_insert_with(|| {
                spawn_lane(
                    &mut self.tasks,
                    self.ctx.clone(),
                    self.reporter.clone(),
                    self.stop.clone(),
                    self.failures.clone(),
                )
            });
        lane.pending.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            delivery,
            reply,
            conversation,
            received_at: Utc::now(),
            claim,
        };
        if lane.jobs.send(job).is_err() {
            // The lane stopped on a failure that is already reported.
            lane.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Lets the lanes end once their queues are empty (or at once when
    /// interrupted), and waits for them.
    async fn close(self) {
        let Lanes {
            by_conversation,
            failures,
            mut tasks,
            ..
        } = self;
        drop(by_conversation);
        drop(failures);
        while tasks.join_next().await.is_some() {}
    }
}

/// The reply in `delivery`, or why it is dead-lettered at once: a body that
/// is not a valid reply, or properties that leave RabbitMQ no room to deliver
/// it again. The latter must leave the queue at its first delivery, before the
/// bridge holds it (a wait for credits, a rate limit, a send) long enough for
/// a restart or a lost connection to hand it back: its next delivery would not
/// fit in a frame and would close the connection, every channel's consumer
/// with it, on every reconnect.
fn accept(
    delivery: &Delivery,
    ctx: &ChannelContext,
    frame_max: usize,
) -> Result<OutgoingReply, InvalidReply> {
    let reply = OutgoingReply::parse_bounded(&delivery.data, &ctx.name, ctx.max_reply_bytes)?;
    match wire::check_redelivery(&delivery.properties, frame_max) {
        Ok(()) => Ok(reply),
        Err(too_large) => Err(InvalidReply {
            detail: format!("the reply cannot be carried safely: {too_large}"),
            message_id: Some(reply.message_id),
        }),
    }
}

fn spawn_lane(
    tasks: &mut JoinSet<()>,
    ctx: Arc<ChannelContext>,
    reporter: Reporter,
    stop: CancellationToken,
    failures: mpsc::UnboundedSender<Unsettled>,
) -> Lane {
    let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
    let pending = Arc::new(AtomicUsize::new(0));
    let lane_pending = pending.clone();
    let mut settler = Settler::new(
        ctx.clone(),
        reporter,
        stop.clone(),
        pending.clone(),
        failures.clone(),
    );
    tasks.spawn(async move {
        while let Some(job) = queue.recv().await {
            settler.make_way(&job.reply.message_id).await;
            // Every line logged while handling this reply, the X client's
            // included, carries its channel and message id.
            let span = tracing::info_span!(
                "reply",
                channel = %ctx.name,
                message_id = %job.reply.message_id
            );
            let taken = take(&ctx, &mut settler, job, &stop, span.clone())
                .instrument(span)
                .await;
            if let Err(failure) = taken {
                lane_pending.fetch_sub(1, Ordering::SeqCst);
                if !matches!(failure, Unsettled::Interrupted) {
                    let _ = failures.send(failure);
                }
                break;
            }
        }
        settler.wait_all().await;
    });
    Lane { jobs, pending }
}

/// Takes one reply through its lane: decides what becomes of it, then
/// settles that.
async fn take(
    ctx: &ChannelContext,
    settler: &mut Settler,
    job: Job,
    stop: &CancellationToken,
    span: tracing::Span,
) -> Result<(), Unsettled> {
    let settlement = process_until_stored(ctx, &job, stop).await?;
    let Job {
        delivery,
        reply,
        conversation,
        ..
    } = job;
    settler
        .settle(delivery, reply.message_id, &conversation, settlement, span)
        .await
}

/// [`process`], taken again from the start after each failure of the state
/// store (which comes before anything is sent), once the store can write:
/// the reply waits in its lane, unacknowledged, instead of ending the
/// RabbitMQ session.
async fn process_until_stored(
    ctx: &ChannelContext,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Settlement, Unsettled> {
    let mut pauses = store_outage::pauses();
    loop {
        store_outage::until_writable(ctx, stop).await?;
        match process(ctx, job, stop).await {
            Err(Unsettled::Store(error)) => {
                store_outage::wait_for_store(ctx, &error, &mut pauses, stop).await?;
            }
            outcome => return outcome,
        }
    }
}

/// Takes one reply as far as its lane must wait for, and says what becomes
/// of it: already sent, parked behind its conversation or for a later try,
/// dead-lettered, or sent (its finish then runs beside the conversation's
/// next reply). Publishes and acks nothing: [`Settler::settle`] does.
async fn process(
    ctx: &ChannelContext,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Settlement, Unsettled> {
    let message_id = job.reply.message_id.as_str();
    // A previous delivery's send whose record the store did not take yet.
    store_outage::write_held(ctx, message_id, stop).await?;
    if let Some(record) = ctx.store.sent(&ctx.name, message_id).await? {
        return Ok(Settlement::AlreadySent(record));
    }
    let mut history = FailureHeaders::read(job.delivery.properties.headers().as_ref());
    history.channel = Some(ctx.name.clone());
    if ctx.parked.must_wait(&job.conversation, message_id) {
        tracing::debug!(channel = %ctx.name, message_id, "parked behind an earlier reply of its conversation");
        let delay = ctx.policy.retry.delays[0];
        return Ok(Settlement::Park { delay, history });
    }
    let parts = match ReplyParts::prepare(ctx, &job.reply, job.claim).await {
        Ok(parts) => parts,
        Err(PrepareError::Invalid(detail)) => {
            let failure = Failure::local(FailureReason::InvalidMessage, detail);
            return Ok(Settlement::DeadLetter { failure, history });
        }
        Err(PrepareError::Local(detail)) => {
            // The local disk, not the reply: try again after the first delay.
            tracing::warn!(channel = %ctx.name, message_id, detail = %detail, "cannot spool an attachment; parked for a later try");
            let delay = ctx.policy.retry.delays[0];
            return Ok(Settlement::Park { delay, history });
        }
        Err(PrepareError::Store(e)) => return Err(e.into()),
    };
    let received = Received {
        published_at: *job.delivery.properties.timestamp(),
        at: job.received_at,
    };
    send(ctx, &job.reply, received, parts, history, stop).await
}
