//! X's per-user rate limit on DM sends: a fixed window of `limit` requests, reported in the
//! `x-rate-limit-*` headers on every answer so clients can pace themselves from the headers.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How many DM sends one account may make per window.
///
/// The default (1000 per 15 minutes) is far above X's real 15 per 15 minutes so that demos
/// never hit it; tests that want a 429 shrink it with [`crate::Fault::RateLimitWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitWindow {
    /// Requests allowed per window; the next one gets a 429.
    pub limit: u32,
    /// How long a window lasts from its first request; `x-rate-limit-reset` is its end.
    pub window: Duration,
}

impl Default for RateLimitWindow {
    fn default() -> Self {
        RateLimitWindow {
            limit: 1000,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// What one counted request learned about the window, for headers and the 429 decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateLimitStatus {
    pub limit: u32,
    pub remaining: u32,
    /// End of the current window, epoch seconds rounded up, like X's `x-rate-limit-reset`.
    pub reset_epoch_secs: i64,
    pub exceeded: bool,
}

/// One account's window and how much of it is used.
#[derive(Clone, Debug)]
pub(crate) struct RateLimiter {
    window: RateLimitWindow,
    started: DateTime<Utc>,
    used: u32,
}

impl RateLimiter {
    pub(crate) fn new(window: RateLimitWindow, now: DateTime<Utc>) -> Self {
        RateLimiter {
            window,
            started: now,
            used: 0,
        }
    }

    pub(crate) fn window(&self) -> RateLimitWindow {
        self.window
    }

    fn window_end(&self) -> DateTime<Utc> {
        let length =
            chrono::Duration::from_std(self.window.window).unwrap_or(chrono::Duration::MAX);
        self.started
            .checked_add_signed(length)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Counts one request, opening a fresh window first if the last one has ended.
    pub(crate) fn count(&mut self, now: DateTime<Utc>) -> RateLimitStatus {
        if now >= self.window_end() {
            self.started = now;
            self.used = 0;
        }
        self.used = self.used.saturating_add(1);
        let end = self.window_end();
        let reset_epoch_secs = if end.timestamp_subsec_nanos() > 0 {
            end.timestamp() + 1
        } else {
            end.timestamp()
        };
        RateLimitStatus {
            limit: self.window.limit,
            remaining: self.window.limit.saturating_sub(self.used),
            reset_epoch_secs,
            exceeded: self.used > self.window.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_allows_limit_then_refuses_then_recovers() {
        let start = Utc::now();
        let window = RateLimitWindow {
            limit: 2,
            window: Duration::from_secs(60),
        };
        let mut limiter = RateLimiter::new(window, start);
        let first = limiter.count(start);
        assert_eq!((first.remaining, first.exceeded), (1, false));
        let second = limiter.count(start + chrono::Duration::seconds(1));
        assert_eq!((second.remaining, second.exceeded), (0, false));
        let third = limiter.count(start + chrono::Duration::seconds(59));
        assert_eq!((third.remaining, third.exceeded), (0, true));
        assert!(third.reset_epoch_secs >= (start + chrono::Duration::seconds(60)).timestamp());
        let next_window = limiter.count(start + chrono::Duration::seconds(60));
        assert_eq!((next_window.remaining, next_window.exceeded), (1, false));
    }
}
