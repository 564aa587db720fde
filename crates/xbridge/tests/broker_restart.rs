//! RabbitMQ going away mid-stream: the broker restarted, then every
//! connection closed by force. The bridge reconnects, declares its topology
//! again, and every reply is sent exactly once.
//!
//! Each test runs its own RabbitMQ node ([`PrivateBroker`]): stopping the
//! shared one broke every other test running at the time.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use common::start_bridge;
use x_simulator::Fault;
use xbridge_test_support::{spawn_app, PrivateBroker, TestApp, TestOptions};

/// Waiting for the broker to come back and the bridge to reconnect.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(120);

fn on(broker: &PrivateBroker) -> TestOptions {
    TestOptions {
        amqp_url: Some(broker.amqp_url()),
        ..TestOptions::default()
    }
}

async fn publish_batch(app: &TestApp, from: usize, to: usize) {
    let crm = app.crm().await;
    for i in from..=to {
        crm.publish_reply(
            "acme",
            &json!({"message_id": format!("r-{i}"), "recipient_id": "944480690", "text": format!("reply {i}")}),
        )
        .await;
    }
    // The publishing connection closes here, before the broker goes away.
}

async fn wait_dms(app: &TestApp, count: usize) {
    tokio::time::timeout(
        OUTAGE_PATIENCE,
        app.simulator.wait_for_dms(&app.user_id("acme"), count),
    )
    .await
    .unwrap_or_else(|_| panic!("waited {OUTAGE_PATIENCE:?} for {count} DMs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_is_sent_exactly_once_across_broker_restarts_and_dropped_connections() {
    let mut broker = PrivateBroker::started().await;
    let app = spawn_app(on(&broker)).await;
    // Slow enough that the broker goes away with replies still queued.
    app.simulator
        .set_fault(&app.user_id("acme"), Fault::Latency { millis: 100 });
    let bridge = start_bridge(&app).await;

    publish_batch(&app, 1, 30).await;
    wait_dms(&app, 5).await;
    broker.stop().await;
    broker.start().await;
    wait_dms(&app, 30).await;

    publish_batch(&app, 31, 60).await;
    wait_dms(&app, 35).await;
    broker
        .close_all_connections("xbridge test: dropped connection")
        .await;
    wait_dms(&app, 60).await;

    // Every reply reported to the CRM, and X saw each exactly once, in order.
    let mut crm = app.crm().await;
    let mut reported = HashSet::new();
    while reported.len() < 60 {
        let event = tokio::time::timeout(OUTAGE_PATIENCE, crm.next_event())
            .await
            .expect("events keep coming");
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        reported.insert(event.body["message_id"].as_str().unwrap().to_owned());
    }
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&app.user_id("acme"))
        .into_iter()
        .map(|d| d.text)
        .collect();
    let expected: Vec<String> = (1..=60).map(|i| format!("reply {i}")).collect();
    assert_eq!(texts, expected, "each reply sent once, in order");
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_rabbitmq_is_stopped_and_recovers_after() {
    let mut broker = PrivateBroker::started().await;
    let app = spawn_app(on(&broker)).await;
    let config = format!(
        "{}\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        app.config_toml()
    );
    let bridge =
        xbridge::app::Bridge::build(xbridge_core::config::Settings::from_toml(&config).unwrap())
            .await
            .unwrap();
    let readyz = format!("http://{}/readyz", bridge.ops_addr().unwrap());
    let mut outbound = bridge.readiness();
    let mut inbound = bridge.inbound_readiness();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    let http = reqwest::Client::new();
    let status = || async { http.get(&readyz).send().await.unwrap().status().as_u16() };

    for watch in [&mut outbound, &mut inbound] {
        tokio::time::timeout(OUTAGE_PATIENCE, watch.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(status().await, 200);

    broker.stop().await;
    tokio::time::timeout(OUTAGE_PATIENCE, outbound.wait_for(|r| !*r))
        .await
        .unwrap()
        .unwrap();
    let while_down = status().await;
    broker.start().await;
    assert_eq!(while_down, 503, "not ready without RabbitMQ");

    for watch in [&mut outbound, &mut inbound] {
        tokio::time::timeout(OUTAGE_PATIENCE, watch.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(status().await, 200, "ready again once reconnected");

    shutdown.cancel();
    tokio::time::timeout(OUTAGE_PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    app.cleanup().await;
}
