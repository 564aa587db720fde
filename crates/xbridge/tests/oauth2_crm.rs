//! An OAuth 2.0 channel created by the CRM's `channel.upsert` (issue 17): the command's
//! `oauth2_client_id`, `oauth2_client_secret` and `oauth2_refresh_token` are checked
//! against X with a Bearer token the bridge obtains, the answer is `ok` with the account,
//! replies go out, and no token appears in the logs. Real RabbitMQ, simulated X.

#[path = "common/crm.rs"]
mod crm;

use serde_json::json;

use crm::{answer, cleanup, logs, new_account, Commands, Running};
use x_simulator::OAuth2Client;
use xbridge_test_support::{reply, spawn_app, TestOptions};
use xbridge_x_api::oauth2::DM_SCOPES;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_crm_creates_with_oauth2_is_checked_and_sends_replies() {
    crm::capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "oauthco_support");
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let grant = app
        .simulator
        .oauth2_grant(&client.client_id, DM_SCOPES)
        .unwrap();
    let refresh = grant.refresh_token.unwrap();
    let secret = client.client_secret.clone().unwrap();

    commands
        .send(&json!({
            "command": "channel.upsert", "command_id": "o2-create", "channel": "oauthco",
            "consumer_key": account.consumer_key, "consumer_secret": account.consumer_secret,
            "bearer_token": account.bearer_token, "inbound": "webhook",
            "oauth2_client_id": client.client_id, "oauth2_client_secret": secret,
            "oauth2_refresh_token": refresh,
        }))
        .await;
    let answered = answer(&mut crm, "o2-create").await;
    assert_eq!(answered.body["state"], "ok", "{}", answered.body);
    assert_eq!(answered.body["account"]["username"], "oauthco_support");

    crm.publish_reply("oauthco", &reply("oc-1", "944480690", "via oauth2"))
        .await;
    let sent = crm.next_event().await;
    assert_eq!(sent.body["type"], "message.sent", "{}", sent.body);
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&account.user_id)
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["via oauth2"]);

    let logged = logs();
    for token in [
        refresh.as_str(),
        secret.as_str(),
        grant.access_token.as_str(),
    ] {
        assert!(!logged.contains(token), "a token was logged");
    }
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_grant_the_store_refused_is_kept_and_stored_once_it_can() {
    use std::sync::Arc;
    use xbridge_test_support::{FailingStore, Refuse};

    crm::capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let account = app.account("acme").clone();
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let grant = app
        .simulator
        .oauth2_grant(&client.client_id, DM_SCOPES)
        .unwrap();
    let mut settings = crm::settings(&app);
    let channel = &mut settings.channels[0];
    channel.access_token = "".into();
    channel.access_token_secret = "".into();
    channel.oauth2 = Some(xbridge_core::config::OAuth2Channel {
        client_id: client.client_id.clone(),
        client_secret: client.client_secret.clone().map(Into::into),
        refresh_token: grant.refresh_token.clone().map(Into::into),
    });
    let inner: Arc<dyn xbridge_store::StateStore> =
        Arc::new(xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap());
    let store = FailingStore::new(inner.clone());
    // X will rotate the configured grant at the first send; the store will not take it.
    store.refuse(Refuse::Grants);
    let bridge = Running::run(
        xbridge::app::Bridge::build_with_store(settings, store.clone())
            .await
            .unwrap(),
    )
    .await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply("us-1", "944480690", "one"))
        .await;
    let sent = crm.next_event().await;
    assert_eq!(sent.body["type"], "message.sent", "{}", sent.body);
    assert_eq!(inner.oauth2_grant("acme").await.unwrap(), None);

    // Once the store takes writes again, the kept grant is stored before the next use.
    store.heal();
    crm.publish_reply("acme", &reply("us-2", "944480690", "two"))
        .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");
    let row = inner.oauth2_grant("acme").await.unwrap().expect("stored");
    assert_eq!(row.generation, 1);
    // And it is the live one: X ends the token, the refresh with it works.
    assert!(app.simulator.oauth2_expire_access_tokens(&account.user_id) > 0);
    crm.publish_reply("acme", &reply("us-3", "944480690", "three"))
        .await;
    let sent = crm.next_event().await;
    assert_eq!(sent.body["type"], "message.sent", "{}", sent.body);
    assert_eq!(
        inner
            .oauth2_grant("acme")
            .await
            .unwrap()
            .unwrap()
            .generation,
        2
    );
    bridge.stop().await;
    cleanup(&app).await;
}
