//! The CRM's side of channel management (issue 14), shared by the tests that
//! drive the bridge through its control exchange: a bridge started with
//! control on, the CRM publishing commands as an allowed user, the answers it
//! reads, and the captured logs a credential must never appear in.

// Each test binary that includes this uses only some of it.
#![allow(dead_code)]

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use x_simulator::Account;
use xbridge::app::Bridge;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ControlSettings, Settings};
use xbridge_core::live_channels::LiveChannels;
use xbridge_store::StateStore;
use xbridge_test_support::{Crm, Event, TestApp, PATIENCE};

/// Every log line of this test binary's bridges, to look for credentials in.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// A log writer that keeps what it writes in [`LOGS`].
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the logs (before the harness sets up its own, which then stays out),
/// at debug for the bridge's crates.
pub fn capture_logs() {
    let filter = "info,lapin=warn,x_simulator=off,xbridge=debug,xbridge_control=debug,\
        xbridge_outbound=debug,xbridge_inbound=debug,xbridge_amqp=debug,xbridge_x_api=debug";
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

/// The captured logs hold none of `account`'s credentials.
pub fn assert_no_secret_logged(account: &Account) {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    assert!(
        logs.contains("command answered") || logs.contains("command refused"),
        "logs are captured"
    );
    assert_no_secret(&logs, account);
}

/// Everything logged so far.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// The key the tests' stores seal credentials with.
pub fn credentials_key() -> String {
    "5e".repeat(32)
}

/// This test's control names, under its topology prefix.
pub fn control(app: &TestApp) -> ControlSettings {
    let prefix = app.names.outgoing_exchange.trim_end_matches(".outgoing");
    ControlSettings {
        allowed_users: vec!["guest".into()],
        ..ControlSettings::with_prefix(prefix)
    }
}

/// The test's configuration with control on (the CRM publishes as `guest`).
pub fn settings(app: &TestApp) -> Settings {
    let mut settings = Settings::from_toml(&app.config_toml()).expect("the test config is valid");
    settings.amqp.control = control(app);
    settings.state.credentials_key = Some(credentials_key().into());
    settings
}

/// A bridge running in this test, with its live channels.
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The channels it serves.
    pub live: Arc<LiveChannels>,
    /// Their states.
    pub states: Arc<ChannelStates>,
    /// Where `/metrics` is served, when the test configured `telemetry.listen`.
    pub ops_addr: Option<std::net::SocketAddr>,
}

impl Running {
    pub async fn start(app: &TestApp) -> Running {
        Running::start_with(app, |_| {}).await
    }

    /// [`Running::start`] with the settings changed by `tweak` first.
    pub async fn start_with(app: &TestApp, tweak: impl FnOnce(&mut Settings)) -> Running {
        let mut settings = settings(app);
        tweak(&mut settings);
        let bridge = Bridge::build(settings).await.expect("the bridge builds");
        Running::run(bridge).await
    }

    /// Starts the bridge on `store` in place of the configured one.
    pub async fn start_on(app: &TestApp, store: Arc<dyn StateStore>) -> Running {
        let bridge = Bridge::build_with_store(settings(app), store)
            .await
            .expect("the bridge builds");
        Running::run(bridge).await
    }

    pub async fn run(bridge: Bridge) -> Running {
        let live = bridge.live_channels();
        let states = bridge.channel_states();
        let ops_addr = bridge.ops_addr();
        let mut ready = bridge.readiness();
        let mut control = bridge.control_readiness().expect("control is on");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bridge.run(shutdown.clone()));
        for watch in [&mut ready, &mut control] {
            tokio::time::timeout(PATIENCE, watch.wait_for(|ready| *ready))
                .await
                .unwrap_or_else(|_| panic!("the bridge becomes ready; it logged:\n{}", logs()))
                .expect("readiness");
        }
        Running {
            shutdown,
            task,
            live,
            states,
            ops_addr,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the bridge stops")
            .expect("the bridge task")
            .expect("the bridge ends cleanly");
    }

    /// Waits until `name` is served (or not).
    pub async fn wait_served(&self, name: &str, served: bool) {
        let mut watch = self.live.subscribe();
        tokio::time::timeout(
            PATIENCE,
            watch.wait_for(|map| map.contains_key(name) == served),
        )
        .await
        .unwrap_or_else(|_| panic!("waited for channel {name} served = {served}"))
        .expect("live channels");
    }
}

/// The CRM's side of the control exchange: publishes commands as `guest`.
pub struct Commands {
    _connection: Connection,
    channel: lapin::Channel,
    exchange: String,
    /// The app's record of channels created at run time, for its cleanup.
    created: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Commands {
    pub async fn connect(app: &TestApp) -> Commands {
        let connection = Connection::connect(&app.amqp_url(), ConnectionProperties::default())
            .await
            .expect("the CRM connects");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Commands {
            _connection: connection,
            channel,
            exchange: control(app).exchange,
            created: app.created_channels(),
        }
    }

    /// Publishes `body` as the CRM does: to the control exchange, routing key =
    /// command, with its user as `user_id`.
    pub async fn send(&self, body: &Value) {
        let key = body["command"]
            .as_str()
            .unwrap_or("channel.check")
            .to_owned();
        if let Some(channel) = body["channel"].as_str() {
            let mut created = self.created.lock().unwrap();
            if !created.iter().any(|c| c == channel) {
                created.push(channel.to_owned());
            }
        }
        let bytes = serde_json::to_vec(body).unwrap();
        self.publish(&self.exchange.clone(), &key, &bytes, Some("guest"))
            .await;
    }

    pub async fn publish(&self, exchange: &str, key: &str, body: &[u8], user: Option<&str>) {
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into());
        if let Some(user) = user {
            properties = properties.with_user_id(user.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took the command");
    }
}

/// `channel.upsert` for `account` as channel `name`.
pub fn upsert(command_id: &str, name: &str, account: &Account) -> Value {
    json!({
        "command": "channel.upsert", "command_id": command_id, "channel": name,
        "consumer_key": account.consumer_key, "consumer_secret": account.consumer_secret,
        "access_token": account.access_token, "access_token_secret": account.access_token_secret,
        "bearer_token": account.bearer_token, "inbound": "webhook",
    })
}

/// The answer (`channel.state` with this command id) to `command_id`.
pub async fn answer(crm: &mut Crm, command_id: &str) -> Event {
    loop {
        let event = crm.next_channel_state_event().await;
        if event.body["command_id"] == command_id {
            xbridge_test_support::assert_valid("channel-state", &event.body);
            let correlation = event
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string());
            assert_eq!(correlation.as_deref(), Some(command_id));
            return event;
        }
    }
}

/// The next `command.refused`.
pub async fn refusal(crm: &mut Crm) -> Value {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == "command.refused" {
            xbridge_test_support::assert_valid("command-refused", &event.body);
            return event.body;
        }
    }
}

pub fn secrets(account: &Account) -> [String; 5] {
    [
        account.consumer_key.clone(),
        account.consumer_secret.clone(),
        account.access_token.clone(),
        account.access_token_secret.clone(),
        account.bearer_token.clone(),
    ]
}

pub fn assert_no_secret(text: &str, account: &Account) {
    for secret in secrets(account) {
        assert!(!text.contains(&secret), "a credential appears in {text}");
    }
}

/// A new X account the simulator knows, as an administrator would connect it.
pub fn new_account(app: &TestApp, username: &str) -> Account {
    let account = Account::generate(username);
    app.simulator.add_account(account.clone());
    account
}

/// Deletes this test's topology, its control queue and exchanges too.
pub async fn cleanup(app: &TestApp) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let control = control(app);
    if let Ok(connection) =
        Connection::connect(&app.amqp_url(), ConnectionProperties::default()).await
    {
        if let Ok(channel) = connection.create_channel().await {
            let queue = control.commands_queue.as_str().into();
            let _ = channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await;
            let dead = xbridge_control::dead_letter_name(&control);
            let _ = channel
                .queue_delete(dead.as_str().into(), QueueDeleteOptions::default())
                .await;
            for exchange in [&control.exchange, &control.changes_exchange, &dead] {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
    app.cleanup().await;
}
