//! `inbound = "stream"` end to end: the bridge holds the X App's activity stream (the
//! simulator's `GET /2/activity/stream`) with no webhook server and no public URL, creates
//! the stream-only XAA subscriptions itself, and hands every customer DM to the CRM once and
//! in order per conversation — across cuts of the stream (backfill), across an outage longer
//! than X's backfill (a catch-up read of the DMs), and across the SIGKILL of the replica
//! holding it (the other takes the App's lease over); and it keeps the stream subscriptions to
//! what the channels want as they change and leave. Real RabbitMQ (and PostgreSQL for the
//! replicas, which share the delivered record).

mod common;
#[path = "common/live_in.rs"]
#[allow(dead_code)] // This file changes channels; it serves no webhook.
mod live_in;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use x_simulator::{Customer, Fault};
use xbridge_core::config::{WebhookApi, XaaEvent};
use xbridge_test_support::{spawn_app, BridgeProcess, Crm, TestApp, TestOptions, PATIENCE};

const CONVERSATIONS: usize = 5;

fn options(postgres: bool) -> TestOptions {
    TestOptions {
        channels: vec!["acme".into()],
        inbound_mode: Some("stream".into()),
        postgres,
        ..TestOptions::default()
    }
}

fn customers() -> Vec<Customer> {
    (0..CONVERSATIONS)
        .map(|n| Customer::generate(&format!("customer_{n}")))
        .collect()
}

/// The App's lease queue, for cleanup.
fn forget_lease_queue(app: &TestApp) {
    let key = &app.accounts[0].1.consumer_key;
    app.created_channel(&xbridge_inbound::stream_lease_name(key));
}

/// Customer DM number `n`, in conversation `n % CONVERSATIONS`, text `conversation:n`.
fn send(app: &TestApp, customers: &[Customer], user: &str, n: usize) -> String {
    let conversation = n % CONVERSATIONS;
    app.simulator
        .customer_dm(
            user,
            &customers[conversation],
            &format!("{conversation}:{n}"),
            None,
        )
        .id
}

/// What the CRM got: each DM's text in arrival order, and its AMQP `message_id`.
#[derive(Default)]
struct Received {
    texts: Vec<String>,
    message_ids: HashMap<String, String>,
    /// Events that came again with the same AMQP `message_id` (the CRM's dedup key).
    repeats: usize,
}

/// Reads `message.received` events until `until` (an event id) arrives. A DM seen twice fails
/// the test unless `repeats_allowed` (a process killed between the broker's confirm and its
/// record, the documented at-least-once window), and even then it must carry the same AMQP
/// `message_id`, so the CRM drops it.
async fn read_until(crm: &mut Crm, received: &mut Received, until: &str, repeats_allowed: bool) {
    loop {
        let event = crm.next_event().await;
        assert_eq!(event.body["type"], "message.received", "{}", event.body);
        let id = event.body["event_id"].as_str().unwrap().to_owned();
        let message_id = event
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .expect("a message_id");
        match received.message_ids.get(&id) {
            None => {
                received.message_ids.insert(id.clone(), message_id);
                received
                    .texts
                    .push(event.body["text"].as_str().unwrap().to_owned());
            }
            Some(first) => {
                assert!(repeats_allowed, "DM {id} reached the CRM twice");
                assert_eq!(first, &message_id, "a repeat keeps its message_id");
                received.repeats += 1;
            }
        }
        if id == until {
            return;
        }
    }
}

/// Every DM `0..count` once, and each conversation's in the order they were written.
fn assert_once_in_order(texts: &[String], count: usize) {
    assert_eq!(texts.len(), count, "every DM once");
    let mut per_conversation: HashMap<&str, Vec<usize>> = HashMap::new();
    for text in texts {
        let (conversation, n) = text.split_once(':').unwrap();
        per_conversation
            .entry(conversation)
            .or_default()
            .push(n.parse().unwrap());
    }
    assert_eq!(per_conversation.len(), CONVERSATIONS);
    for (conversation, numbers) in per_conversation {
        let expected: Vec<usize> = (0..count)
            .filter(|n| (n % CONVERSATIONS).to_string() == conversation)
            .collect();
        assert_eq!(numbers, expected, "conversation {conversation} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_dms_reach_the_crm_once_and_in_order_across_three_cuts_without_a_public_url() {
    let app = spawn_app(options(false)).await;
    forget_lease_queue(&app);
    let bridge = common::start_bridge(&app).await;
    assert_eq!(
        bridge.webhook_addr, None,
        "no webhook server, no public URL"
    );
    let user = app.user_id("acme");
    let mut crm = app.crm().await;
    app.wait_for_open_streams(1, "the bridge opens the App's stream")
        .await;
    let subscriptions = app.simulator.activity_subscriptions();
    assert!(
        subscriptions
            .iter()
            .any(|s| s.event_type == "dm.received" && s.user_id == user && s.webhook_id.is_none()),
        "the bridge subscribed the account for the stream: {subscriptions:?}"
    );

    let customers = customers();
    let mut received = Received::default();
    for batch in 0..4 {
        let mut last = String::new();
        for n in batch * 50..(batch + 1) * 50 {
            last = send(&app, &customers, &user, n);
        }
        read_until(&mut crm, &mut received, &last, false).await;
        if batch < 3 {
            // The CRM has DM 50, 100, 150: cut the stream; the next batch is written while
            // the bridge reconnects, and reaches it through the backfill or live.
            assert_eq!(app.simulator.cut_activity_streams(), 1);
        }
    }
    // A last DM: anything delivered twice would come before it.
    let last = send(&app, &customers, &user, 200);
    read_until(&mut crm, &mut received, &last, false).await;
    assert_once_in_order(&received.texts, 201);

    let streams = app.simulator.activity_stream_counters();
    assert_eq!(streams.cut, 3);
    assert!(
        streams.opened >= 4,
        "reconnected after each cut: {streams:?}"
    );
    assert!(
        app.simulator.deliveries().is_empty(),
        "nothing went through a webhook"
    );
    bridge.stop().await;
    app.cleanup().await;
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_stream_and_the_other_takes_over_after_a_sigkill() {
    let app = spawn_app(options(true)).await;
    forget_lease_queue(&app);
    let config = app.write_config();
    let user = app.user_id("acme");
    let first = BridgeProcess::start(binary(), &config, &[]);
    first.wait_for_log("outbound running", 1).await;
    let second = BridgeProcess::start(binary(), &config, &[]);
    let mut crm = app.crm().await;
    // Both contend for the App's lease; only the holder opens the stream.
    first
        .wait_for_log("contending for the X App's stream lease", 1)
        .await;
    second
        .wait_for_log("contending for the X App's stream lease", 1)
        .await;
    app.wait_for_open_streams(1, "one replica opens the stream")
        .await;
    let (active, standby) = if first.count_logs("stream lease acquired") == 1 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(active.count_logs("stream lease acquired"), 1);
    assert_eq!(standby.count_logs("stream lease acquired"), 0);

    let customers = customers();
    let mut received = Received::default();
    let mut last = String::new();
    for n in 0..50 {
        last = send(&app, &customers, &user, n);
    }
    read_until(&mut crm, &mut received, &last, false).await;
    assert_eq!(app.simulator.activity_stream_counters().open, 1);

    active.kill().await;
    for n in 50..100 {
        last = send(&app, &customers, &user, n);
    }
    standby.wait_for_log("stream lease acquired", 1).await;
    // The new holder replays X's last 5 minutes: only what the killed process had published
    // but not yet recorded may come again (it delivers one line at a time).
    read_until(&mut crm, &mut received, &last, true).await;
    let last = send(&app, &customers, &user, 100);
    read_until(&mut crm, &mut received, &last, true).await;
    assert_once_in_order(&received.texts, 101);
    assert!(received.repeats <= 2, "{} repeats", received.repeats);
    assert_eq!(app.simulator.activity_stream_counters().open, 1);

    standby.terminate().await;
    app.cleanup().await;
}

/// The stream requests X answered for `user`.
/// X goes down: the App's stream is cut and cannot be opened again; DMs number `dms` are
/// written meanwhile, and the bridge's next connection attempt has been refused. X stays
/// down until the test brings it back (`set_activity_stream_down(false)`).
async fn stream_down_while(
    app: &TestApp,
    customers: &[Customer],
    user: &str,
    dms: std::ops::Range<usize>,
) {
    let before = stream_requests(app, user);
    app.simulator.set_activity_stream_down(true);
    assert_eq!(app.simulator.cut_activity_streams(), 1);
    for n in dms {
        send(app, customers, user, n);
    }
    let requests = app
        .simulator
        .wait_for_requests_to(user, "/2/activity/stream", before + 1);
    tokio::time::timeout(PATIENCE, requests)
        .await
        .expect("the bridge tries to reconnect");
}

fn stream_requests(app: &TestApp, user: &str) -> usize {
    app.simulator
        .requests_for(user)
        .iter()
        .filter(|r| r.path == "/2/activity/stream")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_written_while_the_stream_was_down_longer_than_xs_backfill_reach_the_crm_once() {
    let app = spawn_app(TestOptions {
        // X's 5 minutes, shortened on both sides: the bridge's catch-up window and what the
        // simulator's backfill replays (nothing), so the outage outlasts the backfill at once.
        inbound: "stream_catch_up_after = \"500ms\"\n".into(),
        ..options(false)
    })
    .await;
    forget_lease_queue(&app);
    app.simulator
        .set_activity_stream_backfill_window(Duration::ZERO);
    let bridge = common::start_bridge(&app).await;
    let user = app.user_id("acme");
    let mut crm = app.crm().await;
    app.wait_for_open_streams(1, "the bridge opens the App's stream")
        .await;
    let customers = customers();
    let mut received = Received::default();
    let first = send(&app, &customers, &user, 0);
    read_until(&mut crm, &mut received, &first, false).await;

    // X goes down: the stream is cut and cannot be opened again.
    // A reconnection refused: the next waits at least the backoff's first second, longer
    // than the catch-up window, so the gap outlasts X's (shortened) backfill.
    stream_down_while(&app, &customers, &user, 1..20).await;
    app.simulator.set_activity_stream_down(false);

    app.wait_for_open_streams(1, "the bridge reconnects").await;
    let last = send(&app, &customers, &user, 20);
    read_until(&mut crm, &mut received, &last, false).await;
    assert_once_in_order(&received.texts, 21);
    bridge.stop().await;
    app.cleanup().await;
}

/// The stream subscriptions (no webhook) the bridge made for `channel`: their event types.
fn stream_subscriptions(app: &TestApp, channel: &str) -> Vec<String> {
    let mut types: Vec<String> = app
        .simulator
        .activity_subscriptions()
        .into_iter()
        .filter(|s| {
            s.webhook_id.is_none() && s.tag.as_deref() == Some(&format!("xbridge:{channel}"))
        })
        .map(|s| s.event_type)
        .collect();
    types.sort();
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscriptions_follow_the_channels_event_types_and_go_with_the_channel() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        shared_app: true,
        ..options(false)
    })
    .await;
    forget_lease_queue(&app);
    let bridge = live_in::LiveBridge::start_without(&app, &[]).await;
    app.wait_for_open_streams(1, "the bridge opens the App's stream")
        .await;
    let both = vec!["dm.received".to_owned(), "dm.sent".to_owned()];
    assert_eq!(stream_subscriptions(&app, "acme"), both);
    assert_eq!(stream_subscriptions(&app, "beta"), both);
    // The App's Bearer token (the first account's) deletes them.
    let app_user = app.user_id("acme");
    let deletions = |count: usize| {
        let waited =
            app.simulator
                .wait_for_requests_to(&app_user, "/2/activity/subscriptions/", count);
        async move {
            tokio::time::timeout(PATIENCE, waited)
                .await
                .expect("the bridge deletes subscriptions");
        }
    };

    // acme no longer wants its own DMs (echoes): its dm.sent subscription goes.
    let mut acme = bridge.channel("acme");
    acme.webhook_api = WebhookApi::Xaa;
    acme.xaa_events = Some(vec![XaaEvent::Received]);
    bridge.upsert(acme);
    deletions(1).await;
    assert_eq!(stream_subscriptions(&app, "acme"), ["dm.received"]);
    assert_eq!(stream_subscriptions(&app, "beta"), both);

    // beta is removed; then acme, the App's last stream channel: theirs go too.
    bridge.live.remove("beta");
    deletions(3).await;
    assert_eq!(stream_subscriptions(&app, "beta"), Vec::<String>::new());
    assert_eq!(stream_subscriptions(&app, "acme"), ["dm.received"]);
    bridge.live.remove("acme");
    deletions(4).await;
    assert_eq!(stream_subscriptions(&app, "acme"), Vec::<String>::new());
    tokio::time::timeout(
        PATIENCE,
        app.simulator.wait_for_activity_streams(|c| c.open == 0),
    )
    .await
    .expect("the App's stream stops with its last channel");
    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscriptions_deleted_elsewhere_come_back_and_dms_still_arrive() {
    let app = spawn_app(options(false)).await;
    forget_lease_queue(&app);
    let config = app.write_config();
    let bridge = common::start_bridge(&app).await;
    let user = app.user_id("acme");
    let mut crm = app.crm().await;
    app.wait_for_open_streams(1, "the bridge opens the App's stream")
        .await;
    let both = vec!["dm.received".to_owned(), "dm.sent".to_owned()];
    assert_eq!(stream_subscriptions(&app, "acme"), both);

    // While the bridge streams, an operator's `xbridge webhook unsubscribe` (or a lagging
    // replica's retire) deletes the channel's subscriptions: X would carry none of its DMs.
    let run = tokio::process::Command::new(binary())
        .args(["webhook", "unsubscribe", "--channel", "acme", "--config"])
        .arg(&config)
        .env_remove("XBRIDGE_CONFIG")
        .output()
        .await
        .expect("xbridge runs");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(stream_subscriptions(&app, "acme"), Vec::<String>::new());

    // X cuts the stream: the bridge reconnects, making sure of the subscriptions first.
    assert_eq!(app.simulator.cut_activity_streams(), 1);
    tokio::time::timeout(
        PATIENCE,
        app.simulator
            .wait_for_activity_streams(|c| c.opened >= 2 && c.open == 1),
    )
    .await
    .expect("the bridge reconnects");
    assert_eq!(stream_subscriptions(&app, "acme"), both);
    let dm = send(&app, &customers(), &user, 0);
    read_until(&mut crm, &mut Received::default(), &dm, false).await;
    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_written_while_a_catch_up_read_the_gap_reach_the_crm_once() {
    let app = spawn_app(TestOptions {
        // As above: X's backfill replays nothing, so what the stream missed only a read of the
        // DMs brings. Two channels of one App: the catch-up reads acme's DMs, then beta's.
        channels: vec!["acme".into(), "beta".into()],
        shared_app: true,
        inbound: "stream_catch_up_after = \"500ms\"\n".into(),
        ..options(false)
    })
    .await;
    forget_lease_queue(&app);
    app.simulator
        .set_activity_stream_backfill_window(Duration::ZERO);
    let config = app.write_config();
    let bridge = BridgeProcess::start(binary(), &config, &[]);
    bridge.wait_for_log("outbound running", 1).await;
    let (user, beta) = (app.user_id("acme"), app.user_id("beta"));
    let mut crm = app.crm().await;
    app.wait_for_open_streams(1, "the bridge opens the App's stream")
        .await;
    let customers = customers();
    let mut received = Received::default();
    let first = send(&app, &customers, &user, 0);
    read_until(&mut crm, &mut received, &first, false).await;

    stream_down_while(&app, &customers, &user, 1..5).await;
    // X answers beta's account slowly, for good: each catch-up read, acme's DMs then beta's,
    // outlasts the catch-up window, and the stream is not connected meanwhile.
    app.simulator
        .set_fault(&beta, Fault::Latency { millis: 1500 });
    app.simulator.set_activity_stream_down(false);
    bridge
        .wait_for_log(
            "activity stream gap caught up by reading the channel's DMs",
            1,
        )
        .await;
    // acme's DMs were read; beta's are being read. Neither that read nor X's backfill brings
    // this one: only reading again from when the catch-up began does.
    send(&app, &customers, &user, 5);

    let last = send(&app, &customers, &user, 6);
    read_until(&mut crm, &mut received, &last, false).await;
    assert_once_in_order(&received.texts, 7);
    bridge.terminate().await;
    app.cleanup().await;
}
