//! An OAuth 2.0 channel created by the CRM's `channel.upsert` (issue 17): the command's
//! `oauth2_client_id`, `oauth2_client_secret` and `oauth2_refresh_token` are checked
//! against X with a Bearer token the bridge obtains, the answer is `ok` with the account,
//! replies go out, and no token appears in the logs. A grant X refused is brought back by
//! a new `oauth2_refresh_token`, spent once (and a refused command's token leaves no
//! grant behind); an operator can authorise a CRM channel; `channel.remove` deletes the
//! grant. Real RabbitMQ, simulated X.

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

/// `channel.upsert` of OAuth 2.0 channel `name` for `account` with `client`, and a
/// refresh token if given.
/// The bridge running on the test's embedded store, which the test reads too, the CRM's
/// queue and its command publisher.
async fn start_with_store(
    app: &xbridge_test_support::TestApp,
) -> (
    std::sync::Arc<dyn xbridge_store::StateStore>,
    Running,
    xbridge_test_support::Crm,
    Commands,
) {
    let store: std::sync::Arc<dyn xbridge_store::StateStore> =
        std::sync::Arc::new(xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap());
    let bridge = Running::start_on(app, store.clone()).await;
    let crm = app.crm().await;
    let commands = Commands::connect(app).await;
    (store, bridge, crm, commands)
}

fn oauth2_upsert(
    command_id: &str,
    name: &str,
    account: &x_simulator::Account,
    client: &OAuth2Client,
    refresh: Option<&str>,
) -> serde_json::Value {
    let mut command = json!({
        "command": "channel.upsert", "command_id": command_id, "channel": name,
        "consumer_key": account.consumer_key, "consumer_secret": account.consumer_secret,
        "bearer_token": account.bearer_token, "inbound": "webhook",
        "oauth2_client_id": client.client_id, "oauth2_client_secret": client.client_secret,
    });
    if let Some(refresh) = refresh {
        command["oauth2_refresh_token"] = refresh.into();
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_crm_channel_comes_back_with_a_new_refresh_token_spent_once() {
    crm::capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let (store, bridge, mut crm, commands) = start_with_store(&app).await;
    let account = new_account(&app, "renewco_support");
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let refresh = |app: &xbridge_test_support::TestApp| {
        let grant = app.simulator.oauth2_grant(&client.client_id, DM_SCOPES);
        grant.unwrap().refresh_token.unwrap()
    };
    let first = refresh(&app);
    let create = oauth2_upsert("rn-create", "renewco", &account, &client, Some(&first));
    commands.send(&create).await;
    assert_eq!(answer(&mut crm, "rn-create").await.body["state"], "ok");
    crm.publish_reply("renewco", &reply("rn-1", "944480690", "before"))
        .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");

    // The account's user revokes the App: the next reply fails, the grant is refused.
    assert!(app.simulator.oauth2_revoke_grants(&account.user_id) > 0);
    crm.publish_reply("renewco", &reply("rn-2", "944480690", "revoked"))
        .await;
    let failed = crm.next_event().await;
    assert_eq!(failed.body["reason"], "unauthorized", "{}", failed.body);
    let row = store
        .oauth2_grant("renewco")
        .await
        .unwrap()
        .expect("stored");
    assert!(row.refused);

    // A command carrying another account's refresh token is refused, and the grant its
    // check made with that token is not left for the served channel to send as.
    let other = new_account(&app, "otherco_support");
    let other_client = OAuth2Client::generate(&other.user_id, true);
    app.simulator.add_oauth2_client(other_client.clone());
    let other_grant = app
        .simulator
        .oauth2_grant(&other_client.client_id, DM_SCOPES);
    let other_refresh = other_grant.unwrap().refresh_token.unwrap();
    let mut wrong = oauth2_upsert(
        "rn-wrong",
        "renewco",
        &account,
        &other_client,
        Some(&other_refresh),
    );
    wrong["user_id"] = account.user_id.clone().into();
    commands.send(&wrong).await;
    let refused = crm::refusal(&mut crm).await;
    assert_eq!(refused["reason"], "invalid_field", "{refused}");
    let row = store
        .oauth2_grant("renewco")
        .await
        .unwrap()
        .expect("stored");
    assert!(
        row.refused,
        "the channel's own grant is back, refused as it was"
    );

    // The user approves the App again; the CRM sends the new grant's refresh token.
    let second = refresh(&app);
    let answered_before = app.token_answers().len();
    let renew = oauth2_upsert("rn-renew", "renewco", &account, &client, Some(&second));
    commands.send(&renew).await;
    let answered = answer(&mut crm, "rn-renew").await;
    assert_eq!(answered.body["state"], "ok", "{}", answered.body);
    crm.publish_reply("renewco", &reply("rn-3", "944480690", "after"))
        .await;
    let sent = crm.next_event().await;
    assert_eq!(sent.body["type"], "message.sent", "{}", sent.body);
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&account.user_id)
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["before", "after"]);
    assert!(
        !store
            .oauth2_grant("renewco")
            .await
            .unwrap()
            .unwrap()
            .refused
    );
    // Every token source of the channel saw the new refresh token (the check's, the
    // rebuilt reply context's): one spent it, the others took its grant. A second spend
    // would be refused by X (it rotated the token) and refuse the channel again.
    assert_eq!(app.token_answers()[answered_before..], [200]);

    // The CRM removes the channel: its grant goes with it.
    let remove =
        json!({"command": "channel.remove", "command_id": "rn-remove", "channel": "renewco"});
    commands.send(&remove).await;
    assert_eq!(answer(&mut crm, "rn-remove").await.body["state"], "removed");
    assert_eq!(store.oauth2_grant("renewco").await.unwrap(), None);

    let logged = logs();
    for token in [first.as_str(), second.as_str()] {
        assert!(!logged.contains(token), "a token was logged");
    }
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_authorises_a_channel_the_crm_created() {
    crm::capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let (store, bridge, mut crm, commands) = start_with_store(&app).await;
    let account = new_account(&app, "authco_support");
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    // The CRM creates the channel with its client and no grant: an operator authorises it.
    let create = oauth2_upsert("au-create", "authco", &account, &client, None);
    commands.send(&create).await;
    let answered = answer(&mut crm, "au-create").await;
    assert_eq!(answered.body["state"], "unauthorized", "{}", answered.body);

    let settings = crm::settings(&app);
    let channel = xbridge::channel_lookup::find_channel(&settings, store.clone(), "authco")
        .await
        .expect("the CRM's channel is found");
    let redirect = "http://localhost:8080/callback";
    let (url, pending) = xbridge::oauth2_cmd::begin(&settings, &channel, redirect).unwrap();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let approved = browser.get(&url).send().await.unwrap();
    let location = approved.headers()["location"].to_str().unwrap().to_owned();
    let stored = xbridge::oauth2_cmd::finish(pending, store.as_ref(), &location)
        .await
        .unwrap();
    assert_eq!(stored.user_id, account.user_id);

    crm.publish_reply("authco", &reply("au-1", "944480690", "authorised"))
        .await;
    let sent = crm.next_event().await;
    assert_eq!(sent.body["type"], "message.sent", "{}", sent.body);
    bridge.stop().await;
    cleanup(&app).await;
}

/// A refused `channel.upsert` without a new refresh token undoes nothing: its check may
/// have refreshed the channel's own grant (X then spent the old refresh token), and
/// putting the old row back would leave the channel a spent token, refused at its next
/// refresh (a red-team finding: every refused command of a channel whose access token
/// had ended did that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upsert_whose_check_refreshed_the_grant_leaves_the_channel_working() {
    crm::capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let (store, bridge, mut crm, commands) = start_with_store(&app).await;
    let account = new_account(&app, "keepco_support");
    // Access tokens of a minute: inside the bridge's refresh margin from the start, so
    // every use of the grant refreshes it first, the refused command's check too.
    let mut client = OAuth2Client::generate(&account.user_id, true);
    client.access_token_secs = 60;
    app.simulator.add_oauth2_client(client.clone());
    let grant = app.simulator.oauth2_grant(&client.client_id, DM_SCOPES);
    let first = grant.unwrap().refresh_token.unwrap();
    let create = oauth2_upsert("kp-create", "keepco", &account, &client, Some(&first));
    commands.send(&create).await;
    assert_eq!(answer(&mut crm, "kp-create").await.body["state"], "ok");
    let generation = store
        .oauth2_grant("keepco")
        .await
        .unwrap()
        .unwrap()
        .generation;

    // The CRM sends the channel's settings again, with a user_id that is not the
    // account's: the check refreshes the grant, then the command is refused.
    let mut wrong = oauth2_upsert("kp-wrong", "keepco", &account, &client, Some(&first));
    wrong["user_id"] = "1".into();
    commands.send(&wrong).await;
    let refused = crm::refusal(&mut crm).await;
    assert_eq!(refused["reason"], "invalid_field", "{refused}");
    let row = store.oauth2_grant("keepco").await.unwrap().unwrap();
    assert!(
        row.generation > generation && !row.refused,
        "the check's refresh stays: the grant before it is spent ({row:?})"
    );

    // The next reply refreshes with the grant's live refresh token and goes out.
    crm.publish_reply("keepco", &reply("kp-1", "944480690", "still here"))
        .await;
    let sent = crm.next_event().await;
    assert_eq!(sent.body["type"], "message.sent", "{}", sent.body);
    assert!(!store.oauth2_grant("keepco").await.unwrap().unwrap().refused);
    bridge.stop().await;
    cleanup(&app).await;
}
