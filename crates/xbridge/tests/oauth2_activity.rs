//! OAuth 2.0 channels subscribe their accounts with their own OAuth 2.0 user token (issue 17
//! gaps): the real `xbridge webhook subscribe` subscribes an OAuth 2.0 channel through AAA
//! (which takes OAuth 2.0 since 2026-01-15) and through XAA, and its customers' DMs then
//! arrive by webhook, once; an OAuth 2.0 channel with `inbound = "stream"` is subscribed by
//! the bridge itself and gets its DMs by the App's stream. The simulator records which token
//! created each XAA subscription. Real RabbitMQ (and PostgreSQL where the command and the
//! running bridge share the grant), simulated X.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::path::PathBuf;

use cli::xbridge;
use common::start_bridge_from;
use x_simulator::{CreatedWith, Customer, OAuth2Client};
use xbridge_test_support::{spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE};
use xbridge_x_api::oauth2::DM_SCOPES;

/// Random key material the test's state store seals grants with.
const CREDENTIALS_KEY: &str =
    "Y29udHJhY3QtY3JlZGVudGlhbHMta2V5LW9mLTQ4LWJ5dGVzLWZvci10aGUtdGVzdHM=";

/// The test's configuration with its one channel turned into an OAuth 2.0 channel (its
/// OAuth 1.0a pair replaced by a confidential client and a refresh token of a DM grant),
/// and the secrets a command must never print.
fn oauth2_config(app: &TestApp) -> (String, Vec<String>) {
    let (name, account) = &app.accounts[0];
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let grant = app
        .simulator
        .oauth2_grant(&client.client_id, DM_SCOPES)
        .expect("the client is known");
    let refresh = grant.refresh_token.expect("offline.access");
    let client_secret = client.client_secret.expect("confidential");
    let pair = format!(
        "access_token = \"{}\"\naccess_token_secret = \"{}\"\n",
        account.access_token, account.access_token_secret
    );
    let toml = app.config_toml();
    assert!(
        toml.contains(&pair),
        "channel {name} has the OAuth 1.0a pair"
    );
    let oauth2 = format!(
        "oauth2_client_id = \"{}\"\noauth2_client_secret = \"{client_secret}\"\noauth2_refresh_token = \"{refresh}\"\n",
        client.client_id,
    );
    let toml = toml.replace(&pair, &oauth2).replace(
        "[state]\n",
        &format!("[state]\ncredentials_key = \"{CREDENTIALS_KEY}\"\n"),
    );
    let secrets = vec![
        client_secret,
        refresh,
        grant.access_token,
        account.consumer_secret.clone(),
        account.bearer_token.clone(),
    ];
    (toml, secrets)
}

/// Writes `toml` where the binary reads it, under `file`.
fn config_file(app: &TestApp, file: &str, toml: &str) -> PathBuf {
    let path = app.state_path().with_file_name(file);
    std::fs::write(&path, toml).unwrap();
    path
}

/// The next `message.received` of the CRM's queue (other events are skipped).
async fn next_received(crm: &mut Crm) -> Event {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == "message.received" {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_channel_subscribed_by_the_command_gets_each_dm_once_by_webhook() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into()],
        inbound: "listen = \"127.0.0.1:0\"\n".into(),
        inbound_mode: Some("webhook".into()),
        // The account's id is asked of X with the channel's OAuth 2.0 token.
        omit_user_id: true,
        // The command and the running bridge share the grant the store holds.
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let (aaa, secrets) = oauth2_config(&app);
    let xaa = format!("{aaa}webhook_api = \"xaa\"\n");
    let bridge = start_bridge_from(&xaa).await;
    let aaa_file = config_file(&app, "xbridge-aaa.toml", &aaa);
    let xaa_file = config_file(&app, "xbridge-xaa.toml", &xaa);
    let addr = bridge.webhook_addr.expect("the webhook is served");
    let url = format!("http://{addr}/webhooks/acme");
    let (ok, text) = xbridge(
        &xaa_file,
        &["webhook", "register", "--channel", "acme", "--url", &url],
        &secrets,
    )
    .await;
    assert!(ok, "{text}");

    // Through AAA (the default) the account is subscribed with its OAuth 2.0 token (the
    // only one it has: the simulator refuses the App's token there), and X says so.
    let user = app.user_id("acme");
    let (ok, text) = xbridge(
        &aaa_file,
        &["webhook", "subscribe", "--channel", "acme"],
        &secrets,
    )
    .await;
    assert!(ok, "{text}");
    let aaa_subscriptions = app.simulator.subscriptions();
    assert_eq!(aaa_subscriptions.len(), 1, "{aaa_subscriptions:?}");
    assert_eq!(aaa_subscriptions[0].user_id, user);
    let (ok, text) = xbridge(&aaa_file, &["webhook", "status"], &secrets).await;
    assert!(ok && text.contains("subscribed: yes"), "{text}");
    let (ok, text) = xbridge(
        &aaa_file,
        &["webhook", "unsubscribe", "--channel", "acme"],
        &secrets,
    )
    .await;
    assert!(ok, "{text}");
    assert!(app.simulator.subscriptions().is_empty(), "{text}");

    // With XAA the account is subscribed with its own OAuth 2.0 token.
    let (ok, text) = xbridge(
        &xaa_file,
        &["webhook", "subscribe", "--channel", "acme"],
        &secrets,
    )
    .await;
    assert!(ok, "{text}");
    let subscriptions = app.simulator.activity_subscriptions();
    assert!(
        subscriptions.iter().any(|s| s.event_type == "dm.received"),
        "{subscriptions:?}"
    );
    for subscription in &subscriptions {
        assert_eq!(subscription.user_id, user, "{subscription:?}");
        assert!(subscription.webhook_id.is_some(), "{subscription:?}");
        assert_eq!(subscription.created_with, CreatedWith::OAuth2);
    }
    let (ok, text) = xbridge(&xaa_file, &["check"], &secrets).await;
    assert!(
        ok && text.contains("X Activity subscriptions: dm.received"),
        "{text}"
    );

    let mut crm = app.crm().await;
    let jane = Customer::generate("jane");
    let first = app
        .simulator
        .customer_dm(&user, &jane, "Where is my order?", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.routing_key, "acme.message.received");
    assert_eq!(event.body["event_id"], first.id.as_str());
    assert_eq!(event.body["received_via"], "webhook");
    let delivered: Vec<_> = tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(1))
        .await
        .expect("X delivered the DM")
        .into_iter()
        .filter(|d| d.event_id.as_deref() == Some(first.id.as_str()))
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].status, Some(200), "the bridge took it");
    assert!(delivered[0].body.contains("\"event_type\":\"dm.received\""));
    // Once: the next DM the CRM gets is the customer's next one, not a copy.
    let second = app.simulator.customer_dm(&user, &jane, "Thanks!", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], second.id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_stream_channel_is_subscribed_with_its_own_token_and_gets_dms_by_the_stream() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into()],
        inbound_mode: Some("stream".into()),
        ..TestOptions::default()
    })
    .await;
    let key = &app.accounts[0].1.consumer_key;
    app.created_channel(&xbridge_inbound::stream_lease_name(key));
    let (toml, _) = oauth2_config(&app);
    let bridge = start_bridge_from(&toml).await;
    let mut crm = app.crm().await;
    app.wait_for_open_streams(1, "the bridge opens the App's stream")
        .await;

    let user = app.user_id("acme");
    let jane = Customer::generate("jane");
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Hello stream", None);
    let event = next_received(&mut crm).await;
    assert_eq!(event.routing_key, "acme.message.received");
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["text"], "Hello stream");
    // The bridge subscribed the account for the stream with its OAuth 2.0 token.
    let subscriptions = app.simulator.activity_subscriptions();
    let received = subscriptions
        .iter()
        .find(|s| s.event_type == "dm.received")
        .expect("dm.received subscribed");
    assert_eq!(received.user_id, user);
    assert_eq!(received.webhook_id, None, "stream only");
    assert!(
        subscriptions
            .iter()
            .all(|s| s.created_with == CreatedWith::OAuth2),
        "{subscriptions:?}"
    );

    bridge.stop().await;
    app.cleanup().await;
}
