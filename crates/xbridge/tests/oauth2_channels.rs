//! OAuth 2.0 channels end to end (issue 17, done-when 3): a channel configured with an
//! OAuth 2.0 client and a refresh token instead of the OAuth 1.0a pair sends its replies
//! with Bearer tokens it refreshes from the grant in the state store, keeps sending once
//! each when X ends its access token mid-stream, and when X refuses the grant says so
//! with the fix and loses no reply silently. `xbridge oauth2 authorize` stores only the
//! channel's account's grant; a token source still on a channel's previous refresh token
//! takes the grant a new one became. Real RabbitMQ, simulated X.

mod common;

use std::collections::HashSet;

use common::start_bridge_from;
use x_simulator::OAuth2Client;
use xbridge_store::StateStore as _;
use xbridge_test_support::{reply, spawn_app, TestApp, TestOptions};
use xbridge_x_api::oauth2::{DM_SCOPES, MEDIA_SCOPE};

/// Random key material the test's state store seals grants with.
const CREDENTIALS_KEY: &str =
    "Y29udHJhY3QtY3JlZGVudGlhbHMta2V5LW9mLTQ4LWJ5dGVzLWZvci10aGUtdGVzdHM=";

/// The test's configuration with channel `acme` turned into an OAuth 2.0 channel: its
/// OAuth 1.0a access token pair removed, a confidential client registered at the
/// simulator for its account and a refresh token of a grant with the DM scopes given.
fn oauth2_config(app: &TestApp) -> String {
    let account = app.account("acme");
    let client = OAuth2Client::generate(&account.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let mut scopes = DM_SCOPES.to_vec();
    scopes.push(MEDIA_SCOPE);
    let grant = app
        .simulator
        .oauth2_grant(&client.client_id, &scopes)
        .expect("the client is known");
    let refresh = grant
        .refresh_token
        .expect("offline.access gives a refresh token");
    let toml = app.config_toml();
    let pair = format!(
        "access_token = \"{}\"\naccess_token_secret = \"{}\"\n",
        account.access_token, account.access_token_secret
    );
    assert!(
        toml.contains(&pair),
        "the test config has the OAuth 1.0a pair"
    );
    let oauth2 = format!(
        "oauth2_client_id = \"{}\"\noauth2_client_secret = \"{}\"\noauth2_refresh_token = \"{refresh}\"\n",
        client.client_id,
        client.client_secret.expect("confidential"),
    );
    toml.replace(&pair, &oauth2).replace(
        "[state]\n",
        &format!("[state]\ncredentials_key = \"{CREDENTIALS_KEY}\"\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_channel_sends_100_replies_once_across_an_access_token_expiry() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge_from(&oauth2_config(&app)).await;
    let mut crm = app.crm().await;

    let ids: Vec<String> = (0..100).map(|i| format!("o2-{i:03}")).collect();
    let (early, late) = ids.split_at(60);
    for id in early {
        crm.publish_reply("acme", &reply(id, "944480690", &format!("reply {id}")))
            .await;
    }
    // Mid-stream, once half the replies were confirmed sent (and up to ten more may be on
    // their way), X ends the access token; the last forty are published only after it, so
    // at least they meet the expired token (publishing all hundred up front let the bridge
    // send them all before the expiry, and the test then saw no second refresh).
    let mut sent = HashSet::new();
    for event in crm.events(50).await {
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        sent.insert(event.body["message_id"].as_str().unwrap().to_owned());
    }
    let user = app.user_id("acme");
    assert!(app.simulator.oauth2_expire_access_tokens(&user) > 0);
    for id in late {
        crm.publish_reply("acme", &reply(id, "944480690", &format!("reply {id}")))
            .await;
    }
    for event in crm.events(50).await {
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        sent.insert(event.body["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(sent.len(), 100, "every reply reported sent once");

    let dms = app.wait_for_dms("acme", 100).await;
    let texts: Vec<String> = dms.iter().map(|d| d.text.clone()).collect();
    let distinct: HashSet<&String> = texts.iter().collect();
    assert_eq!(
        (texts.len(), distinct.len()),
        (100, 100),
        "each reply became exactly one DM"
    );
    // Sent with Bearer tokens: the channel has no OAuth 1.0a token to sign with.
    bridge.stop().await;

    // The grant was refreshed (at the first send and after the expiry) and every rotated
    // grant was stored, sealed.
    let store = xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap();
    let row = store.oauth2_grant("acme").await.unwrap().expect("stored");
    assert!(row.generation >= 2, "refreshed twice: {row:?}");
    assert!(!row.refused);
    drop(store);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_makes_the_channel_unauthorized_with_the_fix_and_loses_no_reply() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge_from(&oauth2_config(&app)).await;
    let mut crm = app.crm().await;

    crm.publish_reply("acme", &reply("rv-1", "944480690", "before"))
        .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");

    // The account's user revokes the App in X's settings.
    let user = app.user_id("acme");
    assert!(app.simulator.oauth2_revoke_grants(&user) > 0);
    crm.publish_reply("acme", &reply("rv-2", "944480690", "after"))
        .await;

    let state = crm.next_channel_state().await;
    assert_eq!(state.body["state"], "unauthorized", "{}", state.body);
    let detail = state.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("xbridge oauth2 authorize --channel acme"),
        "the state says the fix: {detail}"
    );
    // The reply is not lost silently: the CRM hears it failed, and why.
    let failed = crm.next_event().await;
    assert_eq!(failed.body["type"], "message.failed", "{}", failed.body);
    assert_eq!(failed.body["message_id"], "rv-2");
    assert_eq!(failed.body["reason"], "unauthorized");
    assert_eq!(
        app.simulator.sent_dms().len(),
        1,
        "nothing sent after the revocation"
    );

    bridge.stop().await;
    let store = xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap();
    let row = store.oauth2_grant("acme").await.unwrap().expect("stored");
    assert!(row.refused, "every replica sees the grant refused");
    drop(store);
    app.cleanup().await;
}

/// The redirect URI the tests' authorisations name.
const REDIRECT: &str = "http://localhost:8080/callback";

/// The browser step: the simulator's authorize page approves `url` at once, as its
/// client's account, and redirects; returns where to.
async fn approve(url: &str) -> String {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = browser.get(url).send().await.unwrap();
    assert_eq!(answer.status(), 302);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT), "{location}");
    location
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorisation_another_account_approved_is_refused_and_stores_nothing() {
    let app = spawn_app(TestOptions::default()).await;
    // The operator is signed in to X as another account when they open the URL.
    let other = x_simulator::Account::generate("someone_else");
    app.simulator.add_account(other.clone());
    let client = OAuth2Client::generate(&other.user_id, true);
    app.simulator.add_oauth2_client(client.clone());
    let mut settings = xbridge_core::config::Settings::from_toml(&oauth2_config(&app)).unwrap();
    let channel = &mut settings.channels[0];
    let acme = app.user_id("acme");
    channel.user_id = Some(acme.clone());
    let oauth2 = channel.oauth2.as_mut().unwrap();
    oauth2.client_id = client.client_id.clone();
    oauth2.client_secret = client.client_secret.clone().map(Into::into);

    let channel = settings.channels[0].clone();
    let (url, pending) = xbridge::oauth2_cmd::begin(&settings, &channel, REDIRECT).unwrap();
    let location = approve(&url).await;
    let store = xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap();
    let refused = xbridge::oauth2_cmd::finish(pending, &store, &location)
        .await
        .expect_err("another account's grant is refused");
    let said = format!("{refused:#}");
    assert!(
        said.contains(&acme) && said.contains(&other.user_id),
        "the error names both accounts: {said}"
    );
    assert_eq!(store.oauth2_grant("acme").await.unwrap(), None);
    drop(store);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_authorises_a_channel_once_and_it_sends_and_reads_dms() {
    let app = spawn_app(TestOptions {
        inbound_mode: Some("poll".into()),
        inbound: "poll_interval = \"200ms\"".into(),
        ..TestOptions::default()
    })
    .await;
    // The channel has a client and no refresh token: the operator authorises it.
    let toml = oauth2_config(&app);
    let toml = toml
        .lines()
        .filter(|line| !line.starts_with("oauth2_refresh_token"))
        .collect::<Vec<_>>()
        .join("\n");
    let settings = xbridge_core::config::Settings::from_toml(&toml).unwrap();
    let channel = &settings.channels[0];
    let (url, pending) = xbridge::oauth2_cmd::begin(&settings, channel, REDIRECT).unwrap();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let location = approve(&url).await;
    {
        let store = xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap();
        // A redirect of another authorisation (another state) is refused.
        let (_, other) = xbridge::oauth2_cmd::begin(&settings, channel, REDIRECT).unwrap();
        assert!(xbridge::oauth2_cmd::finish(other, &store, &location)
            .await
            .is_err());
        let stored = xbridge::oauth2_cmd::finish(pending, &store, &location)
            .await
            .unwrap();
        assert_eq!(stored.generation, 1);
        // The operator is told whom they authorised: the channel's account.
        assert_eq!(stored.user_id, app.user_id("acme"));
    }

    let bridge = start_bridge_from(&toml).await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply("au-1", "944480690", "authorised"))
        .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");
    assert_eq!(app.wait_for_dms("acme", 1).await[0].text, "authorised");
    // And it reads: a customer's DM is polled with the same grant.
    let user = app.user_id("acme");
    let jane = x_simulator::Customer::generate("jane");
    app.simulator
        .customer_dm(&user, &jane, "hello from a customer", None);
    let received = loop {
        let event = crm.next_event().await;
        if event.body["type"] == "message.received" {
            break event;
        }
    };
    assert_eq!(received.body["text"], "hello from a customer");
    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_source_on_the_previous_refresh_token_takes_the_new_grant_and_spends_nothing() {
    use std::sync::Arc;
    use xbridge_x_api::{XAuth, XHttp};

    let app = spawn_app(TestOptions::default()).await;
    let settings = xbridge_core::config::Settings::from_toml(&oauth2_config(&app)).unwrap();
    let store: Arc<dyn xbridge_store::StateStore> =
        Arc::new(xbridge_store::EmbeddedStore::open(&app.state_path()).unwrap());
    let key = Arc::new(settings.state.credentials_key().unwrap());
    let http = XHttp::new().unwrap();
    let source = |channel: &xbridge_core::config::ChannelSettings| {
        let auth = xbridge_core::oauth2_tokens::channel_auth(
            &settings.x,
            channel,
            store.clone(),
            Some(key.clone()),
            &http,
        );
        match auth.unwrap() {
            XAuth::OAuth2(source) => source,
            XAuth::OAuth1(_) => panic!("an OAuth 2.0 channel"),
        }
    };
    let previous = settings.channels[0].clone();
    let old = source(&previous);
    let revoked = old
        .access_token()
        .await
        .expect("the configured token is spent");

    // X revokes the grant; the new settings carry a new approval's refresh token, while
    // a replica (or direction) still runs on the previous settings.
    let user = app.user_id("acme");
    assert!(app.simulator.oauth2_revoke_grants(&user) > 0);
    let client_id = &previous.oauth2.as_ref().unwrap().client_id;
    let renewed = app.simulator.oauth2_grant(client_id, DM_SCOPES).unwrap();
    let mut current = previous.clone();
    current.oauth2.as_mut().unwrap().refresh_token = renewed.refresh_token.map(Into::into);
    let new = source(&current)
        .access_token()
        .await
        .expect("the new token is spent");
    let answered = || {
        app.simulator
            .requests()
            .into_iter()
            .filter(|r| r.path == "/2/oauth2/token")
            .count()
    };
    let spent = answered();

    // X refuses the old source's token: it takes the new grant. Its own configured token
    // is older than that grant, not a new one: spent, X would refuse it and the refusal
    // would mark the new grant refused.
    old.rejected(&revoked);
    let taken = old.access_token().await.expect("the new grant is taken");
    use secrecy::ExposeSecret as _;
    assert_eq!(taken.expose_secret(), new.expose_secret());
    assert_eq!(answered(), spent, "no token request");
    let row = store.oauth2_grant("acme").await.unwrap().expect("stored");
    assert_eq!((row.generation, row.refused), (2, false));
    drop(store);
    app.cleanup().await;
}
