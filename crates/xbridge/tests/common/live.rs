//! A bridge whose channels the test changes while it runs, the way the CRM's
//! commands and a reload do: through the registry both sides follow
//! ([`Bridge::live_channels`]).

// Every test binary that uses the harness compiles this; only the tests of
// live channels call it.
#![allow(dead_code)]

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use xbridge::app::Bridge;
use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_core::live_channels::{LiveChannel, LiveChannels, Origin};
use xbridge_test_support::{Crm, Event, TestApp, PATIENCE};

use super::RunningBridge;

/// A running bridge and the registry of the channels it serves.
pub struct LiveBridge {
    /// The bridge.
    pub bridge: RunningBridge,
    /// What the test changes.
    pub live: Arc<LiveChannels>,
}

/// Starts the bridge with the test's configuration but only the channels
/// named in `serving` (the test's other channels exist on the simulated X and
/// can be added later), and waits until it consumes.
pub async fn start_serving(app: &TestApp, serving: &[&str]) -> LiveBridge {
    start_serving_with(app, serving, |_| {}).await
}

/// [`start_serving`] with the settings changed by `tweak` first.
pub async fn start_serving_with(
    app: &TestApp,
    serving: &[&str],
    tweak: impl FnOnce(&mut Settings),
) -> LiveBridge {
    let mut settings = Settings::from_toml(&app.config_toml()).expect("the test config is valid");
    tweak(&mut settings);
    settings
        .channels
        .retain(|c| serving.contains(&c.name.as_str()));
    let bridge = Bridge::build(settings).await.expect("the bridge builds");
    let live = bridge.live_channels();
    let mut ready = bridge.readiness();
    let webhook_addr = bridge.webhook_addr();
    let ops_addr = bridge.ops_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    tokio::time::timeout(PATIENCE, ready.wait_for(|ready| *ready))
        .await
        .expect("the bridge becomes ready")
        .expect("readiness");
    ready.borrow_and_update();
    let bridge = RunningBridge {
        shutdown,
        task,
        webhook_addr,
        ops_addr,
        ready,
    };
    LiveBridge { bridge, live }
}

/// The test's channel `name` (its simulated account's credentials), as the
/// CRM would create it.
pub fn crm_channel(app: &TestApp, name: &str) -> LiveChannel {
    LiveChannel {
        origin: Origin::Crm,
        revision: 1,
        ..LiveChannel::from_file(channel_settings(app, name))
    }
}

/// The test's channel `name` as its configuration has it.
pub fn channel_settings(app: &TestApp, name: &str) -> ChannelSettings {
    Settings::from_toml(&app.config_toml())
        .expect("the test config is valid")
        .channels
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no channel {name} in this test"))
}

/// Reads `channel.state` events until `channel`'s says `state`, and returns it.
pub async fn wait_for_state(crm: &mut Crm, channel: &str, state: &str) -> Event {
    loop {
        let event = crm.next_channel_state_event().await;
        if event.body["channel"] == channel && event.body["state"] == state {
            return event;
        }
    }
}
