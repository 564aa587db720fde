//! Issue 15, done-when 4 (second half): records older than the retention are
//! pruned by a running bridge while replies flow, on PostgreSQL (a schema of
//! this test's own). The store's contract checks prune at the store level;
//! here the bridge's own pruner (`state.prune_interval`) does it, beside the
//! outbound side that keeps recording replies.
//!
//! No record can be 31 days old in a test, so some are aged by SQL: the
//! rows the bridge wrote for the stream's first part, and a few inserted
//! directly in the tables the outbound side leaves alone here (delivered DMs,
//! a send intent). `state.prune_interval` has no lower bound but zero, so the
//! bridge is configured with 50 ms, as an operator could: no test-only path.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use xbridge_test_support::{
    postgres_url, reply, spawn_app, BridgeProcess, Crm, TestApp, TestOptions,
};

/// Conversations of the one channel; each keeps its replies in order.
const CONVERSATIONS: usize = 4;
/// Replies per part of the stream (`a`, `b`, `c`), over the conversations.
const PER_PART: usize = 40;
/// How far back the aged records are put: beyond the 45-day default retention.
const AGE: &str = "60 days";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

/// The recipient of conversation `c`.
fn recipient(c: usize) -> String {
    (3_000_000 + c).to_string()
}

/// The reply ids of part `part`: `<part>-<i>`.
fn ids(part: &str) -> Vec<String> {
    (0..PER_PART).map(|i| format!("{part}-{i}")).collect()
}

/// Publishes part `part`; texts read `<conversation>:<part>-<i>`.
async fn publish_part(crm: &Crm, part: &str) {
    for (i, id) in ids(part).iter().enumerate() {
        let to = recipient(i % CONVERSATIONS);
        crm.publish_reply("acme", &reply(id, &to, &format!("{to}:{id}")))
            .await;
    }
}

/// Reads `message.sent` until each of `expected` has one; none of them may
/// come twice but with the first one's AMQP `message_id` (a redelivery).
async fn wait_reported(crm: &mut Crm, expected: &[String], seen: &mut HashMap<String, String>) {
    let mut waiting: HashSet<&String> = expected
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    while !waiting.is_empty() {
        let event = crm.next_event().await;
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        let id = event.body["message_id"]
            .as_str()
            .expect("message_id")
            .to_owned();
        let amqp_id = event
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        if let Some(first) = seen.get(&id) {
            assert_eq!(first, &amqp_id, "a repeated message.sent of {id}");
        } else {
            seen.insert(id.clone(), amqp_id);
        }
        waiting.remove(&id);
    }
}

async fn database(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL for the test");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path TO \"{}\"", app.postgres_schema()))
        .await
        .expect("the test's schema");
    client
}

/// How many rows of `table` belong to the replies of `part`.
async fn rows_of(db: &tokio_postgres::Client, table: &str, part: &str) -> i64 {
    db.query_one(
        &format!("SELECT count(*) FROM {table} WHERE message_id LIKE $1"),
        &[&format!("{part}-%")],
    )
    .await
    .expect("count")
    .get(0)
}

/// One series of `xbridge_state_pruned_total` on the ops server, 0 if absent.
async fn pruned_total(ops_port: u16, table: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{ops_port}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    let series = format!("xbridge_state_pruned_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_are_pruned_while_replies_flow_and_each_reply_is_sent_once() {
    let app = spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let schema_line = format!("schema = \"{}\"", app.postgres_schema());
    let toml = app.config_toml().replace(
        &schema_line,
        &format!("{schema_line}\nretention = \"45d\"\nprune_interval = \"50ms\""),
    );
    let config = app.dir.path().join("retention.toml");
    std::fs::write(
        &config,
        format!("{toml}\n[telemetry]\nlisten = \"127.0.0.1:{ops_port}\"\n"),
    )
    .expect("the config");
    let bridge = BridgeProcess::start(binary(), &config, &[]);
    bridge.wait_for_log("outbound running", 1).await;
    let mut crm = app.crm().await;
    let db = database(&app).await;
    let mut reported = HashMap::new();

    // The stream's first part is sent and recorded...
    publish_part(&crm, "a").await;
    wait_reported(&mut crm, &ids("a"), &mut reported).await;
    // ...and its records, with a few of the kinds the outbound side leaves
    // alone here, made older than the retention in one transaction (so one
    // prune finds them all), beside recent ones of the same kinds.
    let aged = db
        .query_one(
            &format!(
                "WITH replies AS (
                     UPDATE sent_replies SET recorded_at = now() - interval '{AGE}'
                     WHERE message_id LIKE 'a-%' RETURNING 1
                 ), own AS (
                     UPDATE own_sends SET recorded_at = now() - interval '{AGE}'
                     WHERE message_id LIKE 'a-%' RETURNING 1
                 ), delivered AS (
                     INSERT INTO delivered_events (channel, event_id, delivered_at)
                     VALUES ('acme', 'old-1', now() - interval '{AGE}'),
                            ('acme', 'old-2', now() - interval '{AGE}'),
                            ('acme', 'recent-1', now())
                     RETURNING 1
                 ), intents AS (
                     INSERT INTO send_intents (channel, message_id, part, started_at)
                     VALUES ('acme', 'old-intent', 0, now() - interval '{AGE}')
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM replies), (SELECT count(*) FROM own),
                        (SELECT count(*) FROM delivered), (SELECT count(*) FROM intents)"
            ),
            &[],
        )
        .await
        .expect("age the first part's records");
    let aged: (i64, i64) = (aged.get(0), aged.get(1));
    assert_eq!(
        aged,
        (PER_PART as i64, PER_PART as i64),
        "(sent_replies, own_sends) aged"
    );

    // The stream goes on while the bridge's pruner finds the old records;
    // its third part is published once they are gone, so the prune is
    // between replies sent before and after it, with the second part's in
    // flight around it.
    publish_part(&crm, "b").await;
    bridge
        .wait_for_log(&format!("sent_replies={PER_PART}"), 1)
        .await;
    eprintln!(
        "pruned with {} of {} DMs sent",
        app.simulator.sent_dms_for(&app.user_id("acme")).len(),
        3 * PER_PART
    );
    publish_part(&crm, "c").await;
    let all: Vec<String> = ["a", "b", "c"].iter().flat_map(|p| ids(p)).collect();
    wait_reported(&mut crm, &all, &mut reported).await;

    // Every reply went to X once, each conversation's in order.
    let dms = app.wait_for_dms("acme", all.len()).await;
    let texts: Vec<&str> = dms.iter().map(|dm| dm.text.as_str()).collect();
    let distinct: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!(distinct.len(), texts.len(), "no DM twice: {texts:?}");
    assert_eq!(texts.len(), all.len(), "each reply once");
    let mut conversations: HashMap<&str, Vec<&str>> = HashMap::new();
    for text in &texts {
        let (to, id) = text.split_once(':').expect("<conversation>:<id>");
        conversations.entry(to).or_default().push(id);
    }
    for (c, sent) in conversations {
        let expected: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| recipient(j % PER_PART % CONVERSATIONS) == c)
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(sent, expected, "conversation {c}: in order");
    }

    // The old records are gone, the recent ones stay.
    for table in ["sent_replies", "own_sends"] {
        assert_eq!(rows_of(&db, table, "a").await, 0, "{table}: the aged part");
        for part in ["b", "c"] {
            assert_eq!(
                rows_of(&db, table, part).await,
                PER_PART as i64,
                "{table}: part {part} stays"
            );
        }
    }
    let delivered: Vec<String> = db
        .query(
            "SELECT event_id FROM delivered_events ORDER BY event_id",
            &[],
        )
        .await
        .expect("delivered")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(delivered, ["recent-1"]);
    let intents: i64 = db
        .query_one(
            "SELECT count(*) FROM send_intents WHERE message_id = 'old-intent'",
            &[],
        )
        .await
        .expect("intents")
        .get(0);
    assert_eq!(intents, 0, "the old send intent is pruned");
    // The metric counts what was pruned, and nothing else was. The line
    // waited for above is logged after its prune's counts (and those of an
    // earlier prune that found the other tables' aged rows first).
    for (table, count) in [
        ("sent_replies", PER_PART),
        ("own_sends", PER_PART),
        ("delivered_events", 2),
        ("send_intents", 1),
    ] {
        assert_eq!(
            pruned_total(ops_port, table).await,
            count as f64,
            "xbridge_state_pruned_total{{table={table:?}}}"
        );
    }

    bridge.terminate().await;
    app.cleanup().await;
}
