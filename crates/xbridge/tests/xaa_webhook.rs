//! A channel subscribed through X's Activity API (`webhook_api = "xaa"`) end to end:
//! the real `xbridge webhook` binary registers the App's webhook and subscribes the
//! account's DM event types against the simulator, which delivers XAA envelopes to the
//! running bridge; the CRM's queue gets each customer DM once, as `message.received`,
//! and typing and read events when `[inbound] publish_activity` is on. Real RabbitMQ.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::path::PathBuf;

use common::{start_bridge_with, RunningBridge};
use x_simulator::{Customer, DmEvent};
use xbridge_test_support::{
    assert_valid, reply, spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE,
};

const XAA: &str = "webhook_api = \"xaa\"\n";

fn options(channels: &[&str], shared_app: bool) -> TestOptions {
    TestOptions {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        shared_app,
        inbound: "listen = \"127.0.0.1:0\"\npublish_activity = true\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    }
}

/// The test's configuration with `extra` appended to its last channel, written where
/// the binary reads it.
fn config_file(app: &TestApp, extra: &str) -> PathBuf {
    let path = app.state_path().with_file_name("xbridge-xaa.toml");
    std::fs::write(&path, format!("{}{extra}", app.config_toml())).unwrap();
    path
}

/// Runs `xbridge ARGS --config FILE` and returns (success, stdout + stderr), checking
/// that no credential was printed.
async fn xbridge(app: &TestApp, config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let secrets: Vec<&str> = app
        .accounts
        .iter()
        .flat_map(|(_, account)| {
            [
                account.consumer_secret.as_str(),
                account.access_token.as_str(),
                account.access_token_secret.as_str(),
                account.bearer_token.as_str(),
            ]
        })
        .collect();
    cli::xbridge(config, args, &secrets).await
}

async fn register(app: &TestApp, config: &std::path::Path, bridge: &RunningBridge, channel: &str) {
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let url = format!("http://{addr}/webhooks/{channel}");
    let (ok, text) = xbridge(
        app,
        config,
        &["webhook", "register", "--channel", channel, "--url", &url],
    )
    .await;
    assert!(ok, "{text}");
}

/// Waits until the simulator has answered every delivery of `event` it started (the
/// bridge answered them), and returns how many there were.
async fn deliveries_of(app: &TestApp, event: &DmEvent, expected: usize) -> usize {
    let mut seen = 0;
    loop {
        let all = app.simulator.deliveries();
        let of_event: Vec<_> = all
            .iter()
            .filter(|d| d.event_id.as_deref() == Some(event.id.as_str()))
            .collect();
        if of_event.len() >= expected {
            assert!(
                of_event.iter().all(|d| d.status == Some(200)),
                "{of_event:?}"
            );
            return of_event.len();
        }
        seen = seen.max(all.len()) + 1;
        tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(seen))
            .await
            .expect("X delivered the event");
    }
}

async fn next_of_type(crm: &mut Crm, kind: &str) -> Event {
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], kind, "{}", event.body);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_subscribed_through_xaa_gets_each_dm_once_and_its_typing_and_read_events() {
    let app = spawn_app(options(&["acme"], false)).await;
    let bridge = start_bridge_with(&app, XAA).await;
    let config = config_file(&app, XAA);
    register(&app, &config, &bridge, "acme").await;
    let user = app.user_id("acme");

    // Before subscribing, `xbridge check` names the missing subscription and the fix.
    let (ok, text) = xbridge(&app, &config, &["check"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("not subscribed to dm.received")
            && text.contains("xbridge webhook subscribe --channel acme"),
        "{text}"
    );

    let (ok, text) = xbridge(
        &app,
        &config,
        &["webhook", "subscribe", "--channel", "acme"],
    )
    .await;
    assert!(ok, "{text}");
    let subscribed: Vec<String> = {
        let mut types: Vec<String> = app
            .simulator
            .activity_subscriptions()
            .iter()
            .map(|s| {
                assert_eq!(s.user_id, user, "filtered by the account");
                assert!(s.webhook_id.is_some(), "bound to the webhook");
                s.event_type.clone()
            })
            .collect();
        types.sort();
        types
    };
    assert_eq!(
        subscribed,
        ["dm.indicate_typing", "dm.read", "dm.received", "dm.sent"],
        "dm.sent for echoes (on by default), read and typing for publish_activity"
    );
    assert!(
        app.simulator.subscriptions().is_empty(),
        "no AAA subscription"
    );

    // Subscribing again duplicates nothing; listing and checking show them.
    let (ok, text) = xbridge(
        &app,
        &config,
        &["webhook", "subscribe", "--channel", "acme"],
    )
    .await;
    assert!(
        ok && text.matches("already subscribed").count() == 4,
        "{text}"
    );
    assert_eq!(app.simulator.activity_subscriptions().len(), 4);
    let (ok, text) = xbridge(
        &app,
        &config,
        &["webhook", "subscriptions", "--channel", "acme"],
    )
    .await;
    assert!(ok && text.contains("dm.received subscription"), "{text}");
    let (ok, text) = xbridge(&app, &config, &["webhook", "status", "--channel", "acme"]).await;
    assert!(
        ok && text.contains("X Activity subscriptions of account"),
        "{text}"
    );
    assert!(text.contains("dm.indicate_typing subscription"), "{text}");
    let (ok, text) = xbridge(&app, &config, &["check"]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("X Activity subscriptions: dm.received"),
        "{text}"
    );

    let mut crm = app.crm().await;
    let jane = Customer::generate("jane_doe");
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Where is my order?", None);
    let event = next_of_type(&mut crm, "message.received").await;
    assert_valid("message-received", &event.body);
    assert_eq!(event.routing_key, "acme.message.received");
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["text"], "Where is my order?");
    assert_eq!(event.body["sender"]["username"], "jane_doe");
    assert_eq!(event.body["received_via"], "webhook");
    // X delivered it once, in XAA's envelope (and the bridge answered); X then
    // delivers it again.
    assert_eq!(deliveries_of(&app, &dm, 1).await, 1);
    let delivered = app.simulator.deliveries();
    assert!(
        delivered
            .iter()
            .any(|d| d.event_id.as_deref() == Some(dm.id.as_str())
                && d.body.contains("\"event_type\":\"dm.received\"")),
        "{delivered:?}"
    );
    assert_eq!(app.simulator.deliver_again(&dm.id), 1);
    deliveries_of(&app, &dm, 2).await;

    // The next events are the customer's typing and reading, not a second copy.
    assert_eq!(app.simulator.customer_typing(&user, &jane), 1);
    let typing = next_of_type(&mut crm, "conversation.typing").await;
    assert_eq!(typing.body["channel"], "acme");
    assert_eq!(app.simulator.customer_read(&user, &jane, &dm.id), 1);
    next_of_type(&mut crm, "message.read").await;

    // The bridge's reply comes back from X as dm.sent: answered, and dropped as an echo,
    // so the next event after message.sent is the customer's next DM.
    crm.publish_reply("acme", &reply("r-1", &jane.user_id, "It ships today."))
        .await;
    let sent = next_of_type(&mut crm, "message.sent").await;
    let echo_id = sent.body["dm_event_id"].as_str().unwrap().to_owned();
    let echo = app
        .simulator
        .dm_events_for(&user)
        .into_iter()
        .find(|e| e.id == echo_id)
        .expect("X holds the sent DM");
    assert_eq!(deliveries_of(&app, &echo, 1).await, 1);
    let next = app.simulator.customer_dm(&user, &jane, "Thanks!", None);
    let event = next_of_type(&mut crm, "message.received").await;
    assert_eq!(event.body["event_id"], next.id.as_str());

    // Unsubscribing deletes them all at X.
    let (ok, text) = xbridge(
        &app,
        &config,
        &["webhook", "unsubscribe", "--channel", "acme"],
    )
    .await;
    assert!(ok, "{text}");
    assert!(app.simulator.activity_subscriptions().is_empty(), "{text}");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xaa_events_of_the_second_account_of_an_app_reach_its_channel_through_the_first_url() {
    // alpha (AAA) and beta (XAA) on one App; the App's one webhook is alpha's URL.
    let app = spawn_app(options(&["alpha", "beta"], true)).await;
    let bridge = start_bridge_with(&app, XAA).await;
    let config = config_file(&app, XAA);
    register(&app, &config, &bridge, "alpha").await;
    for channel in ["alpha", "beta"] {
        let (ok, text) = xbridge(
            &app,
            &config,
            &["webhook", "subscribe", "--channel", channel],
        )
        .await;
        assert!(ok, "{text}");
    }
    let (alpha, beta) = (app.user_id("alpha"), app.user_id("beta"));
    assert_eq!(app.simulator.subscriptions().len(), 1, "alpha through AAA");
    assert!(app
        .simulator
        .activity_subscriptions()
        .iter()
        .all(|s| s.user_id == beta));

    let mut crm = app.crm().await;
    let jane = Customer::generate("jane");
    let to_beta = app.simulator.customer_dm(&beta, &jane, "hello beta", None);
    let event = next_of_type(&mut crm, "message.received").await;
    assert_eq!(event.routing_key, "beta.message.received");
    assert_eq!(event.body["event_id"], to_beta.id.as_str());
    assert_eq!(deliveries_of(&app, &to_beta, 1).await, 1);
    let delivery = app
        .simulator
        .deliveries()
        .into_iter()
        .find(|d| d.event_id.as_deref() == Some(to_beta.id.as_str()))
        .unwrap();
    assert!(
        delivery.url.ends_with("/webhooks/alpha"),
        "{}",
        delivery.url
    );

    let to_alpha = app
        .simulator
        .customer_dm(&alpha, &jane, "hello alpha", None);
    let event = next_of_type(&mut crm, "message.received").await;
    assert_eq!(event.routing_key, "alpha.message.received");
    assert_eq!(event.body["event_id"], to_alpha.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}
