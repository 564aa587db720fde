//! Replicas: the outbound throughput of N real `xbridge run` processes that
//! share one PostgreSQL state store and one broker. Each channel's reply queue
//! has a single active consumer, so replicas share the work by channel: the
//! figures show both the rate and how the channels ended up spread.
//!
//! With `--cluster` the broker is a three-node [`PrivateCluster`] the
//! benchmark starts (and deletes) itself: every node is in each replica's
//! `amqp.hosts`, rotated per replica so they connect to different nodes, and
//! each run also reports the CPU seconds of every process involved.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use x_simulator::Fault;
use xbridge_test_support::{amqp_url, postgres_url, PrivateCluster, TestApp, TestOptions};

use crate::child::{ensure_built, ChildBridge};
use crate::harness::{
    between, collect_outcomes, options, read_queue, world, Outcomes, Publisher, SETUP_PATIENCE,
};
use crate::procstat;
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
    /// On a three-node cluster of the benchmark's own instead of the shared
    /// broker.
    pub cluster: bool,
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
    /// Per replica, the cluster nodes (1, 2, 3) its connections went to;
    /// empty without a cluster.
    nodes: Vec<Vec<usize>>,
    /// Where the CPU went (on a cluster only).
    cpu: Option<CpuUse>,
    /// From all replicas ready to each serving its share of the channels;
    /// `None` when the replicas report no shares (a version without fair
    /// sharing) or did not settle in time.
    settled: Option<Duration>,
}

/// CPU seconds of each process over a run, first publish to last outcome.
struct CpuUse {
    /// Seconds of the run.
    wall: f64,
    /// Each replica's.
    replicas: Vec<f64>,
    /// Each RabbitMQ node's `beam.smp`.
    nodes: Vec<f64>,
    /// The PostgreSQL backends serving the replicas' connections.
    postgres: f64,
    /// The benchmark's process: the X simulator, the publisher, the reader.
    bench: f64,
    /// The whole machine's busy time, every process (other work included).
    machine: f64,
}

/// Runs every latency and replica count and prints the table.
pub async fn run(args: &ReplicasArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    anyhow::ensure!(args.channels > 0, "at least one channel");
    let cluster = if args.cluster {
        eprintln!("replicas: starting a three-node RabbitMQ cluster");
        Some(PrivateCluster::started().await)
    } else {
        None
    };
    let mut runs = Vec::new();
    for &latency_ms in &args.latencies_ms {
        for &replicas in &args.replicas {
            runs.push(one(args, cluster.as_ref(), replicas.max(1), latency_ms).await?);
        }
    }
    if cluster.is_some() {
        print_cluster_tables(args, &runs);
    } else {
        print_table(args, &runs);
    }
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

async fn one(
    args: &ReplicasArgs,
    cluster: Option<&PrivateCluster>,
    replicas: usize,
    latency_ms: u64,
) -> anyhow::Result<ReplicasRun> {
    eprintln!("replicas: {replicas} replica(s), X latency {latency_ms} ms");
    let names: Vec<String> = (0..args.channels).map(|i| format!("c{i}")).collect();
    let app = world(TestOptions {
        postgres: true,
        amqp_url: cluster.map(|c| c.amqp_url(0)),
        amqp_hosts: cluster.map(PrivateCluster::hosts).unwrap_or_default(),
        ..options(names.clone())
    })
    .await;
    if latency_ms > 0 {
        for (_, account) in &app.accounts {
            app.simulator
                .set_fault(&account.user_id, Fault::Latency { millis: latency_ms });
        }
    }
    // Every replica gets the same configuration but for its ops port and,
    // on a cluster, the order of its hosts: replica i starts at node i + 1
    // (modulo three), so the replicas connect to different nodes.
    let spawned: anyhow::Result<Vec<ChildBridge>> = (0..replicas)
        .map(|i| {
            let file = format!("replica-{i}.toml");
            match cluster {
                Some(cluster) => {
                    let toml = rotated_hosts(&app, cluster, i);
                    ChildBridge::spawn_with(&args.xbridge, &app, &file, &toml)
                }
                None => ChildBridge::spawn(&args.xbridge, &app, &file),
            }
        })
        .collect();
    let mut replicas_running = match spawned {
        Ok(started) => started,
        Err(e) => {
            app.cleanup().await;
            return Err(e);
        }
    };
    let result = measure(args, &app, cluster, &mut replicas_running, latency_ms).await;
    for replica in &replicas_running {
        replica.terminate();
    }
    for replica in &mut replicas_running {
        replica.wait_exit().await;
    }
    app.cleanup().await;
    result
}

/// `app`'s configuration with the cluster's hosts rotated left by `replica`.
fn rotated_hosts(app: &TestApp, cluster: &PrivateCluster, replica: usize) -> String {
    let hosts = cluster.hosts();
    let mut rotated = hosts.clone();
    rotated.rotate_left(replica % hosts.len());
    app.config_toml().replace(
        &format!("hosts = {hosts:?}"),
        &format!("hosts = {rotated:?}"),
    )
}

async fn measure(
    args: &ReplicasArgs,
    app: &TestApp,
    cluster: Option<&PrivateCluster>,
    replicas: &mut [ChildBridge],
    latency_ms: u64,
) -> anyhow::Result<ReplicasRun> {
    for replica in replicas.iter_mut() {
        replica.wait_ready().await?;
    }
    let settled = wait_for_shares(replicas, args.channels).await;
    let url = cluster.map_or_else(amqp_url, |c| c.amqp_url(0));
    let (_reader, mut events) = read_queue(&url, &app.names.incoming_queue).await?;
    let publisher = Publisher::connect(&url).await?;
    let pids: Vec<u32> = replicas.iter().filter_map(|r| r.child.id()).collect();
    let meter = cluster.map(|c| CpuMeter::start(c, &pids));
    let start = Instant::now();
    let published_at = publisher
        .publish_routed(&app.names.outgoing_exchange, backlog(args))
        .await?;

    let Outcomes { sent_at, other } =
        collect_outcomes(&mut events, args.replies, args.timeout, "replicas").await;
    let cpu = meter.map(CpuMeter::stop);
    let last = sent_at.values().max().copied().unwrap_or(start);
    let to_sent = sent_at
        .iter()
        .map(|(i, at)| between(published_at[*i], *at))
        .collect();
    let mut active = Vec::with_capacity(replicas.len());
    for replica in replicas.iter() {
        active.push(channels_sent_on(replica.ops_port).await?);
    }
    let nodes = match cluster {
        Some(cluster) => pids.iter().map(|&pid| nodes_of(cluster, pid)).collect(),
        None => Vec::new(),
    };
    Ok(ReplicasRun {
        latency_ms,
        replicas: replicas.len(),
        published: args.replies,
        sent: sent_at.len(),
        other_outcomes: other,
        rate: per_second(sent_at.len(), between(start, last)),
        to_sent: Latencies::of(to_sent),
        active,
        nodes,
        cpu,
        settled,
    })
}

/// Waits until every replica sees all the others live and serves its share
/// of the channels (`channels ÷ replicas`, rounded either way), as its
/// `/metrics` says (`xbridge_replicas_live`, `xbridge_channels_served`), so
/// the backlog meets the replicas as they stay, not while channels move.
/// Looks every 100 ms; `None` at once for replicas without those gauges, or
/// after [`SETUP_PATIENCE`] (the run then goes on, and says so).
async fn wait_for_shares(replicas: &[ChildBridge], channels: usize) -> Option<Duration> {
    let start = Instant::now();
    let n = replicas.len();
    let (low, high) = (channels / n, channels.div_ceil(n));
    loop {
        let mut served = Vec::with_capacity(n);
        for replica in replicas {
            let text = metrics_text(replica.ops_port).await.unwrap_or_default();
            let (Some(live), Some(serving)) = (
                gauge(&text, "xbridge_replicas_live"),
                gauge(&text, "xbridge_channels_served"),
            ) else {
                return None;
            };
            served.push((live as usize, serving as usize));
        }
        let settled = served
            .iter()
            .all(|&(live, serving)| live == n && (low..=high).contains(&serving))
            && served.iter().map(|(_, s)| s).sum::<usize>() == channels;
        if settled {
            return Some(start.elapsed());
        }
        if start.elapsed() > SETUP_PATIENCE {
            eprintln!("replicas: the shares did not settle in {SETUP_PATIENCE:?}: (live, served) {served:?}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled gauge on a `/metrics` page.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

async fn metrics_text(ops_port: u16) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://127.0.0.1:{ops_port}/metrics"))
        .await?
        .text()
        .await?)
}

/// The cluster nodes (numbered from 1) process `pid` holds connections to.
fn nodes_of(cluster: &PrivateCluster, pid: u32) -> Vec<usize> {
    let ports: Vec<Option<u16>> = cluster
        .hosts()
        .iter()
        .map(|h| h.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect();
    let mut nodes: Vec<usize> = procstat::connections(pid)
        .iter()
        .filter_map(|c| ports.iter().position(|p| *p == Some(c.remote_port)))
        .map(|i| i + 1)
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// CPU ticks of the run's processes when it started, to subtract at its end.
struct CpuMeter {
    replicas: Vec<u32>,
    beams: Vec<u32>,
    pg_port: u16,
    before: Vec<std::collections::HashMap<u32, u64>>,
    machine: Option<(u64, u64)>,
    /// When the ticks were read: the run's seconds count from here, so the
    /// machine's busy time and the wall cover the same span.
    since: Instant,
}

impl CpuMeter {
    /// Reads every process's ticks: the replicas (`replicas`), each node's
    /// `beam.smp`, the PostgreSQL backends the replicas are connected to so
    /// far, and this process.
    fn start(cluster: &PrivateCluster, replicas: &[u32]) -> CpuMeter {
        let beams = (0..xbridge_test_support::CLUSTER_SIZE)
            .map(|i| {
                let node = cluster.node_name(i);
                procstat::beam_of(node).unwrap_or_else(|| {
                    eprintln!("replicas: no beam.smp found for {node}; its CPU reads 0");
                    0
                })
            })
            .collect();
        let mut meter = CpuMeter {
            replicas: replicas.to_vec(),
            beams,
            pg_port: procstat::url_port(&postgres_url()).unwrap_or(5432),
            before: Vec::new(),
            machine: None,
            since: Instant::now(),
        };
        // The processes are found first (a walk of `/proc`), then all the
        // ticks read together.
        let groups = meter.groups();
        meter.before = groups.iter().map(|g| procstat::ticks(g)).collect();
        meter.machine = procstat::machine_ticks();
        meter.since = Instant::now();
        meter
    }

    /// The groups measured, in order: each replica, each node, the
    /// PostgreSQL backends (found again each time: the replicas' pools grow
    /// as they need), this process.
    fn groups(&self) -> Vec<Vec<u32>> {
        let mut groups: Vec<Vec<u32>> = self.replicas.iter().map(|&p| vec![p]).collect();
        groups.extend(self.beams.iter().map(|&p| vec![p]));
        groups.push(procstat::postgres_backends_of(&self.replicas, self.pg_port));
        groups.push(vec![std::process::id()]);
        groups
    }

    /// The CPU seconds since [`CpuMeter::start`].
    fn stop(self) -> CpuUse {
        let groups = self.groups();
        let wall = self.since.elapsed();
        let machine_now = procstat::machine_ticks();
        let after: Vec<_> = groups.iter().map(|g| procstat::ticks(g)).collect();
        let mut seconds = self
            .before
            .iter()
            .zip(&after)
            .map(|(before, after)| procstat::seconds_between(before, after));
        let replicas = seconds.by_ref().take(self.replicas.len()).collect();
        let nodes = seconds.by_ref().take(self.beams.len()).collect();
        let postgres = seconds.next().unwrap_or(0.0);
        let bench = seconds.next().unwrap_or(0.0);
        let machine = match (self.machine, machine_now) {
            (Some((busy0, _)), Some((busy1, _))) => {
                busy1.saturating_sub(busy0) as f64 / procstat::TICKS_PER_SECOND
            }
            _ => 0.0,
        };
        CpuUse {
            wall: wall.as_secs_f64(),
            replicas,
            nodes,
            postgres,
            bench,
            machine,
        }
    }
}

fn print_cluster_tables(args: &ReplicasArgs, runs: &[ReplicasRun]) {
    println!("## Replicas on a RabbitMQ cluster (issue 15)\n");
    println!(
        "`{}` run N times as child processes against a three-node RabbitMQ cluster the benchmark \
         started on this machine (`PrivateCluster`), every node in each replica's `amqp.hosts`, \
         rotated so replica i connects to node i + 1 first. {} channels backed by simulator \
         accounts in the benchmark's process, the state in PostgreSQL (one schema per run, shared \
         by the replicas), no webhook server, no polling. Once all replicas answer `/readyz`, {} \
         replies are published at once through node 1 (persistent, confirmed), spread evenly over \
         the channels and {} conversations per channel; the events are read on node 1 too. Rate: \
         first publish to last `message.sent`. Channels per replica: those on which the replica's \
         `/metrics` counted DMs. Nodes: those the replica's TCP connections went to. The backlog is \
         published once every replica serves its share of the channels (`xbridge_channels_served`, \
         channels ÷ replicas rounded either way, with `xbridge_replicas_live` at N on each): \
         shares settled in is how long that took after all were ready (n/a: a version without \
         those gauges, published at once).\n",
        args.xbridge.display(),
        args.channels,
        args.replies,
        args.conversations,
    );
    println!("| X latency | replicas | channels | done | replies/s | publish → `message.sent` p50 | p99 | max | channels per replica | nodes per replica | shares settled in |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in runs {
        let split = join(run.active.iter().map(|c| c.len().to_string()), " + ");
        let nodes = join(
            run.nodes
                .iter()
                .map(|n| join(n.iter().map(usize::to_string), ",")),
            " / ",
        );
        let settled = run
            .settled
            .map_or_else(|| "n/a".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!(
            "| {} ms | {} | {} | {}/{}{} | {:.0} | {} | {} | {} | {} |",
            run.latency_ms,
            run.replicas,
            args.channels,
            run.sent,
            run.published,
            other_outcomes(run.other_outcomes),
            run.rate,
            p50_p99_max(run.to_sent),
            split,
            nodes,
            settled,
        );
    }
    println!(
        "\nCPU seconds (user + system, `/proc/<pid>/stat`) of each process from the first publish \
         to the last outcome. PostgreSQL: the backends serving the replicas' connections. \
         Benchmark: its own process, which runs the X simulator, the publisher and the reader. \
         Machine: every process's busy time (`/proc/stat`), out of the cores × the run's seconds; \
         other: the part of it no process of the run used (other work on the machine, the \
         kernel's own). Per reply: the run's processes' CPU (all but other) per reply done; \
         ceiling: the replies/s the cores would give at that cost with nothing else running.\n"
    );
    println!("| X latency | replicas | seconds | each replica | RabbitMQ nodes 1, 2, 3 | PostgreSQL | benchmark | machine busy | other | per reply | ceiling |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for run in runs {
        let Some(cpu) = &run.cpu else { continue };
        let ours: f64 =
            cpu.replicas.iter().chain(&cpu.nodes).sum::<f64>() + cpu.postgres + cpu.bench;
        let per_reply = ours / run.sent.max(1) as f64;
        println!(
            "| {} ms | {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} of {:.1} | {:.1} | {:.2} ms | {:.0}/s |",
            run.latency_ms,
            run.replicas,
            cpu.wall,
            join(cpu.replicas.iter().map(|s| format!("{s:.1}")), " + "),
            join(cpu.nodes.iter().map(|s| format!("{s:.1}")), " + "),
            cpu.postgres,
            cpu.bench,
            cpu.machine,
            cpu.wall * cores,
            (cpu.machine - ours).max(0.0),
            per_reply * 1000.0,
            cores / per_reply,
        );
    }
    print_load();
    println!();
}

fn join(items: impl Iterator<Item = String>, separator: &str) -> String {
    items.collect::<Vec<_>>().join(separator)
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
    let text = metrics_text(ops_port).await?;
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
