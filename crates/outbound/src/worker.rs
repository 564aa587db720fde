//! One channel's consumer: takes replies from the channel's queue, keeps each
//! conversation in order on its own lane, and settles every delivery (sent,
//! parked or dead-lettered, each confirmed) before acknowledging it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::Consumer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use xbridge_core::amqp::{wire, FailureHeaders, PublishError};
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::{ChannelState, ChannelStates};
use xbridge_core::model::{FailureReason, InvalidReply, OutgoingReply, ReplyTarget, StatusEvent};
use xbridge_store::{SentRecord, StateStore, StoreError};
use xbridge_x_api::{DmTarget, XClient, XError};

use crate::credits::CreditsGate;
use crate::failpoints;
use crate::fate::{decide, Fate, History, Policy};
use crate::media::MediaFetcher;
use crate::ordering::ParkedReplies;
use crate::parts::{PrepareError, ReplyParts};
use crate::report::{Failure, Reporter};
use crate::store_outage::{self, UnrecordedSends};

/// What one channel keeps across reconnects: its X client (and so its rate
/// limit pacing), its credits gate and its parked-reply order.
pub struct ChannelContext {
    /// Channel name.
    pub name: String,
    /// The channel's X client.
    pub client: XClient,
    /// The channel's credits state.
    pub gate: CreditsGate,
    /// Parked replies per conversation.
    pub parked: ParkedReplies,
    /// Which replies were sent.
    pub store: Arc<dyn StateStore>,
    /// Retry and credits bounds.
    pub policy: Policy,
    /// Every channel's state, for the CRM and operators.
    pub states: Arc<ChannelStates>,
    /// Turns reply attachments into bytes to upload, safely.
    pub media: Arc<MediaFetcher>,
    /// Every channel's X account (configured, or learnt from X by the inbound
    /// side or by [`ChannelContext::own_user_id`]), to recognise this account's
    /// own DMs when looking for an unrecorded send.
    pub identities: Arc<ChannelIdentities>,
    /// The account's DM events as last read to find unrecorded sends.
    pub recent_events: tokio::sync::Mutex<crate::reconcile::RecentEvents>,
    /// Sends X accepted whose records the store has not taken yet.
    pub unrecorded: UnrecordedSends,
    /// Largest reply body parsed (`outbound.max_reply_bytes`).
    pub max_reply_bytes: usize,
}

impl ChannelContext {
    /// The account's X user id: the one known to the process, else asked of X
    /// (and then known to the inbound side too).
    pub async fn own_user_id(&self) -> Result<String, XError> {
        if let Some(id) = self.identities.user_id(&self.name) {
            return Ok(id);
        }
        let id = self.client.me().await?.0.id;
        // A channel with a configured id has it known from the start, so what X
        // says cannot contradict one here; the inbound side checks those.
        let _ = self.identities.learn(&self.name, &id);
        Ok(id)
    }
}

/// Why a delivery was left unacknowledged (it will be redelivered).
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    /// Shutdown or a lost connection interrupted a wait.
    #[error("interrupted")]
    Interrupted,
    /// The broker did not confirm a publish or an ack.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The broker connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The state store failed before anything was sent: the lane waits for
    /// the store and takes the reply again (see [`crate::store_outage`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Settling a sent reply panicked (a bug); its delivery comes back after
    /// the reconnect, and the send's records keep it from going out twice.
    #[error("settling a sent reply panicked: {0}")]
    Panicked(String),
}

struct Job {
    delivery: Delivery,
    reply: OutgoingReply,
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
    let mut lanes: HashMap<String, Lane> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut since_sweep = 0usize;

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
        match accept(&delivery, &ctx, reporter.frame_max()) {
            Err(invalid) => {
                let ctx = ctx.clone();
                let reporter = reporter.clone();
                let failures_tx = failures_tx.clone();
                tasks.spawn(async move {
                    let failure = Failure::local(FailureReason::InvalidMessage, invalid.detail);
                    let history = FailureHeaders::read(delivery.properties.headers().as_ref());
                    let result = async {
                        reporter
                            .dead_letter(
                                &delivery,
                                &ctx.name,
                                invalid.message_id.as_deref(),
                                &failure,
                                history,
                            )
                            .await?;
                        ack(&delivery).await
                    }
                    .await;
                    if let Err(e) = result {
                        let _ = failures_tx.send(e);
                    }
                });
            }
            Ok(reply) => {
                let key = reply.target.ordering_key();
                let lane = lanes.entry(key).or_insert_with(|| {
                    spawn_lane(
                        &mut tasks,
                        ctx.clone(),
                        reporter.clone(),
                        stop.clone(),
                        failures_tx.clone(),
                    )
                });
                lane.pending.fetch_add(1, Ordering::SeqCst);
                let job = Job {
                    delivery,
                    reply,
                    received_at: Utc::now(),
                };
                if lane.jobs.send(job).is_err() {
                    // The lane stopped on a failure that is already reported.
                    lane.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        since_sweep += 1;
        if since_sweep >= 256 {
            since_sweep = 0;
            lanes.retain(|_, lane| lane.pending.load(Ordering::SeqCst) > 0);
        }
    };

    // Lanes end when their queues are empty (or at once when interrupted).
    drop(lanes);
    drop(failures_tx);
    while tasks.join_next().await.is_some() {}
    outcome
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
    tasks.spawn(async move {
        let mut finishing = Finishing::new(lane_pending.clone(), failures.clone());
        while let Some(job) = queue.recv().await {
            // A second copy of a reply still being recorded (the CRM may
            // publish one twice) waits for the record, so it is not sent again.
            if finishing.holds(&job.reply.message_id) {
                finishing.wait_all().await;
            } else {
                finishing.reap();
            }
            // Every line logged while handling this reply, the X client's
            // included, carries its channel and message id.
            let span = tracing::info_span!(
                "reply",
                channel = %ctx.name,
                message_id = %job.reply.message_id
            );
            let result = process_until_stored(&ctx, &reporter, &job, &stop)
                .instrument(span.clone())
                .await;
            match result {
                Ok(Processed::Settled) => {
                    lane_pending.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(Processed::Sent(record)) => {
                    let sent = SentReply {
                        delivery: job.delivery,
                        message_id: job.reply.message_id,
                        record,
                    };
                    finishing.start(&ctx, &reporter, sent, span, &stop);
                }
                Err(Unsettled::Interrupted) => {
                    lane_pending.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                Err(failure) => {
                    lane_pending.fetch_sub(1, Ordering::SeqCst);
                    let _ = failures.send(failure);
                    break;
                }
            }
        }
        finishing.wait_all().await;
    });
    Lane { jobs, pending }
}

/// A lane's sent replies being recorded, reported and acked ([`finish`]),
/// beside the lane's next sends.
struct Finishing {
    tasks: JoinSet<String>,
    /// The message ids of `tasks`.
    message_ids: HashSet<String>,
    /// The lane's count of replies not yet settled: a reply stays counted
    /// until it is finished, so the lane (and this) outlives its finish.
    pending: Arc<AtomicUsize>,
    /// Where a failure goes: the channel's consumer then reconnects.
    failures: mpsc::UnboundedSender<Unsettled>,
    /// Resolves once the last started reply's `message.sent` is confirmed (or
    /// its finish gave up), so the next one's follows it: the CRM hears of a
    /// conversation's replies in the order X got them.
    last_reported: Option<oneshot::Receiver<()>>,
}

impl Finishing {
    fn new(pending: Arc<AtomicUsize>, failures: mpsc::UnboundedSender<Unsettled>) -> Finishing {
        Finishing {
            tasks: JoinSet::new(),
            message_ids: HashSet::new(),
            pending,
            failures,
            last_reported: None,
        }
    }

    fn start(
        &mut self,
        ctx: &Arc<ChannelContext>,
        reporter: &Reporter,
        sent: SentReply,
        span: tracing::Span,
        stop: &CancellationToken,
    ) {
        let ctx = ctx.clone();
        let stop = stop.clone();
        let reporter = reporter.clone();
        let pending = self.pending.clone();
        let failures = self.failures.clone();
        let message_id = sent.message_id.clone();
        self.message_ids.insert(message_id.clone());
        let (reported, next_may_report) = oneshot::channel();
        let order = Reported {
            after: self.last_reported.replace(next_may_report),
            done: reported,
        };
        self.tasks.spawn(
            async move {
                let result = finish(&ctx, &reporter, sent, order, &stop).await;
                pending.fetch_sub(1, Ordering::SeqCst);
                if let Err(failure) = result {
                    let _ = failures.send(failure);
                }
                message_id
            }
            .instrument(span),
        );
    }

    fn holds(&self, message_id: &str) -> bool {
        self.message_ids.contains(message_id)
    }

    /// Forgets the replies that are finished.
    fn reap(&mut self) {
        while let Some(finished) = self.tasks.try_join_next() {
            self.forget(finished);
        }
    }

    /// Waits until every reply is finished.
    async fn wait_all(&mut self) {
        while let Some(finished) = self.tasks.join_next().await {
            self.forget(finished);
        }
    }

    fn forget(&mut self, finished: Result<String, tokio::task::JoinError>) {
        match finished {
            Ok(message_id) => {
                self.message_ids.remove(&message_id);
            }
            // A bug. The delivery stays unacked; the reconnect brings it back.
            Err(panicked) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                let _ = self
                    .failures
                    .send(Unsettled::Panicked(panicked.to_string()));
            }
        }
    }
}

async fn ack(delivery: &Delivery) -> Result<(), Unsettled> {
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
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

/// When a parked reply should be back at the latest; past it the reply is
/// presumed gone and stops holding up its conversation.
fn due_by(delay: Duration) -> Instant {
    Instant::now() + delay * 2 + Duration::from_secs(60)
}

/// Waits for `duration` unless `stop` comes first.
async fn pause(duration: Duration, stop: &CancellationToken) -> Result<(), Unsettled> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Unsettled::Interrupted),
        _ = tokio::time::sleep(duration) => Ok(()),
    }
}

/// [`process`], taken again from the start after each failure of the state
/// store (which comes before anything is sent), once the store can write:
/// the reply waits in its lane, unacknowledged, instead of ending the
/// RabbitMQ session.
async fn process_until_stored(
    ctx: &ChannelContext,
    reporter: &Reporter,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Processed, Unsettled> {
    let mut pauses = store_outage::pauses();
    loop {
        store_outage::until_writable(ctx, stop).await?;
        match process(ctx, reporter, job, stop).await {
            Err(Unsettled::Store(error)) => {
                store_outage::wait_for_store(ctx, &error, &mut pauses, stop).await?;
            }
            outcome => return outcome,
        }
    }
}

/// Takes one reply as far as its lane must wait for: parks or dead-letters
/// it (acked once that is durable), or sends it and hands what is left to
/// [`finish`], so the conversation's next reply can go out meanwhile.
async fn process(
    ctx: &ChannelContext,
    reporter: &Reporter,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Processed, Unsettled> {
    let Job {
        delivery,
        reply,
        received_at,
    } = job;
    let channel = ctx.name.as_str();
    let message_id = reply.message_id.as_str();
    let conversation = reply.target.ordering_key();
    let mut history = FailureHeaders::read(delivery.properties.headers().as_ref());
    history.channel = Some(channel.to_owned());

    // A previous delivery's send whose record the store did not take yet.
    store_outage::write_held(ctx, message_id, stop).await?;
    if let Some(record) = ctx.store.sent(channel, message_id).await? {
        if !record.reported {
            reporter
                .status(&sent_event(channel, message_id, &record))
                .await?;
            mark_reported(ctx, message_id).await;
        }
        tracing::info!(channel, message_id, dm_event_id = %record.dm_event_id, "reply was already sent; not sending it again");
        ack(delivery).await?;
        ctx.parked.settled(&conversation, message_id);
        return Ok(Processed::Settled);
    }

    if ctx.parked.must_wait(&conversation, message_id) {
        let delay = ctx.policy.retry.delays[0];
        reporter.park(delivery, delay, &history).await?;
        ctx.parked.park(&conversation, message_id, due_by(delay));
        tracing::debug!(
            channel,
            message_id,
            "parked behind an earlier reply of its conversation"
        );
        return settled(ack(delivery).await);
    }

    let mut parts = match ReplyParts::prepare(ctx, reply).await {
        Ok(parts) => parts,
        Err(PrepareError::Invalid(detail)) => {
            let failure = Failure::local(FailureReason::InvalidMessage, detail);
            return settled(
                dead_letter(
                    ctx,
                    reporter,
                    delivery,
                    reply,
                    &conversation,
                    &failure,
                    history,
                )
                .await,
            );
        }
        Err(PrepareError::Local(detail)) => {
            // The local disk, not the reply: try again after the first delay.
            let delay = ctx.policy.retry.delays[0];
            tracing::warn!(channel, message_id, detail = %detail, "cannot spool an attachment; parked for a later try");
            reporter.park(delivery, delay, &history).await?;
            ctx.parked.park(&conversation, message_id, due_by(delay));
            return settled(ack(delivery).await);
        }
        Err(PrepareError::Store(e)) => return Err(e.into()),
    };

    let now = Utc::now();
    let first_seen = crate::credits::wait_started(
        now,
        *delivery.properties.timestamp(),
        history.first_seen_at,
        *received_at,
    );
    history.first_seen_at = Some(first_seen);
    let waited = (now - first_seen).to_std().unwrap_or_default();
    let credits_deadline = Instant::now() + ctx.policy.credits.max_wait.saturating_sub(waited);
    let target = dm_target(&reply.target);
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(ctx.policy.retry.initial_backoff)
        .with_max_delay(ctx.policy.retry.max_backoff)
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempts_this_delivery = 0;
    let mut last_credits_failure: Option<Failure> = None;

    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(Unsettled::Interrupted),
            permit = ctx.gate.acquire(credits_deadline) => permit,
        };
        let Ok(permit) = permit else {
            let mut failure = last_credits_failure
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
            return settled(
                dead_letter(
                    ctx,
                    reporter,
                    delivery,
                    reply,
                    &conversation,
                    &failure,
                    history,
                )
                .await,
            );
        };
        if let Some(until) = ctx.client.pacer().blocked_until() {
            let wait = (until - Utc::now()).to_std().unwrap_or_default();
            if wait > MAX_RATE_LIMIT_HOLD {
                // X's daily windows can close for hours; RabbitMQ would take
                // back a delivery held that long. Park it and look again.
                ctx.gate.inconclusive(permit);
                let delay = ctx.policy.retry.delays.last().copied().unwrap_or(wait);
                reporter.park(delivery, delay, &history).await?;
                ctx.parked.park(&conversation, message_id, due_by(delay));
                tracing::info!(
                    channel,
                    message_id,
                    wait_secs = wait.as_secs(),
                    delay_secs = delay.as_secs(),
                    "X's rate-limit window opens later than a reply may be held; parked until then"
                );
                return settled(ack(delivery).await);
            }
            if !wait.is_zero() {
                ctx.states.set(
                    channel,
                    ChannelState::RateLimited,
                    Some(until),
                    Some("X's rate limit for DM sends is used up until the reset".into()),
                );
                tracing::info!(
                    channel,
                    message_id,
                    wait_secs = wait.as_secs(),
                    "waiting for X's rate-limit window"
                );
                if let Err(e) = pause(wait, stop).await {
                    ctx.gate.inconclusive(permit);
                    return Err(e);
                }
            }
        }

        history.count_attempt();
        attempts_this_delivery += 1;
        let sent = match parts.send(ctx, &target, message_id, stop).await {
            Ok(sent) => sent,
            Err(unsettled) => {
                // Nothing was sent: another sender may probe for credits.
                ctx.gate.inconclusive(permit);
                return Err(unsettled);
            }
        };
        let error = match sent {
            Ok(record) => {
                ctx.gate.succeeded();
                ctx.states.set(channel, ChannelState::Ok, None, None);
                tracing::info!(channel, message_id, dm_event_id = %record.dm_event_id, dms = record.dm_event_ids().len(), attempts = history.attempts, "reply sent");
                // On X, so no longer holding up its conversation.
                ctx.parked.settled(&conversation, message_id);
                return Ok(Processed::Sent(record));
            }
            Err(error) => error,
        };

        let now = Utc::now();
        history.first_failure_at.get_or_insert(now);
        history.last_failure_at = Some(now);
        history.http_status = error.http_status();
        history.problem_type = error.problem_type().map(str::to_owned);
        match &error {
            XError::CreditsExhausted { .. } => ctx.states.set(
                channel,
                ChannelState::CreditsExhausted,
                None,
                Some(error.to_string()),
            ),
            XError::RateLimited { reset_at, .. } => ctx.states.set(
                channel,
                ChannelState::RateLimited,
                *reset_at,
                Some(error.to_string()),
            ),
            XError::Unauthorized { .. } => ctx.states.set(
                channel,
                ChannelState::Unauthorized,
                None,
                Some(error.to_string()),
            ),
            XError::MissingDmPermission { .. } => ctx.states.set(
                channel,
                ChannelState::MissingPermission,
                None,
                Some(error.to_string()),
            ),
            _ => {}
        }
        if matches!(error, XError::CreditsExhausted { .. }) {
            ctx.gate.exhausted(permit, &error);
            last_credits_failure = Some(Failure::from_x(FailureReason::CreditsExhausted, &error));
        } else {
            ctx.gate.inconclusive(permit);
        }
        let fate = decide(
            &error,
            &History {
                attempts: history.attempts,
                attempts_this_delivery,
                times_parked: history.times_parked,
                waited: (now - first_seen).to_std().unwrap_or_default(),
            },
            &ctx.policy,
        );
        tracing::warn!(channel, message_id, attempts = history.attempts, error = %error, ?fate, "send failed");
        match fate {
            Fate::RetrySoon | Fate::Park(_) => {
                metrics::counter!("xbridge_retries_total", "channel" => channel.to_owned())
                    .increment(1);
            }
            _ => {}
        }
        match fate {
            Fate::RetrySoon => {
                let wait = backoff.next().unwrap_or(ctx.policy.retry.max_backoff);
                pause(wait, stop).await?;
            }
            Fate::WaitForRateLimit => {
                if let XError::RateLimited { reset_at, .. } = &error {
                    ctx.client.pacer().block_until(*reset_at);
                }
            }
            Fate::WaitForCredits => {}
            Fate::Park(delay) => {
                history.count_park();
                reporter.park(delivery, delay, &history).await?;
                ctx.parked.park(&conversation, message_id, due_by(delay));
                tracing::info!(
                    channel,
                    message_id,
                    delay_secs = delay.as_secs(),
                    "reply parked for a later retry"
                );
                return settled(ack(delivery).await);
            }
            Fate::DeadLetter(reason) => {
                let mut failure = Failure::from_x(reason, &error);
                failure.detail.extend(parts.partial_note());
                return settled(
                    dead_letter(
                        ctx,
                        reporter,
                        delivery,
                        reply,
                        &conversation,
                        &failure,
                        history,
                    )
                    .await,
                );
            }
        }
    }
}

/// What [`process`] left to do with a reply.
enum Processed {
    /// Nothing: it was acknowledged once its outcome was durable.
    Settled,
    /// X accepted it as this: [`finish`] records it, tells the CRM and acks.
    Sent(SentRecord),
}

fn settled(result: Result<(), Unsettled>) -> Result<Processed, Unsettled> {
    result.map(|()| Processed::Settled)
}

/// A reply X accepted, not yet recorded, reported or acknowledged.
struct SentReply {
    delivery: Delivery,
    message_id: String,
    record: SentRecord,
}

/// Where a reply's `message.sent` goes among its lane's: after the one
/// before it, and before the one after it.
struct Reported {
    /// The previous reply's signal; `None` for a lane's first.
    after: Option<oneshot::Receiver<()>>,
    /// This reply's signal, sent once its `message.sent` is confirmed, or
    /// dropped if its finish fails first.
    done: oneshot::Sender<()>,
}

/// Records a sent reply, tells the CRM, then acks. Runs beside the lane's
/// next sends: their order is X's, already kept; a crash before the record
/// leaves the send's intent, so the redelivered reply is looked up on X
/// instead of sent again. While the store cannot write, the record waits in
/// memory (see [`crate::store_outage`]), and so do the CRM and the ack.
async fn finish(
    ctx: &ChannelContext,
    reporter: &Reporter,
    sent: SentReply,
    order: Reported,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    let SentReply {
        delivery,
        message_id,
        record,
    } = sent;
    let channel = ctx.name.as_str();
    store_outage::record_reply(ctx, &message_id, &record, stop).await?;
    failpoints::freeze_if_armed(failpoints::AFTER_SEND_RECORDED).await;
    if let Some(previous) = order.after {
        // Either way the previous reply is done reporting.
        let _ = previous.await;
    }
    reporter
        .status(&sent_event(channel, &message_id, &record))
        .await?;
    let _ = order.done.send(());
    // The mark only spares a redelivery a second `message.sent`; an acked
    // reply is never redelivered, so neither waits for the other.
    let ((), acked) = tokio::join!(mark_reported(ctx, &message_id), ack(&delivery));
    acked
}

/// Remembers that the CRM was told of `message_id`. Only spares a copy of the
/// reply a second `message.sent` (with the same AMQP `message_id`), so a store
/// that cannot write it is logged, not waited for.
async fn mark_reported(ctx: &ChannelContext, message_id: &str) {
    if let Err(error) = ctx.store.mark_reported(&ctx.name, message_id).await {
        tracing::warn!(channel = %ctx.name, message_id, %error, "could not mark the reply as reported; a copy of it would be reported again");
    }
}

async fn dead_letter(
    ctx: &ChannelContext,
    reporter: &Reporter,
    delivery: &Delivery,
    reply: &OutgoingReply,
    conversation: &str,
    failure: &Failure,
    history: FailureHeaders,
) -> Result<(), Unsettled> {
    reporter
        .dead_letter(
            delivery,
            &ctx.name,
            Some(&reply.message_id),
            failure,
            history,
        )
        .await?;
    ack(delivery).await?;
    ctx.parked.settled(conversation, &reply.message_id);
    Ok(())
}

fn sent_event(channel: &str, message_id: &str, record: &SentRecord) -> StatusEvent {
    StatusEvent::Sent {
        message_id: message_id.to_owned(),
        channel: channel.to_owned(),
        dm_event_id: record.dm_event_id.clone(),
        dm_event_ids: record.dm_event_ids(),
        conversation_id: record.conversation_id.clone(),
        sent_at: record.sent_at,
    }
}
