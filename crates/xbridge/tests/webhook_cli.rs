//! `xbridge webhook …` end to end: the real binary against the X simulator, which
//! runs a real CRC against the inbound crate's webhook router, so a command only
//! passes when the bridge's CRC answer and the client's calls both match X's.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use async_trait::async_trait;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use x_simulator::{Account, Simulator, SimulatorConfig};
use xbridge_core::contract::EventToCrm;
use xbridge_inbound::delivery::sink::{EventSink, SinkError};
use xbridge_inbound::webhook::server::{router, WebhookChannel, WebhookConfig, WebhookState};
use xbridge_store::EmbeddedStore;

const CHANNEL: &str = "acme";

/// Only the CRC `GET` is exercised here; a delivery would be refused.
struct NoSink;

#[async_trait]
impl EventSink for NoSink {
    async fn publish(&self, _event: &EventToCrm) -> Result<(), SinkError> {
        Err(SinkError::Unavailable("not used by these tests".into()))
    }
}

/// A simulator with one account, a configuration naming it as channel `acme`,
/// and a directory for the CRC endpoints' stores.
struct Setup {
    sim: Simulator,
    account: Account,
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with_channel("").await
    }

    /// A setup whose channel has `extra` TOML lines (`{user_id}` is the account's id).
    async fn with_channel(extra: &str) -> Setup {
        let account = Account::generate("acme_support");
        let sim = Simulator::start(SimulatorConfig {
            accounts: vec![account.clone()],
            ..SimulatorConfig::default()
        })
        .await
        .expect("simulator starts");
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("xbridge.toml");
        let toml = format!(
            r#"
[x]
api_base_url = "{base}"
request_timeout = "10s"

[state]
path = "{state}"

[[channels]]
name = "{CHANNEL}"
consumer_key = "{ck}"
consumer_secret = "{cs}"
access_token = "{at}"
access_token_secret = "{ats}"
bearer_token = "{bearer}"
{extra}
"#,
            base = sim.base_url(),
            state = dir.path().join("state.redb").display(),
            ck = account.consumer_key,
            cs = account.consumer_secret,
            at = account.access_token,
            ats = account.access_token_secret,
            bearer = account.bearer_token,
            extra = extra.replace("{user_id}", &account.user_id),
        );
        std::fs::write(&config, toml).unwrap();
        Setup {
            sim,
            account,
            dir,
            config,
        }
    }

    /// Serves the inbound webhook router answering the CRC with `secret`; returns
    /// the URL to register and the server task (abort it to take the URL down).
    async fn crc_endpoint(&self, name: &str, secret: &str) -> (String, JoinHandle<()>) {
        let store_path = self.dir.path().join(format!("{name}.redb"));
        let state = Arc::new(WebhookState::new(
            vec![WebhookChannel {
                name: CHANNEL.into(),
                consumer_key: "the-apps-key".into(),
                consumer_secret: secret.into(),
                own_user_id: None,
            }],
            Arc::new(NoSink),
            Arc::new(EmbeddedStore::open(&store_path).unwrap()),
            WebhookConfig::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/webhooks/{CHANNEL}",
            listener.local_addr().unwrap()
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        (url, server)
    }

    /// Runs `xbridge webhook ARGS --config FILE`.
    async fn xbridge(&self, args: &[&str]) -> Run {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_xbridge"))
            .arg("webhook")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("XBRIDGE_CONFIG")
            .output()
            .await
            .expect("xbridge runs");
        let run = Run::from(output);
        for secret in [
            &self.account.consumer_key,
            &self.account.consumer_secret,
            &self.account.access_token,
            &self.account.access_token_secret,
            &self.account.bearer_token,
        ] {
            assert!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "a credential was printed: {run:?}"
            );
        }
        run
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    fn succeeded(&self) -> &Run {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }

    /// Failed with exit status 1 and a message containing every one of `parts`.
    fn failed_with(&self, parts: &[&str]) {
        assert_eq!(self.code, Some(1), "{self:?}");
        for part in parts {
            assert!(self.stderr.contains(part), "{part:?} not in {self:?}");
        }
        assert_eq!(
            self.stderr.matches("xbridge:").count(),
            1,
            "printed once: {self:?}"
        );
    }
}

/// The webhook id `register` printed.
fn registered_id(run: &Run) -> String {
    run.stdout
        .lines()
        .find_map(|line| line.strip_prefix("registered webhook "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {run:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_succeeds_and_status_shows_it_valid() {
    let setup = Setup::new().await;
    let (url, _server) = setup
        .crc_endpoint("good", &setup.account.consumer_secret)
        .await;

    let run = setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &url])
        .await;
    run.succeeded();
    let id = registered_id(&run);
    assert!(run.stdout.contains(&format!("url: {url}")), "{run:?}");

    let run = setup.xbridge(&["status"]).await;
    run.succeeded();
    assert!(
        run.stdout.contains(&format!("channel {CHANNEL}:")),
        "{run:?}"
    );
    assert!(run.stdout.contains(&format!("webhook {id}")), "{run:?}");
    assert!(run.stdout.contains(&format!("url: {url}")), "{run:?}");
    assert!(run.stdout.contains("valid: yes"), "{run:?}");
    assert!(run.stdout.contains("created_at: "), "{run:?}");
    assert!(run.stdout.contains("subscribed: no"), "{run:?}");
    setup.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crc_answered_with_the_wrong_secret_is_crc_validation_failed() {
    let setup = Setup::new().await;
    let (url, _server) = setup.crc_endpoint("wrong", "not-the-consumer-secret").await;

    setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &url])
        .await
        .failed_with(&[
            "channel acme: registering",
            "CrcValidationFailed",
            "answers the CRC with this channel's consumer secret",
        ]);
    let run = setup.xbridge(&["status", "--channel", CHANNEL]).await;
    run.succeeded();
    assert!(run.stdout.contains("no webhook registered"), "{run:?}");
    setup.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_registration_is_refused_with_the_reason() {
    let setup = Setup::new().await;
    let secret = setup.account.consumer_secret.clone();
    let (url, _server) = setup.crc_endpoint("first", &secret).await;
    let (other_url, _other) = setup.crc_endpoint("second", &secret).await;

    setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &url])
        .await
        .succeeded();
    setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &url])
        .await
        .failed_with(&["DuplicateUrlFailed", "already registered"]);
    setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &other_url])
        .await
        .failed_with(&["WebhookLimitExceeded", "Pay Per Use allows 1"]);
    setup.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_succeeds_once_then_is_a_duplicate() {
    let setup = Setup::new().await;
    let (url, _server) = setup
        .crc_endpoint("good", &setup.account.consumer_secret)
        .await;

    setup
        .xbridge(&["subscribe", "--channel", CHANNEL])
        .await
        .failed_with(&["no webhook yet", "xbridge webhook register"]);
    let run = setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &url])
        .await;
    run.succeeded();
    let id = registered_id(&run);

    // Without --webhook-id: the App's only webhook.
    let run = setup.xbridge(&["subscribe", "--channel", CHANNEL]).await;
    run.succeeded();
    assert!(
        run.stdout
            .contains(&format!("channel {CHANNEL}: subscribed to webhook {id}")),
        "{run:?}"
    );
    setup
        .xbridge(&["subscribe", "--channel", CHANNEL, "--webhook-id", &id])
        .await
        .failed_with(&["DuplicateSubscriptionFailed", "already subscribed"]);
    setup
        .xbridge(&[
            "subscribe",
            "--channel",
            CHANNEL,
            "--webhook-id",
            "1234567890123456789",
        ])
        .await
        .failed_with(&["WebhookIdInvalid", "xbridge webhook status"]);

    let run = setup.xbridge(&["status"]).await;
    run.succeeded();
    assert!(run.stdout.contains("subscribed: yes"), "{run:?}");
    setup.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revalidate_succeeds_while_served_and_says_why_when_not() {
    let setup = Setup::new().await;
    let (url, server) = setup
        .crc_endpoint("good", &setup.account.consumer_secret)
        .await;
    let run = setup
        .xbridge(&["register", "--channel", CHANNEL, "--url", &url])
        .await;
    run.succeeded();
    let id = registered_id(&run);

    let run = setup
        .xbridge(&["revalidate", "--channel", CHANNEL, "--webhook-id", &id])
        .await;
    run.succeeded();
    assert!(run.stdout.contains("is valid again"), "{run:?}");

    // The bridge goes away: X's CRC fails and the webhook is marked invalid.
    server.abort();
    let _ = server.await;
    setup
        .xbridge(&["revalidate", "--channel", CHANNEL])
        .await
        .failed_with(&["CrcValidationFailed", "xbridge run"]);
    let run = setup.xbridge(&["status"]).await;
    run.succeeded();
    assert!(run.stdout.contains("valid: no"), "{run:?}");
    setup.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_channel_is_named() {
    let setup = Setup::new().await;
    setup
        .xbridge(&["status", "--channel", "nope"])
        .await
        .failed_with(&["no channel \"nope\"", "configured: acme"]);
    setup.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_channels_subscriptions_are_listed_and_unsubscribed_without_a_webhook() {
    let setup = Setup::with_channel("inbound = \"stream\"\nuser_id = \"{user_id}\"").await;
    let user_id = setup.account.user_id.clone();
    // What `xbridge run` makes for a stream channel: one subscription per event type, no
    // webhook, tagged with the channel.
    let settings = xbridge_core::config::Settings::load(&setup.config).unwrap();
    let channel = settings.channel(CHANNEL).unwrap();
    let client = xbridge_x_api::WebhookClient::new(
        (&settings.x).into(),
        channel.bearer_token.clone(),
        xbridge_x_api::XAuth::from(xbridge_x_api::UserCredentials::from(channel)),
    )
    .unwrap();
    for event_type in ["dm.received", "dm.sent"] {
        client
            .create_stream_subscription(event_type, &user_id, "xbridge:acme")
            .await
            .unwrap();
    }

    let run = setup
        .xbridge(&["subscriptions", "--channel", CHANNEL])
        .await;
    run.succeeded();
    assert!(run.stdout.contains("inbound = stream"), "{run:?}");
    assert_eq!(
        run.stdout.matches("-> webhook none (stream only)").count(),
        2,
        "{run:?}"
    );

    // No webhook is registered: the stream channel needs none to unsubscribe.
    let run = setup.xbridge(&["unsubscribe", "--channel", CHANNEL]).await;
    run.succeeded();
    assert_eq!(run.stdout.matches(" deleted").count(), 2, "{run:?}");
    assert!(
        setup.sim.activity_subscriptions().is_empty(),
        "{:?}",
        setup.sim.activity_subscriptions()
    );
    setup.sim.shutdown().await;
}
