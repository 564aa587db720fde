//! What operators see: health, readiness and Prometheus metrics. In its own
//! test binary, since metrics are process-wide.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use x_simulator::Fault;
use xbridge::app::Bridge;
use xbridge_core::config::Settings;
use xbridge_test_support::{reply, spawn_app, TestOptions, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "dry".into()],
        credits: "max_wait = \"1s\"\nprobe_initial = \"200ms\"\nprobe_max = \"400ms\"\n".into(),
        ..TestOptions::default()
    })
    .await;
    app.simulator
        .set_fault(&app.user_id("dry"), Fault::CreditsDepleted);
    let config = format!(
        "{}\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        app.config_toml()
    );
    let bridge = Bridge::build(Settings::from_toml(&config).unwrap())
        .await
        .unwrap();
    let addr = bridge.ops_addr().expect("ops endpoints configured");
    let mut ready = bridge.readiness();
    let mut inbound_ready = bridge.inbound_readiness();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{addr}");

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["store"], true, "{body}");
    tokio::time::timeout(PATIENCE, ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, inbound_ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    let readyz = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    let body: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["store"], true, "{body}");
    assert_eq!(body["channels"]["acme"]["state"], "ok", "{body}");
    // No webhook configured: nothing for traffic routing to hold back.
    let webhook = http
        .get(format!("{base}/readyz/webhook"))
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 200);
    let body: serde_json::Value = webhook.json().await.unwrap();
    assert_eq!(body["webhook"], false, "{body}");
    assert_eq!(body["ready"], true, "{body}");

    // This CRM leaves the dead-letter queue alone, so its depth shows.
    let mut crm = xbridge_test_support::Crm::connect_without_dead_letters(
        &xbridge_test_support::amqp_url(),
        app.names.clone(),
    )
    .await;
    crm.publish_reply("acme", &reply("m-1", "944480690", "hello"))
        .await;
    crm.publish_reply("dry", &reply("m-2", "944480690", "no credits"))
        .await;
    let mut types = vec![
        crm.next_event().await.body["type"]
            .as_str()
            .unwrap()
            .to_owned(),
        crm.next_event().await.body["type"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    types.sort();
    assert_eq!(types, ["message.failed", "message.sent"]);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "xbridge_dms_sent_total{channel=\"acme\"} 1",
        "xbridge_dead_letters_total{channel=\"dry\",reason=\"credits_exhausted\"} 1",
        "xbridge_dms_failed_total{channel=\"dry\",reason=\"credits_exhausted\"} 1",
        "xbridge_x_requests_total{endpoint=\"dm_send\",status=\"201\"} 1",
        "xbridge_x_requests_total{endpoint=\"dm_send\",status=\"402\"}",
        "xbridge_x_request_duration_seconds",
        // Sampled (every 15 s and after each park or dead letter); a quorum
        // queue may not count a message the instant its publish is confirmed.
        "# TYPE xbridge_dead_letter_queue_depth gauge",
        "# TYPE xbridge_delay_queue_depth gauge",
        "xbridge_delay_queue_depth{delay=\"200ms\"}",
        "xbridge_channel_state{channel=\"dry\",state=\"credits_exhausted\"} 1",
        "xbridge_state_store_writable 1",
        "xbridge_rabbitmq_connected{side=\"inbound\"} 1",
        "xbridge_rabbitmq_connected{side=\"outbound\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
    for id in ["m-1", "m-2", "944480690"] {
        assert!(!metrics.contains(id), "label values never carry ids: {id}");
    }
    assert_every_type_has_help(&metrics);

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    app.cleanup().await;
}

/// Every `# TYPE name kind` line of a `/metrics` page comes with a
/// `# HELP name text` line, the text the catalog gives it.
fn assert_every_type_has_help(page: &str) {
    let typed: Vec<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(typed.len() > 5, "a page with metrics:\n{page}");
    for name in typed {
        let help = page
            .lines()
            .find_map(|line| line.strip_prefix(&format!("# HELP {name} ")));
        let Some(help) = help else {
            panic!("{name} has a # TYPE but no # HELP line in:\n{page}");
        };
        let catalog = xbridge_core::metrics_catalog::find(name)
            .unwrap_or_else(|| panic!("{name} is not in the metrics catalog"));
        assert_eq!(help, catalog.help, "{name}'s help is the catalog's");
    }
}
