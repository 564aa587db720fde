//! The self-healing webhook, end to end: X (the simulator) marks the App's
//! webhook invalid, as it does after failed CRCs during an outage, and the
//! running bridge asks X to revalidate it without any operator, X runs a real
//! CRC against the bridge's webhook server, and the CRM hears the channel state.
//! Each test has its own channel name: the metrics recorder is the process's.

mod common;
use common::{start_bridge_with, RunningBridge};

use x_simulator::Fault;
use xbridge_test_support::{assert_valid, spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE};

fn options(channel: &str) -> TestOptions {
    TestOptions {
        channels: vec![channel.into()],
        inbound: "listen = \"127.0.0.1:0\"\nwebhook_check_interval = \"100ms\"\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    }
}

/// Starts the bridge (with metrics) and registers its URL as the App's webhook,
/// once the channel reported that none was: returns the webhook's id, with the
/// CRM's view back at `ok`.
async fn serve_registered(app: &TestApp, channel: &str) -> (RunningBridge, Crm, String) {
    let bridge = start_bridge_with(app, "[telemetry]\nlisten = \"127.0.0.1:0\"").await;
    let mut crm = app.crm().await;
    // Nothing registered yet: the first check says so (`next_channel_state`
    // skips the `ok` told at startup).
    assert_eq!(
        crm.next_channel_state().await.body["state"],
        "webhook_invalid"
    );
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let url = format!("http://{addr}/webhooks/{channel}");
    let id = app.register_webhook(channel, &url).await;
    assert_eq!(crm.next_channel_state().await.body["state"], "ok");
    (bridge, crm, id)
}

/// The next `channel.state` event, repeats of a state with a new cause included.
async fn next_state(crm: &mut Crm) -> Event {
    let event = crm.next_channel_state_event().await;
    assert_valid("channel-state", &event.body);
    event
}

async fn revalidations(bridge: &RunningBridge, channel: &str, outcome: &str) -> u64 {
    let ops = bridge.ops_addr.expect("metrics are served");
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with("xbridge_webhook_revalidations_total{"))
        .filter(|line| line.contains(&format!("channel=\"{channel}\"")))
        .filter(|line| line.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_x_marked_invalid_is_revalidated_by_the_bridge() {
    let app = spawn_app(options("heal")).await;
    let (bridge, mut crm, id) = serve_registered(&app, "heal").await;
    let crc_checks = app.simulator.counters().crc_checks;

    assert!(app.simulator.invalidate_webhook(&id));

    let invalid = next_state(&mut crm).await;
    assert_eq!(invalid.body["channel"], "heal");
    assert_eq!(invalid.body["state"], "webhook_invalid");
    let detail = invalid.body["detail"].as_str().unwrap();
    assert!(detail.contains("asking X to revalidate"), "{detail}");
    let ok = next_state(&mut crm).await;
    assert_eq!(ok.body["state"], "ok", "{}", ok.body);

    let webhook = &app.simulator.webhooks()[0];
    assert!(webhook.valid, "X lists it valid again");
    assert!(
        app.simulator.counters().crc_checks > crc_checks,
        "X ran a CRC against the bridge"
    );
    assert_eq!(revalidations(&bridge, "heal", "revalidated").await, 1);
    assert_eq!(revalidations(&bridge, "heal", "failed").await, 0);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_revalidation_keeps_webhook_invalid_with_the_reason_until_x_accepts() {
    let app = spawn_app(options("refused")).await;
    let (bridge, mut crm, id) = serve_registered(&app, "refused").await;
    let user = app.user_id("refused");

    // X cannot reach the bridge (its ingress is down), which the bridge's own
    // CRC check cannot see: X refuses every revalidation.
    app.simulator
        .set_fault(&user, Fault::CrcFails { times: None });
    assert!(app.simulator.invalidate_webhook(&id));

    let invalid = next_state(&mut crm).await;
    assert_eq!(invalid.body["state"], "webhook_invalid");
    let refused = next_state(&mut crm).await;
    assert_eq!(refused.body["state"], "webhook_invalid");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("refused to revalidate"), "{detail}");
    assert!(detail.contains("CrcValidationFailed"), "{detail}");
    assert_ne!(
        refused.body["since"], invalid.body["since"],
        "a new message_id, so a CRM that dedupes still hears the cause"
    );
    assert!(!app.simulator.webhooks()[0].valid);
    assert!(revalidations(&bridge, "refused", "failed").await >= 1);

    // Once X reaches the bridge again, a later attempt (after a pause: the
    // backoff itself is proven with paused time in webhook_watch's unit tests)
    // heals it.
    app.simulator.clear_faults(&user);
    let ok = tokio::time::timeout(PATIENCE, next_state(&mut crm))
        .await
        .expect("the bridge asks again");
    assert_eq!(ok.body["state"], "ok", "{}", ok.body);
    assert!(app.simulator.webhooks()[0].valid);
    assert_eq!(revalidations(&bridge, "refused", "revalidated").await, 1);
    assert!(revalidations(&bridge, "refused", "failed").await >= 1);

    bridge.stop().await;
    app.cleanup().await;
}
