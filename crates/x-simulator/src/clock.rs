//! Where the simulator reads the time.
//!
//! Rate-limit windows, OAuth timestamp checks and `created_at` all read one [`Clock`], so the
//! crate's own tests can move time forward instead of sleeping through a window.

use chrono::{DateTime, Utc};

/// A source of "now"; the running server holds one for its whole life.
pub(crate) trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock, used by every simulator that callers start.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, so rate-limit tests need no timing assumptions.
#[cfg(test)]
pub(crate) struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

#[cfg(test)]
impl ManualClock {
    /// Starts at the real time, so timestamps signed with the wall clock stay fresh.
    pub(crate) fn starting_now() -> Self {
        ManualClock(std::sync::Mutex::new(Utc::now()))
    }

    pub(crate) fn advance(&self, by: std::time::Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        *now = now
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
