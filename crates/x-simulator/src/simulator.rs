//! The running server and the handle tests hold to steer and observe it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use url::Url;

use crate::accounts::Account;
use crate::clock::{Clock, SystemClock};
use crate::customers::Customer;
use crate::delivery;
use crate::events::{MediaSpec, Written};
use crate::faults::Fault;
use crate::rate_limit::RateLimitWindow;
use crate::routes;
use crate::signal::SignalKind;
use crate::state::stream::StreamCounters;
use crate::state::{
    ActivitySubscription, Counters, Delivery, DmEvent, MediaProcessing, RequestRecord, SentDm,
    SimState, StateSettings, Subscription, Upload, UploadRecord, Webhook, WebhookConfig,
};
use crate::webhooks;

/// How long [`Simulator::shutdown`] lets open connections finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What to serve and where.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Where to listen; tests use `127.0.0.1:0` so parallel tests get their own ports.
    pub bind: SocketAddr,
    /// The accounts known from the start; more can be added with [`Simulator::add_account`].
    pub accounts: Vec<Account>,
    /// Every account's DM-send window unless a [`Fault::RateLimitWindow`] overrides it.
    pub rate_limit: RateLimitWindow,
    /// Every account's DM-read window (`GET /2/dm_events`) unless a
    /// [`Fault::ReadRateLimitWindow`] overrides it. X allows 15 per 15 minutes; the default is
    /// as generous as the send window's.
    pub read_rate_limit: RateLimitWindow,
    /// Every account's media upload window (`/2/media/upload…`: INITIALIZE, APPEND, FINALIZE
    /// and STATUS together) unless a [`Fault::UploadRateLimitWindow`] overrides it. The default
    /// is X's documented 1,875 per 15 minutes per user.
    pub upload_rate_limit: RateLimitWindow,
    /// Webhook limits and the delivery retry schedule; tests shorten `retry_backoff` to
    /// milliseconds.
    pub webhooks: WebhookConfig,
}

impl Default for SimulatorConfig {
    /// No accounts, an ephemeral loopback port, the generous default windows and Pay Per Use's
    /// webhook limits.
    fn default() -> Self {
        SimulatorConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            accounts: Vec::new(),
            rate_limit: RateLimitWindow::default(),
            read_rate_limit: RateLimitWindow::default(),
            upload_rate_limit: crate::uploads::DEFAULT_UPLOAD_RATE_LIMIT,
            webhooks: WebhookConfig::default(),
        }
    }
}

/// A running fake of X's API. Cheap to clone: every clone steers the same server, and the server
/// stops on [`Simulator::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Simulator {
    handle: Arc<Handle>,
}

struct Handle {
    state: Arc<SimState>,
    base_url: Url,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.handle.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `config.bind` and serves on the current tokio runtime until shut down.
    pub async fn start(config: SimulatorConfig) -> anyhow::Result<Simulator> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Simulator::start`] with a chosen clock, so the crate's tests can move time.
    pub(crate) async fn start_with_clock(
        config: SimulatorConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding the X simulator to {}", config.bind))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let base_url = base_url_for(local_addr)?;
        let state = Arc::new(SimState::new(
            StateSettings {
                accounts: config.accounts,
                base_url: base_url.clone(),
                rate_limit: config.rate_limit,
                read_rate_limit: config.read_rate_limit,
                upload_rate_limit: config.upload_rate_limit,
                webhook_config: config.webhooks,
            },
            clock,
        )?);
        let app = routes::router(state.clone());
        let stop = state.shutdown.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%error, "the X simulator's server failed");
            }
        });
        tracing::info!(%base_url, "X simulator listening");
        Ok(Simulator {
            handle: Arc::new(Handle {
                state,
                base_url,
                server: Mutex::new(Some(server)),
            }),
        })
    }

    pub(crate) fn state(&self) -> &SimState {
        &self.handle.state
    }

    fn shared_state(&self) -> &Arc<SimState> {
        &self.handle.state
    }

    /// Where clients reach the simulator, e.g. `http://127.0.0.1:41234`: the X API base URL to
    /// configure the client with (an unspecified bind address is reported as loopback).
    pub fn base_url(&self) -> Url {
        self.handle.base_url.clone()
    }

    /// Adds an account (or replaces the one with the same user id) while running.
    pub fn add_account(&self, account: Account) {
        self.state().lock().accounts.upsert(account);
    }

    /// Regenerates the account's access token and secret, as an operator does in the
    /// X developer console after changing the App's permissions: from now on the old
    /// token is refused (401) and the new one, returned, is accepted. A token keeps the
    /// permissions it was made with, so [`Fault::MissingPermission`] (a property of the
    /// old token) is dropped: the new token carries the App's permissions as they are
    /// now, which the simulator takes to include Direct Messages (set the fault again to
    /// model a token regenerated before the permission was fixed). `None` for an
    /// unknown account.
    pub fn regenerate_access_token(&self, user_id: &str) -> Option<Account> {
        let mut inner = self.state().lock();
        let account = inner.accounts.by_user_id(user_id)?.with_regenerated_token();
        inner.accounts.upsert(account.clone());
        inner.faults.forget_missing_permission(user_id);
        tracing::info!(user_id, "access token regenerated");
        Some(account)
    }

    /// Accepts `account`'s credentials for its user id beside the ones already accepted, as
    /// if X let the earlier token live on: a client switching tokens then signs some requests
    /// with each, none refused, and the request log's `oauth_token` tells which signed what.
    /// [`Simulator::add_account`] with one of them revokes the others.
    pub fn add_token(&self, account: Account) {
        self.state().lock().accounts.add_token(account);
    }

    /// The accounts the simulator knows.
    pub fn accounts(&self) -> Vec<Account> {
        self.state().lock().accounts.all()
    }

    /// Makes the account's requests fail that way until [`Simulator::clear_faults`] (or until a
    /// limited fault is used up); [`Fault`] says which requests each kind reaches. The account
    /// need not exist yet.
    pub fn set_fault(&self, user_id: &str, fault: Fault) {
        tracing::info!(user_id, ?fault, "fault set");
        self.state().set_fault(user_id, fault);
    }

    /// Clears every fault of the account, including a changed rate-limit window.
    pub fn clear_faults(&self, user_id: &str) {
        tracing::info!(user_id, "faults cleared");
        self.state().clear_faults(user_id);
    }

    /// Every DM accepted so far, oldest first.
    pub fn sent_dms(&self) -> Vec<SentDm> {
        self.state().lock().dms.clone()
    }

    /// The DMs the account sent, oldest first.
    pub fn sent_dms_for(&self, user_id: &str) -> Vec<SentDm> {
        dms_of(&self.state().lock().dms, user_id)
    }

    /// Waits until the account has sent at least `count` DMs, then returns all of them.
    ///
    /// It never returns on its own if they do not come: wrap it in `tokio::time::timeout`.
    pub async fn wait_for_dms(&self, user_id: &str, count: usize) -> Vec<SentDm> {
        let state = self.state();
        state
            .wait_until(&state.dm_recorded, |inner| {
                let dms = dms_of(&inner.dms, user_id);
                (dms.len() >= count).then_some(dms)
            })
            .await
    }

    /// Waits until every slow send a [`Fault::SlowSend`] counted has come and created its DM
    /// (or been refused), so a test can tell a DM X created late from one never sent. Set the
    /// fault with `times`; wrap it in a timeout.
    pub async fn wait_for_slow_sends(&self) {
        let state = self.state();
        state
            .wait_until(&state.dm_recorded, |inner| {
                (inner.slow_sends == 0 && !inner.faults.any_slow_send()).then_some(())
            })
            .await;
    }

    /// Sets how the account's video and GIF uploads process from their next FINALIZE on:
    /// how many STATUS polls answer `in_progress` before the outcome, which outcome, and the
    /// `check_after_secs` X asks clients to wait (tests set 0). Images never process. Until
    /// set (and after [`Simulator::reset`]): 1 poll in progress, then `succeeded`, waiting 1 s.
    pub fn set_media_processing(&self, user_id: &str, processing: MediaProcessing) {
        tracing::info!(user_id, ?processing, "media processing set");
        self.state()
            .lock()
            .media_processing
            .insert(user_id.to_string(), processing);
    }

    /// Every media upload, oldest first: its INITIALIZE values, its APPENDs as
    /// `(segment_index, bytes)` in arrival order, whether it was finalized, its processing
    /// state and the bytes assembled by segment index, so a test can check order and content.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state()
            .lock()
            .uploads
            .iter()
            .map(UploadRecord::snapshot)
            .collect()
    }

    /// [`Simulator::uploads`] of one account.
    pub fn uploads_for(&self, user_id: &str) -> Vec<Upload> {
        self.state()
            .lock()
            .uploads
            .iter()
            .filter(|upload| upload.user_id == user_id)
            .map(UploadRecord::snapshot)
            .collect()
    }

    /// Every request X routes answered, in the order they were answered.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().lock().requests.clone()
    }

    /// The requests authenticated as the account.
    pub fn requests_for(&self, user_id: &str) -> Vec<RequestRecord> {
        requests_of(&self.state().lock().requests, user_id)
    }

    /// Waits until at least `count` requests of the account were answered, then returns them all.
    ///
    /// Counts refused ones too, so a test can wait for a client's retries. Wrap it in a timeout.
    pub async fn wait_for_requests(&self, user_id: &str, count: usize) -> Vec<RequestRecord> {
        let state = self.state();
        state
            .wait_until(&state.request_recorded, |inner| {
                let requests = requests_of(&inner.requests, user_id);
                (requests.len() >= count).then_some(requests)
            })
            .await
    }

    /// Waits until at least `count` requests of the account to paths starting with `path`
    /// were answered (e.g. its DM reads, `/2/dm_events`, apart from other calls), then returns
    /// those. Wrap it in a timeout.
    pub async fn wait_for_requests_to(
        &self,
        user_id: &str,
        path: &str,
        count: usize,
    ) -> Vec<RequestRecord> {
        let state = self.state();
        state
            .wait_until(&state.request_recorded, |inner| {
                let mut requests = requests_of(&inner.requests, user_id);
                requests.retain(|r| r.path.starts_with(path));
                (requests.len() >= count).then_some(requests)
            })
            .await
    }

    /// Running totals since start or the last reset.
    pub fn counters(&self) -> Counters {
        self.state().lock().counters
    }

    /// A customer writes to the account, now: the DM becomes a DM event of the account (listed by
    /// `GET /2/dm_events`) and, if the account is subscribed to a valid webhook, is delivered
    /// there in the background. The customer is remembered for user lookups.
    pub fn customer_dm(
        &self,
        account_user_id: &str,
        customer: &Customer,
        text: &str,
        media: Option<MediaSpec>,
    ) -> DmEvent {
        let now = self.state().now();
        self.inject(account_user_id, customer, text, media, Written::Now(now))
    }

    /// [`Simulator::customer_dm`] written at `created_at`, for tests of ordering, backfill and
    /// the 30-day retention. The id is minted from `created_at` as X's snowflake ids are, so a
    /// back-dated DM sorts among older events; it is still delivered at once.
    pub fn customer_dm_at(
        &self,
        account_user_id: &str,
        customer: &Customer,
        text: &str,
        media: Option<MediaSpec>,
        created_at: DateTime<Utc>,
    ) -> DmEvent {
        self.inject(
            account_user_id,
            customer,
            text,
            media,
            Written::At(created_at),
        )
    }

    fn inject(
        &self,
        account_user_id: &str,
        customer: &Customer,
        text: &str,
        media: Option<MediaSpec>,
        written: Written,
    ) -> DmEvent {
        let state = self.shared_state();
        let event = {
            let mut inner = state.lock();
            if !inner.accounts.contains(account_user_id) {
                tracing::warn!(
                    account_user_id,
                    "a customer DM to an account the simulator does not know"
                );
            }
            inner.record_customer_dm(
                &state.base_url,
                account_user_id,
                customer,
                text,
                media.as_ref(),
                written,
            )
        };
        tracing::info!(
            event_id = %event.id,
            sender_id = %event.sender_id,
            account_user_id,
            "customer DM received"
        );
        delivery::schedule(state, &event);
        event
    }

    /// The customer starts typing to the account: a typing indicator is delivered to the
    /// account's AAA subscription and its XAA `dm.indicate_typing` subscriptions (X keeps no DM
    /// event of it). Returns how many deliveries started.
    pub fn customer_typing(&self, account_user_id: &str, customer: &Customer) -> usize {
        self.signal(account_user_id, customer, SignalKind::Typing)
    }

    /// The customer reads the account's DMs up to `last_read_event_id`: a read receipt is
    /// delivered to the account's AAA subscription and its XAA `dm.read` subscriptions.
    /// Returns how many deliveries started.
    pub fn customer_read(
        &self,
        account_user_id: &str,
        customer: &Customer,
        last_read_event_id: &str,
    ) -> usize {
        let kind = SignalKind::Read {
            last_read_event_id: last_read_event_id.to_string(),
        };
        self.signal(account_user_id, customer, kind)
    }

    fn signal(&self, account_user_id: &str, customer: &Customer, kind: SignalKind) -> usize {
        delivery::customer_signal(self.shared_state(), account_user_id, customer, kind)
    }

    /// The content type and bytes the simulator serves at a media URL of a DM event (its TON
    /// URL, a video or GIF rendition, a preview), so a test can compare a download through
    /// the bridge with them byte for byte; `None` for a URL of no known media.
    pub fn media_content(&self, url: &str) -> Option<(String, Vec<u8>)> {
        crate::media::content_at(&self.state().lock().events, url)
    }

    /// Makes a customer known (for `GET /2/users/:id`) without a DM.
    pub fn add_customer(&self, customer: Customer) {
        self.state().lock().customers.upsert(customer);
    }

    /// The customers the simulator knows.
    pub fn customers(&self) -> Vec<Customer> {
        self.state().lock().customers.all()
    }

    /// Every DM event of the account (its sends and the DMs it received), oldest first, including
    /// those older than `GET /2/dm_events`' 30 days.
    pub fn dm_events_for(&self, user_id: &str) -> Vec<DmEvent> {
        self.state().lock().events_of(user_id)
    }

    /// How many DM events `GET /2/dm_events` returned to the account (what X bills it for).
    pub fn billed_dm_events(&self, user_id: &str) -> u64 {
        self.state()
            .lock()
            .billed_dm_events
            .get(user_id)
            .copied()
            .unwrap_or(0)
    }

    /// The registered webhooks, oldest first.
    pub fn webhooks(&self) -> Vec<Webhook> {
        self.state().lock().webhooks.clone()
    }

    /// The Account Activity subscriptions, oldest first.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.state().lock().subscriptions.clone()
    }

    /// The X Activity API subscriptions of every App, oldest first.
    pub fn activity_subscriptions(&self) -> Vec<ActivitySubscription> {
        self.state().lock().activity_subscriptions.clone()
    }

    /// Runs the CRC of a registered webhook now, as X does periodically, and records the outcome
    /// as its `valid`. False if the check failed or there is no such webhook.
    pub async fn check_webhook(&self, webhook_id: &str) -> bool {
        let webhook = self
            .state()
            .lock()
            .webhooks
            .iter()
            .find(|w| w.id == webhook_id)
            .cloned();
        match webhook {
            Some(webhook) => webhooks::check_webhook(self.state(), &webhook).await,
            None => false,
        }
    }

    /// Marks a registered webhook invalid, as X does when its periodic CRC failed while the
    /// receiver was away; only a `PUT /2/webhooks/:id` whose CRC passes makes it valid again.
    /// False if there is no such webhook.
    pub fn invalidate_webhook(&self, webhook_id: &str) -> bool {
        webhooks::invalidate(self.state(), webhook_id)
    }

    /// Every webhook delivery attempt so far, in the order made.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state().lock().deliveries.clone()
    }

    /// Waits until at least `count` delivery attempts were made (retries count), then returns all
    /// of them. Wrap it in a timeout.
    pub async fn wait_for_deliveries(&self, count: usize) -> Vec<Delivery> {
        let state = self.state();
        state
            .wait_until(&state.delivery_recorded, |inner| {
                (inner.deliveries.len() >= count).then(|| inner.deliveries.clone())
            })
            .await
    }

    /// Delivers the DM event again, byte for byte, to every valid webhook a participant is
    /// subscribed to — the duplicate deliveries X warns about. Returns how many deliveries
    /// started (0 for an unknown event or no subscription).
    pub fn deliver_again(&self, event_id: &str) -> usize {
        let state = self.shared_state();
        let event = state
            .lock()
            .events
            .iter()
            .find(|event| event.id == event_id)
            .cloned();
        match event {
            Some(event) => delivery::schedule(state, &event),
            None => 0,
        }
    }

    /// POSTs `body` once to the webhook's URL, with a correct signature when `signature` is
    /// `None`, that exact header value when `Some`, or no signature header at all when
    /// `Some("")` — for tests of forged or mangled deliveries. Returns the status the receiver
    /// answered, or 0 if the webhook is unknown or the receiver did not answer. Logged in
    /// [`Simulator::deliveries`] without a user or event, and never retried.
    pub async fn deliver_raw(
        &self,
        webhook_id: &str,
        body: impl Into<Vec<u8>>,
        signature: Option<String>,
    ) -> u16 {
        delivery::deliver_raw(self.state(), webhook_id, body.into(), signature).await
    }

    /// Cuts every open `GET /2/activity/stream` (X's operational-disconnect line, then the end
    /// of the response); returns how many were cut.
    pub fn cut_activity_streams(&self) -> usize {
        self.state().streams.cut_all()
    }

    /// How many activity streams are open, were opened and were cut.
    pub fn activity_stream_counters(&self) -> StreamCounters {
        self.state().streams.counters()
    }

    /// Waits until the counters satisfy `done` (checked whenever a stream opens or closes).
    pub async fn wait_for_activity_streams(
        &self,
        done: impl Fn(&StreamCounters) -> bool,
    ) -> StreamCounters {
        loop {
            let streams = &self.state().streams;
            let changed = streams.changed.notified();
            let counters = streams.counters();
            if done(&counters) {
                return counters;
            }
            changed.await;
        }
    }

    /// Sets the keep-alive interval of streams opened from now on (X: 20 s).
    pub fn set_activity_stream_keep_alive(&self, every: Duration) {
        self.state().streams.set_keep_alive(every);
    }

    /// Takes X's activity stream endpoint down (every connection answered 503, open streams
    /// left alone: cut them with [`Simulator::cut_activity_streams`]) or brings it back up.
    pub fn set_activity_stream_down(&self, down: bool) {
        self.state().streams.set_down(down);
    }

    /// Sets how far back the backfill of streams opened from now on reaches at most (X: 5
    /// minutes, whatever `backfill_minutes` asks): shorter, a test's gap outlasts X's backfill
    /// without waiting 5 minutes; zero, a reconnection replays nothing.
    pub fn set_activity_stream_backfill_window(&self, window: Duration) {
        self.state().streams.set_backfill_window(window);
    }

    /// Forgets DMs, DM events, uploads and media processing settings, deliveries, billing,
    /// requests, counters, faults, rate-limit windows and nonces; keeps accounts, customers, webhooks and subscriptions.
    pub fn reset(&self) {
        self.state().reset();
    }

    /// Stops the server: held and delayed answers end at once, open connections get a few
    /// seconds to finish, and the port is free when this returns.
    pub async fn shutdown(self) {
        self.handle.state.shutdown.cancel();
        let server = self
            .handle
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(mut server) = server {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the grace period; cutting them");
                server.abort();
                let _ = server.await;
            }
        }
        tracing::info!(base_url = %self.handle.base_url, "X simulator stopped");
    }
}

fn dms_of(dms: &[SentDm], user_id: &str) -> Vec<SentDm> {
    dms.iter()
        .filter(|dm| dm.sender_id == user_id)
        .cloned()
        .collect()
}

fn requests_of(requests: &[RequestRecord], user_id: &str) -> Vec<RequestRecord> {
    requests
        .iter()
        .filter(|r| r.user_id.as_deref() == Some(user_id))
        .cloned()
        .collect()
}

fn base_url_for(addr: SocketAddr) -> anyhow::Result<Url> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}", SocketAddr::new(ip, addr.port()));
    Url::parse(&url).with_context(|| format!("building a URL from {url}"))
}
