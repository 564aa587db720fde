//! Starting the bridge inside a test's own process.

pub mod live;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use xbridge::app::Bridge;
use xbridge_core::config::Settings;
use xbridge_test_support::{TestApp, PATIENCE};

/// A bridge running in this test's runtime.
pub struct RunningBridge {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Where X's webhook is served, when the test configured it.
    #[allow(dead_code)] // Only the inbound tests use it.
    pub webhook_addr: Option<std::net::SocketAddr>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, when the test
    /// configured `telemetry.listen`.
    #[allow(dead_code)] // Only some tests read metrics.
    pub ops_addr: Option<std::net::SocketAddr>,
    /// The outbound side's readiness, seen as ready: it changes (to not
    /// ready and back) only when a RabbitMQ session ends, so
    /// `has_changed()` tells whether the connection was lost since.
    #[allow(dead_code)] // Only some tests look at it.
    pub ready: tokio::sync::watch::Receiver<bool>,
}

impl RunningBridge {
    /// Tells it to stop, the way SIGTERM would, without waiting; [`Self::stop`]
    /// then waits for it to finish.
    #[allow(dead_code)] // Only the shutdown tests look in between.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops it the way SIGTERM would and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the bridge stops")
            .expect("the bridge task")
            .expect("the bridge ends cleanly");
    }
}

/// Starts the bridge with the test's configuration and waits until it is
/// connected, has declared the topology and consumes.
#[allow(dead_code)] // Tests that add configuration use start_bridge_with.
pub async fn start_bridge(app: &TestApp) -> RunningBridge {
    let settings = Settings::from_toml(&app.config_toml()).expect("the test config is valid");
    start_with(settings).await
}

/// Starts the bridge like [`start_bridge`] with `extra` TOML appended to the
/// test's configuration (e.g. a `[telemetry]` section).
#[allow(dead_code)] // Only some tests add configuration.
pub async fn start_bridge_with(app: &TestApp, extra: &str) -> RunningBridge {
    let toml = format!("{}\n{extra}\n", app.config_toml());
    let settings = Settings::from_toml(&toml).expect("the test config is valid");
    start_with(settings).await
}

/// Starts the bridge from `toml`, a configuration the test derived from its own (for
/// example with a channel's credentials replaced), and waits like [`start_bridge`].
#[allow(dead_code)] // Only the OAuth 2.0 tests use it.
pub async fn start_bridge_from(toml: &str) -> RunningBridge {
    let settings = Settings::from_toml(toml).expect("the test config is valid");
    start_with(settings).await
}

/// Starts another replica of the test's bridge, with its own state file at
/// `state` (the embedded store cannot be shared), and waits like
/// [`start_bridge`].
#[allow(dead_code)] // Only the replica tests use it.
pub async fn start_replica(app: &TestApp, state: &std::path::Path) -> RunningBridge {
    let mut settings = Settings::from_toml(&app.config_toml()).expect("the test config is valid");
    settings.state.backend = xbridge_core::config::StateBackend::Embedded {
        path: state.to_path_buf(),
    };
    start_with(settings).await
}

async fn start_with(settings: Settings) -> RunningBridge {
    let bridge = Bridge::build(settings).await.expect("the bridge builds");
    let mut ready = bridge.readiness();
    let mut inbound_ready = bridge.inbound_readiness();
    let webhook_addr = bridge.webhook_addr();
    let ops_addr = bridge.ops_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    tokio::time::timeout(PATIENCE, ready.wait_for(|ready| *ready))
        .await
        .expect("the bridge becomes ready")
        .expect("readiness");
    tokio::time::timeout(PATIENCE, inbound_ready.wait_for(|ready| *ready))
        .await
        .expect("the inbound side becomes ready")
        .expect("readiness");
    ready.borrow_and_update();
    RunningBridge {
        shutdown,
        task,
        webhook_addr,
        ops_addr,
        ready,
    }
}
