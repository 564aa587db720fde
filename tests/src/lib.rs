//! The harness every integration test uses, in the spirit of zero2prod's
//! `spawn_app()`: each test gets its own topology on the shared RabbitMQ
//! (unique names), its own X simulator, its own state file, and a CRM client
//! that publishes replies and reads what the bridge sends back.
//!
//! The bridge itself runs either in the test's process (through a start
//! function the test passes in, so this crate does not depend on the binary)
//! or as a real `xbridge run` child process for crash and signal tests.

#![warn(missing_docs)]

mod crm;
mod failing_store;
mod private_broker;
mod process;
mod schema;

pub use crm::{Crm, DeadLetter, Event};
pub use failing_store::{FailingStore, Refuse};
pub use private_broker::{PrivateBroker, PrivateCluster, CLUSTER_SIZE};
pub use process::BridgeProcess;
pub use schema::{assert_valid, schema_errors};

use std::path::PathBuf;
use std::time::Duration;

use x_simulator::{Account, Simulator, SimulatorConfig};
use xbridge_core::config::TopologyNames;

/// RabbitMQ for tests; override with `XBRIDGE_TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("XBRIDGE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// How long a test waits for anything before it fails with a message.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A reply as the CRM publishes it.
pub fn reply(message_id: &str, recipient_id: &str, text: &str) -> serde_json::Value {
    serde_json::json!({ "message_id": message_id, "recipient_id": recipient_id, "text": text })
}

/// Knobs a test may turn; the defaults keep every wait short.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Channel names, each backed by its own simulator account.
    pub channels: Vec<String>,
    /// Extra TOML appended to `[outbound.retry]`.
    pub retry: String,
    /// Extra TOML appended to `[outbound.credits]`.
    pub credits: String,
    /// `x.request_timeout`.
    pub request_timeout: Duration,
    /// TOML for the `[inbound]` section (empty: no webhook server, no polls).
    /// The periodic webhook check is off unless it sets
    /// `webhook_check_interval`: most tests register no webhook, and their
    /// channels would otherwise all report `webhook_invalid`.
    pub inbound: String,
    /// TOML for the `[outbound.media]` section (attachment downloads).
    pub outbound_media: String,
    /// Keep the state in PostgreSQL ([`postgres_url`]), in a schema of this
    /// test's own, instead of a file: several bridge processes can then share
    /// it, as replicas do.
    pub postgres: bool,
    /// Every channel's `inbound` mode (`webhook`, `poll`, `both`); the
    /// channel's `user_id` is set to its simulator account's when given
    /// (unless [`TestOptions::omit_user_id`]).
    pub inbound_mode: Option<String>,
    /// Every channel's account on one X App (the first channel's consumer key,
    /// secret and bearer token), as when one App's webhook serves several
    /// accounts.
    pub shared_app: bool,
    /// Leave `user_id` out of every channel, so the bridge learns it from X.
    pub omit_user_id: bool,
    /// The broker of this test alone (a [`PrivateBroker`]'s URL) instead of
    /// the shared one ([`amqp_url`]), for the bridge, the CRM and cleanup.
    pub amqp_url: Option<String>,
    /// `amqp.hosts`: the nodes of a cluster (a [`PrivateCluster`]'s
    /// [`hosts`](PrivateCluster::hosts)), on `amqp_url`'s credentials.
    pub amqp_hosts: Vec<String>,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            channels: vec!["acme".to_owned()],
            retry: "immediate_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\ndelays = [\"200ms\", \"400ms\"]\nmax_attempts = 8\n".to_owned(),
            credits: "max_wait = \"15m\"\nprobe_initial = \"200ms\"\nprobe_max = \"1s\"\n".to_owned(),
            request_timeout: Duration::from_secs(5),
            inbound: String::new(),
            outbound_media: String::new(),
            postgres: false,
            inbound_mode: None,
            shared_app: false,
            omit_user_id: false,
            amqp_url: None,
            amqp_hosts: Vec::new(),
        }
    }
}

/// One test's world.
pub struct TestApp {
    /// This test's exchange and queue names.
    pub names: TopologyNames,
    /// The fake X.
    pub simulator: Simulator,
    /// Channel name → simulator account.
    pub accounts: Vec<(String, Account)>,
    /// Where this test keeps its state file and config.
    pub dir: tempfile::TempDir,
    options: TestOptions,
    /// Channels the test created at run time (the CRM's), whose queues
    /// [`TestApp::cleanup`] deletes with the configured ones: left behind, each
    /// run would add quorum queues to the shared broker until it runs out of
    /// file handles.
    created: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Sets up a test's world: a simulator with one account per channel and
/// unique topology names. The bridge is started by the test.
pub async fn spawn_app(options: TestOptions) -> TestApp {
    init_logs();
    let prefix = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut accounts: Vec<(String, Account)> = Vec::new();
    for name in &options.channels {
        let username = format!("{name}_support");
        let account = match accounts.first() {
            Some((_, app)) if options.shared_app => Account::generate_for_app(&username, app),
            _ => Account::generate(&username),
        };
        accounts.push((name.clone(), account));
    }
    let simulator = Simulator::start(SimulatorConfig {
        accounts: accounts.iter().map(|(_, a)| a.clone()).collect(),
        ..SimulatorConfig::default()
    })
    .await
    .expect("the X simulator starts");
    TestApp {
        names: TopologyNames::with_prefix(&prefix),
        simulator,
        accounts,
        dir: tempfile::tempdir().expect("a temp dir"),
        options,
        created: Default::default(),
    }
}

impl TestApp {
    /// Records that `channel` was created at run time, so its queues are deleted
    /// by [`TestApp::cleanup`].
    pub fn created_channel(&self, channel: &str) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        if !created.iter().any(|c| c == channel) {
            created.push(channel.to_owned());
        }
    }

    /// What [`TestApp::created_channel`] records into, for a publisher of the
    /// CRM's commands that outlives a borrow of the app.
    pub fn created_channels(&self) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        self.created.clone()
    }

    /// The simulator account behind `channel`.
    pub fn account(&self, channel: &str) -> &Account {
        &self
            .accounts
            .iter()
            .find(|(name, _)| name == channel)
            .unwrap_or_else(|| panic!("no channel {channel} in this test"))
            .1
    }

    /// The RabbitMQ this test's bridge and CRM use.
    pub fn amqp_url(&self) -> String {
        self.options.amqp_url.clone().unwrap_or_else(amqp_url)
    }

    /// The X user id behind `channel`.
    pub fn user_id(&self, channel: &str) -> String {
        self.account(channel).user_id.clone()
    }

    /// Waits until the simulator recorded `count` DMs from `channel`'s
    /// account; fails the test after [`PATIENCE`].
    pub async fn wait_for_dms(&self, channel: &str, count: usize) -> Vec<x_simulator::SentDm> {
        tokio::time::timeout(
            PATIENCE,
            self.simulator.wait_for_dms(&self.user_id(channel), count),
        )
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {count} DM(s) on {channel}"))
    }

    /// The statuses the simulator's OAuth 2.0 token endpoint answered so far, in order.
    pub fn token_answers(&self) -> Vec<u16> {
        self.simulator
            .requests()
            .into_iter()
            .filter(|r| r.path == "/2/oauth2/token")
            .map(|r| r.status)
            .collect()
    }

    /// Waits until `open` activity streams are open at the simulator (`what`: whose, for
    /// the failure); fails the test after [`PATIENCE`].
    pub async fn wait_for_open_streams(&self, open: usize, what: &str) {
        tokio::time::timeout(
            PATIENCE,
            self.simulator.wait_for_activity_streams(|c| c.open == open),
        )
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {what}: {open} open stream(s)"));
    }

    /// Waits until the simulator answered `count` requests of `channel`'s
    /// account; fails the test after [`PATIENCE`].
    pub async fn wait_for_requests(&self, channel: &str, count: usize) {
        tokio::time::timeout(
            PATIENCE,
            self.simulator
                .wait_for_requests(&self.user_id(channel), count),
        )
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {count} request(s) on {channel}"));
    }

    /// Waits until the simulator answered `count` DM reads (`GET
    /// /2/dm_events`, i.e. polls) of `channel`'s account, whatever else the
    /// account asked; fails the test after [`PATIENCE`].
    pub async fn wait_for_reads(&self, channel: &str, count: usize) {
        tokio::time::timeout(
            PATIENCE,
            self.simulator
                .wait_for_requests_to(&self.user_id(channel), "/2/dm_events", count),
        )
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {count} DM read(s) on {channel}"));
    }

    /// Registers `webhook_url` with the simulated X (which runs its CRC
    /// against it, so the bridge must be serving) with `channel`'s bearer
    /// token, and subscribes `channel`'s account to it, the way an operator
    /// sets X up.
    pub async fn subscribe_webhook(&self, channel: &str, webhook_url: &str) {
        let id = self.register_webhook(channel, webhook_url).await;
        self.subscribe_account(self.account(channel), &id).await;
    }

    /// Registers `webhook_url` as the webhook of `channel`'s X App (X allows
    /// one per App) and returns its id.
    pub async fn register_webhook(&self, channel: &str, webhook_url: &str) -> String {
        let account = self.account(channel);
        let base = self.simulator.base_url();
        let http = reqwest::Client::new();
        let answer = http
            .post(base.join("2/webhooks").expect("url"))
            .bearer_auth(&account.bearer_token)
            .json(&serde_json::json!({ "url": webhook_url }))
            .send()
            .await
            .expect("register the webhook");
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.expect("JSON answer");
        assert!(
            status.is_success(),
            "registering the webhook: {status} {body}"
        );
        body["data"]["id"].as_str().expect("webhook id").to_owned()
    }

    /// Subscribes `account` (a channel's, or one of the App's no channel is)
    /// to the webhook `id` with its own user token, so X delivers its events
    /// there.
    pub async fn subscribe_account(&self, account: &Account, id: &str) {
        let base = self.simulator.base_url();
        let http = reqwest::Client::new();
        let url = base
            .join(&format!(
                "2/account_activity/webhooks/{id}/subscriptions/all"
            ))
            .expect("url");
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let authorization =
            x_simulator::oauth::authorization_header("POST", &url, &[], account, &nonce, timestamp);
        let answer = http
            .post(url)
            .header("authorization", authorization)
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("subscribe");
        assert!(
            answer.status().is_success(),
            "subscribing: {}",
            answer.status()
        );
    }

    /// The PostgreSQL schema of this test's state, when it keeps it there.
    pub fn postgres_schema(&self) -> String {
        // The topology prefix (`t-<hex>`) names the test.
        self.names
            .outgoing_exchange
            .trim_end_matches(".outgoing")
            .replace(['-', '.'], "_")
            .to_ascii_lowercase()
    }

    /// The state store file of this test's bridge.
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.redb")
    }

    /// The bridge's configuration for this test, as TOML.
    pub fn config_toml(&self) -> String {
        let n = &self.names;
        let mut toml = format!(
            r#"
[amqp]
url = "{amqp}"
hosts = {hosts:?}
prefetch = 64

[amqp.topology]
outgoing_exchange = "{oe}"
outgoing_queue_prefix = "{oqp}"
unrouted = "{un}"
incoming_exchange = "{ie}"
incoming_queue = "{iq}"
dead_letter_exchange = "{dle}"
dead_letter_queue = "{dlq}"
delay_prefix = "{dp}"
poll_lease_prefix = "{plp}"

[x]
api_base_url = "{x}"
request_timeout = "{timeout}ms"

[outbound]
shutdown_grace = "10s"

[outbound.retry]
{retry}
[outbound.credits]
{credits}
[outbound.media]
{outbound_media}
[inbound]
{inbound}
[state]
{state}
"#,
            amqp = self.amqp_url(),
            hosts = self.options.amqp_hosts,
            oe = n.outgoing_exchange,
            oqp = n.outgoing_queue_prefix,
            un = n.unrouted,
            ie = n.incoming_exchange,
            iq = n.incoming_queue,
            dle = n.dead_letter_exchange,
            dlq = n.dead_letter_queue,
            dp = n.delay_prefix,
            plp = n.poll_lease_prefix,
            x = self.simulator.base_url(),
            timeout = self.options.request_timeout.as_millis(),
            retry = self.options.retry,
            credits = self.options.credits,
            outbound_media = self.options.outbound_media,
            inbound = if self.options.inbound.contains("webhook_check_interval") {
                self.options.inbound.clone()
            } else {
                format!("webhook_check_interval = \"0s\"\n{}", self.options.inbound)
            },
            state = if self.options.postgres {
                format!(
                    // Replicas move a lost one's channels within 5 s.
                    "backend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\nreplica_heartbeat = \"1s\"\nreplica_expiry = \"5s\"",
                    postgres_url(),
                    self.postgres_schema()
                )
            } else {
                format!("path = \"{}\"", self.state_path().display())
            },
        );
        for (name, account) in &self.accounts {
            toml.push_str(&format!(
                r#"
[[channels]]
name = "{name}"
consumer_key = "{}"
consumer_secret = "{}"
access_token = "{}"
access_token_secret = "{}"
bearer_token = "{}"
"#,
                account.consumer_key,
                account.consumer_secret,
                account.access_token,
                account.access_token_secret,
                account.bearer_token
            ));
            if let Some(mode) = &self.options.inbound_mode {
                toml.push_str(&format!("inbound = \"{mode}\"\n"));
                if !self.options.omit_user_id {
                    toml.push_str(&format!("user_id = \"{}\"\n", account.user_id));
                }
            }
        }
        toml
    }

    /// Writes the configuration to a file (for a bridge process).
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("xbridge.toml");
        std::fs::write(&path, self.config_toml()).expect("config written");
        path
    }

    /// A CRM client on this test's topology. Call it once the bridge is
    /// ready (the bridge declares the topology).
    pub async fn crm(&self) -> Crm {
        Crm::connect(&self.amqp_url(), self.names.clone()).await
    }

    /// Deletes this test's queues and exchanges.
    pub async fn cleanup(&self) {
        if self.options.postgres {
            drop_schema(&self.postgres_schema()).await;
        }
        let mut channels: Vec<String> = self.accounts.iter().map(|(n, _)| n.clone()).collect();
        channels.extend(
            self.created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        );
        let delays = xbridge_core::config::Settings::from_toml(&self.config_toml())
            .map(|s| s.outbound.retry.delays)
            .unwrap_or_default();
        crm::delete_topology(&self.amqp_url(), &self.names, &channels, &delays).await;
    }
}

/// PostgreSQL for tests that share state between processes: this machine's
/// server (trust auth, database `test`), or `XBRIDGE_TEST_POSTGRES_URL`.
pub fn postgres_url() -> String {
    std::env::var("XBRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn drop_schema(schema: &str) {
    let Ok((client, connection)) =
        tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(connection);
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}

/// Logs of in-process bridges go to the test's captured output.
fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,lapin=warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}
