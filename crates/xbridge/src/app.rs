//! Wiring one bridge process: the state store and the outbound side, run
//! until shutdown.

use std::sync::Arc;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{Settings, StateBackend, StateSettings};
use xbridge_inbound::service::Inbound;
use xbridge_outbound::Outbound;
use xbridge_store::{EmbeddedStore, PostgresStore, StateStore, StoreHealth};
use xbridge_x_api::XHttp;

/// Opens the configured state store: the embedded file for a single process,
/// or PostgreSQL shared by several replicas.
pub async fn open_store(settings: &StateSettings) -> anyhow::Result<Arc<dyn StateStore>> {
    let store: Arc<dyn StateStore> = match &settings.backend {
        StateBackend::Embedded { path } => Arc::new(
            EmbeddedStore::open(path)
                .with_context(|| format!("opening the state store {}", path.display()))?,
        ),
        StateBackend::Postgres { url, schema } => Arc::new(
            PostgresStore::connect(url.expose_secret(), Some(schema))
                .await
                .with_context(|| format!("opening the PostgreSQL state store (schema {schema})"))?,
        ),
    };
    tracing::info!(store = %settings.backend.describe(), "state store open");
    Ok(store)
}

/// A bridge ready to run.
pub struct Bridge {
    outbound: Outbound,
    inbound: Inbound,
    ops: Option<std::net::TcpListener>,
    states: Arc<ChannelStates>,
    store: StoreHealth,
}

impl Bridge {
    /// Opens the state store (connecting to PostgreSQL and migrating it when
    /// that is the backend) and builds every channel's client.
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

    async fn build_with(
        settings: Settings,
        store: Option<Arc<dyn StateStore>>,
    ) -> anyhow::Result<Bridge> {
        // Once, now that logging is set up.
        for warning in &settings.warnings {
            tracing::warn!(%warning, "configuration warning");
        }
        let ops = match settings.telemetry.listen {
            Some(addr) => {
                // Record from the start (the store's health included), not
                // from the first scrape.
                crate::ops::metrics_handle();
                Some(
                    crate::ops::bind(addr)
                        .with_context(|| format!("cannot serve health and metrics on {addr}"))?,
                )
            }
            None => None,
        };
        let store = match store {
            Some(store) => store,
            None => open_store(&settings.state).await?,
        };
        let store_health = store.health();
        let settings = Arc::new(settings);
        let states = Arc::new(ChannelStates::new(
            settings.channels.iter().map(|c| c.name.as_str()),
        ));
        // One HTTP stack for every channel's X clients, both sides: they all
        // talk to the same host, and a stack per client costs a copy of the
        // system's root certificates each.
        let http = XHttp::new().context("setting up the HTTP client for X")?;
        let outbound = Outbound::new(
            settings.clone(),
            store.clone(),
            states.clone(),
            http.clone(),
        )?;
        let inbound = Inbound::new(settings, store, states.clone(), http)?;
        Ok(Bridge {
            outbound,
            inbound,
            ops,
            states,
            store: store_health,
        })
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
        let ops = self.ops.map(|listener| {
            let readiness = crate::ops::Readiness {
                outbound: self.outbound.readiness(),
                inbound: self.inbound.readiness(),
                channels: self.states.clone(),
                store: self.store.clone(),
            };
            tokio::spawn(crate::ops::serve(listener, readiness, shutdown.clone()))
        });
        let inbound = tokio::spawn(self.inbound.run(shutdown.clone()));
        let outbound = self.outbound.run(shutdown.clone()).await;
        // Whatever ended the outbound side ends the process: stop inbound too.
        shutdown.cancel();
        let _ = inbound.await;
        if let Some(ops) = ops {
            let _ = ops.await;
        }
        outbound?;
        Ok(())
    }
}
