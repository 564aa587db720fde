//! The inbound path end to end: customers' DMs reach the CRM's queue once,
//! by X's webhook, by polling, or both, with the contact's identity. Real
//! RabbitMQ, simulated X (which registers the webhook with a real CRC and
//! delivers signed Account Activity payloads).

mod common;

use std::collections::HashSet;

use common::{start_bridge, start_bridge_with, RunningBridge};
use x_simulator::{Account, Customer, Fault, MediaSpec};
use xbridge_test_support::{
    assert_valid, reply, spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE,
};

fn webhook_options(mode: &str) -> TestOptions {
    TestOptions {
        inbound:
            "listen = \"127.0.0.1:0\"\npoll_interval = \"50ms\"\nsafety_poll_interval = \"100ms\"\n"
                .into(),
        inbound_mode: Some(mode.into()),
        ..TestOptions::default()
    }
}

async fn subscribe(app: &TestApp, bridge: &RunningBridge, channel: &str) {
    let addr = bridge.webhook_addr.expect("the webhook is served");
    app.subscribe_webhook(channel, &format!("http://{addr}/webhooks/{channel}"))
        .await;
}

/// The next event of type `kind`, skipping others (status events of sends).
async fn next_of(crm: &mut Crm, kind: &str) -> Event {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == kind {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_dm_reaches_the_crm_once_with_the_contact_and_without_echoes() {
    let app = spawn_app(webhook_options("webhook")).await;
    let bridge = start_bridge(&app).await;
    subscribe(&app, &bridge, "acme").await;
    let mut crm = app.crm().await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");

    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Where is my order?", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_valid("message-received", &event.body);
    assert_eq!(event.routing_key, "acme.message.received");
    let body = &event.body;
    assert_eq!(body["event_id"], dm.id.as_str());
    assert_eq!(body["channel"], "acme");
    assert_eq!(body["text"], "Where is my order?");
    assert_eq!(body["sender"]["id"], jane.user_id.as_str());
    assert_eq!(body["sender"]["username"], jane.username.as_str());
    assert_eq!(body["sender"]["name"], jane.name.as_str());
    assert_eq!(
        body["sender"]["avatar_url"],
        jane.profile_image_url.as_str()
    );
    assert_eq!(body["recipient_id"], user.as_str());
    assert_eq!(body["received_via"], "webhook");
    let created_at =
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(created_at, dm.created_at, "X's time, not the arrival time");

    // A photo arrives as an attachment, without the t.co link in the text.
    let photo =
        app.simulator
            .customer_dm(&user, &jane, "Here is the photo", Some(MediaSpec::photo()));
    let event = next_of(&mut crm, "message.received").await;
    assert_valid("message-received", &event.body);
    assert_eq!(event.body["event_id"], photo.id.as_str());
    assert_eq!(event.body["text"], "Here is the photo");
    assert_eq!(event.body["attachments"][0]["kind"], "photo");
    // Its URL is the bridge's own, and serves X's bytes without X credentials.
    let url = event.body["attachments"][0]["url"].as_str().unwrap();
    let addr = bridge.webhook_addr.expect("the webhook is served");
    assert!(
        url.starts_with(&format!("http://{addr}/media/acme/")),
        "{url}"
    );
    let media = reqwest::get(url).await.expect("the media proxy answers");
    assert_eq!(media.status(), 200);
    let x_url = photo.attachment.as_ref().unwrap().url.clone();
    let (content_type, bytes) = app.simulator.media_content(&x_url).unwrap();
    assert_eq!(media.headers()["content-type"], content_type.as_str());
    assert_eq!(media.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // X delivers the same event twice more: nothing new reaches the CRM.
    let before = app.simulator.deliveries().len();
    assert!(app.simulator.deliver_again(&dm.id) >= 1);
    assert!(app.simulator.deliver_again(&dm.id) >= 1);
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 2))
        .await
        .expect("redeliveries answered");

    // The bridge's own reply comes back from X as an echo: dropped.
    let deliveries = app.simulator.deliveries().len();
    crm.publish_reply("acme", &reply("r-1", &jane.user_id, "It ships today."))
        .await;
    let sent = next_of(&mut crm, "message.sent").await;
    let echo_id = sent.body["dm_event_id"].as_str().unwrap().to_owned();
    // Wait for the echo's delivery itself (other deliveries may finish later).
    let mut seen = deliveries;
    let echo = loop {
        let all = app.simulator.deliveries();
        if let Some(echo) = all
            .iter()
            .find(|d| d.event_id.as_deref() == Some(echo_id.as_str()))
        {
            break echo.clone();
        }
        seen = seen.max(all.len()) + 1;
        tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(seen))
            .await
            .expect("the echo was delivered");
    };
    assert_eq!(echo.status, Some(200));

    // The next thing the CRM hears about is the customer's next DM.
    let next = app.simulator.customer_dm(&user, &jane, "Thanks!", None);
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.received", "{}", event.body);
    assert_eq!(event.body["event_id"], next.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

/// A webhook POST in flight when the bridge is told to stop (SIGTERM, a rollout)
/// is published and answered 200: the bridge keeps its RabbitMQ connection until
/// the requests the webhook lets finish have finished, instead of answering them
/// 503 (or losing the publish's confirm) and having X deliver them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_post_in_flight_at_shutdown_is_published_and_answered_200() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let app = spawn_app(webhook_options("webhook")).await;
    let bridge = start_bridge(&app).await;
    subscribe(&app, &bridge, "acme").await;
    let mut crm = app.crm().await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");

    // A body as X sends it, for an event X has not delivered: the body of a
    // delivered one with another event id, signed with the channel's secret.
    let before = app.simulator.deliveries().len();
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Still there?", None);
    next_of(&mut crm, "message.received").await;
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 1))
        .await
        .expect("X records its delivery");
    let template = app
        .simulator
        .deliveries()
        .into_iter()
        .find(|d| d.event_id.as_deref() == Some(dm.id.as_str()))
        .expect("X delivered the DM");
    let fresh_id = (dm.id.parse::<u64>().expect("a numeric id") + 1_000_000).to_string();
    let body = template.body.replace(&dm.id, &fresh_id);
    let settings = xbridge_core::config::Settings::from_toml(&app.config_toml()).unwrap();
    let secret = &settings.channel("acme").unwrap().consumer_secret;
    let signature = xbridge_inbound::webhook::auth::crc_response_token(secret, &body);

    // The request is in the bridge's hands: it asked for the body (100 Continue).
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let mut x = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/acme HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         {}: {signature}\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        x_simulator::SIGNATURE_HEADER,
        body.len()
    );
    x.write_all(head.as_bytes()).await.unwrap();
    let interim = read_head(&mut x).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");

    // Told to stop; the outbound side has let go of RabbitMQ already.
    bridge.begin_stop();
    let mut outbound = bridge.ready.clone();
    tokio::time::timeout(PATIENCE, outbound.wait_for(|ready| !*ready))
        .await
        .expect("the outbound side stops")
        .unwrap();

    x.write_all(body.as_bytes()).await.unwrap();
    let answer = read_head(&mut x).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["event_id"], fresh_id.as_str());

    let mut rest = Vec::new();
    let _ = x.read_to_end(&mut rest).await;
    bridge.stop().await;
    app.cleanup().await;
}

/// The status line and headers of the next response on `stream`.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("the bridge answers")
            .unwrap();
        assert_eq!(
            read,
            1,
            "the connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_sent_while_the_bridge_was_down_are_caught_up_by_polling_once_in_order() {
    let app = spawn_app(webhook_options("poll")).await;
    let user = app.user_id("acme");
    // The first run sets the poll cursor at "now".
    let bridge = start_bridge(&app).await;
    app.wait_for_reads("acme", 1).await;
    bridge.stop().await;

    let customers: Vec<Customer> = (0..5)
        .map(|i| Customer::generate(&format!("c{i}")))
        .collect();
    let mut sent = Vec::new();
    for i in 0..250 {
        let dm = app
            .simulator
            .customer_dm(&user, &customers[i % 5], &format!("dm {i}"), None);
        sent.push(dm.id);
    }

    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let mut received = Vec::new();
    for _ in 0..250 {
        let event = next_of(&mut crm, "message.received").await;
        assert_eq!(event.body["received_via"], "poll");
        received.push(event.body["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(received, sent, "all 250, once each, oldest first");

    // And nothing more: the next event is a new DM.
    let late = app
        .simulator
        .customer_dm(&user, &customers[0], "late", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["event_id"], late.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_three_times_and_also_polled_reaches_the_crm_once() {
    let app = spawn_app(webhook_options("both")).await;
    let user = app.user_id("acme");
    let bridge = start_bridge(&app).await;
    subscribe(&app, &bridge, "acme").await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane");

    let dm = app.simulator.customer_dm(&user, &jane, "once please", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["event_id"], dm.id.as_str());
    app.simulator.deliver_again(&dm.id);
    app.simulator.deliver_again(&dm.id);
    // The safety-net poll has read past this event at least once more.
    let reads = app.simulator.requests_for(&user).len();
    app.wait_for_requests("acme", reads + 2).await;

    let marker = app.simulator.customer_dm(&user, &jane, "marker", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(
        event.body["event_id"],
        marker.id.as_str(),
        "no second copy of the first DM"
    );

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credits_webhook_dms_keep_flowing_and_polling_pauses_then_catches_up() {
    let app = spawn_app(TestOptions {
        channels: vec!["hook".into(), "pull".into()],
        ..webhook_options("both")
    })
    .await;
    let bridge = start_bridge(&app).await;
    subscribe(&app, &bridge, "hook").await;
    let mut crm = app.crm().await;
    let (hook, pull) = (app.user_id("hook"), app.user_id("pull"));
    let jane = Customer::generate("jane");
    // Let the pull channel's first poll set its cursor before credits run out.
    app.wait_for_reads("pull", 1).await;
    app.simulator.set_fault(&hook, Fault::CreditsDepleted);
    app.simulator.set_fault(&pull, Fault::CreditsDepleted);

    let by_webhook = app.simulator.customer_dm(&hook, &jane, "via webhook", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["event_id"], by_webhook.id.as_str());

    // The pull channel (not subscribed) only polls, and its reads get 402.
    let missed = app.simulator.customer_dm(&pull, &jane, "via poll", None);
    let requests = app.simulator.requests_for(&pull).len();
    app.wait_for_requests("pull", requests + 2).await;
    assert!(app
        .simulator
        .requests_for(&pull)
        .iter()
        .skip(requests)
        .all(|r| r.status == 402));
    app.simulator.clear_faults(&pull);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["event_id"], missed.id.as_str());
    assert_eq!(event.body["received_via"], "poll");

    let ids: HashSet<String> = [by_webhook.id, missed.id].into_iter().collect();
    assert_eq!(ids.len(), 2);
    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stays_within_xs_read_limit() {
    // X allows 15 DM reads per 15 minutes; the simulator compresses the
    // window to 2 seconds, and the poller is told to poll as often as it can.
    let app = spawn_app(TestOptions {
        inbound: "poll_interval = \"10ms\"\n".into(),
        inbound_mode: Some("poll".into()),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    app.simulator.set_fault(
        &user,
        Fault::ReadRateLimitWindow {
            limit: 15,
            window_secs: 2,
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane");

    // Well past one window's worth of reads, with DMs arriving meanwhile.
    app.wait_for_reads("acme", 10).await;
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "during the window", None);
    app.wait_for_reads("acme", 20).await;
    let later = app.simulator.customer_dm(&user, &jane, "after it", None);
    app.wait_for_reads("acme", 35).await;

    let statuses: Vec<u16> = app
        .simulator
        .requests_for(&user)
        .iter()
        .map(|r| r.status)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "no 429: {statuses:?}");
    let first = next_of(&mut crm, "message.received").await;
    let second = next_of(&mut crm, "message.received").await;
    assert_eq!(first.body["event_id"], dm.id.as_str());
    assert_eq!(second.body["event_id"], later.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_can_backfill_a_configured_number_of_days() {
    let app = spawn_app(TestOptions {
        inbound: "poll_interval = \"50ms\"\nbackfill_days = 5\n".into(),
        inbound_mode: Some("poll".into()),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane");
    let now = chrono::Utc::now();
    let old = app.simulator.customer_dm_at(
        &user,
        &jane,
        "ten days ago",
        None,
        now - chrono::Duration::days(10),
    );
    let recent = app.simulator.customer_dm_at(
        &user,
        &jane,
        "two days ago",
        None,
        now - chrono::Duration::days(2),
    );

    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(
        event.body["event_id"],
        recent.id.as_str(),
        "within the backfill"
    );
    let fresh = app.simulator.customer_dm(&user, &jane, "now", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(
        event.body["event_id"],
        fresh.id.as_str(),
        "nothing older than the backfill"
    );
    assert_ne!(old.id, recent.id);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_missing_from_the_payload_is_looked_up_once_and_cached() {
    let app = spawn_app(webhook_options("webhook")).await;
    let bridge = start_bridge(&app).await;
    subscribe(&app, &bridge, "acme").await;
    let mut crm = app.crm().await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_lookup");
    app.simulator.add_customer(jane.clone());
    let webhook_id = app.simulator.webhooks()[0].id.clone();

    // Account Activity payloads without a `users` entry for the sender.
    let payload = |event_id: &str, text: &str| {
        serde_json::json!({
            "for_user_id": user,
            "direct_message_events": [{
                "type": "message_create", "id": event_id, "created_timestamp": "1516403560557",
                "message_create": {"target": {"recipient_id": user}, "sender_id": jane.user_id,
                    "message_data": {"text": text}}
            }]
        })
        .to_string()
    };
    let lookups = || {
        app.simulator
            .requests_for(&user)
            .iter()
            .filter(|r| r.path.starts_with("/2/users/") && r.path != "/2/users/me")
            .count()
    };

    assert_eq!(
        app.simulator
            .deliver_raw(&webhook_id, payload("1000000000000000101", "first"), None)
            .await,
        200
    );
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["sender"]["username"], jane.username.as_str());
    assert_eq!(event.body["sender"]["name"], jane.name.as_str());
    assert_eq!(
        event.body["sender"]["avatar_url"],
        jane.profile_image_url.as_str()
    );
    assert_eq!(lookups(), 1);

    assert_eq!(
        app.simulator
            .deliver_raw(&webhook_id, payload("1000000000000000102", "second"), None)
            .await,
        200
    );
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.body["sender"]["username"], jane.username.as_str());
    assert_eq!(lookups(), 1, "the second DM used the cached profile");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_that_keeps_failing_is_reported_as_paused_until_it_recovers() {
    let app = spawn_app(TestOptions {
        inbound: "poll_interval = \"20ms\"\n".into(),
        inbound_mode: Some("poll".into()),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    app.wait_for_reads("acme", 1).await;
    app.simulator.set_fault(
        &user,
        Fault::ReadServerError {
            status: 503,
            times: None,
        },
    );
    let paused = crm.next_channel_state().await;
    assert_valid("channel-state", &paused.body);
    assert_eq!(paused.body["state"], "polling_paused");
    app.simulator.clear_faults(&user);
    assert_eq!(crm.next_channel_state().await.body["state"], "ok");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_webhook_x_will_not_call_reports_webhook_invalid_until_it_is_registered() {
    let app = spawn_app(TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\nwebhook_check_interval = \"100ms\"\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    })
    .await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    // No webhook is registered for the App yet: X would deliver nothing.
    // (`next_channel_state` skips the `ok` told at startup.)
    let invalid = crm.next_channel_state().await;
    assert_valid("channel-state", &invalid.body);
    assert_eq!(invalid.body["channel"], "acme");
    assert_eq!(invalid.body["state"], "webhook_invalid");
    let detail = invalid.body["detail"].as_str().unwrap();
    assert!(detail.contains("xbridge webhook register"), "{detail}");

    // Registering it (X runs a CRC against the bridge) brings the channel back.
    subscribe(&app, &bridge, "acme").await;
    let ok = crm.next_channel_state().await;
    assert_eq!(ok.body["state"], "ok");

    bridge.stop().await;
    app.cleanup().await;
}

/// Two channels on one X App, as X's Pay Per Use allows (1 webhook, 3 accounts):
/// the App's one webhook is registered at alpha's URL and both accounts subscribe.
fn one_app(configure_user_ids: bool) -> TestOptions {
    TestOptions {
        channels: vec!["alpha".into(), "beta".into()],
        shared_app: true,
        omit_user_id: !configure_user_ids,
        ..webhook_options("webhook")
    }
}

/// Registers alpha's URL as the App's webhook and subscribes `accounts` to it.
async fn subscribe_app(app: &TestApp, bridge: &RunningBridge, accounts: &[&Account]) {
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let id = app
        .register_webhook("alpha", &format!("http://{addr}/webhooks/alpha"))
        .await;
    for account in accounts {
        app.subscribe_account(account, &id).await;
    }
}

/// A DM for beta's account, delivered to alpha's URL, reaches the CRM once as beta's;
/// alpha's own DMs stay alpha's.
async fn dms_of_both_accounts_arrive_through_one_url(configure_user_ids: bool) {
    let app = spawn_app(one_app(configure_user_ids)).await;
    let bridge = start_bridge(&app).await;
    subscribe_app(&app, &bridge, &[app.account("alpha"), app.account("beta")]).await;
    let mut crm = app.crm().await;
    let (alpha, beta) = (app.user_id("alpha"), app.user_id("beta"));
    let jane = Customer::generate("jane");

    let to_beta = app.simulator.customer_dm(&beta, &jane, "hello beta", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_valid("message-received", &event.body);
    assert_eq!(event.routing_key, "beta.message.received");
    assert_eq!(event.body["channel"], "beta");
    assert_eq!(event.body["event_id"], to_beta.id.as_str());
    assert_eq!(event.body["recipient_id"], beta.as_str());
    let delivered = tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(1))
        .await
        .expect("X recorded its delivery");
    let delivery = delivered
        .iter()
        .find(|d| d.event_id.as_deref() == Some(to_beta.id.as_str()))
        .expect("X delivered it");
    assert!(
        delivery.url.ends_with("/webhooks/alpha"),
        "{}",
        delivery.url
    );
    assert_eq!(delivery.status, Some(200));

    // X delivers it again: still once. Then alpha's own customer writes.
    let before = app.simulator.deliveries().len();
    assert_eq!(app.simulator.deliver_again(&to_beta.id), 1);
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 1))
        .await
        .expect("the redelivery is answered");
    let to_alpha = app
        .simulator
        .customer_dm(&alpha, &jane, "hello alpha", None);
    let event = next_of(&mut crm, "message.received").await;
    assert_eq!(event.routing_key, "alpha.message.received");
    assert_eq!(event.body["event_id"], to_alpha.id.as_str());

    // Each account was asked of X once, at startup, for both sides.
    for user in [&alpha, &beta] {
        let asked = app
            .simulator
            .requests_for(user)
            .iter()
            .filter(|r| r.path == "/2/users/me")
            .count();
        assert_eq!(asked, 1, "GET /2/users/me of {user}");
    }

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_for_the_second_account_of_an_app_reaches_the_crm_once_as_its_channels() {
    dms_of_both_accounts_arrive_through_one_url(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_user_ids_the_accounts_are_learnt_from_x_once_and_routed_alike() {
    dms_of_both_accounts_arrive_through_one_url(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_for_an_account_no_channel_is_is_kept_and_counted_not_published() {
    let app = spawn_app(one_app(true)).await;
    // A third account of the App, subscribed to its webhook but no channel of the bridge.
    let gamma = Account::generate_for_app("gamma_support", app.account("alpha"));
    app.simulator.add_account(gamma.clone());
    let bridge = start_bridge_with(&app, "[telemetry]\nlisten = \"127.0.0.1:0\"").await;
    subscribe_app(&app, &bridge, &[app.account("alpha"), &gamma]).await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane");

    let lost = app
        .simulator
        .customer_dm(&gamma.user_id, &jane, "anyone there?", None);
    let letter = crm.next_dead_letter().await;
    assert_eq!(letter.reason(), "unknown_account");
    assert_eq!(letter.headers.channel.as_deref(), Some("alpha"));
    let detail = letter.headers.detail.clone().unwrap_or_default();
    assert!(detail.contains(&gamma.user_id), "{detail}");
    assert_eq!(letter.headers_json()["x-xbridge-direction"], "inbound");
    assert_valid("dead-letter-headers", &letter.headers_json());
    let kept: serde_json::Value = serde_json::from_slice(&letter.body).unwrap();
    assert_eq!(kept["for_user_id"], gamma.user_id.as_str());
    assert_eq!(
        kept["direct_message_events"][0]["id"],
        lost.id.as_str(),
        "kept as X sent it"
    );

    // Published under no channel: the next event is alpha's next DM.
    let marker = app
        .simulator
        .customer_dm(&app.user_id("alpha"), &jane, "marker", None);
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.received", "{}", event.body);
    assert_eq!(event.body["event_id"], marker.id.as_str());

    let ops = bridge.ops_addr.expect("metrics are served");
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "xbridge_webhook_unknown_account_total{channel=\"alpha\"} 1"),
        "{metrics}"
    );

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_that_is_not_the_tokens_account_stops_the_bridge_at_startup() {
    let app = spawn_app(webhook_options("webhook")).await;
    let actual = app.user_id("acme");
    let wrong = "1234567890";
    let toml = app.config_toml().replace(
        &format!("user_id = \"{actual}\""),
        &format!("user_id = \"{wrong}\""),
    );
    let settings = xbridge_core::config::Settings::from_toml(&toml).expect("a valid configuration");
    let error = match xbridge::app::Bridge::build(settings).await {
        Ok(_) => panic!("the bridge must not start"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("channel acme"), "{error}");
    assert!(error.contains(wrong) && error.contains(&actual), "{error}");
    app.cleanup().await;
}
