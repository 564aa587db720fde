//! One channel's consumer: takes replies from the channel's queue, keeps each
//! conversation in order on its own lane, and takes each reply through its
//! life: `process` decides what becomes of it (sent, parked, dead-lettered:
//! a [`Settlement`]) and [`Settler::settle`] carries that out and acks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::Consumer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use xbridge_core::amqp::{wire, FailureHeaders};
use xbridge_core::channel_state::ChannelState;
use xbridge_core::model::{FailureReason, InvalidReply, OutgoingReply, ReplyTarget};
use xbridge_store::SentRecord;
use xbridge_x_api::{DmTarget, XError};

use crate::context::ChannelContext;
use crate::credits::Permit;
use crate::fate::{self, Fate, History};
use crate::parts::{PrepareError, ReplyParts};
use crate::report::{Failure, Reporter};
use crate::settle::{self, Settlement, Settler};
use crate::store_outage;
use crate::unsettled::Unsettled;

/// A reply taken off the channel's queue, on its way through its lane.
struct Job {
    delivery: Delivery,
    reply: OutgoingReply,
    /// The reply's conversation, whose lane it goes through (see
    /// [`ReplyTarget::ordering_key`]).
    conversation: String,
    /// When the bridge took the delivery off the queue: a reply waiting in
    /// its lane behind others is already waiting for credits.
    received_at: DateTime<Utc>,
}

struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    pending: Arc<AtomicUsize>,
}

/// Consumes `consumer` until `stop` is cancelled or something fails; then
/// lets the lanes finish what they hold. Returns the failure, if any, so the
/// caller can reconnect.
pub async fn consume(
    ctx: Arc<ChannelContext>,
    reporter: Reporter,
    mut consumer: Consumer,
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
        lanes.take(delivery);
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
    fn take(&mut self, delivery: Delivery) {
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
            Ok(reply) => self.enqueue(delivery, reply),
        }
        self.since_sweep += 1;
        if self.since_sweep >= 256 {
            self.since_sweep = 0;
            self.by_conversation
                .retain(|_, lane| lane.pending.load(Ordering::SeqCst) > 0);
        }
    }

    fn enqueue(&mut self, delivery: Delivery, reply: OutgoingReply) {
        let conversation = reply.target.ordering_key();
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
    let parts = match ReplyParts::prepare(ctx, &job.reply).await {
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
    send(ctx, job, parts, history, stop).await
}

/// Sends the reply's `parts`, waiting for credits and X's rate limit and
/// trying again in place as each failure's fate says, until it is sent or
/// must be parked or dead-lettered.
async fn send(
    ctx: &ChannelContext,
    job: &Job,
    mut parts: ReplyParts,
    mut history: FailureHeaders,
    stop: &CancellationToken,
) -> Result<Settlement, Unsettled> {
    let mut sending = Sending::start(ctx, job, &mut history);
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(Unsettled::Interrupted),
            permit = ctx.gate.acquire(sending.credits_deadline) => permit,
        };
        let Ok(permit) = permit else {
            let failure = sending.credits_ran_out(ctx, &parts);
            return Ok(Settlement::DeadLetter { failure, history });
        };
        if let Some(delay) = hold_for_rate_limit(ctx, sending.message_id, permit, stop).await? {
            return Ok(Settlement::Park { delay, history });
        }
        history.count_attempt();
        sending.attempts_this_delivery += 1;
        let error = match parts
            .send(ctx, &sending.target, sending.message_id, stop)
            .await
        {
            Ok(Ok(record)) => return Ok(sent(ctx, sending.message_id, record, &history)),
            Ok(Err(error)) => error,
            Err(unsettled) => {
                // Nothing was sent: another sender may probe for credits.
                ctx.gate.inconclusive(permit);
                return Err(unsettled);
            }
        };
        let fate = sending.failed(ctx, permit, &error, &mut history);
        if let Some(settlement) = sending
            .follow(ctx, fate, &error, &parts, &mut history, stop)
            .await?
        {
            return Ok(settlement);
        }
    }
}

/// X took the reply: the channel works, and so do its credits.
fn sent(
    ctx: &ChannelContext,
    message_id: &str,
    record: SentRecord,
    history: &FailureHeaders,
) -> Settlement {
    ctx.gate.succeeded();
    ctx.states.set(&ctx.name, ChannelState::Ok, None, None);
    tracing::info!(channel = %ctx.name, message_id, dm_event_id = %record.dm_event_id, dms = record.dm_event_ids().len(), attempts = history.attempts, "reply sent");
    Settlement::Sent(record)
}

/// One delivery's sending of a reply: what its waits and tries go by.
struct Sending<'a> {
    message_id: &'a str,
    target: DmTarget,
    /// When the reply's wait for credits started (see
    /// [`crate::credits::wait_started`]).
    first_seen: DateTime<Utc>,
    /// Past this the reply waits for credits no longer.
    credits_deadline: Instant,
    backoff: ExponentialBackoff,
    attempts_this_delivery: u32,
    /// X's latest credits refusal of this reply.
    last_credits_failure: Option<Failure>,
}

impl<'a> Sending<'a> {
    /// Starts sending `job`'s reply; notes in `history` when its wait began.
    fn start(ctx: &ChannelContext, job: &'a Job, history: &mut FailureHeaders) -> Sending<'a> {
        let now = Utc::now();
        let first_seen = crate::credits::wait_started(
            now,
            *job.delivery.properties.timestamp(),
            history.first_seen_at,
            job.received_at,
        );
        history.first_seen_at = Some(first_seen);
        let waited = (now - first_seen).to_std().unwrap_or_default();
        Sending {
            message_id: &job.reply.message_id,
            target: dm_target(&job.reply.target),
            first_seen,
            credits_deadline: Instant::now() + ctx.policy.credits.max_wait.saturating_sub(waited),
            backoff: ExponentialBuilder::default()
                .with_min_delay(ctx.policy.retry.initial_backoff)
                .with_max_delay(ctx.policy.retry.max_backoff)
                .with_jitter()
                .without_max_times()
                .build(),
            attempts_this_delivery: 0,
            last_credits_failure: None,
        }
    }

    /// Takes in a send that failed with `error`: notes it in `history`, shows
    /// the channel's state, gives back the credits `permit`, and decides the
    /// reply's [`Fate`].
    fn failed(
        &mut self,
        ctx: &ChannelContext,
        permit: Permit,
        error: &XError,
        history: &mut FailureHeaders,
    ) -> Fate {
        let now = Utc::now();
        history.first_failure_at.get_or_insert(now);
        history.last_failure_at = Some(now);
        history.http_status = error.http_status();
        history.problem_type = error.problem_type().map(str::to_owned);
        if let Some((state, until)) = fate::channel_state(error) {
            ctx.states
                .set(&ctx.name, state, until, Some(error.to_string()));
        }
        if matches!(error, XError::CreditsExhausted { .. }) {
            ctx.gate.exhausted(permit, error);
            let failure = Failure::from_x(FailureReason::CreditsExhausted, error);
            self.last_credits_failure = Some(failure);
        } else {
            ctx.gate.inconclusive(permit);
        }
        let so_far = History {
            attempts: history.attempts,
            attempts_this_delivery: self.attempts_this_delivery,
            times_parked: history.times_parked,
            waited: (now - self.first_seen).to_std().unwrap_or_default(),
        };
        let fate = fate::decide(error, &so_far, &ctx.policy);
        tracing::warn!(channel = %ctx.name, message_id = self.message_id, attempts = history.attempts, error = %error, ?fate, "send failed");
        if matches!(fate, Fate::RetrySoon | Fate::Park(_)) {
            metrics::counter!("xbridge_retries_total", "channel" => ctx.name.clone()).increment(1);
        }
        fate
    }

    /// Does what `fate` says after `error`: waits to try again, or says how
    /// the reply is settled (taking its `history` along).
    async fn follow(
        &mut self,
        ctx: &ChannelContext,
        fate: Fate,
        error: &XError,
        parts: &ReplyParts,
        history: &mut FailureHeaders,
        stop: &CancellationToken,
    ) -> Result<Option<Settlement>, Unsettled> {
        match fate {
            Fate::RetrySoon => {
                let wait = self.backoff.next().unwrap_or(ctx.policy.retry.max_backoff);
                pause(wait, stop).await?;
            }
            Fate::WaitForRateLimit => {
                if let XError::RateLimited { reset_at, .. } = error {
                    ctx.client.pacer().block_until(*reset_at);
                }
            }
            Fate::WaitForCredits => {}
            Fate::Park(delay) => {
                history.count_park();
                tracing::info!(channel = %ctx.name, message_id = self.message_id, delay_secs = delay.as_secs(), "reply parked for a later retry");
                let history = std::mem::take(history);
                return Ok(Some(Settlement::Park { delay, history }));
            }
            Fate::DeadLetter(reason) => {
                let mut failure = Failure::from_x(reason, error);
                failure.detail.extend(parts.partial_note());
                let history = std::mem::take(history);
                return Ok(Some(Settlement::DeadLetter { failure, history }));
            }
        }
        Ok(None)
    }

    /// Why the reply gives up waiting for credits: X's last word on them.
    fn credits_ran_out(&mut self, ctx: &ChannelContext, parts: &ReplyParts) -> Failure {
        let mut failure = self
            .last_credits_failure
            .take()
            .or_else(|| {
                ctx.gate
                    .last_error()
                    .map(|e| Failure::from_x(FailureReason::CreditsExhausted, &e))
            })
            .unwrap_or_else(|| {
                Failure::local(
                    FailureReason::CreditsExhausted,
                    "the X account has had no credits for longer than the wait bound; top up at console.x.com, then replay from the dead-letter queue",
                )
            });
        failure.detail.extend(parts.partial_note());
        failure
    }
}

/// Waits out X's rate-limit window for the channel if it is short enough to
/// hold the delivery that long; else gives back the `permit` and returns the
/// delay to park the reply for.
async fn hold_for_rate_limit(
    ctx: &ChannelContext,
    message_id: &str,
    permit: Permit,
    stop: &CancellationToken,
) -> Result<Option<Duration>, Unsettled> {
    let Some(until) = ctx.client.pacer().blocked_until() else {
        return Ok(None);
    };
    let wait = (until - Utc::now()).to_std().unwrap_or_default();
    if wait > MAX_RATE_LIMIT_HOLD {
        // X's daily windows can close for hours; RabbitMQ would take back a
        // delivery held that long. Park it and look again.
        ctx.gate.inconclusive(permit);
        let delay = ctx.policy.retry.delays.last().copied().unwrap_or(wait);
        tracing::info!(
            channel = %ctx.name,
            message_id,
            wait_secs = wait.as_secs(),
            delay_secs = delay.as_secs(),
            "X's rate-limit window opens later than a reply may be held; parked until then"
        );
        return Ok(Some(delay));
    }
    if !wait.is_zero() {
        ctx.states.set(
            &ctx.name,
            ChannelState::RateLimited,
            Some(until),
            Some("X's rate limit for DM sends is used up until the reset".into()),
        );
        tracing::info!(channel = %ctx.name, message_id, wait_secs = wait.as_secs(), "waiting for X's rate-limit window");
        if let Err(e) = pause(wait, stop).await {
            ctx.gate.inconclusive(permit);
            return Err(e);
        }
    }
    Ok(None)
}

fn dm_target(target: &ReplyTarget) -> DmTarget {
    match target {
        ReplyTarget::Recipient(id) => DmTarget::Participant(id.clone()),
        ReplyTarget::Conversation(id) => DmTarget::Conversation(id.clone()),
    }
}

/// The longest the bridge holds a delivery while waiting for X's rate-limit
/// window: X's 15-minute windows are waited out in place; longer waits (the
/// daily limits) park the reply, since RabbitMQ takes back a delivery left
/// unacknowledged for 30 minutes (its default `consumer_timeout`).
const MAX_RATE_LIMIT_HOLD: Duration = Duration::from_secs(20 * 60);

/// Waits for `duration` unless `stop` comes first.
async fn pause(duration: Duration, stop: &CancellationToken) -> Result<(), Unsettled> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Unsettled::Interrupted),
        _ = tokio::time::sleep(duration) => Ok(()),
    }
}
