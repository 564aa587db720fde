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
        for exchange in [&app.names.incoming_exchange, &app.names.dead_letter_exchange] {
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
    assert!(events.len() > 1, "events were copied: {events:?}");
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
