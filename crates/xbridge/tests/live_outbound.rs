//! Replies on channels that change while the bridge runs (issue 14): a
//! channel added is consumed, one removed stops after its in-flight replies
//! and keeps what is queued for it, a rotated token signs the requests from
//! then on, a paused channel holds its replies; the other channels never
//! notice (no RabbitMQ session restarts). Real RabbitMQ, simulated X.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use secrecy::SecretString;

use common::live::{crm_channel, start_serving, start_serving_with, wait_for_state};
use x_simulator::{Account, Fault};
use xbridge_core::live_channels::LiveChannel;
use xbridge_test_support::{reply, spawn_app, Crm, TestOptions};

fn options(channels: &[&str]) -> TestOptions {
    TestOptions {
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        ..TestOptions::default()
    }
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

fn texts(app: &xbridge_test_support::TestApp, channel: &str) -> Vec<String> {
    app.simulator
        .sent_dms_for(&app.user_id(channel))
        .into_iter()
        .map(|dm| dm.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_added_at_run_time_sends_replies_and_the_crm_hears_of_it() {
    let app = spawn_app(options(&["acme", "beta"])).await;
    let running = start_serving(&app, &["acme"]).await;
    let mut crm = app.crm().await;

    running.live.upsert(crm_channel(&app, "beta"));
    let state = wait_for_state(&mut crm, "beta", "ok").await;
    assert_eq!(state.routing_key, "beta.channel.state");

    crm.publish_reply("beta", &reply("beta-1", "944480690", "from a new account"))
        .await;
    let dms = app.wait_for_dms("beta", 1).await;
    assert_eq!(dms[0].text, "from a new account");
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent");
    assert_eq!(event.body["channel"], "beta");
    assert_eq!(event.body["message_id"], "beta-1");

    // acme was served all along, on the same session.
    crm.publish_reply("acme", &reply("acme-1", "944480690", "still here"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["acme-1"]);
    assert!(
        !running.bridge.ready.has_changed().unwrap(),
        "no RabbitMQ session restarted"
    );

    running.bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_removed_with_replies_in_flight_loses_none_and_sends_none_twice() {
    let app = spawn_app(options(&["acme"])).await;
    let running = start_serving(&app, &["acme"]).await;
    let mut crm = app.crm().await;
    let queue = app.names.outgoing_queue("acme");

    // X takes each DM at once but answers late: the first reply is in flight
    // when the channel goes, the others of its conversation wait behind it.
    app.simulator
        .set_fault(&app.user_id("acme"), Fault::Latency { millis: 1500 });
    for i in 1..=4 {
        let text = format!("reply {i}");
        crm.publish_reply("acme", &reply(&format!("r{i}"), "944480690", &text))
            .await;
    }
    app.wait_for_dms("acme", 1).await;
    let removed = running.live.remove("acme").expect("acme was served");
    wait_for_state(&mut crm, "acme", "removed").await;
    app.simulator.clear_faults(&app.user_id("acme"));

    // The reply in flight was settled: sent once, and the CRM told.
    assert_eq!(sent_ids(&mut crm, 1).await, ["r1"]);
    // Replies published now stay in the channel's queue with the ones the
    // bridge held; none is sent, none dead-lettered.
    for i in 5..=6 {
        let text = format!("reply {i}");
        crm.publish_reply("acme", &reply(&format!("r{i}"), "944480690", &text))
            .await;
    }
    crm.wait_for_depth(&queue, 5).await;
    assert_eq!(texts(&app, "acme"), ["reply 1"]);

    // Added back, it sends each of them once, in the order published.
    running.live.upsert(removed);
    wait_for_state(&mut crm, "acme", "ok").await;
    assert_eq!(sent_ids(&mut crm, 5).await, ["r2", "r3", "r4", "r5", "r6"]);
    // A last reply behind them: once it is sent, nothing else is coming.
    crm.publish_reply("acme", &reply("r7", "944480690", "reply 7"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["r7"]);
    let expected: Vec<String> = (1..=7).map(|i| format!("reply {i}")).collect();
    assert_eq!(texts(&app, "acme"), expected);
    assert!(!running.bridge.ready.has_changed().unwrap());

    running.bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_still_in_flight_when_the_grace_runs_out_is_not_sent_again() {
    let app = spawn_app(options(&["acme"])).await;
    let running = start_serving_with(&app, &["acme"], |settings| {
        settings.outbound.shutdown_grace = std::time::Duration::from_millis(300);
    })
    .await;
    let mut crm = app.crm().await;
    // X takes the DM at once and answers long after the grace.
    app.simulator
        .set_fault(&app.user_id("acme"), Fault::Latency { millis: 5000 });
    crm.publish_reply("acme", &reply("g1", "944480690", "slow 1"))
        .await;
    crm.publish_reply("acme", &reply("g2", "944480690", "slow 2"))
        .await;
    app.wait_for_dms("acme", 1).await;
    let removed = running.live.remove("acme").expect("acme was served");
    wait_for_state(&mut crm, "acme", "removed").await;
    app.simulator.clear_faults(&app.user_id("acme"));
    // Both back in the queue, the one X took among them.
    crm.wait_for_depth(&app.names.outgoing_queue("acme"), 2)
        .await;

    // Added back: the one X took is found there, not sent again.
    running.live.upsert(removed);
    assert_eq!(sent_ids(&mut crm, 2).await, ["g1", "g2"]);
    assert_eq!(texts(&app, "acme"), ["slow 1", "slow 2"]);

    running.bridge.stop().await;
    app.cleanup().await;
}

/// `account` with a second access token of its own (same user, same App).
fn rotated(account: &Account) -> Account {
    let fresh = Account::generate("rotated");
    Account {
        access_token: format!("{}-{}", account.user_id, fresh.access_token_secret),
        access_token_secret: fresh.consumer_secret,
        ..account.clone()
    }
}

/// Publishes `count` replies on `channel` numbered from `from`, spread over
/// four conversations.
async fn publish_batch(crm: &Crm, channel: &str, from: usize, count: usize) {
    for i in from..from + count {
        let recipient = format!("94448069{}", i % 4);
        let body = reply(
            &format!("{channel}-{i}"),
            &recipient,
            &format!("{channel} {i}"),
        );
        crm.publish_reply(channel, &body).await;
    }
}

/// The `oauth_token` of each DM send of `user_id` X took, by conversation,
/// in the order X answered them.
fn tokens_by_conversation(
    app: &xbridge_test_support::TestApp,
    user_id: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut tokens: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in app.simulator.requests_for(user_id) {
        if request.method == "POST" && request.path.ends_with("/messages") {
            assert_eq!(request.status, 201, "{request:?}");
            let token = request.oauth_token.expect("signed with OAuth 1.0a");
            tokens.entry(request.path).or_default().push(token);
        }
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_while_replies_stream_signs_every_request_after_it() {
    let app = spawn_app(options(&["acme", "beta"])).await;
    let running = start_serving(&app, &["acme", "beta"]).await;
    let mut crm = app.crm().await;
    let old = app.account("acme").clone();
    let new = rotated(&old);
    // X accepts both while the bridge changes over.
    app.simulator.add_token(new.clone());

    publish_batch(&crm, "acme", 0, 100).await;
    publish_batch(&crm, "beta", 0, 100).await;
    app.wait_for_dms("acme", 30).await;
    let before = running.live.get("acme").unwrap();
    let mut settings = (*before.settings).clone();
    settings.access_token = SecretString::from(new.access_token.clone());
    settings.access_token_secret = SecretString::from(new.access_token_secret.clone());
    running.live.upsert(LiveChannel {
        settings: Arc::new(settings),
        revision: before.revision + 1,
        ..before
    });
    publish_batch(&crm, "acme", 100, 100).await;
    publish_batch(&crm, "beta", 100, 100).await;

    // Every reply sent exactly once, on both channels.
    let ids = sent_ids(&mut crm, 400).await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400);
    // One more on acme, published after all that: signed with the new token.
    crm.publish_reply("acme", &reply("acme-last", "944480690", "acme last"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["acme-last"]);
    for channel in ["acme", "beta"] {
        let sent = texts(&app, channel);
        let unique: HashSet<&String> = sent.iter().collect();
        assert_eq!(unique.len(), sent.len(), "{channel}: a DM went out twice");
    }
    assert_eq!(texts(&app, "acme").len(), 201);
    assert_eq!(texts(&app, "beta").len(), 200);

    // In each conversation (sent one at a time) the old token signed the
    // requests before the change and the new one every request after it.
    let by_conversation = tokens_by_conversation(&app, &old.user_id);
    let all: Vec<&String> = by_conversation.values().flatten().collect();
    assert!(
        all.contains(&&old.access_token),
        "some sent before the change"
    );
    assert!(
        all.contains(&&new.access_token),
        "some sent after the change"
    );
    for (conversation, tokens) in &by_conversation {
        let first_new = tokens.iter().position(|t| *t == new.access_token);
        let after = &tokens[first_new.unwrap_or(tokens.len())..];
        assert!(
            after.iter().all(|t| *t == new.access_token),
            "{conversation}: the old token signed a request after the new one did"
        );
    }
    let last = app
        .simulator
        .requests_for(&old.user_id)
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path.ends_with("/messages"));
    assert_eq!(last.and_then(|r| r.oauth_token), Some(new.access_token));
    // The other channel signed with its own token throughout, unaffected.
    let beta = app.account("beta");
    let beta_tokens = tokens_by_conversation(&app, &beta.user_id);
    assert!(beta_tokens
        .values()
        .flatten()
        .all(|t| *t == beta.access_token));
    assert_eq!(app.simulator.counters().unauthorized, 0);
    assert!(!running.bridge.ready.has_changed().unwrap());

    running.bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_channel_holds_its_replies_and_sends_them_in_order_on_resume() {
    let app = spawn_app(options(&["acme"])).await;
    let running = start_serving(&app, &["acme"]).await;
    let mut crm = app.crm().await;

    assert!(running.live.set_paused("acme", true));
    let paused = wait_for_state(&mut crm, "acme", "paused").await;
    assert_eq!(paused.routing_key, "acme.channel.state");
    for i in 1..=3 {
        let text = format!("held {i}");
        crm.publish_reply("acme", &reply(&format!("p{i}"), "944480690", &text))
            .await;
    }
    crm.wait_for_depth(&app.names.outgoing_queue("acme"), 3)
        .await;
    assert!(texts(&app, "acme").is_empty(), "nothing sent while paused");

    assert!(running.live.set_paused("acme", false));
    wait_for_state(&mut crm, "acme", "ok").await;
    assert_eq!(sent_ids(&mut crm, 3).await, ["p1", "p2", "p3"]);
    assert_eq!(texts(&app, "acme"), ["held 1", "held 2", "held 3"]);
    assert!(!running.bridge.ready.has_changed().unwrap());

    running.bridge.stop().await;
    app.cleanup().await;
}

/// Ends the bridge's outbound session from the broker's side, without
/// touching any other test's connections: the unrouted queue it consumes is
/// deleted (the broker cancels that consumer), and the session starts over.
async fn end_the_outbound_session(app: &xbridge_test_support::TestApp) {
    let connection =
        lapin::Connection::connect(&app.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_delete(
            app.names.unrouted.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("the unrouted queue is deleted");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_changed_at_run_time_stay_as_they_are_after_a_reconnect() {
    let app = spawn_app(options(&["acme", "beta"])).await;
    let mut running = start_serving(&app, &["acme"]).await;
    let mut crm = app.crm().await;
    running.live.upsert(crm_channel(&app, "beta"));
    wait_for_state(&mut crm, "beta", "ok").await;
    running.live.set_paused("acme", true);
    wait_for_state(&mut crm, "acme", "paused").await;

    end_the_outbound_session(&app).await;
    let ready = &mut running.bridge.ready;
    tokio::time::timeout(xbridge_test_support::PATIENCE, ready.changed())
        .await
        .expect("the session ends")
        .expect("readiness");
    tokio::time::timeout(xbridge_test_support::PATIENCE, ready.wait_for(|r| *r))
        .await
        .expect("the bridge reconnects")
        .expect("readiness");

    // The channel added is consumed on the new session; the paused one is not.
    crm.publish_reply("beta", &reply("b1", "944480690", "beta after"))
        .await;
    crm.publish_reply("acme", &reply("a1", "944480690", "acme held"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["b1"]);
    crm.wait_for_depth(&app.names.outgoing_queue("acme"), 1)
        .await;
    assert!(texts(&app, "acme").is_empty());
    running.live.set_paused("acme", false);
    assert_eq!(sent_ids(&mut crm, 1).await, ["a1"]);
    assert_eq!(texts(&app, "acme"), ["acme held"]);

    running.bridge.stop().await;
    app.cleanup().await;
}

/// A queue RabbitMQ refuses for one channel (here a classic queue where the
/// bridge declares a quorum one) used to end the outbound session of every
/// channel, and every reconnect met it again: no reply went out at all. Now
/// that channel alone is `broker_refused` and tried again; once the operator
/// deletes the wrong queue it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_queue_rabbitmq_refuses_waits_alone_and_is_served_once_fixed() {
    let app = spawn_app(options(&["acme", "beta"])).await;
    let wrong_queue = app.names.outgoing_queue("beta");
    let broker =
        lapin::Connection::connect(&app.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
    let amqp = broker.create_channel().await.expect("a channel");
    amqp.queue_declare(
        wrong_queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("a classic queue of the channel's name");
    let running = start_serving(&app, &["acme", "beta"]).await;
    let mut crm = app.crm().await;

    let refused = wait_for_state(&mut crm, "beta", "broker_refused").await;
    let detail = refused.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&wrong_queue), "{detail}");
    crm.publish_reply("acme", &reply("acme-1", "944480690", "acme is served"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["acme-1"]);

    amqp.queue_delete(wrong_queue.as_str().into(), Default::default())
        .await
        .expect("the operator deletes the wrong queue");
    wait_for_state(&mut crm, "beta", "ok").await;
    crm.publish_reply("beta", &reply("beta-1", "944480690", "beta too, now"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["beta-1"]);
    assert_eq!(texts(&app, "beta"), ["beta too, now"]);
    assert!(
        !running.bridge.ready.has_changed().unwrap(),
        "no RabbitMQ session restarted"
    );

    running.bridge.stop().await;
    broker.close(0, "done".into()).await.ok();
    app.cleanup().await;
}
