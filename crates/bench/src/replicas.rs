//! Replicas: the outbound throughput of N real `xbridge run` processes that
//! share one PostgreSQL state store and one broker. Each channel's reply queue
//! has a single active consumer, so replicas share the work by channel: the
//! figures show both the rate and how the channels ended up spread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use x_simulator::Fault;
use xbridge_test_support::{amqp_url, TestOptions};

use crate::child::{ensure_built, ChildBridge};
use crate::harness::{between, collect_outcomes, options, read_queue, world, Outcomes, Publisher};
use crate::stats::{other_outcomes, p50_p99_max, per_second, print_load, Latencies};

/// What to run.
#[derive(Debug, Clone)]
pub struct ReplicasArgs {
    /// Replica counts to run with, in turn.
    pub replicas: Vec<usize>,
    /// Channels (X accounts), each with its own reply queue.
    pub channels: usize,
    /// Conversations (recipients) per channel.
    pub conversations: usize,
    /// Replies in the backlog, spread evenly over the channels.
    pub replies: usize,
    /// Simulator latencies to run at, in milliseconds.
    pub latencies_ms: Vec<u64>,
    /// How long a run may take before it is reported as incomplete.
    pub timeout: Duration,
    /// The `xbridge` binary.
    pub xbridge: PathBuf,
}

/// The figures of one run.
struct ReplicasRun {
    latency_ms: u64,
    replicas: usize,
    published: usize,
    sent: usize,
    other_outcomes: usize,
    rate: f64,
    to_sent: Option<Latencies>,
    /// Per replica, the channels it sent DMs on (from its `/metrics`).
    active: Vec<Vec<String>>,
}

/// Runs every latency and replica count and prints the table.
pub async fn run(args: &ReplicasArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    anyhow::ensure!(args.channels > 0, "at least one channel");
    let mut runs = Vec::new();
    for &latency_ms in &args.latencies_ms {
        for &replicas in &args.replicas {
            runs.push(one(args, replicas.max(1), latency_ms).await?);
        }
    }
    print_table(args, &runs);
    Ok(())
}

fn print_table(args: &ReplicasArgs, runs: &[ReplicasRun]) {
    println!("## Replicas\n");
    println!(
        "`{}` run N times as child processes with one configuration: {} channels backed by simulator \
         accounts in the benchmark's process, the state in PostgreSQL (one schema per run, shared by \
         the replicas), no webhook server, no polling. The replicas are started together; once all \
         answer `/readyz`, {} replies are published at once (persistent, confirmed), spread evenly \
         over the channels and {} conversations per channel. Rate: first publish to last \
         `message.sent`. Channels per replica: those on which the replica's `/metrics` counted DMs \
         (`xbridge_dms_sent_total`).\n",
        args.xbridge.display(),
        args.channels,
        args.replies,
        args.conversations,
    );
    println!("| X latency | replicas | done | replies/s | publish → `message.sent` p50 | p99 | max | channels per replica |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in runs {
        let split = run
            .active
            .iter()
            .map(|channels| channels.len().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        println!(
            "| {} ms | {} | {}/{}{} | {:.0} | {} | {} |",
            run.latency_ms,
            run.replicas,
            run.sent,
            run.published,
            other_outcomes(run.other_outcomes),
            run.rate,
            p50_p99_max(run.to_sent),
            split,
        );
    }
    print_load();
    println!();
}

async fn one(args: &ReplicasArgs, replicas: usize, latency_ms: u64) -> anyhow::Result<ReplicasRun> {
    eprintln!("replicas: {replicas} replica(s), X latency {latency_ms} ms");
    let names: Vec<String> = (0..args.channels).map(|i| format!("c{i}")).collect();
    let app = world(TestOptions {
        postgres: true,
        ..options(names.clone())
    })
    .await;
    if latency_ms > 0 {
        for (_, account) in &app.accounts {
            app.simulator
                .set_fault(&account.user_id, Fault::Latency { millis: latency_ms });
        }
    }
    // Every replica gets the same configuration but for its ops port.
    let spawned: anyhow::Result<Vec<ChildBridge>> = (0..replicas)
        .map(|i| ChildBridge::spawn(&args.xbridge, &app, &format!("replica-{i}.toml")))
        .collect();
    let mut replicas_running = match spawned {
        Ok(started) => started,
        Err(e) => {
            app.cleanup().await;
            return Err(e);
        }
    };
    let result = measure(args, &app, &mut replicas_running, latency_ms).await;
    for replica in &replicas_running {
        replica.terminate();
    }
    for replica in &mut replicas_running {
        replica.wait_exit().await;
    }
    app.cleanup().await;
    result
}

async fn measure(
    args: &ReplicasArgs,
    app: &xbridge_test_support::TestApp,
    replicas: &mut [ChildBridge],
    latency_ms: u64,
) -> anyhow::Result<ReplicasRun> {
    for replica in replicas.iter_mut() {
        replica.wait_ready().await?;
    }
    let (_reader, mut events) = read_queue(&amqp_url(), &app.names.incoming_queue).await?;
    let publisher = Publisher::connect(&amqp_url()).await?;
    let start = Instant::now();
    let published_at = publisher
        .publish_routed(&app.names.outgoing_exchange, backlog(args))
        .await?;

    let Outcomes { sent_at, other } =
        collect_outcomes(&mut events, args.replies, args.timeout, "replicas").await;
    let last = sent_at.values().max().copied().unwrap_or(start);
    let to_sent = sent_at
        .iter()
        .map(|(i, at)| between(published_at[*i], *at))
        .collect();
    let mut active = Vec::with_capacity(replicas.len());
    for replica in replicas.iter() {
        active.push(channels_sent_on(replica.ops_port).await?);
    }
    Ok(ReplicasRun {
        latency_ms,
        replicas: replicas.len(),
        published: args.replies,
        sent: sent_at.len(),
        other_outcomes: other,
        rate: per_second(sent_at.len(), between(start, last)),
        to_sent: Latencies::of(to_sent),
        active,
    })
}

/// The backlog, channel by channel in turn so every channel has work from the
/// first publish: reply `m-<i>` goes to channel `c<i % channels>`, to one of
/// that channel's conversations in turn.
fn backlog(args: &ReplicasArgs) -> Vec<(String, Vec<u8>)> {
    (0..args.replies)
        .map(|i| {
            let channel = i % args.channels;
            let conversation = (i / args.channels) % args.conversations.max(1);
            let recipient = 2_000_000_000_000_000_000u64 + conversation as u64;
            let body = serde_json::to_vec(&xbridge_test_support::reply(
                &format!("m-{i}"),
                &recipient.to_string(),
                &format!("bench reply {i}"),
            ))
            .expect("JSON");
            (format!("c{channel}"), body)
        })
        .collect()
}

/// The channels on which a replica sent DMs, from `xbridge_dms_sent_total` on
/// its `/metrics`.
async fn channels_sent_on(ops_port: u16) -> anyhow::Result<Vec<String>> {
    let text = reqwest::get(format!("http://127.0.0.1:{ops_port}/metrics"))
        .await?
        .text()
        .await?;
    let mut sent: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("xbridge_dms_sent_total{") else {
            continue;
        };
        let Some(channel) = labels
            .split_once("channel=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(channel, _)| channel.to_owned())
        else {
            continue;
        };
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        *sent.entry(channel).or_default() += count;
    }
    Ok(sent
        .into_iter()
        .filter(|(_, count)| *count > 0.0)
        .map(|(channel, _)| channel)
        .collect())
}
