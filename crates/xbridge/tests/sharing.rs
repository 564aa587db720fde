//! Issue 15, done-when 2: replicas share the channels fairly and follow
//! membership. Four `xbridge` processes on one PostgreSQL store and a
//! three-node RabbitMQ cluster of the test's own ([`PrivateCluster`]), over
//! 12 channels of which 6 poll X, started one after another: each ends with
//! 3 channels' reply consumers and 1 or 2 poll leases; stopping one moves its
//! channels to the other three (4 each), starting it again moves some back.
//! Replies flow through every move: each is sent once, and each
//! conversation's in order, with one `message.sent` each (a repeat only under
//! the same AMQP `message_id`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use x_simulator::Fault;
use xbridge_test_support::{spawn_app, BridgeProcess, Crm, PrivateCluster, TestApp, TestOptions};

const CHANNELS: usize = 12;
/// Channels `s00`, `s02`, … poll X; the others take X's webhook.
const POLLED: usize = CHANNELS / 2;
const CONVERSATIONS: usize = 2;
/// Replies per conversation published before each change of membership, so
/// the change happens while they are sent.
const ROUNDS_PER_PHASE: usize = 6;
const PHASES: usize = 6;
const REPLIES: usize = CHANNELS * CONVERSATIONS * ROUNDS_PER_PHASE * PHASES;

/// A change of membership settles within a few heartbeats (1 s in tests)
/// and the drain of the consumers that move; a lost replica within its
/// expiry (5 s).
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

fn channel(i: usize) -> String {
    format!("s{i:02}")
}

fn recipient(ch: usize, c: usize) -> String {
    (3_000_000 + ch * 100 + c).to_string()
}

/// One replica process and its ops address.
struct Replica {
    process: BridgeProcess,
    ops: String,
}

impl Replica {
    async fn start(config: &Path) -> Replica {
        let process = BridgeProcess::start(binary(), config, &[]);
        process.wait_for_log("outbound running", 1).await;
        let ops = process
            .logs()
            .iter()
            .find(|line| line.contains("serving /healthz"))
            .and_then(|line| line.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the ops address is logged")
            .to_owned();
        Replica { process, ops }
    }

    /// (channels served, reply consumers, poll leases held), from `/metrics`.
    async fn load(&self, http: &reqwest::Client) -> (usize, usize, usize) {
        let text = http
            .get(format!("http://{}/metrics", self.ops))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics text");
        let value = |line: &str| -> usize {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as usize
        };
        let (mut served, mut consumers, mut leases) = (0, 0, 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if line.starts_with("xbridge_channels_served ") {
                served = value(line);
            } else if line.starts_with("xbridge_reply_consumers ") {
                consumers = value(line);
            } else if line.starts_with("xbridge_poll_lease_held{") {
                leases += value(line);
            }
        }
        (served, consumers, leases)
    }
}

/// Waits until `replicas` share the channels evenly: each serves and
/// consumes `CHANNELS / n` rounded down or up and holds `POLLED / n` leases
/// rounded down or up, every channel is served once, and the broker sees
/// exactly one consumer on each reply queue (no replica stands by).
async fn settled(replicas: &[&Replica], app: &TestApp, cluster: &PrivateCluster) {
    let http = reqwest::Client::new();
    let n = replicas.len();
    let even = |count: usize, x: usize| x == count / n || x == count.div_ceil(n);
    let wait = async {
        loop {
            let mut loads = Vec::new();
            for replica in replicas {
                loads.push(replica.load(&http).await);
            }
            let fair = loads
                .iter()
                .all(|&(s, c, l)| s == c && even(CHANNELS, s) && even(POLLED, l));
            let total: usize = loads.iter().map(|l| l.0).sum();
            if fair && total == CHANNELS {
                let consumers = cluster.consumers().await;
                let queues: Vec<usize> = (0..CHANNELS)
                    .map(|i| {
                        let queue = app.names.outgoing_queue(&channel(i));
                        consumers.get(&queue).copied().unwrap_or(0)
                    })
                    .collect();
                if queues.iter().all(|&c| c == 1) {
                    return loads;
                }
            }
            // Polled: the gauges move as heartbeats pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let loads = tokio::time::timeout(SETTLE_PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("{n} replicas did not share the channels evenly"));
    eprintln!("{n} replicas: (served, consumers, leases) = {loads:?}");
}

/// One phase's replies: `ROUNDS_PER_PHASE` per conversation, rounds
/// interleaved as agents answer; texts read `<recipient>:<seq>`.
async fn publish_phase(crm: &Crm, phase: usize) {
    for round in 0..ROUNDS_PER_PHASE {
        let seq = phase * ROUNDS_PER_PHASE + round;
        for ch in 0..CHANNELS {
            for c in 0..CONVERSATIONS {
                let to = recipient(ch, c);
                let reply = json!({
                    "message_id": format!("r-{ch}-{c}-{seq}"),
                    "recipient_id": to,
                    "text": format!("{to}:{seq}"),
                });
                crm.publish_reply(&channel(ch), &reply).await;
            }
        }
    }
}

/// Every channel's DMs once all are in: once each, each conversation's in
/// order.
async fn assert_sent_once_in_order(app: &TestApp) {
    let per_channel = REPLIES / CHANNELS;
    for ch in 0..CHANNELS {
        let user = app.user_id(&channel(ch));
        tokio::time::timeout(
            SETTLE_PATIENCE,
            app.simulator.wait_for_dms(&user, per_channel),
        )
        .await
        .unwrap_or_else(|_| panic!("waited for {}'s DMs", channel(ch)));
        let dms = app.simulator.sent_dms_for(&user);
        assert_eq!(dms.len(), per_channel, "{}: each reply once", channel(ch));
        let mut conversations: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for dm in dms {
            let (to, seq) = dm.text.split_once(':').expect("<recipient>:<seq>");
            conversations
                .entry(to.to_owned())
                .or_default()
                .push(seq.parse().unwrap());
        }
        let expected: Vec<usize> = (0..ROUNDS_PER_PHASE * PHASES).collect();
        for (to, seqs) in conversations {
            assert_eq!(seqs, expected, "{}, {to}: once, in order", channel(ch));
        }
    }
}

/// Reads `message.sent` until every reply has one; a repeat carries the
/// first one's AMQP `message_id`.
async fn assert_each_reported(crm: &mut Crm) {
    let mut reported: HashMap<String, Option<String>> = HashMap::new();
    while reported.len() < REPLIES {
        let event = tokio::time::timeout(SETTLE_PATIENCE, crm.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} of {REPLIES} message.sent came", reported.len()));
        if event.body["type"] != "message.sent" {
            continue;
        }
        let reply = event.body["message_id"].as_str().unwrap().to_owned();
        let amqp_id = event
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        match reported.get(&reply) {
            Some(first) => assert_eq!(first, &amqp_id, "a repeat of {reply}'s message.sent"),
            None => {
                reported.insert(reply, amqp_id);
            }
        }
    }
}

/// The replicas' configuration: every channel, half of them polled; each
/// replica's `amqp.hosts` starts at another node, and serves `/metrics` on a
/// port of its own.
fn configs(app: &TestApp, cluster: &PrivateCluster, count: usize) -> Vec<std::path::PathBuf> {
    let hosts = cluster.hosts();
    let mut toml = app.config_toml();
    for i in (0..CHANNELS).step_by(2) {
        let name = channel(i);
        toml = toml.replace(
            &format!("name = \"{name}\"\n"),
            &format!(
                "name = \"{name}\"\ninbound = \"poll\"\nuser_id = \"{}\"\n",
                app.user_id(&name)
            ),
        );
    }
    toml.push_str("\n[telemetry]\nlisten = \"127.0.0.1:0\"\n");
    (0..count)
        .map(|r| {
            let mut rotated = hosts.clone();
            rotated.rotate_left(r % hosts.len());
            let path = app.dir.path().join(format!("replica-{r}.toml"));
            let mine = toml.replace(
                &format!("hosts = {hosts:?}"),
                &format!("hosts = {rotated:?}"),
            );
            std::fs::write(&path, mine).expect("a replica's config");
            path
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_twelve_channels_evenly_and_follow_membership() {
    let cluster = PrivateCluster::started().await;
    let app = spawn_app(TestOptions {
        channels: (0..CHANNELS).map(channel).collect(),
        amqp_url: Some(cluster.amqp_url(0)),
        amqp_hosts: cluster.hosts(),
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    for ch in 0..CHANNELS {
        // Slow enough that each phase's replies are still going out when
        // the membership changes.
        app.simulator
            .set_fault(&app.user_id(&channel(ch)), Fault::Latency { millis: 100 });
    }
    let configs = configs(&app, &cluster, 4);

    // One after another: 12, then 6 + 6, then 4 + 4 + 4, then 3 each.
    let mut replicas = vec![Replica::start(&configs[0]).await];
    // The topology is the bridge's to declare.
    let mut crm = Crm::connect(&cluster.amqp_url(1), app.names.clone()).await;
    settled(&replicas.iter().collect::<Vec<_>>(), &app, &cluster).await;
    for (phase, config) in configs.iter().enumerate().skip(1) {
        publish_phase(&crm, phase - 1).await;
        replicas.push(Replica::start(config).await);
        settled(&replicas.iter().collect::<Vec<_>>(), &app, &cluster).await;
    }

    // One stops: its channels go to the other three, 4 each.
    publish_phase(&crm, 3).await;
    let stopped = replicas.remove(1);
    stopped.process.terminate().await;
    settled(&replicas.iter().collect::<Vec<_>>(), &app, &cluster).await;

    // It starts again: it takes some back, 3 each again.
    publish_phase(&crm, 4).await;
    replicas.push(Replica::start(&configs[1]).await);
    settled(&replicas.iter().collect::<Vec<_>>(), &app, &cluster).await;

    publish_phase(&crm, 5).await;
    assert_sent_once_in_order(&app).await;
    assert_each_reported(&mut crm).await;
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    for replica in replicas {
        replica.process.terminate().await;
    }
    app.cleanup().await;
}
