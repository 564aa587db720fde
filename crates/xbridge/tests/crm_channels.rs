//! Issue 14's "done when" through the CRM's own path, end to end: every change
//! is a command published to the control exchange as an allowed user, and
//! every effect is what a CRM sees (its answers, `message.*` events and dead
//! letters) or what X saw (the simulator's DMs and request log). A channel
//! the CRM creates sends replies and brings its customers' DMs; a token
//! lacking the DM permission is answered with the fix and its failed reply is
//! dead-lettered, to be replayed once a regenerated token is in; a token
//! rotated mid-stream signs every request after the change; a channel removed
//! mid-stream keeps its replies in its queue and sends them once when it is
//! back. In every run no credential appears in a log line, an event, a dead
//! letter or the metrics. Real RabbitMQ, simulated X; no sleeps.

#[path = "common/crm.rs"]
mod crm;

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};

use crm::{answer, assert_no_secret, cleanup, logs, new_account, Commands, Running};
use x_simulator::{Account, Customer, Fault};
use xbridge_amqp::dead_letters::{DeadLetterQueue, ReadBound};
use xbridge_test_support::{reply, spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE};

/// Polls every 50 ms, so a polled channel brings DMs quickly.
const POLLED: &str = "poll_interval = \"50ms\"\n";

/// The test's options; captures the logs first (before the harness sets up
/// its own).
fn options() -> TestOptions {
    crm::capture_logs();
    TestOptions {
        inbound: POLLED.to_owned(),
        ..TestOptions::default()
    }
}

/// The bridge with control on and its operations port (for `/metrics`).
async fn start(app: &TestApp) -> Running {
    Running::start_with(app, |settings| {
        settings.telemetry.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// `channel.upsert` of `account` as channel `name`, polled.
fn upsert_polled(command_id: &str, name: &str, account: &Account) -> Value {
    let mut command = crm::upsert(command_id, name, account);
    command["inbound"] = json!("poll");
    command["user_id"] = json!(account.user_id);
    command
}

/// Sends `command` and returns its answer's state, checking the answer names
/// the channel and carries no credential of `account`.
async fn apply(commands: &Commands, crm: &mut Crm, command: &Value, account: &Account) -> Event {
    commands.send(command).await;
    let id = command["command_id"].as_str().unwrap();
    let answer = answer(crm, id).await;
    assert_eq!(answer.body["channel"], command["channel"]);
    assert_no_secret(&answer.body.to_string(), account);
    answer
}

/// Copies of every event and dead letter the bridge publishes from now on,
/// in queues of the test's own, read at the end for credentials.
struct Audit {
    _connection: Connection,
    consumers: Vec<lapin::Consumer>,
}

impl Audit {
    /// Binds a queue to the incoming and the dead-letter exchange (both
    /// topics, declared by the running bridge) with `#`.
    async fn start(app: &TestApp) -> Audit {
        let connection = Connection::connect(&app.amqp_url(), ConnectionProperties::default())
            .await
            .expect("the audit connects");
        let channel = connection.create_channel().await.expect("a channel");
        let mut consumers = Vec::new();
        for exchange in [
            &app.names.incoming_exchange,
            &app.names.dead_letter_exchange,
        ] {
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("an audit queue");
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bound");
            let consumer = channel
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("consume");
            consumers.push(consumer);
        }
        Audit {
            _connection: connection,
            consumers,
        }
    }

    /// Reads the events and dead letters copied so far, up to `marker`: an
    /// event whose body contains it (published last, so everything before
    /// it is in).
    async fn events_until(&mut self, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let delivery = tokio::time::timeout(PATIENCE, self.consumers[0].next())
                .await
                .expect("the marker event is copied")
                .expect("audit stream")
                .expect("delivery");
            let text = format!(
                "{} {:?}",
                String::from_utf8_lossy(&delivery.data),
                delivery.properties
            );
            let done = text.contains(marker);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }

    /// The dead letters copied so far (`expected` of them).
    async fn dead_letters(&mut self, expected: usize) -> Vec<String> {
        let mut seen = Vec::new();
        while seen.len() < expected {
            let delivery = tokio::time::timeout(PATIENCE, self.consumers[1].next())
                .await
                .expect("the dead letter is copied")
                .expect("audit stream")
                .expect("delivery");
            seen.push(format!(
                "{} {:?}",
                String::from_utf8_lossy(&delivery.data),
                delivery.properties
            ));
        }
        seen
    }
}

/// Done when 8: no credential of `accounts` in any event or dead letter the
/// bridge published during the test, in its logs, or in its metrics. A last
/// reply on `channel` marks the end of the events.
async fn assert_no_credential_anywhere(
    app: &TestApp,
    bridge: &Running,
    audit: &mut Audit,
    crm: &mut Crm,
    dead_letters: usize,
    accounts: &[&Account],
) {
    let channel = &app.accounts[0].0;
    crm.publish_reply(channel, &reply("audit-marker", "944480690", "audit marker"))
        .await;
    let events = audit.events_until("audit-marker").await;
    assert!(
        events.iter().any(|e| e.contains("\"channel\":\"newco\"")),
        "the CRM channel's events were copied: {events:?}"
    );
    let letters = audit.dead_letters(dead_letters).await;
    let addr = bridge.ops_addr.expect("the operations port is served");
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    assert!(metrics.contains("xbridge_"), "{metrics}");
    let logs = logs();
    assert!(logs.contains("command answered"), "logs are captured");
    let file_accounts = app.accounts.iter().map(|(_, account)| account);
    for account in accounts.iter().copied().chain(file_accounts) {
        for text in events.iter().chain(&letters) {
            assert_no_secret(text, account);
        }
        assert_no_secret(&metrics, account);
        assert_no_secret(&logs, account);
    }
}

/// The next event of `type`, skipping others (channel states are set aside
/// by [`Crm::next_event`]).
async fn next_of(crm: &mut Crm, kind: &str) -> Event {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == kind {
            return event;
        }
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

/// The texts of the DMs X took from `user_id`, in order.
fn texts(app: &TestApp, user_id: &str) -> Vec<String> {
    app.simulator
        .sent_dms_for(user_id)
        .into_iter()
        .map(|dm| dm.text)
        .collect()
}

/// How many DM reads (polls) X answered for `user_id`.
fn reads(app: &TestApp, user_id: &str) -> usize {
    app.simulator
        .requests_for(user_id)
        .iter()
        .filter(|r| r.path.starts_with("/2/dm_events"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_crm_creates_sends_replies_and_brings_its_customers_dms() {
    let app = spawn_app(options()).await;
    let bridge = start(&app).await;
    let mut audit = Audit::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");

    let created = upsert_polled("cmd-e2e-create", "newco", &account);
    let answer = apply(&commands, &mut crm, &created, &account).await;
    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    assert_eq!(answer.body["account"]["username"], "newco_support");
    assert_eq!(answer.routing_key, "newco.channel.state");

    // A reply on the new channel goes out as a DM, and the CRM hears it was sent.
    crm.publish_reply("newco", &reply("newco-1", "944480690", "welcome aboard"))
        .await;
    let sent = next_of(&mut crm, "message.sent").await;
    assert_eq!(
        (&sent.body["channel"], &sent.body["message_id"]),
        (&json!("newco"), &json!("newco-1"))
    );
    assert_eq!(texts(&app, &account.user_id), ["welcome aboard"]);

    // A customer's DM to the new account reaches the CRM (polled): written
    // after a poll, so it is new to the channel's cursor.
    let polls = reads(&app, &account.user_id);
    tokio::time::timeout(
        PATIENCE,
        app.simulator
            .wait_for_requests_to(&account.user_id, "/2/dm_events", polls + 1),
    )
    .await
    .expect("the new channel polls X");
    let jane = Customer::generate("jane_doe");
    let dm = app
        .simulator
        .customer_dm(&account.user_id, &jane, "Hi newco", None);
    let received = next_of(&mut crm, "message.received").await;
    assert_eq!(received.routing_key, "newco.message.received");
    assert_eq!(received.body["event_id"], dm.id.as_str());

    assert_no_credential_anywhere(&app, &bridge, &mut audit, &mut crm, 0, &[&account]).await;
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_failed_for_a_missing_permission_is_replayed_after_the_regenerated_token() {
    let app = spawn_app(options()).await;
    let bridge = start(&app).await;
    let mut audit = Audit::start(&app).await;
    // The dead letters stay in their queue for the replay, as `xbridge dlq` does it.
    let mut crm = Crm::connect_without_dead_letters(&app.amqp_url(), app.names.clone()).await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    app.simulator
        .set_fault(&account.user_id, Fault::MissingPermission);

    let first = upsert_polled("cmd-e2e-perm-1", "newco", &account);
    let answer = apply(&commands, &mut crm, &first, &account).await;
    assert_eq!(
        answer.body["state"], "missing_permission",
        "{}",
        answer.body
    );
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("Direct message") && detail.contains("regenerate"),
        "{detail}"
    );

    // A reply meanwhile fails with the reason (integrator.md: reasons) and is
    // dead-lettered, not lost.
    crm.publish_reply("newco", &reply("perm-1", "944480690", "first try"))
        .await;
    let failed = next_of(&mut crm, "message.failed").await;
    assert_eq!(failed.body["message_id"], "perm-1");
    assert_eq!(failed.body["reason"], "missing_permission");
    crm.wait_for_depth(&app.names.dead_letter_queue, 1).await;
    assert!(texts(&app, &account.user_id).is_empty());

    // The fix: a regenerated token, by upsert, without a restart.
    let regenerated = app
        .simulator
        .regenerate_access_token(&account.user_id)
        .unwrap();
    let second = upsert_polled("cmd-e2e-perm-2", "newco", &regenerated);
    let answer = apply(&commands, &mut crm, &second, &regenerated).await;
    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    assert_eq!(answer.body["account"]["username"], "newco_support");

    // The dead letter replayed as `xbridge dlq replay --reason missing_permission`
    // does, then a new reply behind it: both go out, once each, in order.
    replay_dead_letters(&app, "missing_permission", 1).await;
    crm.publish_reply("newco", &reply("perm-2", "944480690", "second try"))
        .await;
    assert_eq!(sent_ids(&mut crm, 2).await, ["perm-1", "perm-2"]);
    assert_eq!(texts(&app, &account.user_id), ["first try", "second try"]);
    for request in app.simulator.requests_for(&account.user_id) {
        if request.method == "POST" && request.status == 201 {
            assert_eq!(request.oauth_token, Some(regenerated.access_token.clone()));
        }
    }

    assert_no_credential_anywhere(
        &app,
        &bridge,
        &mut audit,
        &mut crm,
        1,
        &[&account, &regenerated],
    )
    .await;
    bridge.stop().await;
    cleanup(&app).await;
}

/// Replays the `expected` dead letters (all of them, each with `reason`)
/// the way `xbridge dlq replay` does.
async fn replay_dead_letters(app: &TestApp, reason: &str, expected: usize) {
    let connection = Connection::connect(&app.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let mut queue = DeadLetterQueue::open(&connection, app.names.clone())
        .await
        .expect("the dead-letter queue");
    let taken = queue.take(ReadBound::default()).await.expect("read");
    assert_eq!(taken.letters.len(), expected);
    for letter in &taken.letters {
        assert_eq!(letter.reason(), reason);
        queue.replay(letter).await.expect("replayed");
    }
    let _ = connection.close(200, "done".into()).await;
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
        let text = format!("{channel} {i}");
        crm.publish_reply(
            channel,
            &reply(&format!("{channel}-{i}"), &recipient, &text),
        )
        .await;
    }
}

/// The `oauth_token` of each DM send of `user_id` X took, by conversation,
/// in the order X answered them.
fn tokens_by_conversation(app: &TestApp, user_id: &str) -> BTreeMap<String, Vec<String>> {
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

/// In each conversation (sent one at a time) `old` signed the sends before
/// the change and `new` every send after it; both signed some.
fn assert_switched_once(tokens: &BTreeMap<String, Vec<String>>, old: &str, new: &str) {
    let all: Vec<&String> = tokens.values().flatten().collect();
    assert!(all.iter().any(|t| *t == old), "some sent before the change");
    assert!(all.iter().any(|t| *t == new), "some sent after the change");
    for (conversation, tokens) in tokens {
        let first_new = tokens.iter().position(|t| t == new);
        let after = &tokens[first_new.unwrap_or(tokens.len())..];
        assert!(
            after.iter().all(|t| t == new),
            "{conversation}: the old token signed a send after the new one did"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_by_the_crm_while_replies_stream_signs_every_send_after_it() {
    let app = spawn_app(options()).await;
    let bridge = start(&app).await;
    let mut audit = Audit::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let old = new_account(&app, "newco_support");
    let new = rotated(&old);
    // X accepts both while the bridge changes over.
    app.simulator.add_token(new.clone());
    let created = upsert_polled("cmd-e2e-rotate-1", "newco", &old);
    assert_eq!(
        apply(&commands, &mut crm, &created, &old).await.body["state"],
        "ok"
    );

    publish_batch(&crm, "newco", 0, 100).await;
    publish_batch(&crm, "acme", 0, 100).await;
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_dms(&old.user_id, 30))
        .await
        .expect("newco sends");
    let rotation = upsert_polled("cmd-e2e-rotate-2", "newco", &new);
    let answer = apply(&commands, &mut crm, &rotation, &new).await;
    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    publish_batch(&crm, "newco", 100, 100).await;
    publish_batch(&crm, "acme", 100, 100).await;

    // Every reply sent exactly once, on both channels.
    let ids = sent_ids(&mut crm, 400).await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400);
    crm.publish_reply("newco", &reply("newco-last", "944480690", "newco last"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["newco-last"]);
    for user_id in [&old.user_id, &app.user_id("acme")] {
        let sent = texts(&app, user_id);
        assert_eq!(sent.iter().collect::<HashSet<_>>().len(), sent.len());
    }
    assert_eq!(texts(&app, &old.user_id).len(), 201);
    assert_eq!(texts(&app, &app.user_id("acme")).len(), 200);

    let tokens = tokens_by_conversation(&app, &old.user_id);
    assert_switched_once(&tokens, &old.access_token, &new.access_token);
    let last = app
        .simulator
        .requests_for(&old.user_id)
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path.ends_with("/messages"));
    assert_eq!(
        last.and_then(|r| r.oauth_token),
        Some(new.access_token.clone())
    );
    // The other channel signed with its own token throughout.
    let acme = app.account("acme");
    let acme_tokens = tokens_by_conversation(&app, &acme.user_id);
    assert!(acme_tokens
        .values()
        .flatten()
        .all(|t| *t == acme.access_token));
    assert_eq!(app.simulator.counters().unauthorized, 0);

    assert_no_credential_anywhere(&app, &bridge, &mut audit, &mut crm, 0, &[&old, &new]).await;
    bridge.stop().await;
    cleanup(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_crm_removes_mid_stream_keeps_its_replies_and_sends_them_once_when_back() {
    let app = spawn_app(options()).await;
    let bridge = start(&app).await;
    let mut audit = Audit::start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "newco_support");
    let queue = app.names.outgoing_queue("newco");
    let created = upsert_polled("cmd-e2e-remove-1", "newco", &account);
    assert_eq!(
        apply(&commands, &mut crm, &created, &account).await.body["state"],
        "ok"
    );

    // X takes each DM at once but answers late: the first reply is in flight
    // when the channel goes, the others of its conversation wait behind it.
    app.simulator
        .set_fault(&account.user_id, Fault::Latency { millis: 1500 });
    for i in 1..=4 {
        let text = format!("reply {i}");
        crm.publish_reply("newco", &reply(&format!("r{i}"), "944480690", &text))
            .await;
    }
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_dms(&account.user_id, 1))
        .await
        .expect("the first reply reaches X");
    let remove =
        json!({"command": "channel.remove", "command_id": "cmd-e2e-remove-2", "channel": "newco"});
    let answer = apply(&commands, &mut crm, &remove, &account).await;
    assert_eq!(answer.body["state"], "removed", "{}", answer.body);
    app.simulator.clear_faults(&account.user_id);

    // The reply in flight is settled: sent once, and the CRM told.
    assert_eq!(sent_ids(&mut crm, 1).await, ["r1"]);
    // The rest wait in the channel's queue (operator.md: channel states,
    // `removed`) with replies published since; none sent, none dead-lettered.
    for i in 5..=6 {
        let text = format!("reply {i}");
        crm.publish_reply("newco", &reply(&format!("r{i}"), "944480690", &text))
            .await;
    }
    crm.wait_for_depth(&queue, 5).await;
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);
    assert_eq!(texts(&app, &account.user_id), ["reply 1"]);

    // Added back by the CRM: each sent once, in the order published.
    let again = upsert_polled("cmd-e2e-remove-3", "newco", &account);
    assert_eq!(
        apply(&commands, &mut crm, &again, &account).await.body["state"],
        "ok"
    );
    assert_eq!(sent_ids(&mut crm, 5).await, ["r2", "r3", "r4", "r5", "r6"]);
    crm.publish_reply("newco", &reply("r7", "944480690", "reply 7"))
        .await;
    assert_eq!(sent_ids(&mut crm, 1).await, ["r7"]);
    let expected: Vec<String> = (1..=7).map(|i| format!("reply {i}")).collect();
    assert_eq!(texts(&app, &account.user_id), expected);

    assert_no_credential_anywhere(&app, &bridge, &mut audit, &mut crm, 0, &[&account]).await;
    bridge.stop().await;
    cleanup(&app).await;
}

/// An operator's `xbridge check` sees the channels the CRM created too, read
/// from the state store with the credentials key, and prints no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xbridge_check_checks_the_channels_the_crm_created() {
    let app = spawn_app(options()).await;
    let bridge = start(&app).await;
    let mut crm = app.crm().await;
    let commands = Commands::connect(&app).await;
    let account = new_account(&app, "checked_co");
    let created = upsert_polled("cmd-check-create", "checked", &account);
    let answer = apply(&commands, &mut crm, &created, &account).await;
    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    // The embedded state file is the running bridge's alone.
    bridge.stop().await;

    let config = app.dir.path().join("xbridge-check.toml");
    let key = format!(
        "[state]\ncredentials_key = \"{}\"\n",
        crm::credentials_key()
    );
    std::fs::write(&config, app.config_toml().replacen("[state]\n", &key, 1))
        .expect("config written");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_xbridge"))
        .args(["check", "--channel", "checked", "--config"])
        .arg(&config)
        .output()
        .await
        .expect("xbridge check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("channel checked (created by the CRM):"),
        "{text}"
    );
    assert!(
        text.contains(&format!("@checked_co (id {})", account.user_id)),
        "{text}"
    );
    assert_no_secret(&text, &account);
    cleanup(&app).await;
}
