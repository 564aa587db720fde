//! The CRM manages channels with commands on the control exchange (issue 14): a
//! channel created at run time is served and answered with X's word on its
//! credentials, a fixed token is taken without a restart, a restart brings the CRM's
//! channels back with no credential readable at rest, a command that may not or
//! cannot be applied is refused with its reason, and with two replicas exactly one
//! answers while both serve the channel.

#[path = "common/crm.rs"]
mod crm;

use crm::{
    answer, assert_no_secret, assert_no_secret_logged, capture_logs, cleanup, control, new_account,
    refusal, secrets, settings, upsert, Commands, Running,
};
use serde_json::json;
use std::sync::Arc;
use x_simulator::{Account, Fault};
use xbridge_core::config::{ChannelSettings, InboundMode};
use xbridge_core::contract::ChannelState;

use xbridge::app::Bridge;
use xbridge_core::config::Settings;
use xbridge_core::live_channels::{LiveChannels, Origin};
use xbridge_test_support::{
    postgres_url, spawn_app, FailingStore, Refuse, TestApp, TestOptions, PATIENCE,
};

#[tokio::test]
async fn a_channel_created_by_the_crm_is_served_and_answered_with_its_account() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    commands
        .send(&upsert("cmd-create-1", "newco", &account))
        .await;
    let answer = answer(&mut crm, "cmd-create-1").await;

    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    assert_eq!(answer.body["channel"], "newco");
    assert_eq!(answer.body["account"]["username"], "newco_support");
    assert_eq!(answer.body["account"]["user_id"], account.user_id);
    assert_no_secret(&answer.body.to_string(), &account);
    let served = bridge.live.get("newco").expect("the channel is served");
    assert_eq!((served.origin, served.revision), (Origin::Crm, 1));

    // The same command again (a redelivery) gives the same answer, no new revision.
    commands
        .send(&upsert("cmd-create-1", "newco", &account))
        .await;
    let again = crate::answer(&mut crm, "cmd-create-1").await;
    assert_eq!(
        again.properties.message_id(),
        answer.properties.message_id()
    );
    assert_eq!(bridge.live.get("newco").unwrap().revision, 1);
    let pause = json!({"command": "channel.pause", "command_id": "cmd-pause", "channel": "newco"});
    commands.send(&pause).await;
    assert_eq!(
        crate::answer(&mut crm, "cmd-pause").await.body["state"],
        "paused"
    );
    assert!(bridge.live.get("newco").unwrap().paused);
    let resume =
        json!({"command": "channel.resume", "command_id": "cmd-resume", "channel": "newco"});
    commands.send(&resume).await;
    assert_eq!(
        crate::answer(&mut crm, "cmd-resume").await.body["state"],
        "ok"
    );
    assert!(!bridge.live.get("newco").unwrap().paused);
    assert_no_secret_logged(&account);
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_token_without_dm_permission_is_answered_with_the_fix_and_a_regenerated_one_is_ok() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    app.simulator
        .set_fault(&account.user_id, Fault::MissingPermission);

    commands
        .send(&upsert("cmd-perm-1", "newco", &account))
        .await;
    let first = answer(&mut crm, "cmd-perm-1").await;
    assert_eq!(first.body["state"], "missing_permission", "{}", first.body);
    let detail = first.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("Direct message") && detail.contains("regenerate"),
        "{detail}"
    );

    let regenerated = app
        .simulator
        .regenerate_access_token(&account.user_id)
        .unwrap();
    commands
        .send(&upsert("cmd-perm-2", "newco", &regenerated))
        .await;
    let second = answer(&mut crm, "cmd-perm-2").await;
    assert_eq!(second.body["state"], "ok", "{}", second.body);
    assert_no_secret_logged(&account);
    assert_no_secret_logged(&regenerated);
    let served = bridge.live.get("newco").expect("served");
    assert_eq!(
        served.revision, 2,
        "the update is the channel's next revision"
    );
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_restart_brings_the_crm_channel_back_and_the_state_file_holds_no_credential() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    commands
        .send(&upsert("cmd-restart-1", "newco", &account))
        .await;
    assert_eq!(answer(&mut crm, "cmd-restart-1").await.body["state"], "ok");
    bridge.stop().await;

    let state = std::fs::read(app.state_path()).expect("the state file");
    for secret in secrets(&account) {
        assert!(
            !state.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a credential is readable in the state file"
        );
    }
    let again = Running::start(&app).await;
    let served = again.live.get("newco").expect("the CRM channel is back");
    assert_eq!((served.origin, served.revision), (Origin::Crm, 1));
    again.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn commands_that_may_not_or_cannot_be_applied_are_refused_with_their_reason() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    let exchange = control(&app).exchange;
    let queue = control(&app).commands_queue;
    let body = serde_json::to_vec(&upsert("cmd-sneaky", "newco", &account)).unwrap();

    commands
        .publish(&exchange, "channel.upsert", b"{not json", Some("guest"))
        .await;
    assert_eq!(refusal(&mut crm).await["reason"], "malformed");
    let unknown =
        json!({"command": "channel.explode", "command_id": "cmd-unknown", "channel": "acme"});
    commands
        .publish(
            &exchange,
            "channel.explode",
            &serde_json::to_vec(&unknown).unwrap(),
            Some("guest"),
        )
        .await;
    let refused = refusal(&mut crm).await;
    assert_eq!(
        (refused["reason"].as_str(), refused["command_id"].as_str()),
        (Some("unknown_command"), Some("cmd-unknown"))
    );
    commands
        .publish(&exchange, "channel.upsert", &body, None)
        .await;
    let refused = refusal(&mut crm).await;
    assert_eq!(refused["reason"], "unauthorized", "no user_id: {refused}");
    assert_no_secret(&refused.to_string(), &account);
    commands.publish("", &queue, &body, Some("guest")).await;
    let refused = refusal(&mut crm).await;
    assert_eq!(
        refused["reason"], "unauthorized",
        "straight to the queue: {refused}"
    );
    assert_no_secret(&refused.to_string(), &account);
    commands.send(&upsert("cmd-file", "acme", &account)).await;
    assert_eq!(
        refusal(&mut crm).await["reason"],
        "conflict",
        "acme is the file's"
    );
    let mut same_app = account.clone();
    same_app.consumer_key = app.account("acme").consumer_key.clone();
    commands.send(&upsert("cmd-app", "newco", &same_app)).await;
    let refused = refusal(&mut crm).await;
    assert_eq!(
        refused["reason"], "conflict",
        "acme's App with another secret: {refused}"
    );
    assert_no_secret(&refused.to_string(), app.account("acme"));
    let remove =
        json!({"command": "channel.remove", "command_id": "cmd-gone", "channel": "nobody"});
    commands.send(&remove).await;
    assert_eq!(refusal(&mut crm).await["reason"], "unknown_channel");

    assert!(
        bridge.live.get("newco").is_none(),
        "nothing refused was applied"
    );
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn with_two_replicas_on_postgresql_one_answers_and_both_serve_the_channel() {
    capture_logs();
    let app = spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let first = Running::start(&app).await;
    let second = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    commands
        .send(&upsert("cmd-replicas-1", "newco", &account))
        .await;
    assert_eq!(answer(&mut crm, "cmd-replicas-1").await.body["state"], "ok");
    first.wait_served("newco", true).await;
    second.wait_served("newco", true).await;
    assert_no_credential_in_postgres(&app, &account).await;
    assert_no_secret_logged(&account);
    // Up to a second command's answer, no second answer to the first.
    let check =
        json!({"command": "channel.check", "command_id": "cmd-replicas-2", "channel": "newco"});
    commands.send(&check).await;
    loop {
        let next = crm.next_channel_state_event().await;
        assert_ne!(next.body["command_id"], "cmd-replicas-1", "answered twice");
        if next.body["command_id"] == "cmd-replicas-2" {
            break;
        }
    }

    let remove =
        json!({"command": "channel.remove", "command_id": "cmd-replicas-3", "channel": "newco"});
    commands.send(&remove).await;
    assert_eq!(
        answer(&mut crm, "cmd-replicas-3").await.body["state"],
        "removed"
    );
    first.wait_served("newco", false).await;
    second.wait_served("newco", false).await;
    first.stop().await;
    second.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_command_waits_while_the_store_cannot_write_and_is_answered_once_it_can() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let inner = xbridge::app::open_store(&settings(&app).state)
        .await
        .expect("the state store");
    let store = FailingStore::new(inner);
    let bridge = Running::start_on(&app, store.clone()).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    store.refuse(Refuse::Writes);
    commands
        .send(&upsert("cmd-outage-1", "newco", &account))
        .await;
    store.wait_for_refusals(1).await;
    assert!(
        bridge.live.get("newco").is_none(),
        "nothing served before it is stored"
    );
    store.heal();
    let answer = answer(&mut crm, "cmd-outage-1").await;
    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    assert_eq!(bridge.live.get("newco").expect("served").revision, 1);
    bridge.stop().await;
    cleanup(&app).await;
}

/// The test's accounts with their `user_id` configured and the webhook on, so the
/// bridge asks X who each channel is.
fn receiving() -> TestOptions {
    TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    }
}

/// `account` as a channel of the config file named `name`.
fn file_channel(name: &str, account: &Account) -> ChannelSettings {
    ChannelSettings {
        name: name.into(),
        consumer_key: account.consumer_key.clone().into(),
        consumer_secret: account.consumer_secret.clone().into(),
        access_token: account.access_token.clone().into(),
        access_token_secret: account.access_token_secret.clone().into(),
        bearer_token: account.bearer_token.clone().into(),
        weight: None,
        url: None,
        inbound: InboundMode::Webhook,
        user_id: None,
        webhook_api: xbridge_core::config::WebhookApi::Aaa,
        xaa_events: None,
        oauth2: None,
    }
}

#[tokio::test]
async fn an_upsert_x_contradicts_for_a_served_account_or_past_the_limit_is_refused() {
    capture_logs();
    let app = spawn_app(receiving()).await;
    let bridge = Running::start_with(&app, |limited| limited.amqp.max_channels = 2).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    let mut wrong_id = upsert("cmd-wrong-id", "newco", &account);
    wrong_id["user_id"] = json!("1234567");
    commands.send(&wrong_id).await;
    let refused = refusal(&mut crm).await;
    assert_eq!(refused["reason"], "invalid_field", "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("user_id"));
    assert!(bridge.live.get("newco").is_none(), "X's no is not served");

    let acme = app.account("acme").clone();
    commands.send(&upsert("cmd-twin", "twin", &acme)).await;
    let refused = refusal(&mut crm).await;
    assert_eq!(refused["reason"], "conflict", "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("acme"));
    assert_no_secret(&refused.to_string(), &acme);
    assert!(
        bridge.live.get("twin").is_none(),
        "one account, one channel"
    );

    commands.send(&upsert("cmd-newco", "newco", &account)).await;
    assert_eq!(answer(&mut crm, "cmd-newco").await.body["state"], "ok");
    let third = new_account(&app, "third_support");
    commands.send(&upsert("cmd-third", "third", &third)).await;
    let refused = refusal(&mut crm).await;
    assert_eq!(refused["reason"], "too_many_channels", "{refused}");
    assert!(bridge.live.get("third").is_none());
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_crm_channel_x_contradicts_at_start_is_left_out_and_the_others_run() {
    capture_logs();
    let app = spawn_app(receiving()).await;
    let first = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    // X refuses the account's token for now: the check cannot tell whose it is,
    // and the channel is stored (`unauthorized`).
    app.simulator
        .set_fault(&account.user_id, Fault::Unauthorized);
    let mut wrong_id = upsert("cmd-unchecked", "newco", &account);
    wrong_id["user_id"] = json!("1234567");
    commands.send(&wrong_id).await;
    answer(&mut crm, "cmd-unchecked").await;
    first.stop().await;
    app.simulator.clear_faults(&account.user_id);

    let again = Running::start(&app).await;
    let state = again.states.get("newco").expect("newco has a state");
    assert_eq!(state.state, ChannelState::Unauthorized, "{state:?}");
    assert!(state.detail.unwrap().contains("1234567"));
    assert_eq!(again.states.get("acme").unwrap().state, ChannelState::Ok);
    // The CRM can fix it, as the bridge runs.
    commands.send(&upsert("cmd-fixed", "newco", &account)).await;
    assert_eq!(answer(&mut crm, "cmd-fixed").await.body["state"], "ok");
    assert_eq!(again.states.get("newco").unwrap().state, ChannelState::Ok);
    again.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_crm_channel_a_file_channel_hid_is_served_again_when_a_reload_removes_that() {
    capture_logs();
    // PostgreSQL: the reloader's store reads beside the bridge's.
    let app = spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let first = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let newco = new_account(&app, "newco_support");
    let gone = new_account(&app, "gone_support");
    commands.send(&upsert("cmd-hid-1", "newco", &newco)).await;
    answer(&mut crm, "cmd-hid-1").await;
    commands.send(&upsert("cmd-hid-2", "gone", &gone)).await;
    answer(&mut crm, "cmd-hid-2").await;
    first.stop().await;

    // The file now has both names: the file's win.
    let bridge = Running::start_with(&app, |shadowed| {
        shadowed.channels.push(file_channel("newco", &newco));
        shadowed.channels.push(file_channel("gone", &gone));
    })
    .await;
    assert_eq!(bridge.live.get("newco").unwrap().origin, Origin::File);
    // The CRM can delete its record the file hides.
    let remove = json!({"command": "channel.remove", "command_id": "cmd-hid-3", "channel": "gone"});
    commands.send(&remove).await;
    assert_eq!(answer(&mut crm, "cmd-hid-3").await.body["state"], "removed");
    assert_eq!(bridge.live.get("gone").unwrap().origin, Origin::File);

    let path = app.dir.path().join("reload.toml");
    std::fs::write(&path, app.config_toml()).unwrap();
    let running = Settings::load_with_sections(&path).unwrap();
    let reloader = xbridge::reload::Reloader::new(path, running, bridge.live.clone())
        .with_stored(Some(stored_channels(&app, &bridge.live).await));
    let reloaded = reloader.reload_and_log().expect("the reload applies");
    assert_eq!(reloaded.removed, ["gone", "newco"]);
    let mut watch = bridge.live.subscribe();
    tokio::time::timeout(
        PATIENCE,
        watch.wait_for(|map| map.get("newco").is_some_and(|c| c.origin == Origin::Crm)),
    )
    .await
    .expect("the CRM's newco is served again")
    .unwrap();
    assert!(bridge.live.get("gone").is_none(), "its record was removed");
    bridge.stop().await;
    cleanup(&app).await;
}

/// The store's CRM channels of the test's bridge, for a reloader.
async fn stored_channels(
    app: &TestApp,
    live: &Arc<LiveChannels>,
) -> xbridge_control::StoredChannels {
    let settings = settings(app);
    let store = xbridge::app::open_store(&settings.state).await.unwrap();
    xbridge_control::StoredChannels::new(&settings, store, live.clone())
        .unwrap()
        .expect("a store key")
}

#[tokio::test]
async fn answers_say_what_the_bridge_serves_not_what_the_command_said() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    commands
        .send(&upsert("cmd-real-1", "newco", &account))
        .await;
    assert_eq!(answer(&mut crm, "cmd-real-1").await.body["state"], "ok");

    // The same command id with another token: the stored channel is answered.
    let mut reused = upsert("cmd-real-1", "newco", &account);
    reused["access_token"] = json!(format!("{}-not-a-token", account.user_id));
    commands.send(&reused).await;
    let replayed = answer(&mut crm, "cmd-real-1").await;
    assert_eq!(replayed.body["state"], "ok", "{}", replayed.body);
    assert_eq!(bridge.live.get("newco").unwrap().revision, 1);

    // A check that confirms the state keeps its since.
    let check =
        |id: &str| json!({"command": "channel.check", "command_id": id, "channel": "newco"});
    commands.send(&check("cmd-real-2")).await;
    let first = answer(&mut crm, "cmd-real-2").await.body;
    commands.send(&check("cmd-real-3")).await;
    let second = answer(&mut crm, "cmd-real-3").await.body;
    assert_eq!(first["since"], second["since"]);

    let pause = json!({"command": "channel.pause", "command_id": "cmd-real-4", "channel": "newco"});
    commands.send(&pause).await;
    assert_eq!(answer(&mut crm, "cmd-real-4").await.body["state"], "paused");
    commands
        .send(&upsert("cmd-real-5", "newco", &account))
        .await;
    let updated = answer(&mut crm, "cmd-real-5").await.body;
    assert_eq!(
        updated["state"], "paused",
        "a paused channel stays paused: {updated}"
    );
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_standby_replica_that_cannot_read_a_notice_reads_it_again() {
    capture_logs();
    let app = spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let active = Running::start(&app).await;
    let inner = xbridge::app::open_store(&settings(&app).state)
        .await
        .expect("the state store");
    let store = FailingStore::new(inner);
    let standby = Running::start_on(&app, store.clone()).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    store.refuse(Refuse::Everything);
    commands
        .send(&upsert("cmd-standby-1", "newco", &account))
        .await;
    assert_eq!(answer(&mut crm, "cmd-standby-1").await.body["state"], "ok");
    active.wait_served("newco", true).await;
    store.wait_for_refusals(1).await;
    store.heal();
    standby.wait_served("newco", true).await;
    active.stop().await;
    standby.stop().await;
    cleanup(&app).await;
}

#[tokio::test]
async fn a_command_held_past_store_wait_is_refused_unavailable_and_not_applied() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let inner = xbridge::app::open_store(&settings(&app).state)
        .await
        .expect("the state store");
    let store = FailingStore::new(inner);
    let mut impatient = settings(&app);
    impatient.amqp.control.store_wait = std::time::Duration::from_secs(1);
    let bridge = Bridge::build_with_store(impatient, store.clone())
        .await
        .expect("the bridge builds");
    let bridge = Running::run(bridge).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    store.refuse(Refuse::Writes);
    commands
        .send(&upsert("cmd-wait-1", "newco", &account))
        .await;
    let refused = refusal(&mut crm).await;
    assert_eq!(refused["reason"], "unavailable", "{refused}");
    assert_eq!(refused["command_id"], "cmd-wait-1");
    assert_no_secret(&refused.to_string(), &account);
    assert!(bridge.live.get("newco").is_none());
    store.heal();
    bridge.stop().await;
    cleanup(&app).await;
}

/// Every row of the store's channel table, as text, holds none of the credentials.
async fn assert_no_credential_in_postgres(app: &TestApp, account: &Account) {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(connection);
    let schema = app.postgres_schema();
    let rows = client
        .query(&format!("SELECT c::text FROM \"{schema}\".channels c"), &[])
        .await
        .expect("the channel table");
    assert!(!rows.is_empty(), "the channel is stored");
    for row in rows {
        let text: String = row.get(0);
        assert_no_secret(&text, account);
    }
}

/// A new channel whose reply queue RabbitMQ refuses (here a classic queue of its
/// name where the bridge declares a quorum queue) is answered `broker_refused` with
/// the broker's words, and control goes on: declared on the commands' own AMQP
/// channel, the refusal closed it, ended the control session, and the command came
/// back to meet the same refusal on every start. A later `channel.check` keeps the
/// bridge's own state when X finds nothing wrong.
#[tokio::test]
async fn a_new_channel_whose_queue_rabbitmq_refuses_is_answered_broker_refused() {
    capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = Running::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "refused_co");
    let wrong_queue = app.names.outgoing_queue("refused");
    let broker = lapin::Connection::connect(&app.amqp_url(), Default::default())
        .await
        .expect("RabbitMQ");
    let amqp = broker.create_channel().await.expect("a channel");
    amqp.queue_declare(
        wrong_queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .expect("a classic queue of the channel's name");

    commands
        .send(&upsert("cmd-refused", "refused", &account))
        .await;
    let refused = answer(&mut crm, "cmd-refused").await;
    assert_eq!(refused.body["state"], "broker_refused", "{}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&wrong_queue), "{detail}");

    let check = json!({"command": "channel.check", "command_id": "cmd-check-refused", "channel": "refused"});
    commands.send(&check).await;
    let checked = answer(&mut crm, "cmd-check-refused").await;
    assert_eq!(checked.body["state"], "broker_refused", "{}", checked.body);
    assert!(
        checked.body["detail"].as_str().is_some(),
        "{}",
        checked.body
    );

    // Control still takes commands, for this channel and the others.
    let other = new_account(&app, "other_co");
    commands.send(&upsert("cmd-other", "other", &other)).await;
    assert_eq!(answer(&mut crm, "cmd-other").await.body["state"], "ok");

    amqp.queue_delete(wrong_queue.as_str().into(), Default::default())
        .await
        .expect("the wrong queue deleted");
    broker.close(0, "done".into()).await.ok();
    bridge.stop().await;
    cleanup(&app).await;
}
