//! A bridge whose channels a test changes while it runs, through the registry
//! the control consumer and a reload change ([`LiveChannels`]).

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use xbridge::app::Bridge;
use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_core::live_channels::{LiveChannel, LiveChannels, Origin};
use xbridge_test_support::{TestApp, PATIENCE};

/// A bridge running in this test's runtime, with its registry at hand.
pub struct LiveBridge {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Where X's webhook is served, when the test configured it.
    pub webhook_addr: Option<std::net::SocketAddr>,
    /// The channels it serves.
    pub live: Arc<LiveChannels>,
    /// The test's configuration, every channel included.
    pub settings: Settings,
}

impl LiveBridge {
    /// Starts the test's bridge serving every channel of its configuration but
    /// `later` (to add while it runs), and waits until both sides are ready.
    pub async fn start_without(app: &TestApp, later: &[&str]) -> LiveBridge {
        let settings = Settings::from_toml(&app.config_toml()).expect("the test config is valid");
        let mut first = settings.clone();
        first.channels.retain(|c| !later.contains(&c.name.as_str()));
        let bridge = Bridge::build(first).await.expect("the bridge builds");
        let live = bridge.live_channels();
        let mut ready = bridge.readiness();
        let mut inbound_ready = bridge.inbound_readiness();
        let webhook_addr = bridge.webhook_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bridge.run(shutdown.clone()));
        for ready in [&mut ready, &mut inbound_ready] {
            tokio::time::timeout(PATIENCE, ready.wait_for(|ready| *ready))
                .await
                .expect("the bridge becomes ready")
                .expect("readiness");
        }
        LiveBridge {
            shutdown,
            task,
            webhook_addr,
            live,
            settings,
        }
    }

    /// `name`'s settings in the test's configuration.
    pub fn channel(&self, name: &str) -> ChannelSettings {
        self.settings
            .channel(name)
            .unwrap_or_else(|| panic!("no channel {name} in this test"))
            .clone()
    }

    /// Adds (or replaces) `channel` as the CRM would.
    pub fn upsert(&self, channel: ChannelSettings) {
        self.live.upsert(LiveChannel {
            origin: Origin::Crm,
            revision: 1,
            ..LiveChannel::from_file(channel)
        });
    }

    /// Stops the bridge the way SIGTERM would and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the bridge stops")
            .expect("the bridge task")
            .expect("the bridge ends cleanly");
    }
}
