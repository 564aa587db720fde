//! Efficiency (issue 16): the bridge's CPU per reply and its rate next to a
//! plain lapin relay's, and the latency a reply adds under a steady load,
//! with every party in a process of its own so the figures are the bridge's
//! alone: the bridge is the real `xbridge run` binary, X the `x-simulator`
//! binary, the CRM's reader and the relay this binary's hidden
//! `crm-reader` and `relay` subcommands. Only the CRM's publisher runs in
//! the benchmark's process.
//!
//! **CPU per reply.** A backlog of replies waits on one channel's queue
//! before the consumer starts: for the relay, published to its input queue
//! before it consumes; for the bridge, published to its reply queue while it
//! is stopped (a first start declares the queue and is stopped once ready;
//! its CPU until then is the start-up cost subtracted from the second
//! start's). The bridge and the relay hold 16 replies at a time (prefetch
//! 16; 16 conversations for the bridge, which sends one reply per
//! conversation at a time). CPU is `utime + stime` of the process from
//! `/proc/<pid>/stat` when the reader has read the last outcome; the rate is
//! the reader's first outcome to its last.
//!
//! **Latency.** Replies published paced (one every 1/rate s, not a burst)
//! over many channels, each publish's confirm awaited on its own so the
//! pacing never waits; publish → X is when the simulator accepted the DM
//! (its `created_at`), publish → `message.sent` when the reader read the
//! event, both by the wall clock of this machine; the broker's own confirm
//! latency is the publisher's publish → confirm in the same run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use xbridge_test_support::{amqp_url, TestApp};

use crate::child::{ensure_built, ChildBridge};
use crate::crm_reader::{Outcomes, ReaderProcess};
use crate::harness::{declare_quorum_queue, delete_queue, options, world, Publisher};
use crate::procstat;
use crate::relay::{RelayProcess, RelayX};
use crate::simulator_process::{accepted_at, SimulatorProcess};
use crate::stats::{load_average, p50_p99_max, per_second, Latencies};

/// The channel of the CPU run.
const CHANNEL: &str = "bench";

/// The text of reply `i`, by which the simulator's DMs are matched back.
const TEXT_PREFIX: &str = "bench reply ";

/// What to run.
#[derive(Debug, Clone)]
pub struct EfficiencyArgs {
    /// Replies in the CPU run's backlog.
    pub replies: usize,
    /// Conversations of the CPU run (one channel).
    pub conversations: usize,
    /// Messages in flight: the bridge's and the relay's prefetch.
    pub in_flight: u16,
    /// Times the CPU run's three paths are run, in turn.
    pub rounds: usize,
    /// Replies per second of the latency run.
    pub rate: u32,
    /// Channels of the latency run.
    pub channels: usize,
    /// Conversations per channel in the latency run.
    pub channel_conversations: usize,
    /// Measured seconds of the latency run.
    pub seconds: u32,
    /// Warm-up seconds of the latency run, left out of its figures.
    pub warmup_seconds: u32,
    /// Run the CPU measurement.
    pub cpu: bool,
    /// Run the latency measurement.
    pub latency: bool,
    /// How long a run may take before it is reported as incomplete.
    pub timeout: Duration,
    /// The `xbridge` binary.
    pub xbridge: PathBuf,
    /// The `x-simulator` binary.
    pub simulator: PathBuf,
    /// `perf record` the bridge of the CPU run's last round into this file,
    /// and the latency run's bridge, while publishing, into `<file>.latency`.
    pub perf: Option<PathBuf>,
    /// `perf record --call-graph` mode.
    pub perf_call_graph: String,
    /// `perf stat` every bridge and relay into files in this directory.
    pub perf_stat: Option<PathBuf>,
}

/// The three paths of the CPU run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Relay,
    RelayHttp,
    Bridge,
}

impl Path3 {
    fn label(self) -> &'static str {
        match self {
            Path3::Relay => "relay (consume, confirmed publish, ack)",
            Path3::RelayHttp => "relay + HTTP (consume, signed POST to X, confirmed publish, ack)",
            Path3::Bridge => "bridge (`xbridge run`)",
        }
    }
}

/// One path's figures in one round.
#[derive(Debug, Clone)]
struct CpuRun {
    path: Path3,
    round: usize,
    done: usize,
    other: usize,
    /// Outcomes per second, first to last.
    rate: f64,
    /// CPU seconds of the bridge or relay process for the backlog.
    cpu: f64,
    /// The bridge's start-up CPU seconds, subtracted from `cpu`.
    startup: Option<f64>,
    /// CPU seconds of the simulator process over the run.
    simulator: f64,
}

impl CpuRun {
    fn ms_per_message(&self) -> f64 {
        self.cpu * 1000.0 / self.done.max(1) as f64
    }
}

/// Runs what `args` asks and prints the tables.
pub async fn run(args: &EfficiencyArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    if let Some(dir) = &args.perf_stat {
        std::fs::create_dir_all(dir)?;
    }
    let started = chrono::Utc::now();
    let load_at_start = load_average();
    let simulator = SimulatorProcess::start(&args.simulator).await?;
    let mut cpu_runs = Vec::new();
    let mut latency = None;
    let result = async {
        if args.cpu {
            for round in 1..=args.rounds.max(1) {
                let last = round == args.rounds.max(1);
                for path in [Path3::Relay, Path3::RelayHttp, Path3::Bridge] {
                    let perf = if last { args.perf.as_deref() } else { None };
                    cpu_runs.push(cpu_run(args, &simulator, path, round, perf).await?);
                }
            }
        }
        if args.latency {
            latency = Some(latency_run(args, &simulator).await?);
        }
        anyhow::Ok(())
    }
    .await;
    simulator.stop().await;
    result?;
    println!("## Efficiency (issue 16)\n");
    println!(
        "Run {} UTC; load average (1, 5, 15 min) at start {load_at_start}, at the end {}.\n",
        started.format("%Y-%m-%d %H:%M"),
        load_average()
    );
    if args.cpu {
        print_cpu(args, &cpu_runs);
    }
    if let Some(latency) = &latency {
        print_latency(args, latency);
    }
    Ok(())
}

/// Replies `m-<i>` to recipient `i % conversations`, routed by `key(i)`.
fn backlog(
    count: usize,
    conversations: usize,
    key: impl Fn(usize) -> String,
) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (key(i), reply_body(i, i % conversations.max(1))))
        .collect()
}

fn reply_body(i: usize, conversation: usize) -> Vec<u8> {
    let recipient = 2_000_000_000_000_000_000u64 + conversation as u64;
    serde_json::to_vec(&xbridge_test_support::reply(
        &format!("m-{i}"),
        &recipient.to_string(),
        &format!("{TEXT_PREFIX}{i}"),
    ))
    .expect("JSON")
}

/// CPU seconds of one process now (0 if it is gone).
fn cpu_of(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    procstat::ticks(&[pid])
        .get(&pid)
        .map_or(0.0, |t| *t as f64 / procstat::TICKS_PER_SECOND)
}

/// Outcomes per second between the first and the last.
fn rate_of(outcomes: &Outcomes) -> f64 {
    match outcomes.span() {
        Some((first, last)) => per_second(
            outcomes.sent_at.len().saturating_sub(1),
            last.duration_since(first).unwrap_or_default(),
        ),
        None => 0.0,
    }
}

async fn cpu_run(
    args: &EfficiencyArgs,
    simulator: &SimulatorProcess,
    path: Path3,
    round: usize,
    perf: Option<&Path>,
) -> anyhow::Result<CpuRun> {
    eprintln!("efficiency: round {round}, {path:?}");
    simulator.reset().await?;
    match path {
        Path3::Relay | Path3::RelayHttp => relay_run(args, simulator, path, round).await,
        Path3::Bridge => bridge_run(args, simulator, round, perf).await,
    }
}

async fn relay_run(
    args: &EfficiencyArgs,
    simulator: &SimulatorProcess,
    path: Path3,
    round: usize,
) -> anyhow::Result<CpuRun> {
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let input = format!("{prefix}.relay.in");
    let output = format!("{prefix}.relay.out");
    let publisher = Publisher::connect(&amqp_url()).await?;
    declare_quorum_queue(publisher.channel(), &input).await?;
    declare_quorum_queue(publisher.channel(), &output).await?;
    let account_file = std::env::temp_dir().join(format!("{prefix}-account.json"));
    let result = async {
        let x = if path == Path3::RelayHttp {
            let account = x_simulator::Account::generate("relay_support");
            simulator.add_accounts([&account]).await?;
            std::fs::write(&account_file, serde_json::to_vec(&account)?)?;
            Some(RelayX {
                base_url: &simulator.base_url,
                account_file: account_file.clone(),
            })
        } else {
            None
        };
        publisher
            .publish_routed(
                "",
                backlog(args.replies, args.conversations, |_| input.clone()),
            )
            .await?;
        let mut reader = ReaderProcess::start(&amqp_url(), &output).await?;
        let mut relay =
            RelayProcess::start(&amqp_url(), &input, &output, args.in_flight, x).await?;
        let name = match path {
            Path3::RelayHttp => format!("relay-http-{round}"),
            _ => format!("relay-{round}"),
        };
        let recorders = PerfRecorder::both(relay.pid(), None, "", stat_file(args, &name))?;
        let relay_before = cpu_of(relay.pid());
        let simulator_before = cpu_of(simulator.pid());
        relay.go().await?;
        let outcomes = reader.collect(args.replies, args.timeout, "relay").await;
        let cpu = cpu_of(relay.pid()) - relay_before;
        let simulator_cpu = cpu_of(simulator.pid()) - simulator_before;
        PerfRecorder::stop_all(recorders).await;
        relay.stop().await;
        reader.stop().await;
        anyhow::Ok(CpuRun {
            path,
            round,
            done: outcomes.sent_at.len(),
            other: outcomes.other,
            rate: rate_of(&outcomes),
            cpu,
            startup: None,
            simulator: simulator_cpu,
        })
    }
    .await;
    let _ = std::fs::remove_file(&account_file);
    delete_queue(publisher.channel(), &input).await;
    delete_queue(publisher.channel(), &output).await;
    result
}

/// The world's configuration for a bridge whose X is `simulator`, holding
/// `prefetch` replies per channel.
fn bridge_config(app: &TestApp, simulator: &SimulatorProcess, prefetch: u16) -> String {
    app.config_toml()
        .replace(
            &format!("api_base_url = \"{}\"", app.simulator.base_url()),
            &format!("api_base_url = \"{}\"", simulator.base_url),
        )
        .replace("prefetch = 64", &format!("prefetch = {prefetch}"))
}

async fn bridge_run(
    args: &EfficiencyArgs,
    simulator: &SimulatorProcess,
    round: usize,
    perf: Option<&Path>,
) -> anyhow::Result<CpuRun> {
    let app = world(options(vec![CHANNEL.to_owned()])).await;
    let result = async {
        simulator
            .add_accounts(app.accounts.iter().map(|(_, a)| a))
            .await?;
        let toml = bridge_config(&app, simulator, args.in_flight);
        anyhow::ensure!(
            toml.contains(&format!("prefetch = {}", args.in_flight)),
            "the harness's configuration no longer sets prefetch = 64"
        );
        // First start: declares the reply queue; what it costs to become
        // ready is what the second start spends before its first reply.
        let mut first = ChildBridge::spawn_with(&args.xbridge, &app, "first.toml", &toml)?;
        first.wait_ready().await?;
        let startup = cpu_of(first.child.id());
        first.terminate();
        first.wait_exit().await;

        let mut reader = ReaderProcess::start(&amqp_url(), &app.names.incoming_queue).await?;
        let publisher = Publisher::connect(&amqp_url()).await?;
        publisher
            .publish_routed(
                &app.names.outgoing_exchange,
                backlog(args.replies, args.conversations, |_| CHANNEL.to_owned()),
            )
            .await?;
        let simulator_before = cpu_of(simulator.pid());
        let mut bridge = ChildBridge::spawn_with(&args.xbridge, &app, "bridge.toml", &toml)?;
        let recorders = PerfRecorder::both(
            bridge.child.id(),
            perf,
            &args.perf_call_graph,
            stat_file(args, &format!("bridge-{round}")),
        )?;
        let outcomes = reader.collect(args.replies, args.timeout, "bridge").await;
        let total = cpu_of(bridge.child.id());
        let simulator_cpu = cpu_of(simulator.pid()) - simulator_before;
        PerfRecorder::stop_all(recorders).await;
        bridge.terminate();
        bridge.wait_exit().await;
        reader.stop().await;
        anyhow::Ok(CpuRun {
            path: Path3::Bridge,
            round,
            done: outcomes.sent_at.len(),
            other: outcomes.other,
            rate: rate_of(&outcomes),
            cpu: (total - startup).max(0.0),
            startup: Some(startup),
            simulator: simulator_cpu,
        })
    }
    .await;
    app.cleanup().await;
    result
}

/// What `--perf-stat` counts.
const STAT_EVENTS: &str = "task-clock,context-switches,cpu-migrations,\
syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,syscalls:sys_enter_write,\
syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,\
syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex";

/// `perf record` or `perf stat` attached to a process for a run.
struct PerfRecorder {
    child: tokio::process::Child,
}

impl PerfRecorder {
    /// `perf record` of `pid` into `file`, sampling at 999 Hz with call graphs.
    fn record(pid: Option<u32>, file: &Path, call_graph: &str) -> anyhow::Result<PerfRecorder> {
        let args = ["record", "-F", "999", "--call-graph", call_graph];
        PerfRecorder::attach(pid, &args, file)
    }

    /// `perf stat` of `pid` into `file`: context switches and the system
    /// calls that say what a message costs (fsyncs and file writes of the
    /// store, socket writes and reads, epoll and futex wake-ups).
    fn stat(pid: Option<u32>, file: &Path) -> anyhow::Result<PerfRecorder> {
        PerfRecorder::attach(pid, &["stat", "-e", STAT_EVENTS], file)
    }

    fn attach(pid: Option<u32>, args: &[&str], file: &Path) -> anyhow::Result<PerfRecorder> {
        let pid = pid.context("the process has no pid")?;
        let child = tokio::process::Command::new("perf")
            .args(args)
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting perf (is it installed?)")?;
        Ok(PerfRecorder { child })
    }

    /// Both, as asked: a profile into `record`, counts into `stat`.
    fn both(
        pid: Option<u32>,
        record: Option<&Path>,
        call_graph: &str,
        stat: Option<PathBuf>,
    ) -> anyhow::Result<Vec<PerfRecorder>> {
        let mut recorders = Vec::new();
        if let Some(file) = record {
            recorders.push(PerfRecorder::record(pid, file, call_graph)?);
        }
        if let Some(file) = stat {
            recorders.push(PerfRecorder::stat(pid, &file)?);
        }
        Ok(recorders)
    }

    /// Stops every one of `recorders`.
    async fn stop_all(recorders: Vec<PerfRecorder>) {
        for recorder in recorders {
            recorder.stop().await;
        }
    }

    /// SIGINT, as Ctrl-C, so perf writes its file; waits for it.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
        }
        let _ = tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await;
    }
}

fn print_cpu(args: &EfficiencyArgs, runs: &[CpuRun]) {
    println!("### CPU per reply and throughput\n");
    println!(
        "A backlog of {} replies on one channel, {} conversations, waiting before the consumer \
         starts; {} messages in flight (prefetch {} for the relay and the bridge). Each party a \
         process of its own: the bridge (`{}`), the relay (`xbridge-bench relay`), X (`x-simulator`, \
         0 ms latency), the CRM's reader (`xbridge-bench crm-reader`); the publisher in the \
         benchmark's process, done before the consumer starts. CPU: `utime + stime` of the bridge \
         or relay process (`/proc/<pid>/stat`, 10 ms ticks) until the reader has read the last \
         outcome; for the bridge, less its start-up (a first start's CPU until `/readyz`, shown \
         apart). Rate: the reader's first outcome to its last. Simulator: the `x-simulator` \
         process's CPU over the same run.\n",
        args.replies,
        args.conversations,
        args.in_flight,
        args.in_flight,
        args.xbridge.display(),
    );
    println!("| path | round | done | messages/s | CPU s | CPU ms per message | start-up CPU | simulator CPU ms per message |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in runs {
        println!(
            "| {} | {} | {}/{}{} | {:.0} | {:.2} | {:.3} | {} | {:.3} |",
            run.path.label(),
            run.round,
            run.done,
            args.replies,
            crate::stats::other_outcomes(run.other),
            run.rate,
            run.cpu,
            run.ms_per_message(),
            run.startup
                .map_or_else(|| "n/a".to_owned(), |s| format!("{:.2} s", s)),
            run.simulator * 1000.0 / run.done.max(1) as f64,
        );
    }
    let totals = |path: Path3| {
        let of: Vec<&CpuRun> = runs.iter().filter(|r| r.path == path).collect();
        let cpu: f64 = of.iter().map(|r| r.cpu).sum();
        let done: usize = of.iter().map(|r| r.done).sum();
        let rate = of.iter().map(|r| r.rate).sum::<f64>() / of.len().max(1) as f64;
        (cpu * 1000.0 / done.max(1) as f64, rate)
    };
    let (relay_ms, relay_rate) = totals(Path3::Relay);
    let (http_ms, http_rate) = totals(Path3::RelayHttp);
    let (bridge_ms, bridge_rate) = totals(Path3::Bridge);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let cpu_ratio = ratio(bridge_ms, http_ms);
    let rate_ratio = ratio(bridge_rate, http_rate);
    println!("\nOver all rounds (CPU: summed CPU ÷ summed messages; rate: mean of the rounds):\n");
    println!(
        "| | relay | relay + HTTP | bridge | bridge ÷ relay + HTTP | bridge ÷ relay | target |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| CPU ms per message | {relay_ms:.3} | {http_ms:.3} | {bridge_ms:.3} | {cpu_ratio:.2} | {:.2} | ≤ 2 × relay + HTTP: {} |",
        ratio(bridge_ms, relay_ms),
        if cpu_ratio <= 2.0 { "met" } else { "missed" },
    );
    println!(
        "| messages/s | {relay_rate:.0} | {http_rate:.0} | {bridge_rate:.0} | {rate_ratio:.2} | {:.2} | ≥ 0.7 × relay + HTTP: {} |",
        ratio(bridge_rate, relay_rate),
        if rate_ratio >= 0.7 { "met" } else { "missed" },
    );
    println!();
}

/// The figures of the latency run.
struct LatencyRun {
    published: usize,
    measured: usize,
    sent: usize,
    other: usize,
    /// The publisher's publish → confirm, measured replies.
    confirm: Option<Latencies>,
    /// Publish → the simulator accepted the DM.
    to_x: Option<Latencies>,
    to_x_count: usize,
    /// Publish → the reader read `message.sent`.
    to_sent: Option<Latencies>,
    /// The offered rate over the measured part, as published.
    offered: f64,
    /// The bridge's CPU over the measured part, per measured reply.
    bridge_ms_per_reply: f64,
}

async fn latency_run(
    args: &EfficiencyArgs,
    simulator: &SimulatorProcess,
) -> anyhow::Result<LatencyRun> {
    eprintln!(
        "efficiency: latency, {} replies/s over {} channels",
        args.rate, args.channels
    );
    simulator.reset().await?;
    let names: Vec<String> = (0..args.channels.max(1)).map(|i| format!("c{i}")).collect();
    let app = world(options(names)).await;
    let result = async {
        simulator
            .add_accounts(app.accounts.iter().map(|(_, a)| a))
            .await?;
        let toml = bridge_config(&app, simulator, 64);
        let mut bridge = ChildBridge::spawn_with(&args.xbridge, &app, "bridge.toml", &toml)?;
        bridge.wait_ready().await?;
        let mut reader = ReaderProcess::start(&amqp_url(), &app.names.incoming_queue).await?;
        let publisher = Publisher::connect(&amqp_url()).await?;
        let profile = args.perf.as_deref().map(latency_profile);
        let recorders = PerfRecorder::both(
            bridge.child.id(),
            profile.as_deref(),
            &args.perf_call_graph,
            stat_file(args, "latency"),
        )?;
        let outcome = paced(args, &app, &publisher, bridge.child.id()).await;
        PerfRecorder::stop_all(recorders).await;
        let (published, confirms, measured_cpu) = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                bridge.terminate();
                bridge.wait_exit().await;
                return Err(e);
            }
        };
        let total = published.len();
        let warmup = (args.rate * args.warmup_seconds) as usize;
        let outcomes = reader.collect(total, args.timeout, "latency").await;
        bridge.terminate();
        bridge.wait_exit().await;
        reader.stop().await;
        let accepted: HashMap<usize, SystemTime> =
            accepted_at(&simulator.dms().await?, TEXT_PREFIX)
                .into_iter()
                .collect();
        let since =
            |i: usize, at: SystemTime| at.duration_since(published[i].0).unwrap_or_default();
        let to_x: Vec<Duration> = accepted
            .iter()
            .filter(|(i, _)| **i >= warmup && **i < total)
            .map(|(i, at)| since(*i, *at))
            .collect();
        let to_sent: Vec<Duration> = outcomes
            .sent_at
            .iter()
            .filter(|(i, _)| **i >= warmup)
            .map(|(i, at)| since(*i, *at))
            .collect();
        let confirm: Vec<Duration> = confirms.into_iter().skip(warmup).flatten().collect();
        let measured = total - warmup;
        let offered = match (published.get(warmup), published.last()) {
            (Some(first), Some(last)) => per_second(
                measured.saturating_sub(1),
                last.1.saturating_duration_since(first.1),
            ),
            _ => 0.0,
        };
        anyhow::Ok(LatencyRun {
            published: total,
            measured,
            sent: outcomes.sent_at.len(),
            other: outcomes.other,
            confirm: Latencies::of(confirm),
            to_x_count: to_x.len(),
            to_x: Latencies::of(to_x),
            to_sent: Latencies::of(to_sent),
            offered,
            bridge_ms_per_reply: measured_cpu * 1000.0 / measured.max(1) as f64,
        })
    }
    .await;
    app.cleanup().await;
    result
}

/// Where `--perf-stat` puts the counts of run `name`: `<dir>/<name>.txt`.
fn stat_file(args: &EfficiencyArgs, name: &str) -> Option<PathBuf> {
    Some(args.perf_stat.as_ref()?.join(format!("{name}.txt")))
}

/// Where the latency run's profile goes: `<file>.latency`.
fn latency_profile(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".latency");
    PathBuf::from(name)
}

/// What the paced publisher saw: each reply's publish time (wall clock and
/// monotonic), each confirm's latency (`None` if refused), and the bridge's
/// CPU seconds from the first measured publish until every confirm came.
type Paced = (Vec<(SystemTime, Instant)>, Vec<Option<Duration>>, f64);

/// Publishes `rate × (warm-up + seconds)` replies, one every `1 / rate` s,
/// channel `c<i % channels>`, conversation `(i / channels) % conversations`.
async fn paced(
    args: &EfficiencyArgs,
    app: &TestApp,
    publisher: &Publisher,
    bridge: Option<u32>,
) -> anyhow::Result<Paced> {
    let rate = args.rate.max(1);
    let warmup = (rate * args.warmup_seconds) as usize;
    let total = warmup + (rate * args.seconds) as usize;
    let channels = args.channels.max(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let channel = publisher.channel().clone();
    let mut published = Vec::with_capacity(total);
    let mut confirms = Vec::with_capacity(total);
    let mut cpu_at_warmup = 0.0;
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        if i == warmup {
            cpu_at_warmup = cpu_of(bridge);
        }
        let conversation = (i / channels) % args.channel_conversations.max(1);
        let body = reply_body(i, conversation);
        let key = format!("c{}", i % channels);
        let wall = SystemTime::now();
        let at = Instant::now();
        let confirm = channel
            .basic_publish(
                app.names.outgoing_exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?;
        published.push((wall, at));
        confirms.push(tokio::spawn(async move {
            let acked = confirm.await.map(|c| c.is_ack()).unwrap_or(false);
            acked.then(|| at.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for confirm in confirms {
        latencies.push(confirm.await.context("a confirm task")?);
    }
    let cpu = cpu_of(bridge) - cpu_at_warmup;
    Ok((published, latencies, cpu))
}

fn print_latency(args: &EfficiencyArgs, run: &LatencyRun) {
    println!("### Reply latency under a steady load\n");
    println!(
        "{} replies/s published paced (one every {:.1} ms, each confirm awaited apart) over {} \
         channels ({} conversations each) for {} s after a {} s warm-up left out of the figures: \
         {} published, {} measured, offered {:.0}/s over the measured part. The bridge \
         (`{}`, prefetch 64) and X (`x-simulator`, 0 ms latency) and the reader in processes of \
         their own. Publish → X: when the simulator accepted the DM (`created_at`, {} of the \
         measured DMs matched); publish → `message.sent`: when the reader read the event; both by \
         this machine's wall clock. Confirm: the publisher's publish → confirm, same run, same \
         broker.\n",
        args.rate,
        1000.0 / f64::from(args.rate.max(1)),
        args.channels,
        args.channel_conversations,
        args.seconds,
        args.warmup_seconds,
        run.published,
        run.measured,
        run.offered,
        args.xbridge.display(),
        run.to_x_count,
    );
    println!("| span | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| publish → confirm (the broker, publisher's view) | {} |",
        p50_p99_max(run.confirm)
    );
    println!(
        "| publish → X accepted the DM | {} |",
        p50_p99_max(run.to_x)
    );
    println!(
        "| publish → `message.sent` read by the CRM | {} |",
        p50_p99_max(run.to_sent)
    );
    let verdict = match (run.to_x, run.confirm) {
        (Some(x), Some(c)) => {
            let limit = c.p99 * 2;
            format!(
                "publish → X p99 {:.2} ms against 2 × confirm p99 + X's 0 ms = {:.2} ms: {} ({:.2} × the confirm p99)",
                x.p99.as_secs_f64() * 1000.0,
                limit.as_secs_f64() * 1000.0,
                if x.p99 <= limit { "met" } else { "missed" },
                x.p99.as_secs_f64() / c.p99.as_secs_f64().max(f64::EPSILON),
            )
        }
        _ => "no samples".to_owned(),
    };
    println!(
        "\n{} of {} replies sent{}; bridge CPU {:.3} ms per reply at this rate (measured part, \
         including its idle time). Target: {verdict}.\n",
        run.sent,
        run.published,
        crate::stats::other_outcomes(run.other),
        run.bridge_ms_per_reply,
    );
}
