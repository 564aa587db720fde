//! Wiring one bridge process: the state store and the outbound side, run
//! until shutdown.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use xbridge_core::config::Settings;
use xbridge_outbound::Outbound;
use xbridge_store::EmbeddedStore;

/// A bridge ready to run.
pub struct Bridge {
    outbound: Outbound,
}

impl Bridge {
    /// Opens the state store and builds every channel's client.
    pub fn build(settings: Settings) -> anyhow::Result<Bridge> {
        let store = EmbeddedStore::open(&settings.state.path).with_context(|| {
            format!("opening the state store {}", settings.state.path.display())
        })?;
        let outbound = Outbound::new(Arc::new(settings), Arc::new(store))?;
        Ok(Bridge { outbound })
    }

    /// `true` while the bridge is connected and consuming.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.outbound.readiness()
    }

    /// Runs until `shutdown` is cancelled; in-flight sends finish within the
    /// configured grace period.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            inbound = "not built yet",
            "xbridge starting: outbound replies only"
        );
        self.outbound.run(shutdown).await?;
        Ok(())
    }
}
