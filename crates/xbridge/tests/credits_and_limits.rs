//! What X's money and rate limits do to outbound replies: credits running
//! out pause one channel (not the others) and end in dead letters after the
//! wait bound, or in sends when credits return; rate limits only ever delay.

mod common;

use std::time::Duration;

use serde_json::json;

use common::start_bridge;
use x_simulator::Fault;
use xbridge_test_support::{assert_valid, spawn_app, TestOptions};

/// Requests X could see while a channel waits `max_wait` for credits: the
/// replies' first tries (at most one per conversation before the gate
/// closes) plus one probe per backoff step.
fn reply(message_id: &str, recipient: &str) -> serde_json::Value {
    xbridge_test_support::reply(message_id, recipient, &format!("reply {message_id}"))
}

fn request_bound(
    conversations: usize,
    max_wait: Duration,
    probe_initial: Duration,
    probe_max: Duration,
) -> usize {
    let mut probes = 0;
    let mut elapsed = Duration::ZERO;
    let mut pause = probe_initial;
    while elapsed <= max_wait {
        elapsed += pause;
        probes += 1;
        pause = (pause * 2).min(probe_max);
    }
    conversations + probes
}

async fn credits_run_out_and_stay_out(fault: Fault, status: u16, problem: &str) {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        credits: "max_wait = \"3s\"\nprobe_initial = \"200ms\"\nprobe_max = \"800ms\"\n".into(),
        ..TestOptions::default()
    })
    .await;
    app.simulator.set_fault(&app.user_id("acme"), fault);
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    // Two conversations on the dry channel, three replies.
    crm.publish_reply("acme", &reply("c-1", "111")).await;
    crm.publish_reply("acme", &reply("c-2", "111")).await;
    crm.publish_reply("acme", &reply("c-3", "222")).await;
    app.wait_for_requests("acme", 1).await;

    // The other channel keeps sending while acme waits.
    crm.publish_reply("beta", &reply("b-1", "333")).await;
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "b-1");
    assert_eq!(event.body["type"], "message.sent");
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    let mut dead = Vec::new();
    for _ in 0..3 {
        let letter = crm.next_dead_letter().await;
        assert_eq!(letter.reason(), "credits_exhausted");
        assert_eq!(letter.headers.channel.as_deref(), Some("acme"));
        assert_eq!(letter.headers.http_status, Some(status));
        assert_eq!(letter.headers.problem_type.as_deref(), Some(problem));
        dead.push(
            serde_json::from_slice::<serde_json::Value>(&letter.body).unwrap()["message_id"]
                .clone(),
        );
    }
    dead.sort_by_key(|v| v.to_string());
    assert_eq!(dead, [json!("c-1"), json!("c-2"), json!("c-3")]);
    for event in crm.events(3).await {
        assert_valid("message-failed", &event.body);
        assert_eq!(event.body["reason"], "credits_exhausted");
        assert_eq!(event.routing_key, "acme.message.failed");
    }

    let requests = app.simulator.requests_for(&app.user_id("acme")).len();
    let bound = request_bound(
        2,
        Duration::from_secs(3),
        Duration::from_millis(200),
        Duration::from_millis(800),
    );
    assert!(
        requests <= bound,
        "{requests} requests while out of credits; at most {bound} expected"
    );
    assert!(app.simulator.sent_dms_for(&app.user_id("acme")).is_empty());
    assert_eq!(app.wait_for_dms("beta", 1).await.len(), 1);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_credits_replies_wait_then_dead_letter_while_other_channels_send() {
    credits_run_out_and_stay_out(Fault::CreditsDepleted, 402, "credits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_credits_body_is_recognised_too() {
    credits_run_out_and_stay_out(Fault::PaymentRequired, 402, "credits-depleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_cap_429_is_treated_as_credits_not_as_a_rate_limit() {
    credits_run_out_and_stay_out(Fault::UsageCapped, 429, "usage-capped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_credits_return_during_the_wait_every_reply_is_sent() {
    let app = spawn_app(TestOptions::default()).await; // max_wait 15 minutes
    let user = app.user_id("acme");
    app.simulator.set_fault(&user, Fault::CreditsDepleted);
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    for i in 1..=3 {
        crm.publish_reply("acme", &reply(&format!("w-{i}"), "111"))
            .await;
    }
    // The first try and at least one probe failed: the channel is paused.
    app.wait_for_requests("acme", 2).await;
    app.simulator.clear_faults(&user);

    let mut ids: Vec<String> = crm
        .events(3)
        .await
        .into_iter()
        .inspect(|e| assert_eq!(e.body["type"], "message.sent"))
        .map(|e| e.body["message_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["w-1", "w-2", "w-3"]);
    // The CRM was told the channel stopped and started again.
    let paused = crm.next_channel_state().await;
    assert_valid("channel-state", &paused.body);
    assert_eq!(paused.routing_key, "acme.channel.state");
    assert_eq!(paused.body["state"], "credits_exhausted");
    let resumed = crm.next_channel_state().await;
    assert_eq!(resumed.body["state"], "ok");
    let texts: Vec<String> = app
        .wait_for_dms("acme", 3)
        .await
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(
        texts,
        ["reply w-1", "reply w-2", "reply w-3"],
        "in order, once each"
    );
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_for_the_reset_then_sends_and_dead_letters_nothing() {
    let app = spawn_app(TestOptions::default()).await;
    let account = app.account("acme").clone();
    app.simulator.set_fault(
        &account.user_id,
        Fault::RateLimitWindow {
            limit: 1,
            window_secs: 2,
        },
    );

    // Someone else (another tool on the same account) used up the window.
    let other_client = xbridge_x_api::XClient::new(
        xbridge_x_api::XClientConfig {
            base_url: app.simulator.base_url(),
            request_timeout: Duration::from_secs(5),
            ..xbridge_x_api::XClientConfig::default()
        },
        xbridge_x_api::UserCredentials {
            consumer_key: account.consumer_key.clone().into(),
            consumer_secret: account.consumer_secret.clone().into(),
            access_token: account.access_token.clone().into(),
            access_token_secret: account.access_token_secret.clone().into(),
        },
    )
    .unwrap();
    other_client
        .send_dm(
            &xbridge_x_api::DmTarget::Participant("999".into()),
            "from elsewhere",
        )
        .await
        .expect("the window's only request");

    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply("r-1", "111")).await;

    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "r-1");
    assert_eq!(event.body["type"], "message.sent");
    // Exactly one 429: after it, nothing was sent before the reset (a request
    // before the reset would have been refused too).
    let statuses: Vec<u16> = app
        .simulator
        .requests_for(&account.user_id)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [201, 429, 201]);
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);
    // The CRM heard that the channel was held, until when, and that it recovered.
    let limited = crm.next_channel_state().await;
    assert_valid("channel-state", &limited.body);
    assert_eq!(limited.body["state"], "rate_limited");
    assert!(limited.body["until"].is_string(), "{}", limited.body);
    assert_eq!(crm.next_channel_state().await.body["state"], "ok");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_at_the_allowed_rate_without_429s() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.user_id("acme");
    app.simulator.set_fault(
        &user,
        Fault::RateLimitWindow {
            limit: 2,
            window_secs: 1,
        },
    );
    // The bridge was down while the CRM queued replies to five customers: they
    // all arrive at once when it starts, before it knows X's window.
    start_bridge(&app).await.stop().await;
    let mut crm = app.crm().await;
    for i in 1..=5 {
        crm.publish_reply("acme", &reply(&format!("b-{i}"), &format!("{i}00")))
            .await;
    }
    let bridge = start_bridge(&app).await;

    let sent = crm.events(5).await;
    assert!(sent.iter().all(|e| e.body["type"] == "message.sent"));
    let statuses: Vec<u16> = app
        .simulator
        .requests_for(&user)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [201; 5], "paced by the headers, never refused");

    bridge.stop().await;
    app.cleanup().await;
}
