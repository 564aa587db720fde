//! An OAuth 2.0 channel served by two `xbridge` processes sharing one PostgreSQL store
//! (issue 17, done-when 3): the grant one replica rotated is the one the other uses after
//! taking the channel over; the configured refresh token, spent by then, would be refused.
//! A new refresh token the operator configures after X revoked the grant replaces it, and
//! is spent once: the replica that takes over later uses the grant it became.

use std::path::Path;

use x_simulator::OAuth2Client;
use xbridge_store::{PostgresStore, StateStore as _};
use xbridge_test_support::{postgres_url, reply, spawn_app, BridgeProcess, TestOptions};
use xbridge_x_api::oauth2::DM_SCOPES;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

const RUNNING: &str = "outbound running";
const CREDENTIALS_KEY: &str =
    "Y29udHJhY3QtY3JlZGVudGlhbHMta2V5LW9mLTQ4LWJ5dGVzLWZvci10aGUtdGVzdHM=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_rotated_by_one_replica_is_used_by_the_other_after_a_takeover() {
    let app = spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let account = app.account("acme").clone();
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let grant = app
        .simulator
        .oauth2_grant(&client.client_id, DM_SCOPES)
        .unwrap();
    let pair = format!(
        "access_token = \"{}\"\naccess_token_secret = \"{}\"\n",
        account.access_token, account.access_token_secret
    );
    let oauth2 = format!(
        "oauth2_client_id = \"{}\"\noauth2_client_secret = \"{}\"\noauth2_refresh_token = \"{}\"\n",
        client.client_id,
        client.client_secret.clone().unwrap(),
        grant.refresh_token.clone().unwrap()
    );
    let toml = app.config_toml().replace(&pair, &oauth2).replace(
        "[state]\n",
        &format!("[state]\ncredentials_key = \"{CREDENTIALS_KEY}\"\n"),
    );
    let config = app.write_config();
    std::fs::write(&config, &toml).unwrap();
    let user = app.user_id("acme");
    let store = PostgresStore::connect(&postgres_url(), Some(&app.postgres_schema()))
        .await
        .unwrap();

    let first = BridgeProcess::start(binary(), &config, &[]);
    first.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply("rp-1", "944480690", "one"))
        .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");
    // X ends the token; the first replica refreshes again, rotating the refresh token.
    assert!(app.simulator.oauth2_expire_access_tokens(&user) > 0);
    crm.publish_reply("acme", &reply("rp-2", "944480690", "two"))
        .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");
    let rotated = store.oauth2_grant("acme").await.unwrap().expect("stored");
    assert_eq!(
        rotated.generation, 2,
        "refreshed at the first send and after the expiry"
    );
    first.kill().await;

    // The other replica takes over; X ends the token again, so it must refresh with the
    // rotated refresh token from the store (the configured one is refused by now).
    assert!(app.simulator.oauth2_expire_access_tokens(&user) > 0);
    let second = BridgeProcess::start(binary(), &config, &[]);
    second.wait_for_log(RUNNING, 1).await;
    crm.publish_reply("acme", &reply("rp-3", "944480690", "three"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "rp-3");
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&user)
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let row = store.oauth2_grant("acme").await.unwrap().expect("stored");
    assert_eq!(
        row.generation, 3,
        "the second replica refreshed the rotated grant"
    );
    assert!(!row.refused);

    // The account's user revokes the App and approves it again; the operator configures
    // the new grant's refresh token on every replica (restarting them).
    assert!(app.simulator.oauth2_revoke_grants(&user) > 0);
    let renewed = app.simulator.oauth2_grant(&client.client_id, DM_SCOPES);
    let renewed = renewed.unwrap().refresh_token.unwrap();
    let first_token = grant.refresh_token.unwrap();
    std::fs::write(&config, toml.replace(&first_token, &renewed)).unwrap();
    second.kill().await;
    let answered_before = app.token_answers().len();
    let third = BridgeProcess::start(binary(), &config, &[]);
    third.wait_for_log(RUNNING, 1).await;
    crm.publish_reply("acme", &reply("rp-4", "944480690", "four"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    // A replica configured alike takes over: the new token is the grant's seed by now,
    // so it refreshes the rotated grant instead of spending the token again.
    let fourth = BridgeProcess::start(binary(), &config, &[]);
    fourth.wait_for_log(RUNNING, 1).await;
    third.kill().await;
    assert!(app.simulator.oauth2_expire_access_tokens(&user) > 0);
    crm.publish_reply("acme", &reply("rp-5", "944480690", "five"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(
        app.token_answers()[answered_before..],
        [200, 200],
        "the new token spent once, then its rotated grant refreshed; X refused nothing"
    );
    let row = store.oauth2_grant("acme").await.unwrap().expect("stored");
    assert_eq!((row.generation, row.refused), (5, false));
    fourth.kill().await;
    app.cleanup().await;
}
