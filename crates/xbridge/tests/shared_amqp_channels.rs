//! Reply consumers share AMQP channels (issue 15): a thousand channels on an
//! AMQP channel each wedged a RabbitMQ 3.10 node when their connection
//! closed. Stopping one channel's consumer closes no AMQP channel now: the
//! replies it held go back to its queue one by one, in order, and the other
//! consumers on the same AMQP channel go on with theirs. Real RabbitMQ (the
//! shared node, only read with `rabbitmqctl list_consumers`), simulated X.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::live::{start_serving_with, wait_for_state};
use x_simulator::Fault;
use xbridge_test_support::{reply, spawn_app, Crm, TestApp, TestOptions};

/// The AMQP channel (its process in RabbitMQ) of each consumer of the
/// test's reply queues, by queue.
async fn consumer_channels(app: &TestApp) -> BTreeMap<String, String> {
    let prefix = app.names.outgoing_queue_prefix.clone();
    let output = tokio::task::spawn_blocking(|| {
        Command::new("rabbitmqctl")
            .args([
                "--quiet",
                "list_consumers",
                "--no-table-headers",
                "queue_name",
                "channel_pid",
            ])
            .output()
            .expect("rabbitmqctl runs")
    })
    .await
    .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(queue, _)| queue.starts_with(&prefix) && !queue.ends_with(".unrouted"))
        .map(|(queue, pid)| (queue.to_owned(), pid.trim().to_owned()))
        .collect()
}

/// The message ids of the next `n` events, each a `message.sent`.
async fn sent_ids(crm: &mut Crm, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for event in crm.events(n).await {
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        ids.push(event.body["message_id"].as_str().unwrap().to_owned());
    }
    ids
}

fn texts(app: &TestApp, channel: &str) -> Vec<String> {
    app.simulator
        .sent_dms_for(&app.user_id(channel))
        .into_iter()
        .map(|dm| dm.text)
        .collect()
}

/// Both channels' consumers are on one AMQP channel. acme holds four replies
/// of one conversation (its account is out of credits) when it is paused:
/// they go back to its queue, and once it is resumed they are sent in the
/// order the CRM published them, once each. beta, on the same AMQP channel,
/// holds a reply all along, sends it once when its credits return, and keeps
/// its consumer: no AMQP channel closed, no session restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_hands_its_replies_back_in_order_and_its_neighbour_goes_on() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        ..TestOptions::default()
    })
    .await;
    let running = start_serving_with(&app, &["acme", "beta"], |settings| {
        // The held replies wait for credits, not for the stop: past this
        // they are aborted, and handed back all the same.
        settings.outbound.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let mut crm = app.crm().await;
    let (acme_queue, beta_queue) = (
        app.names.outgoing_queue("acme"),
        app.names.outgoing_queue("beta"),
    );

    let before = consumer_channels(&app).await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(
        before[&acme_queue], before[&beta_queue],
        "both consumers share one AMQP channel: {before:?}"
    );

    for channel in ["acme", "beta"] {
        app.simulator
            .set_fault(&app.user_id(channel), Fault::CreditsDepleted);
    }
    let published = ["a-1", "a-2", "a-3", "a-4"];
    for id in published {
        crm.publish_reply("acme", &reply(id, "944480690", id)).await;
    }
    crm.publish_reply("beta", &reply("b-1", "944480690", "b-1"))
        .await;
    // Each account refused a send: every reply is in the bridge's hands.
    app.wait_for_requests("acme", 1).await;
    app.wait_for_requests("beta", 1).await;
    crm.wait_for_depth(&acme_queue, 0).await;
    crm.wait_for_depth(&beta_queue, 0).await;

    running.live.set_paused("acme", true);
    // Told once its consumer stopped and its replies were handed back.
    wait_for_state(&mut crm, "acme", "paused").await;
    crm.wait_for_depth(&acme_queue, 4).await;
    let after = consumer_channels(&app).await;
    assert_eq!(
        after.get(&beta_queue),
        Some(&before[&beta_queue]),
        "beta's consumer stays on its AMQP channel: {after:?}"
    );
    assert!(!after.contains_key(&acme_queue), "{after:?}");

    app.simulator.clear_faults(&app.user_id("beta"));
    assert_eq!(sent_ids(&mut crm, 1).await, ["b-1"]);
    assert_eq!(texts(&app, "beta"), ["b-1"], "sent once");

    app.simulator.clear_faults(&app.user_id("acme"));
    running.live.set_paused("acme", false);
    assert_eq!(sent_ids(&mut crm, 4).await, published);
    assert_eq!(texts(&app, "acme"), published, "in order, once each");
    assert_eq!(crm.queue_depth(&acme_queue).await, 0);
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);
    assert!(
        !running.bridge.ready.has_changed().unwrap(),
        "no RabbitMQ session restarted"
    );

    running.bridge.stop().await;
    app.cleanup().await;
}
