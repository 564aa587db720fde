//! Everything a running simulator remembers, behind one mutex that is only ever held by
//! synchronous code (never across an `.await`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::accounts::{Account, AccountRegistry};
use crate::auth::NonceCache;
use crate::clock::Clock;
use crate::dm::SentDm;
use crate::faults::{Fault, FaultBook};
use crate::rate_limit::{RateLimitStatus, RateLimitWindow, RateLimiter};
use crate::request_log::{Counters, RequestRecord};

/// Twitter's snowflake epoch (2010-11-04), so event ids look like X's: 19 digits, time-ordered.
const SNOWFLAKE_EPOCH_MILLIS: i64 = 1_288_834_974_657;

/// The state shared by the server's handlers and every [`crate::Simulator`] handle.
pub(crate) struct SimState {
    pub clock: Arc<dyn Clock>,
    /// The window of every account without a `RateLimitWindow` fault.
    pub default_rate_limit: RateLimitWindow,
    /// Cancelled on shutdown, which releases held (`Timeout`) and delayed (`Latency`) answers.
    pub shutdown: CancellationToken,
    /// Woken whenever a DM is recorded, for [`crate::Simulator::wait_for_dms`].
    pub dm_recorded: Notify,
    /// Woken whenever a request is logged, for [`crate::Simulator::wait_for_requests`].
    pub request_recorded: Notify,
    inner: Mutex<Inner>,
}

/// The mutable part of [`SimState`].
#[derive(Default)]
pub(crate) struct Inner {
    pub accounts: AccountRegistry,
    pub faults: FaultBook,
    pub rate_limiters: HashMap<String, RateLimiter>,
    pub nonces: NonceCache,
    pub dms: Vec<SentDm>,
    pub requests: Vec<RequestRecord>,
    pub counters: Counters,
    last_event_id: u64,
}

impl SimState {
    pub(crate) fn new(
        accounts: Vec<Account>,
        default_rate_limit: RateLimitWindow,
        clock: Arc<dyn Clock>,
    ) -> SimState {
        let mut inner = Inner::default();
        for account in accounts {
            inner.accounts.upsert(account);
        }
        SimState {
            clock,
            default_rate_limit,
            shutdown: CancellationToken::new(),
            dm_recorded: Notify::new(),
            request_recorded: Notify::new(),
            inner: Mutex::new(inner),
        }
    }

    /// The state, even if a thread panicked while holding it: a test must still be able to read
    /// what happened.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn set_fault(&self, user_id: &str, fault: Fault) {
        let mut inner = self.lock();
        if matches!(fault, Fault::RateLimitWindow { .. }) {
            inner.rate_limiters.remove(user_id);
        }
        inner.faults.set(user_id, fault);
    }

    pub(crate) fn clear_faults(&self, user_id: &str) {
        let mut inner = self.lock();
        inner.faults.clear(user_id);
        let default = self.default_rate_limit;
        if inner
            .rate_limiters
            .get(user_id)
            .is_some_and(|limiter| limiter.window() != default)
        {
            inner.rate_limiters.remove(user_id);
        }
    }

    pub(crate) fn clear_all_faults(&self) {
        let mut inner = self.lock();
        inner.faults.clear_all();
        let default = self.default_rate_limit;
        inner
            .rate_limiters
            .retain(|_, limiter| limiter.window() == default);
    }

    /// Forgets everything that happened (DMs, requests, counters, faults, windows, nonces), but
    /// keeps the accounts, so one simulator can serve several scenarios.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        let accounts = std::mem::take(&mut inner.accounts);
        let last_event_id = inner.last_event_id;
        *inner = Inner {
            accounts,
            last_event_id,
            ..Inner::default()
        };
    }

    pub(crate) fn record_request(&self, record: RequestRecord) {
        {
            let mut inner = self.lock();
            inner.counters.count_answer(record.status);
            inner.requests.push(record);
        }
        self.request_recorded.notify_waiters();
    }

    /// Waits until `ready` finds what it wants in the state, re-checking after every `notify`.
    pub(crate) async fn wait_until<T>(
        &self,
        notify: &Notify,
        mut ready: impl FnMut(&Inner) -> Option<T>,
    ) -> T {
        loop {
            // Registering before checking means a notification between the two is not lost.
            let mut notified = std::pin::pin!(notify.notified());
            notified.as_mut().enable();
            let found = {
                let inner = self.lock();
                ready(&inner)
            };
            if let Some(found) = found {
                return found;
            }
            notified.await;
        }
    }
}

impl Inner {
    /// Counts one DM send against the account's window.
    pub(crate) fn count_rate_limit(
        &mut self,
        user_id: &str,
        now: DateTime<Utc>,
        default: RateLimitWindow,
    ) -> RateLimitStatus {
        let window = self.faults.rate_limit_window(user_id).unwrap_or(default);
        self.rate_limiters
            .entry(user_id.to_string())
            .or_insert_with(|| RateLimiter::new(window, now))
            .count(now)
    }

    /// A fresh 19-digit event id, greater than every earlier one.
    pub(crate) fn next_event_id(&mut self, now: DateTime<Utc>) -> String {
        let millis = (now.timestamp_millis() - SNOWFLAKE_EPOCH_MILLIS).max(0) as u64;
        let snowflake = millis << 22;
        self.last_event_id = snowflake.max(self.last_event_id + 1);
        self.last_event_id.to_string()
    }
}
