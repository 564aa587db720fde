//! Client-side pacing of DM sends, so that a backlog goes out at the rate X allows instead
//! of running into 429s.
//!
//! X announces its per-user window on every answer (`x-rate-limit-*`). The [`Pacer`] keeps a
//! local count of the requests left in that window, hands them out to concurrent senders,
//! and makes everyone else wait for the reset. The limits differ by plan and change over
//! time, so nothing here assumes a number: it only trusts headers.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Extra wait after X's reset second: the reset is rounded to whole seconds and our clock
/// may run ahead of X's, and one early request costs a 429.
const RESET_SLACK: Duration = Duration::from_secs(1);

/// X's longest window is 24 hours; a reset further out is taken for a glitch rather than a
/// reason to stop sending for months.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a 429 blocks when X does not say when its window resets.
const DEFAULT_BLOCK: Duration = Duration::from_secs(60);

/// X's rate-limit window as announced in the headers of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per window (`x-rate-limit-limit`); what the pacer refills to after a reset.
    pub limit: Option<u32>,
    /// Requests left in the window after this one (`x-rate-limit-remaining`).
    pub remaining: u32,
    /// When the window ends (`x-rate-limit-reset`, epoch seconds).
    pub reset_at: DateTime<Utc>,
}

impl RateLimit {
    /// Reads the `x-rate-limit-*` headers; `None` unless both remaining and reset are there
    /// and readable, since neither means anything alone.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        Some(RateLimit {
            limit: header_number(headers, "x-rate-limit-limit"),
            remaining: header_number(headers, "x-rate-limit-remaining")?,
            reset_at: header_epoch(headers, "x-rate-limit-reset")?,
        })
    }
}

/// When to try again after a 429: `x-rate-limit-reset`, or later if a 24-hour window that
/// X sometimes announces (`x-user-limit-24hour-*`, `x-app-limit-24hour-*`) is used up and
/// resets later. Retrying at the 15-minute reset would only earn another 429 then.
pub(crate) fn reset_after_rate_limit(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let exhausted_daily = ["x-user-limit-24hour", "x-app-limit-24hour"]
        .into_iter()
        .filter(|prefix| header_number(headers, &format!("{prefix}-remaining")) == Some(0))
        .filter_map(|prefix| header_epoch(headers, &format!("{prefix}-reset")));
    header_epoch(headers, "x-rate-limit-reset")
        .into_iter()
        .chain(exhausted_daily)
        .max()
}

fn header_number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_epoch(headers: &HeaderMap, name: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(header_number(headers, name)?, 0)
}

/// Paces the requests of one X account to one endpoint family (DM sends).
///
/// Cheap to share behind the client's `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// Wakes waiters when an answer may have opened room before the time they wait for.
    changed: Notify,
    /// How long a 429 without a reset blocks, and how long to wait for an answer that names
    /// the next window before letting a single request through to find out.
    fallback_block: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// The last announced window size; the count after a reset.
    limit: Option<u32>,
    /// Requests that may still start in `window`; `None` = unknown, so unlimited.
    remaining: Option<u32>,
    /// The window `remaining` belongs to; `None` right after a reset, until X names the next.
    window: Option<Window>,
    /// A 429's block, which holds whatever later answers say.
    blocked: Option<Window>,
    /// When every request of a refilled window is out and no answer has named its end: the
    /// time to stop waiting for one and let a single request through.
    probe_at: Option<Instant>,
    /// While nothing is known about the window, one request goes first to learn it, so a
    /// backlog at startup does not fire all at once into a 429.
    discovering: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// X's reset time, to tell answers of this window from older and newer ones.
    reset_at: DateTime<Utc>,
    /// When requests may go again, on tokio's clock (which tests can pause).
    opens_at: Instant,
}

impl Window {
    fn ending_at(reset_at: DateTime<Utc>) -> Window {
        let until_reset = SystemTime::from(reset_at)
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_WAIT);
        Window {
            reset_at,
            opens_at: Instant::now() + until_reset + RESET_SLACK,
        }
    }

    fn opens_at_utc(&self) -> DateTime<Utc> {
        // `reset_at` is X's header: at the end of chrono's range, adding panics.
        self.reset_at
            .checked_add_signed(chrono::Duration::from_std(RESET_SLACK).unwrap_or_default())
            .unwrap_or(self.reset_at)
    }
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer::new(DEFAULT_BLOCK)
    }
}

impl Pacer {
    /// A pacer that knows nothing yet (so lets requests through until X's headers say
    /// otherwise) and blocks for `fallback_block` after a 429 that names no reset.
    pub fn new(fallback_block: Duration) -> Pacer {
        Pacer {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            fallback_block,
        }
    }

    /// Waits until a request is allowed, and reserves it, so concurrent senders of one
    /// channel share the window instead of all trusting the same stale count.
    pub async fn ready(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so an observe() between the look and the wait
            // still wakes us.
            changed.as_mut().enable();
            let wake_at = match self.try_reserve() {
                Ok(()) => return,
                Err(wake_at) => wake_at,
            };
            tracing::debug!(
                wait_ms = u64::try_from(
                    wake_at
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                )
                .unwrap_or(u64::MAX),
                "no DM send allowed now; waiting"
            );
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                () = changed => {}
            }
        }
    }

    /// Reserves a request now, or says when to look again.
    fn try_reserve(&self) -> Result<(), Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(blocked) = state.blocked {
            if now < blocked.opens_at {
                return Err(blocked.opens_at);
            }
            state.blocked = None;
        }
        if state.window.is_some_and(|window| now >= window.opens_at) {
            // X has refilled the window; the next answer will name the new one.
            state.remaining = state.limit;
            state.window = None;
        }
        match (state.remaining, state.window) {
            (None, _) if state.discovering => Err(now + self.fallback_block),
            (None, _) => {
                state.discovering = true;
                Ok(())
            }
            (Some(0), Some(window)) => Err(window.opens_at),
            (Some(0), None) => {
                let probe_at = *state.probe_at.get_or_insert(now + self.fallback_block);
                if now < probe_at {
                    return Err(probe_at);
                }
                // Answers with headers are not coming (failing requests?): one request
                // goes to find out, the next waits again.
                state.probe_at = Some(now + self.fallback_block);
                Ok(())
            }
            (Some(remaining), _) => {
                state.remaining = Some(remaining - 1);
                Ok(())
            }
        }
    }

    /// A request reserved by [`Pacer::ready`] got its answer (or failed): if it was the one
    /// sent to learn the window, the next may go. Call it after [`Pacer::observe`].
    pub fn completed(&self) {
        let was_discovering = std::mem::take(&mut self.lock().discovering);
        if was_discovering {
            self.changed.notify_waiters();
        }
    }

    /// Learns from an answer's rate-limit headers.
    ///
    /// Answers arrive out of order and after later reservations were made, so within one
    /// window the lower of X's count and ours wins; an answer about an older or already
    /// ended window is ignored, and one from a newer window replaces ours.
    pub fn observe(&self, limit: &RateLimit) {
        {
            let mut state = self.lock();
            if limit.limit.is_some() {
                state.limit = limit.limit;
            }
            if limit.reset_at <= Utc::now() {
                return;
            }
            let ours = state.remaining.unwrap_or(u32::MAX);
            match state.window {
                Some(window) if limit.reset_at < window.reset_at => return,
                Some(window) if limit.reset_at == window.reset_at => {
                    state.remaining = Some(ours.min(limit.remaining));
                }
                None => {
                    state.remaining = Some(ours.min(limit.remaining));
                    state.window = Some(Window::ending_at(limit.reset_at));
                }
                Some(_) => {
                    state.remaining = Some(limit.remaining);
                    state.window = Some(Window::ending_at(limit.reset_at));
                }
            }
            state.probe_at = None;
        }
        self.changed.notify_waiters();
    }

    /// After a 429: no request before `reset_at`, or for the fallback block when X did not
    /// say. A longer block already in place stays.
    pub fn block_until(&self, reset_at: Option<DateTime<Utc>>) {
        let reset_at = reset_at.unwrap_or_else(|| {
            Utc::now() + chrono::Duration::from_std(self.fallback_block).unwrap_or_default()
        });
        let mut state = self.lock();
        if state
            .blocked
            .is_some_and(|blocked| blocked.reset_at >= reset_at)
        {
            return;
        }
        tracing::info!(%reset_at, "X rate limit hit; holding this window's requests until the reset");
        state.blocked = Some(Window::ending_at(reset_at));
    }

    /// When the next request may go (`None` = now), for status reports.
    pub fn blocked_until(&self) -> Option<DateTime<Utc>> {
        let state = self.lock();
        let now = Instant::now();
        let blocked = state
            .blocked
            .filter(|blocked| now < blocked.opens_at)
            .map(|blocked| blocked.opens_at_utc());
        let exhausted = match (state.remaining, state.window) {
            (Some(0), Some(window)) if now < window.opens_at => Some(window.opens_at_utc()),
            (Some(0), None) => state
                .probe_at
                .filter(|at| now < *at)
                .map(|at| Utc::now() + chrono::Duration::from_std(at - now).unwrap_or_default()),
            _ => None,
        };
        blocked.max(exhausted)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few numbers, always left consistent; a panic elsewhere while
        // holding the lock does not make it wrong.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use reqwest::header::HeaderValue;
    use tokio::task::JoinSet;
    use tokio::time::timeout;

    /// Found by the property tests: a reset at the last second chrono can hold made the
    /// status report panic adding the slack to it.
    #[test]
    fn a_reset_at_the_end_of_time_is_reported_without_panic() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-rate-limit-reset",
            HeaderValue::from_static("8210266876799"),
        );
        let reset = reset_after_rate_limit(&headers);
        assert!(reset.is_some());
        let pacer = Pacer::new(Duration::from_secs(60));
        pacer.block_until(reset);
        assert_eq!(pacer.blocked_until(), reset);
    }

    #[tokio::test(start_paused = true)]
    async fn with_nothing_known_one_request_goes_first_to_learn_the_window() {
        let pacer = Arc::new(Pacer::new(Duration::from_secs(60)));
        pacer.ready().await;
        let second = tokio::spawn({
            let pacer = pacer.clone();
            async move { pacer.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "waits for the first answer");
        pacer.observe(&window(2, 1, in_secs(60)));
        pacer.completed();
        timeout(Duration::from_millis(1), second)
            .await
            .expect("goes once the window is known")
            .unwrap();
        // The window had room for exactly that one.
        let third = tokio::spawn({
            let pacer = pacer.clone();
            async move { pacer.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_without_headers_still_lets_the_next_request_learn() {
        let pacer = Arc::new(Pacer::new(Duration::from_secs(60)));
        pacer.ready().await;
        pacer.completed();
        timeout(Duration::from_millis(1), pacer.ready())
            .await
            .expect("the next request may try");
    }

    fn in_secs(secs: i64) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(secs)
    }

    fn window(limit: u32, remaining: u32, reset_at: DateTime<Utc>) -> RateLimit {
        RateLimit {
            limit: Some(limit),
            remaining,
            reset_at,
        }
    }

    /// True if `ready()` returns within `within` of (virtual) time.
    async fn ready_within(pacer: &Pacer, within: Duration) -> bool {
        timeout(within, pacer.ready()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_window_is_unlimited_one_request_at_a_time() {
        let pacer = Pacer::default();
        for _ in 0..1000 {
            assert!(ready_within(&pacer, Duration::ZERO).await);
            pacer.completed();
        }
        assert_eq!(pacer.blocked_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_before_the_reset_of_an_exhausted_window() {
        let pacer = Pacer::default();
        pacer.observe(&window(15, 0, in_secs(60)));
        assert!(pacer.blocked_until().is_some());
        assert!(!ready_within(&pacer, Duration::from_secs(59)).await);
        assert!(ready_within(&pacer, Duration::from_secs(3)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_remaining_requests() {
        let pacer = Arc::new(Pacer::default());
        pacer.observe(&window(15, 3, in_secs(600)));
        let start = Instant::now();
        let mut senders = JoinSet::new();
        for _ in 0..20 {
            let pacer = Arc::clone(&pacer);
            senders.spawn(async move {
                pacer.ready().await;
                start.elapsed()
            });
        }
        let mut waited: Vec<Duration> = senders.join_all().await;
        waited.sort();
        let immediate = waited.iter().filter(|w| w.is_zero()).count();
        assert_eq!(immediate, 3, "{waited:?}");
        // At the reset X refills to the limit: the next 15 go together...
        assert!(waited[3] >= Duration::from_secs(599), "{waited:?}");
        assert!(waited[3..18].iter().all(|w| *w == waited[3]), "{waited:?}");
        // ...and with no answer naming the new window, the rest trickle out one per fallback.
        assert!(waited[18] >= waited[3] + DEFAULT_BLOCK, "{waited:?}");
        assert!(waited[19] >= waited[18] + DEFAULT_BLOCK, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_of_the_same_window_does_not_hand_out_requests_twice() {
        let pacer = Pacer::default();
        let reset = in_secs(600);
        pacer.observe(&window(15, 5, reset));
        assert!(ready_within(&pacer, Duration::ZERO).await);
        assert!(ready_within(&pacer, Duration::ZERO).await);
        // The answer to the first of those two says 4 left; we already know only 3 are.
        pacer.observe(&window(15, 4, reset));
        for _ in 0..3 {
            assert!(ready_within(&pacer, Duration::ZERO).await);
        }
        assert!(!ready_within(&pacer, Duration::from_secs(598)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_from_an_older_window_is_ignored() {
        let pacer = Pacer::default();
        pacer.observe(&window(15, 0, in_secs(600)));
        pacer.observe(&window(15, 10, in_secs(300)));
        assert!(!ready_within(&pacer, Duration::from_secs(598)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_about_an_ended_window_is_ignored() {
        let pacer = Pacer::default();
        pacer.observe(&window(15, 0, in_secs(-5)));
        assert!(ready_within(&pacer, Duration::ZERO).await);
        assert_eq!(pacer.blocked_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_naming_the_refilled_window_sets_the_next_wait() {
        let pacer = Arc::new(Pacer::default());
        pacer.observe(&window(2, 0, in_secs(10)));
        // Past the reset the window refills to 2; both get reserved, the third waits for
        // an answer to say when this window ends (else it would probe after the fallback).
        for _ in 0..2 {
            assert!(ready_within(&pacer, Duration::from_secs(12)).await);
        }
        let waiter = tokio::spawn({
            let pacer = Arc::clone(&pacer);
            async move { ready_within(&pacer, Duration::from_secs(40)).await }
        });
        tokio::task::yield_now().await;
        // One of the two is answered: X counted it, the other is still in flight.
        pacer.observe(&window(2, 1, in_secs(30)));
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_window_releases_waiters_early() {
        let pacer = Arc::new(Pacer::default());
        pacer.observe(&window(15, 0, in_secs(600)));
        let waiter = tokio::spawn({
            let pacer = Arc::clone(&pacer);
            async move { ready_within(&pacer, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        pacer.observe(&window(15, 14, in_secs(1500)));
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_blocks_until_its_reset() {
        let pacer = Pacer::default();
        pacer.observe(&window(15, 10, in_secs(900)));
        pacer.block_until(Some(in_secs(120)));
        let blocked_until = pacer.blocked_until().expect("blocked");
        assert!(blocked_until > in_secs(119) && blocked_until < in_secs(123));
        assert!(!ready_within(&pacer, Duration::from_secs(119)).await);
        assert!(ready_within(&pacer, Duration::from_secs(3)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_reset_blocks_for_the_fallback() {
        let pacer = Pacer::new(Duration::from_secs(30));
        pacer.block_until(None);
        assert!(!ready_within(&pacer, Duration::from_secs(29)).await);
        assert!(ready_within(&pacer, Duration::from_secs(3)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_block_does_not_cut_a_longer_one() {
        let pacer = Pacer::default();
        pacer.block_until(Some(in_secs(300)));
        pacer.block_until(Some(in_secs(10)));
        assert!(!ready_within(&pacer, Duration::from_secs(298)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_far_in_the_future_blocks_for_a_day_at_most() {
        let pacer = Pacer::default();
        pacer.block_until(DateTime::from_timestamp(253_402_300_799, 0));
        assert!(!ready_within(&pacer, MAX_WAIT - Duration::from_secs(1)).await);
        assert!(ready_within(&pacer, Duration::from_secs(3)).await);
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-limit", HeaderValue::from_static("200"));
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("199"));
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1666741812"));
        assert_eq!(
            RateLimit::from_headers(&headers),
            Some(RateLimit {
                limit: Some(200),
                remaining: 199,
                reset_at: DateTime::from_timestamp(1_666_741_812, 0).unwrap(),
            })
        );
        headers.remove("x-rate-limit-reset");
        assert_eq!(RateLimit::from_headers(&headers), None);
    }

    #[test]
    fn an_exhausted_daily_window_pushes_the_retry_back() {
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1700000000"));
        headers.insert(
            "x-user-limit-24hour-remaining",
            HeaderValue::from_static("0"),
        );
        headers.insert(
            "x-user-limit-24hour-reset",
            HeaderValue::from_static("1700050000"),
        );
        headers.insert(
            "x-app-limit-24hour-remaining",
            HeaderValue::from_static("7"),
        );
        headers.insert(
            "x-app-limit-24hour-reset",
            HeaderValue::from_static("1700090000"),
        );
        assert_eq!(
            reset_after_rate_limit(&headers).map(|at| at.timestamp()),
            Some(1_700_050_000)
        );
    }
}
