//! Everything a running simulator remembers, behind one mutex that is only ever held by
//! synchronous code (never across an `.await`).
//!
//! This file is the container ([`SimState`], its mutable [`Inner`] and the one id sequence);
//! each kind of record it keeps has a file of its own beside it, which imports nothing of the
//! routes that fill it in, so no module that reads or writes the state is imported back:
//!
//! - `dm_event.rs`: [`DmEvent`], its media ([`DmAttachment`], [`MediaType`], [`MediaVariant`]);
//! - `sent_dm.rs`: [`SentDm`], a DM the send endpoints accepted;
//! - `upload.rs`: [`UploadRecord`] and what tests see of it ([`Upload`]), [`MediaProcessing`];
//! - `webhook.rs`: [`Webhook`], [`Subscription`] and their limits ([`WebhookConfig`]);
//! - `activity.rs`: [`ActivitySubscription`], an X Activity API subscription;
//! - `delivery.rs`: [`Delivery`], one webhook POST;
//! - `request_record.rs`: [`RequestRecord`], the request log's entries, and [`Counters`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::accounts::{Account, AccountRegistry};
use crate::auth::NonceCache;
use crate::clock::Clock;
use crate::customers::CustomerRegistry;
use crate::faults::{Fault, FaultBook};
use crate::rate_limit::{RateLimitStatus, RateLimitWindow, RateLimiter};

mod activity;
mod delivery;
mod dm_event;
mod request_record;
mod sent_dm;
pub(crate) mod stream;
mod upload;
mod webhook;

pub use activity::{ActivitySubscription, CreatedWith, DM_EVENT_TYPES};
pub use delivery::Delivery;
pub use dm_event::{DmAttachment, DmEvent, MediaType, MediaVariant, MESSAGE_CREATE};
pub use request_record::{Counters, RequestRecord, CLIENT_CLOSED_REQUEST};
pub use sent_dm::SentDm;
pub(crate) use upload::{Category, UploadRecord};
pub use upload::{MediaProcessing, ProcessingOutcome, ProcessingState, Upload};
pub use webhook::{Subscription, Webhook, WebhookConfig};

/// Twitter's snowflake epoch (2010-11-04), so event ids look like X's: 19 digits, time-ordered.
const SNOWFLAKE_EPOCH_MILLIS: i64 = 1_288_834_974_657;

/// The state shared by the server's handlers and every [`crate::Simulator`] handle.
pub(crate) struct SimState {
    pub clock: Arc<dyn Clock>,
    /// Where clients reach the simulator; media URLs start with it.
    pub base_url: Url,
    /// The send window of every account without a `RateLimitWindow` fault.
    pub default_rate_limit: RateLimitWindow,
    /// The DM-read window of every account without a `ReadRateLimitWindow` fault.
    pub default_read_rate_limit: RateLimitWindow,
    /// The media upload window of every account without an `UploadRateLimitWindow` fault.
    pub default_upload_rate_limit: RateLimitWindow,
    /// Webhook limits, retries and timeouts.
    pub webhook_config: WebhookConfig,
    /// The simulator's own HTTP client, for CRC checks and webhook deliveries.
    pub http: reqwest::Client,
    /// The runtime the server runs on, where deliveries are spawned from any thread.
    pub runtime: tokio::runtime::Handle,
    /// Cancelled on shutdown, which releases held (`Timeout`) and delayed (`Latency`) answers.
    pub shutdown: CancellationToken,
    /// Woken whenever a DM is recorded, for [`crate::Simulator::wait_for_dms`].
    pub dm_recorded: Notify,
    /// Woken whenever a request is logged, for [`crate::Simulator::wait_for_requests`].
    pub request_recorded: Notify,
    /// Woken whenever a webhook delivery attempt is logged, for
    /// [`crate::Simulator::wait_for_deliveries`].
    pub delivery_recorded: Notify,
    /// The open `GET /2/activity/stream` connections and their backfill log.
    pub streams: stream::StreamHub,
    inner: Mutex<Inner>,
}

/// The mutable part of [`SimState`].
#[derive(Default)]
pub(crate) struct Inner {
    pub accounts: AccountRegistry,
    pub faults: FaultBook,
    pub rate_limiters: HashMap<String, RateLimiter>,
    pub read_rate_limiters: HashMap<String, RateLimiter>,
    pub upload_rate_limiters: HashMap<String, RateLimiter>,
    /// Every media upload, oldest first.
    pub uploads: Vec<UploadRecord>,
    /// How each account's video and GIF uploads process, when a test changed the default.
    pub media_processing: HashMap<String, MediaProcessing>,
    pub nonces: NonceCache,
    pub dms: Vec<SentDm>,
    pub customers: CustomerRegistry,
    /// Every DM event, in the order recorded (ids mostly increase; back-dated ones do not).
    pub events: Vec<DmEvent>,
    /// DM events returned by `GET /2/dm_events`, per account (what X bills).
    pub billed_dm_events: HashMap<String, u64>,
    pub webhooks: Vec<Webhook>,
    pub subscriptions: Vec<Subscription>,
    /// X Activity API subscriptions, oldest first.
    pub activity_subscriptions: Vec<ActivitySubscription>,
    pub deliveries: Vec<Delivery>,
    pub requests: Vec<RequestRecord>,
    pub counters: Counters,
    /// Slow sends ([`crate::Fault::SlowSend`]) still on their way to creating their DM.
    pub slow_sends: usize,
    /// Bumped by every reset, so deliveries still retrying from before it stop instead of
    /// writing into the fresh log.
    pub epoch: u64,
    last_event_id: u64,
    used_ids: HashSet<u64>,
}

/// Which per-account rate-limit window a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Window {
    /// The DM sends.
    Send,
    /// `GET /2/dm_events`.
    Read,
    /// The media upload routes.
    Upload,
}

impl Window {
    const ALL: [Window; 3] = [Window::Send, Window::Read, Window::Upload];
}

impl SimState {
    pub(crate) fn new(settings: StateSettings, clock: Arc<dyn Clock>) -> anyhow::Result<SimState> {
        let mut inner = Inner::default();
        for account in settings.accounts {
            inner.accounts.upsert(account);
        }
        let http = reqwest::Client::builder()
            .timeout(settings.webhook_config.timeout)
            // X counts a redirect as a failed CRC; a proxy from the environment would keep the
            // simulator from reaching the loopback URLs tests register.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("x-simulator (like X's webhook client)")
            .build()
            .map_err(|error| anyhow::anyhow!("building the webhook HTTP client: {error}"))?;
        Ok(SimState {
            clock,
            base_url: settings.base_url,
            default_rate_limit: settings.rate_limit,
            default_read_rate_limit: settings.read_rate_limit,
            default_upload_rate_limit: settings.upload_rate_limit,
            webhook_config: settings.webhook_config,
            http,
            runtime: tokio::runtime::Handle::current(),
            shutdown: CancellationToken::new(),
            dm_recorded: Notify::new(),
            request_recorded: Notify::new(),
            delivery_recorded: Notify::new(),
            streams: stream::StreamHub::default(),
            inner: Mutex::new(inner),
        })
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

    /// The configured window of that kind, for accounts without a fault replacing it.
    pub(crate) fn default_window(&self, window: Window) -> RateLimitWindow {
        match window {
            Window::Send => self.default_rate_limit,
            Window::Read => self.default_read_rate_limit,
            Window::Upload => self.default_upload_rate_limit,
        }
    }

    pub(crate) fn set_fault(&self, user_id: &str, fault: Fault) {
        let mut inner = self.lock();
        // A new window starts counting afresh.
        let replaced = match fault {
            Fault::RateLimitWindow { .. } => Some(Window::Send),
            Fault::ReadRateLimitWindow { .. } => Some(Window::Read),
            Fault::UploadRateLimitWindow { .. } => Some(Window::Upload),
            _ => None,
        };
        if let Some(window) = replaced {
            inner.limiters(window).remove(user_id);
        }
        inner.faults.set(user_id, fault);
    }

    pub(crate) fn clear_faults(&self, user_id: &str) {
        let mut inner = self.lock();
        inner.faults.clear(user_id);
        // Only a window a fault replaced starts afresh; the default one keeps counting.
        for window in Window::ALL {
            let default = self.default_window(window);
            let limiters = inner.limiters(window);
            if limiters
                .get(user_id)
                .is_some_and(|limiter| limiter.window() != default)
            {
                limiters.remove(user_id);
            }
        }
    }

    pub(crate) fn clear_all_faults(&self) {
        let mut inner = self.lock();
        inner.faults.clear_all();
        for window in Window::ALL {
            let default = self.default_window(window);
            inner
                .limiters(window)
                .retain(|_, limiter| limiter.window() == default);
        }
    }

    /// Forgets everything that happened (DMs, DM events, uploads and media processing settings,
    /// deliveries, billing, requests, counters, faults, windows, nonces), but keeps the accounts, customers, webhooks and subscriptions (AAA and XAA) —
    /// the set-up — so one simulator can serve several scenarios.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        let accounts = std::mem::take(&mut inner.accounts);
        let customers = std::mem::take(&mut inner.customers);
        let webhooks = std::mem::take(&mut inner.webhooks);
        let subscriptions = std::mem::take(&mut inner.subscriptions);
        let activity_subscriptions = std::mem::take(&mut inner.activity_subscriptions);
        let last_event_id = inner.last_event_id;
        let epoch = inner.epoch + 1;
        *inner = Inner {
            accounts,
            customers,
            webhooks,
            subscriptions,
            activity_subscriptions,
            last_event_id,
            epoch,
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

/// What [`SimState::new`] needs besides the clock.
pub(crate) struct StateSettings {
    pub accounts: Vec<Account>,
    pub base_url: Url,
    pub rate_limit: RateLimitWindow,
    pub read_rate_limit: RateLimitWindow,
    pub upload_rate_limit: RateLimitWindow,
    pub webhook_config: WebhookConfig,
}

fn snowflake(at: DateTime<Utc>) -> u64 {
    let millis = (at.timestamp_millis() - SNOWFLAKE_EPOCH_MILLIS).max(0) as u64;
    millis << 22
}

impl Inner {
    /// Counts one request against the account's send or read window.
    pub(crate) fn count_rate_limit(
        &mut self,
        window: Window,
        user_id: &str,
        now: DateTime<Utc>,
        default: RateLimitWindow,
    ) -> RateLimitStatus {
        let configured = match window {
            Window::Send => self.faults.rate_limit_window(user_id),
            Window::Read => self.faults.read_rate_limit_window(user_id),
            Window::Upload => self.faults.upload_rate_limit_window(user_id),
        };
        let limit = configured.unwrap_or(default);
        self.limiters(window)
            .entry(user_id.to_string())
            .or_insert_with(|| RateLimiter::new(limit, now))
            .count(now)
    }

    /// The accounts' counters of that window.
    fn limiters(&mut self, window: Window) -> &mut HashMap<String, RateLimiter> {
        match window {
            Window::Send => &mut self.rate_limiters,
            Window::Read => &mut self.read_rate_limiters,
            Window::Upload => &mut self.upload_rate_limiters,
        }
    }

    /// A fresh 19-digit id (events, media, webhooks), greater than every earlier one.
    pub(crate) fn next_event_id(&mut self, now: DateTime<Utc>) -> String {
        let mut id = snowflake(now).max(self.last_event_id + 1);
        while self.used_ids.contains(&id) {
            id += 1;
        }
        self.last_event_id = id;
        self.used_ids.insert(id);
        id.to_string()
    }

    /// A fresh id minted from `at`, as X's snowflakes are: the same as [`Inner::next_event_id`]
    /// unless `at` lies before the newest id, in which case the id sits where `at` says among the
    /// earlier ones (a back-dated DM sorts by its time).
    pub(crate) fn event_id_at(&mut self, at: DateTime<Utc>) -> String {
        let mut id = snowflake(at);
        if id > self.last_event_id {
            return self.next_event_id(at);
        }
        while self.used_ids.contains(&id) {
            id += 1;
        }
        self.used_ids.insert(id);
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_even_if_the_clock_steps_back_and_back_dated_ids_sort_by_time() {
        let mut inner = Inner::default();
        let now = Utc::now();
        let first: u64 = inner.next_event_id(now).parse().unwrap();
        let second: u64 = inner
            .next_event_id(now - chrono::Duration::seconds(5))
            .parse()
            .unwrap();
        assert!(second > first);
        assert_eq!(first.to_string().len(), 19);

        let day_ago = now - chrono::Duration::days(1);
        let old: u64 = inner.event_id_at(day_ago).parse().unwrap();
        let older_twin: u64 = inner.event_id_at(day_ago).parse().unwrap();
        assert!(old < first && older_twin != old, "{old} {older_twin}");
        let third: u64 = inner.next_event_id(now).parse().unwrap();
        assert!(third > second, "back-dated ids leave the sequence alone");

        let later = now + chrono::Duration::seconds(1);
        let future: u64 = inner.event_id_at(later).parse().unwrap();
        assert!(future > third);
        let after: u64 = inner.next_event_id(now).parse().unwrap();
        assert!(after > future, "nothing minted later sorts before it");
    }
}
