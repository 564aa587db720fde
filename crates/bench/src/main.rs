//! `xbridge-bench`: measures the bridge against the real RabbitMQ and the X
//! simulator, and prints Markdown tables for `docs/benchmarks.md`.
//!
//! Progress goes to stderr, results to stdout. Needs RabbitMQ on
//! 127.0.0.1:5672 (`XBRIDGE_TEST_AMQP_URL` overrides it, as for the tests);
//! `scale` and `replicas` also need the release `xbridge` binary, `replicas`
//! PostgreSQL on 127.0.0.1:5432 (`XBRIDGE_TEST_POSTGRES_URL` overrides it).
//!
//! | file | role |
//! |---|---|
//! | `outbound.rs`, `inbound.rs`, `scale.rs`, `replicas.rs`, `economy.rs` | one measurement each: setup, measure, print its table |
//! | `harness.rs` | a world from the test harness, the bridge in process, a confirming publisher, queue readers, the open-loop schedule |
//! | `restarts.rs` | `scale --restarts`: many channels on one process, served, stopped and started again on a node of the run's own, a probe connecting meanwhile |
//! | `churn.rs` | channels added and removed at run time by control commands: what the process holds before and after |
//! | `child.rs` | the `xbridge` binary as a child process: started with an ops port, ready, stopped |
//! | `probe.rs` | what a running process holds: memory, threads, files, tasks, AMQP channels, metric series |
//! | `procstat.rs` | where a run's CPU went: each process's ticks, a RabbitMQ node's `beam.smp`, the PostgreSQL backends of given processes |
//! | `stats.rs` | percentiles and the formatting of table cells |
//! | `cleanup.rs` | deleting what an interrupted run left on the broker |
//! | `efficiency.rs` | issue 16: CPU per reply and rate against a relay, reply latency under a steady load, every party a process of its own |
//! | `relay.rs`, `crm_reader.rs` | the hidden `relay` and `crm-reader` subcommands `efficiency` runs as child processes |
//! | `simulator_process.rs` | the `x-simulator` binary as a child process, steered over its admin API |

#![warn(missing_docs)]

mod child;
mod churn;
mod cleanup;
mod crm_reader;
mod economy;
mod efficiency;
mod harness;
mod inbound;
mod outbound;
mod probe;
mod procstat;
mod relay;
mod replicas;
mod restarts;
mod scale;
mod simulator_process;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Benchmarks of xbridge.
#[derive(Debug, Parser)]
#[command(name = "xbridge-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the machine the figures come from.
    Machine,
    /// Replies through the bridge against a plain lapin relay.
    Outbound(OutboundOpts),
    /// Signed webhook POSTs at a fixed rate.
    Inbound(InboundOpts),
    /// RSS and idle CPU of `xbridge run` with many channels.
    Scale(ScaleOpts),
    /// Channels added one by one at run time by the CRM's commands, then
    /// removed: what the `xbridge run` process holds before, between and after.
    Churn(ChurnOpts),
    /// Requests per sent DM under a rate limit; billed events per polled event.
    Economy(EconomyOpts),
    /// Reply throughput of 1, 2 and 4 `xbridge run` processes sharing one
    /// PostgreSQL store.
    Replicas(ReplicasOpts),
    /// Issue 16: CPU per reply and rate against a plain lapin relay (with and
    /// without an HTTP POST to X), and reply latency under a steady load; the
    /// bridge, X, the relay and the CRM's reader each in a process of its own.
    Efficiency(EfficiencyOpts),
    /// `efficiency`'s CRM reader, as a child process: prints `<sent|other> <i>
    /// <unix µs>` per outcome read from a queue.
    #[command(hide = true)]
    CrmReader {
        /// The broker.
        #[arg(long)]
        url: String,
        /// The queue read.
        #[arg(long)]
        queue: String,
    },
    /// `efficiency`'s plain lapin relay, as a child process.
    #[command(hide = true)]
    Relay(RelayOpts),
    /// Everything, with the defaults, machine first (`scale` and `replicas` last).
    All(ScaleBinary),
    /// Deletes the queues and exchanges an interrupted run left, named `<PREFIX>.…`
    /// (the `t-…` or `bench-…` prefix); needs `rabbitmqctl`.
    Cleanup {
        /// The run's prefix, e.g. `t-2691435e2ac2`.
        prefix: String,
    },
}

#[derive(Debug, Args)]
struct OutboundOpts {
    /// Replies per run.
    #[arg(long, default_value_t = 2000)]
    replies: usize,
    /// Distinct recipients (the bridge orders per conversation).
    #[arg(long, default_value_t = 20)]
    conversations: usize,
    /// Simulator latencies to run at, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,100")]
    latencies_ms: Vec<u64>,
    /// Seconds a run may take.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[derive(Debug, Args)]
struct InboundOpts {
    /// Offered events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Warm-up seconds, left out of the figures.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u32,
}

#[derive(Debug, Args)]
struct ScaleBinary {
    /// The `xbridge` binary; by default the one next to this binary.
    #[arg(long)]
    xbridge: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScaleOpts {
    /// Channel counts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    channels: Vec<usize>,
    /// Seconds of idleness over which CPU is measured.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Seconds to settle after readiness.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Instead of the idle figures: on a RabbitMQ node of the run's own,
    /// start the process, serve a reply on each channel and stop it, three
    /// times (SIGTERM, SIGKILL, SIGTERM), while a probe connects to the node
    /// every 200 ms; prints the AMQP channels of the bridge's connections.
    #[arg(long)]
    restarts: bool,
    /// On a RabbitMQ node of the run's own per channel count (never the
    /// shared one), started twice: queues declared, then queues there.
    #[arg(long)]
    private_broker: bool,
    /// `--restarts`, `--private-broker`: what the table calls the binary (`before`, `after`).
    #[arg(long, default_value = "xbridge")]
    label: String,
    /// `--restarts`: `amqp.consumers_per_channel` for the bridge (left out
    /// by default, for binaries that do not know it).
    #[arg(long)]
    consumers_per_channel: Option<u16>,
    #[command(flatten)]
    binary: ScaleBinary,
}

#[derive(Debug, Args)]
struct ChurnOpts {
    /// Channels added, then removed.
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Channels of the configuration file, there throughout.
    #[arg(long, default_value_t = 2)]
    file_channels: usize,
    /// Rounds of adding and removing, each with new channels.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Keep the state on PostgreSQL (127.0.0.1:5432 as for the tests) instead of the embedded file.
    #[arg(long)]
    postgres: bool,
    /// Every round adds the same channel names again (default: new names each round).
    #[arg(long)]
    same_names: bool,
    /// Seconds to settle before each measurement.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// The RabbitMQ node `rabbitmqctl -n` asks (a node of the benchmark's own).
    #[arg(long)]
    rabbitmq_node: Option<String>,
    #[command(flatten)]
    binary: ScaleBinary,
}

#[derive(Debug, Args)]
struct ReplicasOpts {
    /// Replica counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    replicas: Vec<usize>,
    /// Channels; replicas share the work by channel.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Conversations per channel (a channel sends one reply per conversation at a time).
    #[arg(long, default_value_t = 10)]
    conversations: usize,
    /// Replies in the backlog, spread over the channels.
    #[arg(long, default_value_t = 4000)]
    replies: usize,
    /// Simulator latencies to run at, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,100")]
    latencies_ms: Vec<u64>,
    /// Seconds a run may take.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Run on a three-node RabbitMQ cluster the benchmark starts (and
    /// deletes) itself, every node in the replicas' `amqp.hosts`, and report
    /// each process's CPU.
    #[arg(long)]
    cluster: bool,
    #[command(flatten)]
    binary: ScaleBinary,
}

#[derive(Debug, Args)]
struct EfficiencyOpts {
    /// Replies in the CPU run's backlog (one channel).
    #[arg(long, default_value_t = 5000)]
    replies: usize,
    /// Conversations of the CPU run.
    #[arg(long, default_value_t = 16)]
    conversations: usize,
    /// Messages in flight: the bridge's and the relay's prefetch in the CPU run.
    #[arg(long, default_value_t = 16)]
    in_flight: u16,
    /// Times the CPU run's relay, relay + HTTP and bridge are run, in turn.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Replies per second of the latency run.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Channels of the latency run.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Conversations per channel in the latency run.
    #[arg(long, default_value_t = 10)]
    channel_conversations: usize,
    /// Measured seconds of the latency run.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Warm-up seconds of the latency run, left out of its figures.
    #[arg(long, default_value_t = 5)]
    warmup_seconds: u32,
    /// Only the CPU run.
    #[arg(long, conflicts_with = "latency_only")]
    cpu_only: bool,
    /// Only the latency run.
    #[arg(long)]
    latency_only: bool,
    /// Seconds a run may take.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The `x-simulator` binary; by default the one next to this binary.
    #[arg(long)]
    simulator: Option<PathBuf>,
    /// `perf record` the bridge of the CPU run's last round into this file,
    /// and the latency run's into `<file>.latency` (a profile run: perf's
    /// own cost lands on the machine).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// `perf record --call-graph` mode.
    #[arg(long, default_value = "dwarf,16384")]
    perf_call_graph: String,
    /// `perf stat` (context switches, fsyncs, socket and futex calls) of
    /// every bridge and relay run into `<DIR>/<run>.txt`.
    #[arg(long)]
    perf_stat: Option<PathBuf>,
    #[command(flatten)]
    binary: ScaleBinary,
}

#[derive(Debug, Args)]
struct RelayOpts {
    /// The broker.
    #[arg(long)]
    url: String,
    /// The queue consumed.
    #[arg(long)]
    input: String,
    /// The queue published to.
    #[arg(long)]
    output: String,
    /// Messages in flight.
    #[arg(long, default_value_t = 16)]
    prefetch: u16,
    /// The fake X's base URL: POST each message there first.
    #[arg(long, requires = "account")]
    x_url: Option<String>,
    /// A JSON file of the simulator account to sign as.
    #[arg(long, requires = "x_url")]
    account: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EconomyOpts {
    /// Replies waiting when the bridge meets the rate limit.
    #[arg(long, default_value_t = 100)]
    backlog: usize,
    /// Sends allowed per window.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Window length in seconds.
    #[arg(long, default_value_t = 5)]
    window_secs: u64,
    /// Customer DMs injected while polling.
    #[arg(long, default_value_t = 200)]
    polled_events: usize,
    /// Customer DMs per second while polling.
    #[arg(long, default_value_t = 20)]
    polled_rate: u32,
    /// The channel's poll interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Poll intervals to keep counting after the last event.
    #[arg(long, default_value_t = 5)]
    idle_polls: u32,
}

impl From<&OutboundOpts> for outbound::OutboundArgs {
    fn from(o: &OutboundOpts) -> Self {
        outbound::OutboundArgs {
            replies: o.replies,
            conversations: o.conversations.max(1),
            latencies_ms: o.latencies_ms.clone(),
            timeout: Duration::from_secs(o.timeout_secs),
        }
    }
}

impl From<&InboundOpts> for inbound::InboundArgs {
    fn from(o: &InboundOpts) -> Self {
        inbound::InboundArgs {
            rate: o.rate.max(1),
            seconds: o.seconds,
            warmup_seconds: o.warmup_seconds,
        }
    }
}

impl From<&ScaleOpts> for scale::ScaleArgs {
    fn from(o: &ScaleOpts) -> Self {
        scale::ScaleArgs {
            channels: o.channels.clone(),
            idle_seconds: o.idle_secs,
            settle_seconds: o.settle_secs,
            xbridge: o
                .binary
                .xbridge
                .clone()
                .unwrap_or_else(child::default_xbridge),
            private_broker: o.private_broker,
            label: o.label.clone(),
        }
    }
}

impl From<&ChurnOpts> for churn::ChurnArgs {
    fn from(o: &ChurnOpts) -> Self {
        churn::ChurnArgs {
            channels: o.channels,
            file_channels: o.file_channels,
            rounds: o.rounds.max(1),
            postgres: o.postgres,
            same_names: o.same_names,
            settle_seconds: o.settle_secs,
            rabbitmq_node: o.rabbitmq_node.clone(),
            xbridge: o
                .binary
                .xbridge
                .clone()
                .unwrap_or_else(child::default_xbridge),
        }
    }
}

impl From<&ReplicasOpts> for replicas::ReplicasArgs {
    fn from(o: &ReplicasOpts) -> Self {
        replicas::ReplicasArgs {
            replicas: o.replicas.clone(),
            channels: o.channels.max(1),
            conversations: o.conversations.max(1),
            replies: o.replies,
            latencies_ms: o.latencies_ms.clone(),
            timeout: Duration::from_secs(o.timeout_secs),
            xbridge: o
                .binary
                .xbridge
                .clone()
                .unwrap_or_else(child::default_xbridge),
            cluster: o.cluster,
        }
    }
}

impl From<&EfficiencyOpts> for efficiency::EfficiencyArgs {
    fn from(o: &EfficiencyOpts) -> Self {
        efficiency::EfficiencyArgs {
            replies: o.replies.max(1),
            conversations: o.conversations.max(1),
            in_flight: o.in_flight.max(1),
            rounds: o.rounds.max(1),
            rate: o.rate.max(1),
            channels: o.channels.max(1),
            channel_conversations: o.channel_conversations.max(1),
            seconds: o.seconds,
            warmup_seconds: o.warmup_seconds,
            cpu: !o.latency_only,
            latency: !o.cpu_only,
            timeout: Duration::from_secs(o.timeout_secs),
            xbridge: o
                .binary
                .xbridge
                .clone()
                .unwrap_or_else(child::default_xbridge),
            simulator: o
                .simulator
                .clone()
                .unwrap_or_else(simulator_process::default_simulator),
            perf: o.perf.clone(),
            perf_call_graph: o.perf_call_graph.clone(),
            perf_stat: o.perf_stat.clone(),
        }
    }
}

impl From<&EconomyOpts> for economy::EconomyArgs {
    fn from(o: &EconomyOpts) -> Self {
        economy::EconomyArgs {
            backlog: o.backlog,
            limit: o.limit.max(1),
            window_secs: o.window_secs,
            polled_events: o.polled_events,
            polled_rate: o.polled_rate,
            poll_interval_ms: o.poll_interval_ms,
            idle_polls: o.idle_polls,
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Warnings only, on stderr, unless RUST_LOG says otherwise: the bridge's
    // per-message logs would otherwise be part of what is measured. The test
    // harness's own subscriber then stays uninstalled.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,lapin=off".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Machine => {
            machine();
            Ok(())
        }
        Command::Outbound(o) => outbound::run(&o.into()).await,
        Command::Inbound(o) => inbound::run(&o.into()).await,
        Command::Scale(o) if o.restarts => restarts_all(o).await,
        Command::Scale(o) => scale::run(&o.into()).await,
        Command::Churn(o) => churn::run(&o.into()).await,
        Command::Economy(o) => economy::run(&o.into()).await,
        Command::Replicas(o) => replicas::run(&o.into()).await,
        Command::Efficiency(o) => efficiency::run(&o.into()).await,
        Command::CrmReader { url, queue } => crm_reader::serve(url, queue).await,
        Command::Relay(o) => {
            relay::serve(
                &o.url,
                &o.input,
                &o.output,
                o.prefetch.max(1),
                o.x_url.as_deref(),
                o.account.as_deref(),
            )
            .await
        }
        Command::All(binary) => all(binary).await,
        Command::Cleanup { prefix } => cleanup::run(prefix).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xbridge-bench: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// `scale --restarts`: each channel count in turn.
async fn restarts_all(o: &ScaleOpts) -> anyhow::Result<()> {
    for &channels in &o.channels {
        restarts::run(&restarts::RestartArgs {
            channels,
            xbridge: o
                .binary
                .xbridge
                .clone()
                .unwrap_or_else(child::default_xbridge),
            label: o.label.clone(),
            amqp_extra: o
                .consumers_per_channel
                .map(|n| format!("consumers_per_channel = {n}"))
                .unwrap_or_default(),
        })
        .await?;
    }
    Ok(())
}

async fn all(binary: &ScaleBinary) -> anyhow::Result<()> {
    machine();
    let defaults = Cli::parse_from(["xbridge-bench", "outbound"]);
    if let Command::Outbound(o) = &defaults.command {
        outbound::run(&o.into()).await?;
    }
    let defaults = Cli::parse_from(["xbridge-bench", "inbound"]);
    if let Command::Inbound(o) = &defaults.command {
        inbound::run(&o.into()).await?;
    }
    let defaults = Cli::parse_from(["xbridge-bench", "economy"]);
    if let Command::Economy(o) = &defaults.command {
        economy::run(&o.into()).await?;
    }
    let defaults = Cli::parse_from(["xbridge-bench", "scale"]);
    if let Command::Scale(o) = &defaults.command {
        let mut args: scale::ScaleArgs = o.into();
        if let Some(path) = &binary.xbridge {
            args.xbridge = path.clone();
        }
        scale::run(&args).await?;
    }
    let defaults = Cli::parse_from(["xbridge-bench", "replicas"]);
    if let Command::Replicas(o) = &defaults.command {
        let mut args: replicas::ReplicasArgs = o.into();
        if let Some(path) = &binary.xbridge {
            args.xbridge = path.clone();
        }
        replicas::run(&args).await?;
    }
    Ok(())
}

/// The machine: cores, CPU model, memory, RabbitMQ version, date.
fn machine() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".to_owned());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".to_owned());
    let rabbitmq = std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown (rabbitmqctl not available)".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let load = stats::load_average();
    println!("## Machine\n");
    println!("| | |\n| --- | --- |");
    println!(
        "| date | {} |",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!("| cores (`nproc`) | {cores} |");
    println!("| CPU | {model} |");
    println!("| RAM | {memory} |");
    println!("| Linux | {kernel} |");
    println!("| load average at start (1, 5, 15 min) | {load} |");
    println!("| RabbitMQ | {rabbitmq} (same machine, 127.0.0.1:5672) |");
    println!();
}
