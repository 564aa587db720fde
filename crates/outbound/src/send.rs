//! One delivery's sending of a reply: waits for credits and for X's rate
//! limit, tries again in place, and ends in a [`Settlement`] (sent, parked or
//! dead-lettered) as each failure's fate says.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::FailureHeaders;
use xbridge_core::contract::ChannelState;
use xbridge_core::contract::{FailureReason, OutgoingReply, ReplyTarget};
use xbridge_store::SentRecord;
use xbridge_x_api::{DmTarget, XError};

use crate::context::ChannelContext;
use crate::credits::Permit;
use crate::fate::{self, Fate, History};
use crate::parts::{ReplyParts, Sent};
use crate::report::Failure;
use crate::settle::Settlement;
use crate::unsettled::Unsettled;

/// When the bridge got hold of a reply: what its wait for credits counts
/// from (see [`crate::credits::wait_started`]).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The AMQP `timestamp` the CRM set, in seconds, if any.
    pub published_at: Option<u64>,
    /// When the bridge took this delivery off the queue.
    pub at: DateTime<Utc>,
}

/// Sends the reply's `parts`, waiting for credits and X's rate limit and
/// trying again in place as each failure's fate says, until it is sent or
/// must be parked or dead-lettered.
pub async fn send(
    ctx: &ChannelContext,
    reply: &OutgoingReply,
    received: Received,
    mut parts: ReplyParts,
    mut history: FailureHeaders,
    stop: &CancellationToken,
) -> Result<Settlement, Unsettled> {
    let mut sending = Sending::start(ctx, reply, received, &mut history);
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
            Ok(Ok(Sent::Now(record))) => {
                return Ok(sent(ctx, sending.message_id, record, &history))
            }
            Ok(Ok(Sent::Before(record))) => {
                // Nothing went to X from here: the permit proves nothing of credits.
                ctx.gate.inconclusive(permit);
                return Ok(Settlement::AlreadySent(record));
            }
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
    /// Starts sending `reply`; notes in `history` when its wait began.
    fn start(
        ctx: &ChannelContext,
        reply: &'a OutgoingReply,
        received: Received,
        history: &mut FailureHeaders,
    ) -> Sending<'a> {
        let now = Utc::now();
        let first_seen = crate::credits::wait_started(
            now,
            received.published_at,
            history.first_seen_at,
            received.at,
        );
        history.first_seen_at = Some(first_seen);
        let waited = (now - first_seen).to_std().unwrap_or_default();
        Sending {
            message_id: &reply.message_id,
            target: dm_target(&reply.target),
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
        let refreshed = oauth2_token_refused(ctx, error);
        let error = refreshed.as_ref().unwrap_or(error);
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

/// An OAuth 2.0 channel's 401 that is not a refused grant: X refused the access token
/// (it expired early or was revoked) and the token source refreshes it before the next
/// attempt, so the send is retried as a passing failure (X created no DM). A grant X
/// refused at the token endpoint stays `Unauthorized`: only an operator can fix it.
fn oauth2_token_refused(ctx: &ChannelContext, error: &XError) -> Option<XError> {
    let XError::Unauthorized { problem } = error else {
        return None;
    };
    let grant_refused = problem
        .as_ref()
        .is_some_and(|p| p.title == xbridge_x_api::OAUTH2_GRANT_REFUSED);
    (ctx.client.uses_oauth2() && !grant_refused).then(|| XError::Transient {
        status: Some(401),
        detail: "X refused the OAuth 2.0 access token; it is refreshed before the next attempt"
            .to_owned(),
    })
}
