//! Wiring one bridge process: the state store and the outbound side, run
//! until shutdown.

use std::sync::Arc;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use xbridge_control::{Control, StoredChannels};
use xbridge_core::channel_identity::{ChannelIdentities, IdentityMismatch};
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, HttpSettings, Settings, StateBackend, StateSettings};
use xbridge_core::contract::ChannelState;
use xbridge_core::live_channels::{LiveChannels, Origin};
use xbridge_inbound::service::Inbound;
use xbridge_inbound::webhook::identity::IdentityResolver;
use xbridge_outbound::Outbound;
use xbridge_sharing::{replica_id, Membership, MembershipSettings, Shares};
use xbridge_store::{EmbeddedStore, PostgresStore, StateStore, StoreHealth};
use xbridge_x_api::XHttp;

/// Opens the configured state store: the embedded file for a single process,
/// or PostgreSQL shared by several replicas.
pub async fn open_store(settings: &StateSettings) -> anyhow::Result<Arc<dyn StateStore>> {
    let store = open_store_as_is(settings).await?;
    tracing::info!(store = %settings.backend.describe(), "state store open");
    check_credentials_key(settings, store.as_ref()).await?;
    Ok(store)
}

/// Opens the configured store without recording the credentials key it is
/// sealed with: for a command that only reads it (`xbridge check`), which
/// must not seal a store with a key no bridge has used yet.
pub async fn open_store_as_is(settings: &StateSettings) -> anyhow::Result<Arc<dyn StateStore>> {
    let store: Arc<dyn StateStore> = match &settings.backend {
        StateBackend::Embedded { path } => Arc::new(
            EmbeddedStore::open(path)
                .with_context(|| format!("opening the state store {}", path.display()))?,
        ),
        StateBackend::Postgres { url, schema, tls } => Arc::new(
            PostgresStore::connect_with(url.expose_secret(), Some(schema), tls)
                .await
                .with_context(|| format!("opening the PostgreSQL state store (schema {schema})"))?,
        ),
    };
    Ok(store)
}

/// Refuses a `state.credentials_key` that is not the key the store was
/// first sealed with (recording it on first use), so replicas with different
/// keys stop at start instead of failing channel by channel later.
async fn check_credentials_key(
    settings: &StateSettings,
    store: &dyn StateStore,
) -> anyhow::Result<()> {
    if settings.credentials_key.is_none() {
        return Ok(());
    }
    let key = settings.credentials_key()?;
    xbridge_store::check_credentials_key(store, &key).await?;
    Ok(())
}

/// File descriptors the bridge needs beside its HTTP connections: RabbitMQ,
/// X and PostgreSQL connections, the state file, the runtime's own.
const OTHER_OPEN_FILES: u64 = 256;

/// Raises the process's open-files limit to the hard limit (see
/// [`xbridge_core::server::raise_open_files_limit`]) and warns when even
/// that cannot hold every HTTP server's `http.max_connections`: accepts
/// would then fail (and pause) before the cap is reached.
fn open_files_for(settings: &Settings) {
    let servers = [settings.inbound.listen, settings.telemetry.listen]
        .iter()
        .flatten()
        .count() as u64;
    let needed = servers * settings.http.max_connections as u64 + OTHER_OPEN_FILES;
    match xbridge_core::server::raise_open_files_limit() {
        Ok(limit) => {
            if let Some(before) = limit.raised_from {
                tracing::info!(
                    before,
                    now = limit.soft,
                    "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
                );
            }
            if limit.soft < needed {
                tracing::warn!(
                    limit = limit.soft,
                    needed,
                    "the open-files limit is below what http.max_connections needs; raise the hard limit (ulimit -Hn, LimitNOFILE=, docker --ulimit nofile=) or lower http.max_connections"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

/// A bridge ready to run.
pub struct Bridge {
    outbound: Outbound,
    inbound: Inbound,
    ops: Option<std::net::TcpListener>,
    /// The HTTP servers' timeouts and limits, for the operations server.
    http: HttpSettings,
    states: Arc<ChannelStates>,
    /// The channels whose account X did not tell at startup, and what asks again.
    unresolved: Option<(IdentityResolver, Vec<String>)>,
    /// Whether the state store can write, for the probes.
    store: StoreHealth,
    /// The channels served now: both sides follow it.
    live: Arc<LiveChannels>,
    /// Each channel's account, shared by both sides; `/channels` shows it.
    identities: Arc<ChannelIdentities>,
    /// The CRM's commands, when `amqp.control.allowed_users` names anyone.
    control: Option<Control>,
    /// The store's CRM channels, read again when a reload shows a hidden one.
    stored: Option<StoredChannels>,
    /// What prunes the store's old records while the bridge runs.
    pruning: Pruning,
    /// This replica's heartbeat and share of the channels, joined already.
    membership: Membership,
    /// The channels this replica serves, for `/channels`.
    shares: Arc<Shares>,
}

/// The state store and its retention, for the pruning task [`Bridge::run`]
/// spawns (and ends with the bridge, so the store is released with it).
struct Pruning {
    store: Arc<dyn StateStore>,
    retention: std::time::Duration,
    every: std::time::Duration,
}

impl Bridge {
    /// Opens the state store (connecting to PostgreSQL and migrating it when
    /// that is the backend), builds every channel's client, and asks X which
    /// account each receiving channel is: a configured `user_id` X contradicts
    /// is an error here, naming the channel and both ids. Channels X does not
    /// answer for now are asked again once the bridge runs.
    pub async fn build(settings: Settings) -> anyhow::Result<Bridge> {
        Bridge::build_with(settings, None).await
    }

    /// [`Bridge::build`] with `store` in place of the configured state store
    /// (tests put a store double there).
    pub async fn build_with_store(
        settings: Settings,
        store: Arc<dyn StateStore>,
    ) -> anyhow::Result<Bridge> {
        Bridge::build_with(settings, Some(store)).await
    }

    /// The story of a start: what is local first (warnings, limits, the
    /// operations port), then the store, then both sides, and last X's word
    /// on each receiving channel's account.
    async fn build_with(
        settings: Settings,
        store: Option<Arc<dyn StateStore>>,
    ) -> anyhow::Result<Bridge> {
        // Once, now that logging is set up.
        for warning in &settings.warnings {
            tracing::warn!(%warning, "configuration warning");
        }
        open_files_for(&settings);
        let ops = bind_ops(&settings)?;
        let store = match store {
            Some(store) => store,
            None => open_store(&settings.state).await?,
        };
        let store_health = store.health();
        let pruning = Pruning {
            store: store.clone(),
            retention: settings.state.retention,
            every: settings.state.prune_interval,
        };
        let http = settings.http.clone();
        let live = Arc::new(LiveChannels::new(&settings.channels));
        // The CRM's channels come back from the store before the sides are built,
        // and the sides start with them as with the file's: both build from `live`
        // (`settings.channels` stays the file's).
        xbridge_control::load_crm_channels(&settings, store.clone(), live.clone())
            .await
            .context("reading the CRM's channels from the state store")?;
        let stored = StoredChannels::new(&settings, store.clone(), live.clone())?;
        let shares = Shares::new(replica_id());
        let mut membership = Membership::new(
            store.clone(),
            shares.clone(),
            live.clone(),
            MembershipSettings {
                heartbeat: settings.state.replica_heartbeat,
                expiry: settings.state.replica_expiry,
            },
        );
        membership.join().await;
        // Read before `settings` moves into the sides (see `with_readiness`).
        let grace = settings.outbound.shutdown_grace;
        let settings = Arc::new(settings);
        let states = Arc::new(ChannelStates::new(
            live.current().keys().map(String::as_str),
        ));
        let served: Vec<ChannelSettings> = live
            .current()
            .values()
            .map(|c| (*c.settings).clone())
            .collect();
        let identities = Arc::new(ChannelIdentities::from_channels(&served));
        let control = Control::new(
            settings.clone(),
            store.clone(),
            live.clone(),
            states.clone(),
            identities.clone(),
        )?;
        let (outbound, inbound) = sides(
            settings,
            live.clone(),
            store,
            states.clone(),
            identities.clone(),
            shares.clone(),
        )?;
        let membership = membership.with_readiness(outbound.readiness(), grace);
        let resolver = tolerating_crm(inbound.identity_resolver(), &live, &states);
        let unanswered = resolver.resolve_once().await?;
        Ok(Bridge {
            outbound,
            inbound,
            ops,
            http,
            states,
            unresolved: (!unanswered.is_empty()).then_some((resolver, unanswered)),
            store: store_health,
            live,
            identities,
            control,
            stored,
            pruning,
            membership,
            shares,
        })
    }

    /// The store's CRM channels, `None` without `state.credentials_key`: a
    /// reload reads those of the file channels it removes again.
    pub fn stored_channels(&self) -> Option<StoredChannels> {
        self.stored.clone()
    }

    /// `true` while the outbound side is connected and consuming.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.outbound.readiness()
    }

    /// `true` while the inbound side can publish events.
    pub fn inbound_readiness(&self) -> watch::Receiver<bool> {
        self.inbound.readiness()
    }

    /// Whether the state store can write.
    pub fn store_health(&self) -> StoreHealth {
        self.store.clone()
    }

    /// The channels served now: what the control consumer and a reload change.
    pub fn live_channels(&self) -> Arc<LiveChannels> {
        self.live.clone()
    }

    /// `true` while the control consumer takes commands; `None` when control is
    /// off (`amqp.control.allowed_users` empty).
    pub fn control_readiness(&self) -> Option<watch::Receiver<bool>> {
        self.control.as_ref().map(Control::readiness)
    }

    /// Every channel's state.
    pub fn channel_states(&self) -> Arc<ChannelStates> {
        self.states.clone()
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, when configured.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where X's webhook is served, when configured.
    pub fn webhook_addr(&self) -> Option<std::net::SocketAddr> {
        self.inbound.webhook_addr()
    }

    /// Runs until `shutdown` is cancelled; in-flight sends finish within the
    /// configured grace period.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(webhook = ?self.inbound.webhook_addr(), "xbridge starting");
        let readiness = self.readiness_sources();
        let registry = self.registry();
        let gauges = tokio::spawn({
            let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
            async move { crate::ops::track_broker_connections(&readiness, shutdown).await }
        });
        let ops = self.ops.map(|listener| {
            tokio::spawn(crate::ops::serve(
                listener,
                readiness,
                registry,
                self.http.clone(),
                shutdown.clone(),
            ))
        });
        let identities = self
            .unresolved
            .map(|(resolver, unanswered)| spawn_identity_checks(resolver, unanswered, &shutdown));
        let pruner = xbridge_store::spawn_pruner(
            self.pruning.store,
            self.pruning.retention,
            self.pruning.every,
        );
        // Leaves only once both sides stopped: a channel is let go after its
        // reply consumer handed back what it held.
        let leave = CancellationToken::new();
        let membership = tokio::spawn(self.membership.run(leave.clone()));
        let inbound = tokio::spawn(self.inbound.run(shutdown.clone()));
        let control = self.control.map(|c| tokio::spawn(c.run(shutdown.clone())));
        let outbound = self.outbound.run(shutdown.clone()).await;
        // Whatever ended the outbound side ends the process: stop inbound too.
        shutdown.cancel();
        let _ = inbound.await;
        leave.cancel();
        let _ = membership.await;
        if let Some(control) = control {
            let _ = control.await;
        }
        if let Some(ops) = ops {
            let _ = ops.await;
        }
        let _ = gauges.await;
        pruner.abort();
        let _ = pruner.await;
        if let Some(identities) = identities {
            if let Ok(Err(mismatch)) = identities.await {
                return Err(mismatch.into());
            }
        }
        outbound?;
        Ok(())
    }

    /// What `/channels` lists.
    fn registry(&self) -> crate::ops::Registry {
        crate::ops::Registry {
            live: self.live.clone(),
            states: self.states.clone(),
            identities: self.identities.clone(),
            shares: self.shares.clone(),
        }
    }

    /// What `/readyz` and the connection gauges read: each side's readiness,
    /// the channels, the store and the webhook.
    fn readiness_sources(&self) -> crate::ops::Readiness {
        crate::ops::Readiness {
            outbound: self.outbound.readiness(),
            inbound: self.inbound.readiness(),
            channels: self.states.clone(),
            store: self.store.clone(),
            webhook: self.inbound.webhook_serving(),
        }
    }
}

/// Binds the operations port when one is configured, at startup so a port in
/// use fails there. Metrics record from then on (the store's health
/// included), not from the first scrape.
fn bind_ops(settings: &Settings) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = settings.telemetry.listen else {
        return Ok(None);
    };
    crate::ops::metrics_handle();
    let listener = crate::ops::bind(addr)
        .with_context(|| format!("cannot serve health and metrics on {addr}"))?;
    Ok(Some(listener))
}

/// Both directions over one HTTP stack for every channel's X clients: they
/// all talk to the same host, and a stack per client costs a copy of the
/// system's root certificates each.
fn sides(
    settings: Arc<Settings>,
    live: Arc<LiveChannels>,
    store: Arc<dyn StateStore>,
    states: Arc<ChannelStates>,
    identities: Arc<ChannelIdentities>,
    shares: Arc<Shares>,
) -> anyhow::Result<(Outbound, Inbound)> {
    let x_http = XHttp::new().context("setting up the HTTP client for X")?;
    let outbound = Outbound::new(
        settings.clone(),
        live.clone(),
        store.clone(),
        states.clone(),
        x_http.clone(),
        identities.clone(),
        shares.clone(),
    )?;
    let inbound = Inbound::new(settings, live, store, states, x_http, identities, shares)?;
    Ok((outbound, inbound))
}

/// The CRM's channels `live` serves (read from the store at start).
fn crm_channels(live: &LiveChannels) -> Vec<ChannelSettings> {
    live.current()
        .values()
        .filter(|c| c.origin == Origin::Crm)
        .map(|c| (*c.settings).clone())
        .collect()
}

/// A CRM channel X contradicts does not stop the bridge as a file channel does:
/// the CRM fixes it with a command, which a stopped bridge (every replica, at
/// each restart) would never take. It is left out of routing, `unauthorized`
/// with the reason, and the other channels run.
fn tolerating_crm(
    resolver: IdentityResolver,
    live: &LiveChannels,
    states: &Arc<ChannelStates>,
) -> IdentityResolver {
    let crm = crm_channels(live).into_iter().map(|c| c.name).collect();
    let states = states.clone();
    resolver.tolerating(crm, move |mismatch| {
        let detail = Some(mismatch.to_string());
        states.set(&mismatch.channel, ChannelState::Unauthorized, None, detail);
    })
}

/// Asks X again about the channels it did not answer for at startup. A
/// configured id X contradicts later stops the bridge as it would have
/// stopped at startup: routing by it would publish one account's DMs as
/// another's.
fn spawn_identity_checks(
    resolver: IdentityResolver,
    unanswered: Vec<String>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), IdentityMismatch>> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let result = resolver.run(unanswered, shutdown.clone()).await;
        if let Err(mismatch) = &result {
            tracing::error!(error = %mismatch, "stopping: a channel is not the X account its configuration names");
            shutdown.cancel();
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[tokio::test]
    async fn a_start_with_another_credentials_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |key: String| StateSettings {
            backend: StateBackend::Embedded {
                path: dir.path().join("state.redb"),
            },
            credentials_key: Some(SecretString::from(key)),
            retention: xbridge_core::config::DEFAULT_RETENTION,
            prune_interval: xbridge_core::config::DEFAULT_PRUNE_INTERVAL,
            replica_heartbeat: xbridge_core::config::DEFAULT_REPLICA_HEARTBEAT,
            replica_expiry: xbridge_core::config::DEFAULT_REPLICA_EXPIRY,
        };
        for _ in 0..2 {
            drop(open_store(&settings("ab".repeat(32))).await.unwrap());
        }
        let refused = open_store(&settings("cd".repeat(32))).await.err().unwrap();
        let refused = format!("{refused:#}");
        assert!(
            refused.contains("state.credentials_key does not match"),
            "{refused}"
        );
    }
}
