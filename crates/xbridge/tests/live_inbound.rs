//! Channels added, removed and changed while the bridge runs, as the inbound
//! side sees them: a new account's DMs reach the CRM, by polling and by X's
//! webhook; a removed channel stops polling and, added back, resumes from its
//! cursor; new credentials sign the next poll. Real RabbitMQ, simulated X.

#[path = "common/live_in.rs"]
mod live_in;

use live_in::LiveBridge;
use secrecy::SecretString;
use x_simulator::Customer;
use xbridge_inbound::polling::lease::{PollLease, RENEW_EVERY};
use xbridge_test_support::{spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE};

fn options(channels: &[&str], mode: &str, inbound: &str) -> TestOptions {
    TestOptions {
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        inbound: inbound.to_owned(),
        inbound_mode: Some(mode.to_owned()),
        ..TestOptions::default()
    }
}

const POLLED: &str = "poll_interval = \"50ms\"\n";

/// The next `message.received`, skipping other events (channel states).
async fn next_received(crm: &mut Crm) -> Event {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == "message.received" {
            return event;
        }
    }
}

/// How many DM reads (`GET /2/dm_events`) X answered for `channel`'s account.
fn reads(app: &TestApp, channel: &str) -> usize {
    app.simulator
        .requests_for(&app.user_id(channel))
        .iter()
        .filter(|r| r.path.starts_with("/2/dm_events"))
        .count()
}

/// Waits until `channel`'s poller read X once more than now: a DM written
/// after that is new to its cursor.
async fn one_more_read(app: &TestApp, channel: &str) {
    app.wait_for_reads(channel, reads(app, channel) + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_channel_added_at_run_time_brings_its_customers_dms_once() {
    let app = spawn_app(options(&["acme", "late"], "poll", POLLED)).await;
    let bridge = LiveBridge::start_without(&app, &["late"]).await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane_doe");
    assert_eq!(reads(&app, "late"), 0, "not served yet");

    bridge.upsert(bridge.channel("late"));
    one_more_read(&app, "late").await;
    let dm = app
        .simulator
        .customer_dm(&app.user_id("late"), &jane, "Hello, new account", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.routing_key, "late.message.received");
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["received_via"], "poll");

    // Once: the next event is the next DM, not the first one again.
    one_more_read(&app, "late").await;
    let next = app
        .simulator
        .customer_dm(&app.user_id("late"), &jane, "Still there?", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], next.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_channel_added_at_run_time_receives_its_accounts_webhook_posts_once() {
    let mut options = options(&["acme", "late"], "webhook", "listen = \"127.0.0.1:0\"\n");
    // The bridge asks X who the new channel is: the sign that it was added.
    options.omit_user_id = true;
    let app = spawn_app(options).await;
    let bridge = LiveBridge::start_without(&app, &["late"]).await;
    let mut crm = app.crm().await;
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let jane = Customer::generate("jane_doe");

    bridge.upsert(bridge.channel("late"));
    app.wait_for_requests("late", 1).await;
    // X registers the URL only once the bridge answers its CRC with the new
    // channel's secret.
    app.subscribe_webhook("late", &format!("http://{addr}/webhooks/late"))
        .await;
    let dm = app
        .simulator
        .customer_dm(&app.user_id("late"), &jane, "Hello by webhook", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.routing_key, "late.message.received");
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["received_via"], "webhook");

    // X delivers it again: nothing new; the next event is the next DM.
    let before = app.simulator.deliveries().len();
    assert!(app.simulator.deliver_again(&dm.id) >= 1);
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 1))
        .await
        .expect("the redelivery answered");
    let next = app
        .simulator
        .customer_dm(&app.user_id("late"), &jane, "Thanks", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], next.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_channel_stops_polling_and_added_back_resumes_from_its_cursor() {
    let app = spawn_app(options(&["acme", "gone"], "poll", POLLED)).await;
    let bridge = LiveBridge::start_without(&app, &[]).await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane_doe");
    let gone = app.user_id("gone");
    one_more_read(&app, "gone").await;
    let first = app.simulator.customer_dm(&gone, &jane, "Before", None);
    assert_eq!(
        next_received(&mut crm).await.body["event_id"],
        first.id.as_str()
    );

    bridge.live.remove("gone");
    // The poll lease comes free only once the bridge's poller stopped.
    let broker = lapin::Connection::connect(&app.amqp_url(), Default::default())
        .await
        .expect("RabbitMQ");
    let queue = bridge.settings.amqp.topology.poll_lease_queue("gone");
    let mut lease = PollLease::contend(&broker, &queue, "gone", RENEW_EVERY)
        .await
        .expect("contend for the lease");
    tokio::time::timeout(PATIENCE, lease.acquired())
        .await
        .expect("the bridge lets go of the lease")
        .expect("the lease");
    lease.release().await;
    let stopped_at = reads(&app, "gone");
    let missed = app.simulator.customer_dm(&gone, &jane, "While away", None);
    // The other channel polls on: three of its polls, none of the removed one.
    app.wait_for_reads("acme", reads(&app, "acme") + 3).await;
    assert_eq!(reads(&app, "gone"), stopped_at, "no poll after the removal");

    bridge.upsert(bridge.channel("gone"));
    let event = next_received(&mut crm).await;
    assert_eq!(
        event.body["event_id"],
        missed.id.as_str(),
        "from the cursor"
    );
    one_more_read(&app, "gone").await;
    let after = app.simulator.customer_dm(&gone, &jane, "After", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], after.id.as_str(), "no duplicate");

    drop(broker);
    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_credentials_sign_the_next_poll() {
    let app = spawn_app(options(&["acme"], "poll", POLLED)).await;
    let bridge = LiveBridge::start_without(&app, &[]).await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane_doe");
    one_more_read(&app, "acme").await;

    // The token is regenerated at X: the old one is refused from now on.
    let mut rotated = app.account("acme").clone();
    rotated.access_token = format!(
        "{}-rotated{}",
        rotated.user_id,
        uuid::Uuid::new_v4().simple()
    );
    rotated.access_token_secret = format!("secret{}", uuid::Uuid::new_v4().simple());
    app.simulator.add_account(rotated.clone());
    let before = reads(&app, "acme");
    let dm = app
        .simulator
        .customer_dm(&rotated.user_id, &jane, "Read me with the new token", None);

    let mut channel = bridge.channel("acme");
    channel.access_token = SecretString::from(rotated.access_token.clone());
    channel.access_token_secret = SecretString::from(rotated.access_token_secret.clone());
    bridge.upsert(channel);
    // Only a read signed with the new token is X's account's, and finds the DM.
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert!(reads(&app, "acme") > before);
    // And the polls after it: all X's account's, none refused.
    let refused = || {
        app.simulator
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/2/dm_events") && r.user_id.is_none())
            .count()
    };
    let refused_at_change = refused();
    one_more_read(&app, "acme").await;
    one_more_read(&app, "acme").await;
    assert_eq!(refused(), refused_at_change, "no poll with the old token");

    bridge.stop().await;
    app.cleanup().await;
}

/// A removed channel's webhook URL is answered as a name no channel has (404),
/// and a body for its account at the URL of another channel of its App is
/// kept as a dead letter, as for any account no channel is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_webhook_channels_bodies_are_kept_like_an_unknown_accounts() {
    let inbound = "listen = \"127.0.0.1:0\"\nsafety_poll_interval = \"10m\"\n";
    let mut options = options(&["acme", "gone"], "both", inbound);
    options.shared_app = true;
    let app = spawn_app(options).await;
    let bridge = LiveBridge::start_without(&app, &[]).await;
    let mut crm = app.crm().await;
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let id = app
        .register_webhook("acme", &format!("http://{addr}/webhooks/acme"))
        .await;
    app.subscribe_account(app.account("acme"), &id).await;
    app.subscribe_account(app.account("gone"), &id).await;
    let jane = Customer::generate("jane_doe");
    let gone = app.user_id("gone");
    let dm = app.simulator.customer_dm(&gone, &jane, "Served", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.routing_key, "gone.message.received");
    assert_eq!(event.body["event_id"], dm.id.as_str());

    bridge.live.remove("gone");
    // Applied once the bridge's poller of the channel let go of its lease.
    let broker = lapin::Connection::connect(&app.amqp_url(), Default::default())
        .await
        .expect("RabbitMQ");
    let queue = bridge.settings.amqp.topology.poll_lease_queue("gone");
    let mut lease = PollLease::contend(&broker, &queue, "gone", RENEW_EVERY)
        .await
        .expect("contend for the lease");
    tokio::time::timeout(PATIENCE, lease.acquired())
        .await
        .expect("the bridge lets go of the lease")
        .expect("the lease");
    lease.release().await;

    let crc = reqwest::get(format!("http://{addr}/webhooks/gone?crc_token=abc"))
        .await
        .expect("the webhook answers");
    assert_eq!(crc.status(), 404);
    let lost = app.simulator.customer_dm(&gone, &jane, "Anyone?", None);
    let letter = crm.next_dead_letter().await;
    assert_eq!(letter.reason(), "unknown_account");
    assert_eq!(letter.headers.channel.as_deref(), Some("acme"));
    let kept: serde_json::Value = serde_json::from_slice(&letter.body).unwrap();
    assert_eq!(kept["direct_message_events"][0]["id"], lost.id.as_str());

    drop(broker);
    bridge.stop().await;
    app.cleanup().await;
}

/// A channel switched from the webhook to polling is polled from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_switched_to_polling_starts_polling() {
    let inbound = format!("listen = \"127.0.0.1:0\"\n{POLLED}");
    let app = spawn_app(options(&["acme"], "webhook", &inbound)).await;
    let bridge = LiveBridge::start_without(&app, &[]).await;
    let mut crm = app.crm().await;
    let jane = Customer::generate("jane_doe");

    let mut channel = bridge.channel("acme");
    channel.inbound = xbridge_core::config::InboundMode::Poll;
    bridge.upsert(channel);
    one_more_read(&app, "acme").await;
    let dm = app
        .simulator
        .customer_dm(&app.user_id("acme"), &jane, "Polled now", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["received_via"], "poll");

    bridge.stop().await;
    app.cleanup().await;
}

/// A regenerated consumer secret checks the webhook's next signature: a body
/// signed with the new one is taken, one signed with the old one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_secret_checks_the_next_webhook_signature() {
    let app = spawn_app(options(&["acme"], "webhook", "listen = \"127.0.0.1:0\"\n")).await;
    let bridge = LiveBridge::start_without(&app, &[]).await;
    let mut crm = app.crm().await;
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let jane = Customer::generate("jane_doe");
    app.simulator.add_customer(jane.clone());
    let user = app.user_id("acme");

    // Regenerated at X; the channel gets it with a safety poll, whose first
    // read (signed with the new secret) says the change is applied.
    let mut regenerated = app.account("acme").clone();
    regenerated.consumer_secret = format!("secret{}", uuid::Uuid::new_v4().simple());
    app.simulator.add_account(regenerated.clone());
    let old = bridge.channel("acme").consumer_secret;
    let mut channel = bridge.channel("acme");
    channel.consumer_secret = SecretString::from(regenerated.consumer_secret.clone());
    channel.inbound = xbridge_core::config::InboundMode::Both;
    let new = channel.consumer_secret.clone();
    bridge.upsert(channel);
    one_more_read(&app, "acme").await;

    let event_id = "1900000000000000001";
    let body = serde_json::json!({
        "for_user_id": user,
        "direct_message_events": [{
            "type": "message_create",
            "id": event_id,
            "created_timestamp": chrono::Utc::now().timestamp_millis().to_string(),
            "message_create": {
                "target": { "recipient_id": user },
                "sender_id": jane.user_id,
                "message_data": { "text": "Signed anew" }
            }
        }]
    })
    .to_string();
    let post = |secret: &SecretString| {
        let signature = xbridge_inbound::webhook::auth::crc_response_token(secret, &body);
        reqwest::Client::new()
            .post(format!("http://{addr}/webhooks/acme"))
            .header(x_simulator::SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    assert_eq!(post(&old).await.expect("answered").status(), 401);
    assert_eq!(post(&new).await.expect("answered").status(), 200);
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], event_id);
    assert_eq!(event.body["received_via"], "webhook");

    bridge.stop().await;
    app.cleanup().await;
}
