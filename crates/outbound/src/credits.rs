//! The per-channel credits gate: while an X account has no credits, its
//! replies wait here and only one probe request goes out per backoff step.
//!
//! Other channels have their own gate, so one account running dry never
//! delays another; inbound traffic does not pass through it at all.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use xbridge_core::config::CreditsSettings;
use xbridge_x_api::XError;

/// The earliest time a publisher's `timestamp` (or our own
/// `x-xbridge-first-seen-at`) may name for the credits wait to count from:
/// 2020-01-01T00:00:00Z, before X's v2 DM endpoints existed. An earlier one is
/// not a real publish time but a mistake (0, a small number, a default), and
/// counting from it would dead-letter the reply at its first credits error.
pub const EARLIEST_PLAUSIBLE_START: i64 = 1_577_836_800;

/// When a reply's credits wait started: the earliest of the AMQP `timestamp`
/// the CRM set (`published_at`, in seconds), our `first_seen` header from an
/// earlier round, and when this delivery was taken (`received_at`). A time
/// before [`EARLIEST_PLAUSIBLE_START`] or after `now` is ignored, so a
/// publisher's mistake cannot start the wait in 1970 or in the future.
pub fn wait_started(
    now: DateTime<Utc>,
    published_at: Option<u64>,
    first_seen: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> DateTime<Utc> {
    let plausible = |at: &DateTime<Utc>| at.timestamp() >= EARLIEST_PLAUSIBLE_START && *at <= now;
    let published_at =
        published_at.and_then(|secs| DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, 0));
    [published_at, first_seen, Some(received_at)]
        .into_iter()
        .flatten()
        .filter(plausible)
        .min()
        .unwrap_or(now)
}

/// What a sender may do after waiting at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Credits are fine: send.
    Send,
    /// Credits are out and it is this sender's turn to probe X with its reply.
    Probe,
}

/// The reply's own wait bound passed before credits came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitedTooLong;

#[derive(Debug)]
enum State {
    Open,
    Closed {
        /// Probes that failed since the outage began: sets the next pause.
        failed_probes: u32,
        next_probe_at: Instant,
        probe_in_flight: bool,
    },
}

/// The credits state of one channel.
#[derive(Debug)]
pub struct CreditsGate {
    state: Mutex<State>,
    /// X's latest answer about credits, so replies that give up without a
    /// request of their own can still say what X said.
    last_error: Mutex<Option<XError>>,
    changed: Notify,
    settings: CreditsSettings,
}

impl CreditsGate {
    /// An open gate.
    pub fn new(settings: CreditsSettings) -> CreditsGate {
        CreditsGate {
            state: Mutex::new(State::Open),
            last_error: Mutex::new(None),
            changed: Notify::new(),
            settings,
        }
    }

    /// Whether the channel is currently out of credits.
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }

    /// Waits until the caller may send (or probe), or until `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> Result<Permit, WaitedTooLong> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut state = self.lock();
                match &mut *state {
                    State::Open => return Ok(Permit::Send),
                    State::Closed {
                        next_probe_at,
                        probe_in_flight,
                        ..
                    } => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(WaitedTooLong);
                        }
                        if !*probe_in_flight && now >= *next_probe_at {
                            *probe_in_flight = true;
                            return Ok(Permit::Probe);
                        }
                        if *probe_in_flight {
                            deadline
                        } else {
                            (*next_probe_at).min(deadline)
                        }
                    }
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// X accepted a request: credits are there (again).
    pub fn succeeded(&self) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut state = self.lock();
        if matches!(*state, State::Closed { .. }) {
            tracing::info!("credits are back; sending resumes");
        }
        *state = State::Open;
        drop(state);
        self.changed.notify_waiters();
    }

    /// X's latest answer about credits during this outage.
    pub fn last_error(&self) -> Option<XError> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// X said the account has no credits (`error`). A failed probe lengthens
    /// the pause before the next one; the first such answer closes the gate.
    pub fn exhausted(&self, permit: Permit, error: &XError) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        let now = Instant::now();
        let mut state = self.lock();
        match &mut *state {
            State::Open => {
                tracing::warn!("X account is out of credits; sending paused");
                *state = State::Closed {
                    failed_probes: 0,
                    next_probe_at: now + self.settings.probe_initial,
                    probe_in_flight: false,
                };
            }
            State::Closed {
                failed_probes,
                next_probe_at,
                probe_in_flight,
            } => {
                if permit == Permit::Probe {
                    *failed_probes += 1;
                    *next_probe_at = now + self.pause_after(*failed_probes);
                    *probe_in_flight = false;
                }
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// The request ended some other way (a transient error, a rate limit):
    /// says nothing about credits, but frees the probe slot.
    pub fn inconclusive(&self, permit: Permit) {
        if permit == Permit::Probe {
            if let State::Closed {
                probe_in_flight, ..
            } = &mut *self.lock()
            {
                *probe_in_flight = false;
            }
            self.changed.notify_waiters();
        }
    }

    /// The pause after `failed` failed probes: doubling from `probe_initial`
    /// up to `probe_max`.
    fn pause_after(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.min(16));
        self.settings
            .probe_initial
            .saturating_mul(factor)
            .min(self.settings.probe_max)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn no_credits() -> XError {
        xbridge_x_api::classify_send_error(402, &Default::default(), b"")
    }

    fn gate() -> Arc<CreditsGate> {
        Arc::new(CreditsGate::new(CreditsSettings {
            max_wait: Duration::from_secs(900),
            probe_initial: Duration::from_secs(30),
            probe_max: Duration::from_secs(300),
        }))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_wait_starts_at_the_earliest_plausible_time() {
        let now = at("2026-11-25T10:00:00Z");
        let received = at("2026-11-25T09:59:59Z");
        let published = at("2026-11-25T09:50:00Z").timestamp() as u64;
        let seen = at("2026-11-25T09:40:00Z");
        assert_eq!(
            wait_started(now, Some(published), None, received).timestamp() as u64,
            published
        );
        assert_eq!(
            wait_started(now, Some(published), Some(seen), received),
            seen
        );
        assert_eq!(wait_started(now, None, None, received), received);
    }

    #[test]
    fn an_implausible_timestamp_is_ignored() {
        let now = at("2026-11-25T10:00:00Z");
        let received = at("2026-11-25T09:59:59Z");
        // 0 and other small numbers, a time in the future, milliseconds for
        // seconds, a number chrono cannot place: the delivery's time counts.
        for published in [
            0,
            1,
            86_400,
            1_577_836_799,
            1_900_000_000,
            1_764_064_800_000,
            u64::MAX,
        ] {
            assert_eq!(
                wait_started(now, Some(published), None, received),
                received,
                "{published}"
            );
        }
        assert_eq!(
            wait_started(now, None, Some(at("1970-01-01T00:00:00Z")), received),
            received
        );
        // A real publish time hours ago still counts: that reply did wait.
        let hours_ago = at("2026-11-25T06:00:00Z");
        assert_eq!(
            wait_started(now, Some(hours_ago.timestamp() as u64), None, received),
            hours_ago
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_lets_everyone_send() {
        assert_eq!(gate().acquire(far()).await, Ok(Permit::Send));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_gives_one_probe_per_step() {
        let gate = gate();
        gate.exhausted(Permit::Send, &no_credits());
        let start = Instant::now();

        assert_eq!(gate.acquire(far()).await, Ok(Permit::Probe));
        assert_eq!(Instant::now() - start, Duration::from_secs(30));

        // While the probe is out, nobody else gets through.
        let other = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(far()).await }
        });
        tokio::task::yield_now().await;
        assert!(!other.is_finished());

        // The probe fails: the next one comes after a doubled pause.
        gate.exhausted(Permit::Probe, &no_credits());
        assert_eq!(other.await.unwrap(), Ok(Permit::Probe));
        assert_eq!(Instant::now() - start, Duration::from_secs(30 + 60));
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_to_the_cap() {
        let gate = gate();
        assert_eq!(gate.pause_after(1), Duration::from_secs(60));
        assert_eq!(gate.pause_after(3), Duration::from_secs(240));
        assert_eq!(gate.pause_after(4), Duration::from_secs(300));
        assert_eq!(gate.pause_after(40), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_opens_the_gate_for_all_waiters() {
        let gate = gate();
        gate.exhausted(Permit::Send, &no_credits());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.acquire(far()).await })
            })
            .collect();
        let probe = gate.acquire(far()).await.unwrap();
        assert_eq!(probe, Permit::Probe);
        gate.succeeded();
        for waiter in waiters {
            let permit = waiter.await.unwrap().unwrap();
            // One waiter may have taken the probe before the success; all get through.
            assert!(matches!(permit, Permit::Send | Permit::Probe));
        }
        assert!(!gate.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_own_deadline() {
        let gate = gate();
        gate.exhausted(Permit::Send, &no_credits());
        let _probe = gate.acquire(far()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(gate.acquire(deadline).await, Err(WaitedTooLong));
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn an_inconclusive_probe_frees_the_slot_without_a_longer_pause() {
        let gate = gate();
        gate.exhausted(Permit::Send, &no_credits());
        let probe = gate.acquire(far()).await.unwrap();
        let at = Instant::now();
        gate.inconclusive(probe);
        assert_eq!(gate.acquire(far()).await, Ok(Permit::Probe));
        assert_eq!(Instant::now(), at);
    }
}
