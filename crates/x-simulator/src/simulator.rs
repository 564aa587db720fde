//! The running server and the handle tests hold to steer and observe it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use url::Url;

use crate::accounts::Account;
use crate::clock::{Clock, SystemClock};
use crate::dm::SentDm;
use crate::faults::Fault;
use crate::rate_limit::RateLimitWindow;
use crate::request_log::{Counters, RequestRecord};
use crate::routes;
use crate::state::SimState;

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
}

impl Default for SimulatorConfig {
    /// No accounts, an ephemeral loopback port and the generous default window.
    fn default() -> Self {
        SimulatorConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            accounts: Vec::new(),
            rate_limit: RateLimitWindow::default(),
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
        let state = Arc::new(SimState::new(config.accounts, config.rate_limit, clock));
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

    fn state(&self) -> &SimState {
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

    /// The accounts the simulator knows.
    pub fn accounts(&self) -> Vec<Account> {
        self.state().lock().accounts.all()
    }

    /// Makes the account's DM sends fail that way until [`Simulator::clear_faults`] (or until a
    /// limited fault is used up). The account need not exist yet.
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

    /// Running totals since start or the last reset.
    pub fn counters(&self) -> Counters {
        self.state().lock().counters
    }

    /// Forgets DMs, requests, counters, faults, rate-limit windows and nonces; keeps accounts.
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
