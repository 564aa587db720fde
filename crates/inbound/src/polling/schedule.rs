//! The poll loop of one channel: polls on the channel's interval, but only while this
//! replica holds the channel's poll lease, sooner after a rate-limit reset and with a
//! growing pause while the account's credits are out; reports `credits_exhausted` and
//! `polling_paused` for the channel and clears them when a poll succeeds.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use xbridge_amqp as amqp;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::contract::ChannelState;
use xbridge_sharing::Shares;
use xbridge_x_api::XError;

use crate::polling::lease::{self, LeaseError, PollLease};
use crate::polling::poller::{poll_once, PollBudget, PollContext, PollError, PollOutcome};

/// Failed polls in a row (other than credits and rate limits) after which the
/// channel is reported as `polling_paused`.
const POLL_FAILURES_BEFORE_PAUSED: u32 = 3;

/// When one channel's polls happen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollSchedule {
    /// Between polls.
    pub(crate) interval: Duration,
    /// The first pause while the account's credits are out; it doubles...
    pub(crate) credits_pause_initial: Duration,
    /// ...up to this.
    pub(crate) credits_pause_max: Duration,
}

/// Polls one channel until shutdown, but only while this replica holds the
/// channel's poll lease ([`crate::polling::lease`]): contends for it on the inbound
/// connection, waits while another replica holds it, polls once it is held,
/// and stops polling (and contends again on the next connection) when it is
/// lost. `xbridge_poll_lease_held{channel}` is 1 while held.
pub(crate) async fn poll_loop(
    ctx: PollContext,
    states: Arc<ChannelStates>,
    schedule: PollSchedule,
    lease_queue: String,
    mut connections: watch::Receiver<Option<Arc<lapin::Connection>>>,
    shares: Arc<Shares>,
    shutdown: CancellationToken,
) {
    let channel = ctx.channel.clone();
    let held = metrics::gauge!("xbridge_poll_lease_held", "channel" => channel.clone());
    held.set(0.0);
    let mut retry = amqp::reconnect_backoff();
    // Kept between leases: the page size is about the account, not the holder.
    let mut budget = PollBudget::default();
    loop {
        // Another replica's share: it polls. This one waits until the
        // channel is its own (a replica left, or the channels changed).
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = shares.until_served(&channel) => {}
        }
        let lease = take_lease(
            &channel,
            &lease_queue,
            &mut connections,
            &mut retry,
            &shutdown,
        );
        let mut lease = match lease.await {
            Next::Go(lease) => lease,
            Next::Again => continue,
            Next::Stop => return,
        };
        retry = amqp::reconnect_backoff();
        held.set(1.0);
        tracing::info!(
            channel,
            "poll lease acquired: this replica polls the channel"
        );
        let ended = poll_while_held(
            &ctx,
            &mut lease,
            &mut budget,
            &states,
            schedule,
            (&shares, &shutdown),
        )
        .await;
        held.set(0.0);
        if let Next::Stop = release(&channel, lease, ended).await {
            return;
        }
    }
}

/// Releases the lease when polling under it ended: on shutdown (`ended` is `None`) the
/// loop stops; when the lease was lost, this replica contends again.
async fn release(channel: &str, lease: PollLease, ended: Option<LeaseError>) -> Next<()> {
    match ended {
        None => {
            lease.release().await;
            tracing::info!(channel, "poll lease released on shutdown");
            Next::Stop
        }
        Some(LeaseError::Released { .. }) => {
            tracing::info!(
                channel,
                "poll lease let go: the channel is another replica's share now"
            );
            lease.release().await;
            Next::Again
        }
        Some(error) => {
            tracing::info!(channel, error = %error, "poll lease lost: this replica stopped polling the channel");
            lease.release().await;
            Next::Again
        }
    }
}

/// What a step of the poll loop leads to: on with its result, back to the start of the
/// loop, or out of it (shutdown).
enum Next<T> {
    Go(T),
    Again,
    Stop,
}

/// Contends for the channel's lease on the inbound connection, once there is one (no
/// point reading, and paying for, events that cannot be published, and no lease without a
/// connection), and waits until this replica holds it. When contending fails, waits for a
/// new connection (the old one broke) or the backoff's pause, whichever comes first, and
/// says to try again.
async fn take_lease(
    channel: &str,
    lease_queue: &str,
    connections: &mut watch::Receiver<Option<Arc<lapin::Connection>>>,
    retry: &mut impl Iterator<Item = Duration>,
    shutdown: &CancellationToken,
) -> Next<PollLease> {
    let connection = tokio::select! {
        _ = shutdown.cancelled() => return Next::Stop,
        connection = connections.wait_for(Option::is_some) => match connection {
            Ok(connection) => connection.clone(),
            Err(_) => return Next::Stop,
        },
    };
    let Some(connection) = connection else {
        return Next::Again;
    };
    let contended = PollLease::contend(&connection, lease_queue, channel, lease::RENEW_EVERY).await;
    drop(connection);
    let error = match contended {
        Ok(lease) => return acquire(channel, lease_queue, lease, shutdown).await,
        Err(error) => error,
    };
    let wait = retry.next().unwrap_or(Duration::from_secs(15));
    tracing::warn!(channel, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot contend for the poll lease");
    tokio::select! {
        _ = shutdown.cancelled() => Next::Stop,
        _ = connections.changed() => Next::Again,
        _ = tokio::time::sleep(wait) => Next::Again,
    }
}

/// Waits while another replica holds the lease. Releases it on shutdown; when the wait
/// ends otherwise (the connection broke), says to contend again.
async fn acquire(
    channel: &str,
    lease_queue: &str,
    mut lease: PollLease,
    shutdown: &CancellationToken,
) -> Next<PollLease> {
    tracing::debug!(channel, queue = %lease_queue, "contending for the poll lease");
    let acquired = tokio::select! {
        _ = shutdown.cancelled() => {
            lease.release().await;
            return Next::Stop;
        }
        acquired = lease.acquired() => acquired,
    };
    match acquired {
        Ok(()) => Next::Go(lease),
        Err(error) => {
            tracing::info!(channel, error = %error, "stopped waiting for the poll lease");
            Next::Again
        }
    }
}

/// Reports `polling_paused` for a channel that is `ok`, and only then: every
/// other state says more (credentials, credits, rate limit and permission stop
/// replies; `webhook_invalid` outranks paused polling), and overwriting it would
/// hide that cause. It would also make the poller and whoever reported the
/// other state take turns, each turn a `channel.state` for the CRM: a failed
/// poll every interval against the webhook check, or against each reply that
/// fails the same way.
fn report_polling_paused(states: &ChannelStates, channel: &str, detail: String) {
    if states.get(channel).map(|status| status.state) == Some(ChannelState::Ok) {
        states.set(channel, ChannelState::PollingPaused, None, Some(detail));
    }
}

/// Polls `ctx`'s channel while `lease` is held: every `interval`, sooner after
/// a rate-limit reset, and with a growing pause while its credits are out.
/// `None` on shutdown, else why the lease ended ([`LeaseError::Released`]
/// when the channel stopped being this replica's share).
async fn poll_while_held(
    ctx: &PollContext,
    lease: &mut PollLease,
    budget: &mut PollBudget,
    states: &ChannelStates,
    schedule: PollSchedule,
    (shares, shutdown): (&Shares, &CancellationToken),
) -> Option<LeaseError> {
    let mut pacing = Pacing::new(schedule);
    loop {
        // The broker may have given the lease to another replica while this
        // one could not hear it (a partition): ask before every poll.
        if let Err(error) = lease.confirm(lease::CONFIRM_TIMEOUT).await {
            return Some(error);
        }
        // Not cut short by shutdown: pollers stop between polls.
        let result = poll_once(ctx, budget).await;
        let wait = pacing.after(&ctx.channel, result, states);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            error = lease.ended() => return Some(error),
            () = shares.until_unserved(&ctx.channel) => {
                return Some(LeaseError::Released { channel: ctx.channel.clone() });
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the polls of one lease have been through so far, for how long to wait
/// before the next one.
struct Pacing {
    schedule: PollSchedule,
    credits_pause: Duration,
    failures_in_a_row: u32,
}

impl Pacing {
    fn new(schedule: PollSchedule) -> Pacing {
        Pacing {
            schedule,
            credits_pause: schedule.credits_pause_initial,
            failures_in_a_row: 0,
        }
    }

    /// Counts and reports a poll's `result` for `channel`, and says how long
    /// to wait before the next poll.
    fn after(
        &mut self,
        channel: &str,
        result: Result<PollOutcome, PollError>,
        states: &ChannelStates,
    ) -> Duration {
        let channel = channel.to_owned();
        let interval = self.schedule.interval;
        if result.is_err() {
            metrics::counter!("xbridge_poll_errors_total", "channel" => channel.clone())
                .increment(1);
        }
        match result {
            Ok(outcome) => {
                self.failures_in_a_row = 0;
                self.credits_pause = self.schedule.credits_pause_initial;
                succeeded(&channel, &outcome, states);
                interval
            }
            Err(PollError::RateLimited { until }) => until
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .unwrap_or(interval)
                .max(interval),
            Err(PollError::CreditsExhausted(error)) => self.credits_out(&channel, &error, states),
            Err(error) => {
                self.failed(&channel, &error, states);
                interval
            }
        }
    }

    /// Reports the account out of credits and pauses polling, the pause doubling up to
    /// its maximum while the credits stay out: each poll would be refused (and logged).
    fn credits_out(&mut self, channel: &str, error: &XError, states: &ChannelStates) -> Duration {
        states.set(
            channel,
            ChannelState::CreditsExhausted,
            None,
            Some(format!("polling paused: {error}")),
        );
        tracing::warn!(channel, error = %error, retry_in_secs = self.credits_pause.as_secs(), "polling paused: the X account has no credits");
        let wait = self.credits_pause;
        self.credits_pause = (self.credits_pause * 2).min(self.schedule.credits_pause_max);
        wait
    }

    /// Counts a failed poll; after [`POLL_FAILURES_BEFORE_PAUSED`] in a row the channel is
    /// reported `polling_paused`, as one failure may be a glitch.
    fn failed(&mut self, channel: &str, error: &PollError, states: &ChannelStates) {
        self.failures_in_a_row += 1;
        let failures_in_a_row = self.failures_in_a_row;
        tracing::warn!(channel, error = %error, failures_in_a_row, "poll failed");
        if failures_in_a_row >= POLL_FAILURES_BEFORE_PAUSED {
            report_polling_paused(states, channel, format!("polling keeps failing: {error}"));
        }
    }
}

/// Counts a successful poll of `channel` and clears the states polling owns.
fn succeeded(channel: &str, outcome: &PollOutcome, states: &ChannelStates) {
    metrics::counter!("xbridge_dm_events_read_total", "channel" => channel.to_owned())
        .increment(outcome.events_read as u64);
    // Poll lag is `time() - this` in Prometheus.
    metrics::gauge!(
        "xbridge_last_poll_success_timestamp_seconds",
        "channel" => channel.to_owned()
    )
    .set(Utc::now().timestamp() as f64);
    // Polling owns these two states; others are the sends' to clear.
    if matches!(
        states.get(channel).map(|s| s.state),
        Some(ChannelState::CreditsExhausted | ChannelState::PollingPaused)
    ) {
        states.set(channel, ChannelState::Ok, None, None);
    }
    if outcome.delivered > 0 {
        tracing::info!(
            channel,
            delivered = outcome.delivered,
            pages = outcome.pages,
            events_read = outcome.events_read,
            "poll delivered new DMs"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_polling_does_not_replace_a_state_that_says_more() {
        for other in [
            ChannelState::WebhookInvalid,
            ChannelState::Unauthorized,
            ChannelState::MissingPermission,
            ChannelState::CreditsExhausted,
            ChannelState::RateLimited,
        ] {
            let states = ChannelStates::new(["acme"]);
            states.set("acme", other, None, Some("why".into()));
            let mut changes = states.subscribe();
            report_polling_paused(&states, "acme", "polling keeps failing".into());
            assert_eq!(states.get("acme").unwrap().state, other);
            assert!(
                changes.try_recv().is_err(),
                "{other:?}: nothing for the CRM"
            );
        }
        let states = ChannelStates::new(["acme"]);
        report_polling_paused(&states, "acme", "polling keeps failing".into());
        assert_eq!(
            states.get("acme").unwrap().state,
            ChannelState::PollingPaused
        );
    }
}
