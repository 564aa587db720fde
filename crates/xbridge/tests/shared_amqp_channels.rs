//! Reply consumers share AMQP channels (issue 15): a thousand channels on an
//! AMQP channel each wedged a RabbitMQ 3.10 node when their connection
//! closed. Stopping one channel's consumer that holds nothing leaves the
//! others on its AMQP channel alone; one that holds replies hands them back
//! to the head of its queue, in order, ahead of replies published since.
//! Real RabbitMQ (the shared node, only read with `rabbitmqctl
//! list_consumers`), simulated X.

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

/// Starts a bridge serving acme and beta, and checks their consumers share
/// one AMQP channel: its process in RabbitMQ.
async fn start_sharing(app: &TestApp) -> (common::live::LiveBridge, String) {
    let running = start_serving_with(app, &["acme", "beta"], |settings| {
        // Replies held waiting for credits do not settle: past this they are
        // aborted, and handed back all the same.
        settings.outbound.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let consumers = consumer_channels(app).await;
    assert_eq!(consumers.len(), 2, "{consumers:?}");
    let (acme, beta) = (
        &consumers[&app.names.outgoing_queue("acme")],
        &consumers[&app.names.outgoing_queue("beta")],
    );
    assert_eq!(
        acme, beta,
        "both consumers share one AMQP channel: {consumers:?}"
    );
    let shared = acme.clone();
    (running, shared)
}

fn two_channels() -> TestOptions {
    TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        ..TestOptions::default()
    }
}

/// acme's consumer, which holds nothing, stops (acme paused) while beta, on
/// the same AMQP channel, holds a reply (its account out of credits): beta
/// keeps its consumer and its AMQP channel, and sends its reply once when
/// its credits return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_share_an_amqp_channel_and_one_stopping_idle_leaves_the_others_alone() {
    let app = spawn_app(two_channels()).await;
    let (running, shared) = start_sharing(&app).await;
    let mut crm = app.crm().await;
    let beta_queue = app.names.outgoing_queue("beta");

    crm.publish_reply("acme", &reply("a-1", "944480690", "a-1"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["a-1"]);
    app.simulator
        .set_fault(&app.user_id("beta"), Fault::CreditsDepleted);
    crm.publish_reply("beta", &reply("b-1", "944480690", "b-1"))
        .await;
    app.wait_for_requests("beta", 1).await;
    crm.wait_for_depth(&beta_queue, 0).await;

    running.live.set_paused("acme", true);
    wait_for_state(&mut crm, "acme", "paused").await;
    let after = consumer_channels(&app).await;
    assert_eq!(
        after.get(&beta_queue),
        Some(&shared),
        "beta's consumer stays on its AMQP channel: {after:?}"
    );
    assert!(
        !after.contains_key(&app.names.outgoing_queue("acme")),
        "{after:?}"
    );

    app.simulator.clear_faults(&app.user_id("beta"));
    assert_eq!(sent_ids(&mut crm, 1).await, ["b-1"]);
    assert_eq!(texts(&app, "beta"), ["b-1"], "sent once");
    assert_eq!(
        consumer_channels(&app).await.get(&beta_queue),
        Some(&shared)
    );
    assert!(
        !running.bridge.ready.has_changed().unwrap(),
        "no RabbitMQ session restarted"
    );

    running.bridge.stop().await;
    app.cleanup().await;
}

/// acme holds four replies of one conversation (its account is out of
/// credits) when it is paused, and the CRM publishes a fifth while it is:
/// once resumed, the five are sent in the order published, once each. A
/// requeue would have put the four behind the fifth (RabbitMQ 3.10's quorum
/// queues requeue at the tail); closing their AMQP channel hands them back
/// to the head. beta, which shared it, is consumed again on another and
/// sends its reply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_hands_its_replies_back_ahead_of_later_ones_in_order() {
    let app = spawn_app(two_channels()).await;
    let (running, _) = start_sharing(&app).await;
    let mut crm = app.crm().await;
    let acme_queue = app.names.outgoing_queue("acme");

    for channel in ["acme", "beta"] {
        app.simulator
            .set_fault(&app.user_id(channel), Fault::CreditsDepleted);
    }
    let published = ["a-1", "a-2", "a-3", "a-4", "a-5"];
    for id in &published[..4] {
        crm.publish_reply("acme", &reply(id, "944480690", id)).await;
    }
    crm.publish_reply("beta", &reply("b-1", "944480690", "b-1"))
        .await;
    // Each account refused a send: every reply is in the bridge's hands.
    app.wait_for_requests("acme", 1).await;
    app.wait_for_requests("beta", 1).await;
    crm.wait_for_depth(&acme_queue, 0).await;
    crm.wait_for_depth(&app.names.outgoing_queue("beta"), 0)
        .await;

    running.live.set_paused("acme", true);
    // Told once its consumer stopped and its AMQP channel closed.
    wait_for_state(&mut crm, "acme", "paused").await;
    crm.publish_reply("acme", &reply("a-5", "944480690", "a-5"))
        .await;
    crm.wait_for_depth(&acme_queue, 5).await;

    app.simulator.clear_faults(&app.user_id("beta"));
    assert_eq!(sent_ids(&mut crm, 1).await, ["b-1"]);
    app.simulator.clear_faults(&app.user_id("acme"));
    running.live.set_paused("acme", false);
    assert_eq!(sent_ids(&mut crm, 5).await, published);
    assert_eq!(texts(&app, "acme"), published, "in order, once each");
    assert_eq!(texts(&app, "beta"), ["b-1"], "sent once");
    assert_eq!(crm.queue_depth(&acme_queue).await, 0);
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);
    let consumers = consumer_channels(&app).await;
    assert_eq!(
        consumers[&acme_queue],
        consumers[&app.names.outgoing_queue("beta")],
        "consumed again on one AMQP channel: {consumers:?}"
    );
    assert!(
        !running.bridge.ready.has_changed().unwrap(),
        "no RabbitMQ session restarted"
    );

    running.bridge.stop().await;
    app.cleanup().await;
}

/// acme's reply queue is deleted while acme is paused. On resume its queue
/// is checked on the AMQP channel kept for declarations, where the broker's
/// refusal (404) lands: acme alone is `broker_refused` until its queue is
/// declared again at the next try, and beta's consumer, on the AMQP channel
/// acme's would join, never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_meanwhile_is_refused_on_the_declarer_not_on_the_shared_channel() {
    let app = spawn_app(two_channels()).await;
    let (running, shared) = start_sharing(&app).await;
    let mut crm = app.crm().await;
    let acme_queue = app.names.outgoing_queue("acme");

    running.live.set_paused("acme", true);
    wait_for_state(&mut crm, "acme", "paused").await;
    let broker =
        lapin::Connection::connect(&app.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
    let amqp = broker.create_channel().await.expect("a channel");
    amqp.queue_delete(acme_queue.as_str().into(), Default::default())
        .await
        .expect("an operator deletes acme's queue");

    running.live.set_paused("acme", false);
    let refused = wait_for_state(&mut crm, "acme", "broker_refused").await;
    let detail = refused.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&acme_queue), "{detail}");
    wait_for_state(&mut crm, "acme", "ok").await;
    crm.publish_reply("acme", &reply("a-1", "944480690", "a-1"))
        .await;
    crm.publish_reply("beta", &reply("b-1", "944480690", "b-1"))
        .await;
    let mut ids = sent_ids(&mut crm, 2).await;
    ids.sort();
    assert_eq!(ids, ["a-1", "b-1"]);
    let consumers = consumer_channels(&app).await;
    assert_eq!(
        consumers.get(&app.names.outgoing_queue("beta")),
        Some(&shared),
        "beta's consumer never left its AMQP channel: {consumers:?}"
    );
    assert!(
        !running.bridge.ready.has_changed().unwrap(),
        "no RabbitMQ session restarted"
    );

    running.bridge.stop().await;
    broker.close(0, "done".into()).await.ok();
    app.cleanup().await;
}
