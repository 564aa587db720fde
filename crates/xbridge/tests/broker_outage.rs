//! X keeps reaching the bridge while RabbitMQ is away: the webhook answers
//! the CRC, the media proxy serves the links the CRM already has, and a DM
//! that cannot be published is answered 503 so X sends it again, which
//! delivers it once the broker is back. `/readyz` says the broker is gone;
//! `/readyz/webhook`, which routes traffic, stays 200.
//!
//! Each test runs its own RabbitMQ node ([`PrivateBroker`]) and stops it;
//! the shared broker other tests use is never touched.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use common::start_bridge_with;
use x_simulator::{Customer, Delivery, MediaSpec, WebhookConfig, SIGNATURE_HEADER};
use xbridge_test_support::{
    spawn_app, BridgeProcess, Crm, Event, PrivateBroker, TestApp, TestOptions, PATIENCE,
};

/// Between two looks at an endpoint that is expected to change.
const POLL: Duration = Duration::from_millis(50);

/// How long a bridge may take to reconnect once the broker is back: its
/// pauses between attempts grow to 15 s, plus up to as much again of jitter.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);

fn webhook_options(broker: &PrivateBroker) -> TestOptions {
    TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\n".into(),
        inbound_mode: Some("webhook".into()),
        amqp_url: Some(broker.amqp_url()),
        ..TestOptions::default()
    }
}

const TELEMETRY: &str = "[telemetry]\nlisten = \"127.0.0.1:0\"\n";

/// A client as patient as X, which gives a webhook POST 10 s: a 503 that
/// came later would be no answer at all.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// The status and JSON body of `GET http://{ops}{path}`.
async fn probe(http: &reqwest::Client, ops: SocketAddr, path: &str) -> (u16, Value) {
    let answer = http
        .get(format!("http://{ops}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} answers: {e}"));
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("a JSON body"))
}

/// Polls `path` until it answers `status`, for up to `patience`; returns
/// the body.
async fn wait_for_probe(
    http: &reqwest::Client,
    ops: SocketAddr,
    path: &str,
    status: u16,
    patience: Duration,
) -> Value {
    let wait = async {
        loop {
            let (answered, body) = probe(http, ops, path).await;
            if answered == status {
                return body;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(patience, wait)
        .await
        .unwrap_or_else(|_| panic!("waited {patience:?} for {path} to answer {status}"))
}

/// `xbridge_rabbitmq_connected{side}` for both sides, as `/metrics` shows it.
async fn connected(http: &reqwest::Client, ops: SocketAddr) -> [Option<f64>; 2] {
    let text = http
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text");
    ["inbound", "outbound"].map(|side| {
        let series = format!("xbridge_rabbitmq_connected{{side=\"{side}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.trim().parse().ok())
    })
}

/// Polls `/metrics` until both sides' gauge is `value`.
async fn wait_for_connected(http: &reqwest::Client, ops: SocketAddr, value: f64) {
    let wait = async {
        while connected(http, ops).await != [Some(value), Some(value)] {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| {
            panic!("waited {PATIENCE:?} for xbridge_rabbitmq_connected to be {value} on both sides")
        });
}

/// The first webhook delivery the simulated X made of `event_id`.
async fn first_delivery(app: &TestApp, event_id: &str) -> Delivery {
    deliveries_until(app, event_id, |attempts| !attempts.is_empty())
        .await
        .remove(0)
}

/// Waits until X's own deliveries of `event_id` are over: one succeeded, or
/// X gave up after its retries. Returns them.
async fn x_done_delivering(app: &TestApp, event_id: &str) -> Vec<Delivery> {
    let attempts = WebhookConfig::default().delivery_retries as usize + 1;
    deliveries_until(app, event_id, |tried| {
        tried.iter().any(Delivery::succeeded) || tried.len() >= attempts
    })
    .await
}

async fn deliveries_until(
    app: &TestApp,
    event_id: &str,
    done: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let wait = async {
        loop {
            let all = app.simulator.deliveries();
            let of_event: Vec<Delivery> = all
                .iter()
                .filter(|d| d.event_id.as_deref() == Some(event_id))
                .cloned()
                .collect();
            if done(&of_event) {
                return of_event;
            }
            app.simulator.wait_for_deliveries(all.len() + 1).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for X's deliveries of {event_id}"))
}

/// POSTs exactly what X POSTed in `delivery` (body and signature), as X's
/// retry does; the status and body of the answer.
async fn post_again(http: &reqwest::Client, delivery: &Delivery) -> (u16, Value) {
    let signature = delivery.signature.clone().expect("X signs its POSTs");
    let answer = http
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(delivery.body.clone())
        .send()
        .await
        .expect("the webhook answers");
    let status = answer.status().as_u16();
    let body = answer.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The next `message.received`, skipping status events.
async fn next_received(crm: &mut Crm) -> Event {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == "message.received" {
            return event;
        }
    }
}

/// What the bridge logged `needle` with, as `addr=`.
async fn logged_addr(bridge: &BridgeProcess, needle: &str) -> SocketAddr {
    bridge.wait_for_log(needle, 1).await;
    bridge
        .logs()
        .iter()
        .filter(|line| line.contains(needle))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))
                .and_then(|addr| addr.parse().ok())
        })
        .unwrap_or_else(|| panic!("no addr= in the log line {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rabbitmq_stopped_x_still_reaches_the_webhook_and_its_retry_is_delivered_once() {
    let mut broker = PrivateBroker::started().await;
    let app = spawn_app(webhook_options(&broker)).await;
    let bridge = start_bridge_with(&app, TELEMETRY).await;
    let ops = bridge.ops_addr.expect("the ops endpoints are served");
    let webhook = bridge.webhook_addr.expect("the webhook is served");
    let http = http();
    let webhook_id = app
        .register_webhook("acme", &format!("http://{webhook}/webhooks/acme"))
        .await;
    app.subscribe_account(app.account("acme"), &webhook_id)
        .await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");

    // While all is well the CRM gets a media link of the bridge's.
    let mut crm = app.crm().await;
    let photo =
        app.simulator
            .customer_dm(&user, &jane, "Here is the photo", Some(MediaSpec::photo()));
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], photo.id.as_str());
    let media_url = event.body["attachments"][0]["url"]
        .as_str()
        .expect("a media URL")
        .to_owned();
    drop(crm);
    wait_for_connected(&http, ops, 1.0).await;

    broker.stop().await;
    wait_for_connected(&http, ops, 0.0).await;

    // The truth for operators...
    let (status, body) = probe(&http, ops, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["inbound"], false, "{body}");
    assert_eq!(body["outbound"], false, "{body}");
    // ...while traffic keeps coming.
    let (status, body) = probe(&http, ops, "/readyz/webhook").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook"], true, "{body}");
    assert_eq!(
        body["inbound"], false,
        "the body still tells the truth: {body}"
    );

    // X's CRC is answered, so X keeps the webhook valid.
    assert!(
        app.simulator.check_webhook(&webhook_id).await,
        "the CRC is answered without RabbitMQ"
    );
    // The link the CRM has still serves X's bytes.
    let media = http
        .get(&media_url)
        .send()
        .await
        .expect("the media proxy answers");
    assert_eq!(media.status(), 200);
    let x_url = photo.attachment.as_ref().expect("a photo").url.clone();
    let (_, bytes) = app.simulator.media_content(&x_url).expect("X's media");
    assert_eq!(media.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // A DM now cannot be published: X is told to try again.
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Are you there?", None);
    let delivery = first_delivery(&app, &dm.id).await;
    assert_eq!(delivery.status, Some(503), "{delivery:?}");
    let (status, body) = post_again(&http, &delivery).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("retry"),
        "the answer tells X to retry: {body}"
    );

    broker.start().await;
    wait_for_probe(&http, ops, "/readyz", 200, RECONNECT_PATIENCE).await;
    wait_for_connected(&http, ops, 1.0).await;
    let mut crm = app.crm().await;
    let (status, body) = post_again(&http, &delivery).await;
    assert_eq!(status, 200, "X's retry is taken: {body}");
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["text"], "Are you there?");

    // Another retry, and X's own, publish nothing again: the next DM the
    // CRM hears of is the customer's next one.
    let (status, body) = post_again(&http, &delivery).await;
    assert_eq!(
        status, 200,
        "a repeated retry is answered as delivered: {body}"
    );
    x_done_delivering(&app, &dm.id).await;
    let next = app.simulator.customer_dm(&user, &jane, "Hello?", None);
    let event = next_received(&mut crm).await;
    assert_eq!(
        event.body["event_id"],
        next.id.as_str(),
        "the retried DM reached the CRM once"
    );

    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_started_while_rabbitmq_is_down_answers_x_and_delivers_once_it_is_up() {
    // Configured, not running: its port refuses connections.
    let mut broker = PrivateBroker::new();
    let app = spawn_app(webhook_options(&broker)).await;
    let config = app.dir.path().join("xbridge.toml");
    std::fs::write(&config, format!("{}\n{TELEMETRY}", app.config_toml())).expect("config");
    let bridge = BridgeProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_xbridge")),
        &config,
        &[],
    );
    let webhook = logged_addr(&bridge, "serving X's webhook and the media proxy").await;
    let ops = logged_addr(&bridge, "serving /healthz").await;
    bridge
        .wait_for_log("inbound cannot reach RabbitMQ", 1)
        .await;
    let http = http();

    // Registering runs X's CRC against the bridge.
    app.subscribe_webhook("acme", &format!("http://{webhook}/webhooks/acme"))
        .await;
    let (status, body) = probe(&http, ops, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body = wait_for_probe(&http, ops, "/readyz/webhook", 200, PATIENCE).await;
    assert_eq!(body["webhook"], true, "{body}");

    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Anyone there?", None);
    let delivery = first_delivery(&app, &dm.id).await;
    assert_eq!(delivery.status, Some(503), "{delivery:?}");

    broker.start().await;
    wait_for_probe(&http, ops, "/readyz", 200, RECONNECT_PATIENCE).await;
    let mut crm = app.crm().await;
    let (status, body) = post_again(&http, &delivery).await;
    assert_eq!(status, 200, "X's retry is taken: {body}");
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], dm.id.as_str());

    let status = bridge.terminate().await;
    assert!(status.success(), "the bridge stops cleanly: {status}");
}
