//! Scale: the start time, resident memory and idle CPU of a real `xbridge
//! run` process configured with many channels, each a simulator account with
//! its own reply queue.
//!
//! With `--private-broker` (issue 16) each channel count runs on a RabbitMQ
//! node of the run's own ([`PrivateBroker`], never the shared node), started
//! twice: the first start declares every reply queue, the second finds them
//! there, as a restart of a deployment does. The node's own figures (memory,
//! file descriptors, Erlang processes, queues) are printed beside the
//! bridge's, since with thousands of quorum queues the broker is what a
//! deployment has to size. The node is stopped and deleted with its queues
//! afterwards, so the run needs no cleanup of 10,000 queues.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xbridge_test_support::{PrivateBroker, TestApp};

use crate::child::{ensure_built, ChildBridge};
use crate::harness::{options, world};

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleArgs {
    /// Channel counts to run with.
    pub channels: Vec<usize>,
    /// Seconds of idleness over which CPU is measured.
    pub idle_seconds: u64,
    /// Seconds to let the process settle after it is ready.
    pub settle_seconds: u64,
    /// The `xbridge` binary.
    pub xbridge: PathBuf,
    /// On a RabbitMQ node of the run's own, started twice per channel count.
    pub private_broker: bool,
    /// What the table calls this binary (`before`, `after`).
    pub label: String,
}

/// The figures of one process.
struct ScaleRun {
    channels: usize,
    /// `first` (queues declared) or `second` (queues there); `shared` on the
    /// broker of `XBRIDGE_TEST_AMQP_URL`.
    start: &'static str,
    ready_after: Duration,
    /// CPU seconds from the spawn to `/readyz`: the bridge's, and the private
    /// node's `beam.smp` (where a start's time went).
    start_cpu: (f64, Option<f64>),
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    cpu_percent: f64,
    /// The private node's figures once the bridge was idle.
    broker: Option<BrokerFigures>,
}

/// What a private node reports of itself (`rabbitmqctl status`,
/// `list_queues`).
#[derive(Default)]
struct BrokerFigures {
    memory_mib: Option<f64>,
    /// `VmRSS` of the node's `beam.smp`.
    rss_mib: Option<f64>,
    fds: Option<(u64, u64)>,
    processes: Option<(u64, u64)>,
    queues: Option<usize>,
}

/// Runs each channel count in turn and prints the table.
pub async fn run(args: &ScaleArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    let ticks = clock_ticks()?;
    let mut runs = Vec::new();
    let mut failed = None;
    for &channels in &args.channels {
        let measured = if args.private_broker {
            on_private_broker(args, channels, ticks, &mut runs).await
        } else {
            one(args, channels, ticks).await.map(|run| runs.push(run))
        };
        if let Err(e) = measured {
            failed = Some(e.context(format!("{channels} channel(s)")));
            break;
        }
    }
    // What was measured before a failure is worth its row.
    print_table(args, &runs);
    failed.map_or(Ok(()), Err)
}

fn print_table(args: &ScaleArgs, runs: &[ScaleRun]) {
    println!("## Scale (one `xbridge run` process)\n");
    println!(
        "`{}` ({}) as a child process, channels backed by simulator accounts in the benchmark's process, \
         no webhook server, no polling (`inbound` unset), the ops server on. After `/readyz` answers \
         200 and {} s of settling: `VmRSS` and `VmHWM` from `/proc/<pid>/status`, then `utime + stime` \
         from `/proc/<pid>/stat` over {} s of idleness (no replies, no events).{}\n",
        args.xbridge.display(),
        args.label,
        args.settle_seconds,
        args.idle_seconds,
        if args.private_broker {
            " On a RabbitMQ node of the run's own per channel count, started twice: `first` \
             declares the reply queues, `second` finds them there. The node's memory \
             (`rabbitmqctl status`, total), file descriptors and Erlang processes (used / limit) \
             and queue count once the bridge was idle."
        } else {
            ""
        }
    );
    if args.private_broker {
        println!(
            "| channels | build | start | ready after | CPU to ready: bridge / node | VmRSS | VmHWM (peak) | threads | idle CPU (% of one core) | node memory (status / VmRSS) | node fds | node processes | queues |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    } else {
        println!(
            "| channels | ready after | VmRSS | VmHWM (peak) | threads | idle CPU (% of one core) |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
    }
    for run in runs {
        let ready = if args.private_broker {
            format!(
                "{:.1} s | {:.1} s / {} |",
                run.ready_after.as_secs_f64(),
                run.start_cpu.0,
                run.start_cpu
                    .1
                    .map_or("?".to_owned(), |s| format!("{s:.1} s"))
            )
        } else {
            format!("{:.1} s |", run.ready_after.as_secs_f64())
        };
        let bridge = format!(
            "{ready} {:.1} MiB | {:.1} MiB | {} | {:.2} %",
            run.rss_kib as f64 / 1024.0,
            run.hwm_kib as f64 / 1024.0,
            run.threads,
            run.cpu_percent
        );
        match &run.broker {
            Some(b) => println!(
                "| {} | {} | {} | {bridge} | {} / {} | {} | {} | {} |",
                run.channels,
                args.label,
                run.start,
                mib(b.memory_mib),
                mib(b.rss_mib),
                pair(b.fds),
                pair(b.processes),
                b.queues.map_or("?".to_owned(), |q| q.to_string()),
            ),
            None if args.private_broker => println!(
                "| {} | {} | {} | {bridge} | ? | ? | ? | ? |",
                run.channels, args.label, run.start
            ),
            None => println!("| {} | {bridge} |", run.channels),
        }
    }
    crate::stats::print_load();
    println!();
}

fn mib(value: Option<f64>) -> String {
    value.map_or("?".to_owned(), |m| format!("{m:.0} MiB"))
}

fn pair(value: Option<(u64, u64)>) -> String {
    value.map_or("?".to_owned(), |(used, limit)| format!("{used} / {limit}"))
}

async fn one(args: &ScaleArgs, channels: usize, ticks: u64) -> anyhow::Result<ScaleRun> {
    eprintln!("scale: {channels} channel(s)");
    shared_node_has_room(channels).await?;
    let app = world(options(channel_names(channels))).await;
    let measured = start_and_measure(args, &app, None, channels, ticks, "shared").await;
    // The figures first: a broker that chokes on deleting a thousand quorum
    // queues must not take them with it.
    if tokio::time::timeout(CLEANUP_PATIENCE, app.cleanup())
        .await
        .is_err()
    {
        eprintln!(
            "scale: the broker did not finish deleting the run's queues in {CLEANUP_PATIENCE:?}; \
             `xbridge-bench cleanup {}` deletes them later",
            app.names.outgoing_exchange.trim_end_matches(".outgoing")
        );
    }
    measured
}

/// Refuses a run whose quorum queues the shared node has no descriptors for.
/// RabbitMQ 3.10 counts about three per quorum queue, and a node past its
/// limit stops answering connections and `rabbitmqctl` alike, so the run's
/// own cleanup cannot delete them and every test on the machine then fails:
/// a node started by `su` gets a soft limit of 1,024, which 1,000 channels
/// exceed (it happened, 2026-12-05).
async fn shared_node_has_room(channels: usize) -> anyhow::Result<()> {
    let status = tokio::time::timeout(
        CTL_PATIENCE,
        tokio::process::Command::new("rabbitmqctl")
            .args(["--quiet", "status", "--formatter", "json"])
            .output(),
    )
    .await
    .context("rabbitmqctl status: no answer")?
    .context("rabbitmqctl status")?;
    let status: serde_json::Value =
        serde_json::from_slice(&status.stdout).context("rabbitmqctl status: not JSON")?;
    let Some((used, limit)) = descriptors(&status) else {
        anyhow::bail!("rabbitmqctl status names no file descriptor limit");
    };
    let wanted = used + 3 * channels as u64 + SHARED_NODE_SPARE_FDS;
    anyhow::ensure!(
        wanted <= limit,
        "{channels} channels want about {wanted} file descriptors of the shared RabbitMQ node, \
         which allows {limit} ({used} in use): use --private-broker, or start the node with a \
         higher `ulimit -n`"
    );
    Ok(())
}

/// The file descriptors a node uses and may use, from `rabbitmqctl status --formatter json`.
fn descriptors(status: &serde_json::Value) -> Option<(u64, u64)> {
    let fds = &status["file_descriptors"];
    fds["total_used"].as_u64().zip(fds["total_limit"].as_u64())
}

/// Descriptors left for connections and the tests beside a run.
const SHARED_NODE_SPARE_FDS: u64 = 200;

/// `channels` channels on a node of the run's own: a first start that
/// declares every queue, a second that finds them. The node goes with its
/// queues when dropped.
async fn on_private_broker(
    args: &ScaleArgs,
    channels: usize,
    ticks: u64,
    runs: &mut Vec<ScaleRun>,
) -> anyhow::Result<()> {
    eprintln!("scale: {channels} channel(s): starting a RabbitMQ node of the run's own");
    let broker = PrivateBroker::started().await;
    let mut options = options(channel_names(channels));
    options.amqp_url = Some(broker.amqp_url());
    let app = world(options).await;
    for start in ["first", "second"] {
        let beam = crate::procstat::beam_of(broker.node_name());
        let mut run = start_and_measure(args, &app, beam, channels, ticks, start).await?;
        run.broker = Some(broker_figures(&broker, beam).await);
        runs.push(run);
    }
    Ok(())
}

fn channel_names(channels: usize) -> Vec<String> {
    (0..channels).map(|i| format!("c{i:05}")).collect()
}

/// Starts the process, waits for `/readyz`, measures it idle and stops it.
async fn start_and_measure(
    args: &ScaleArgs,
    app: &TestApp,
    beam: Option<u32>,
    channels: usize,
    ticks: u64,
    start: &'static str,
) -> anyhow::Result<ScaleRun> {
    let beam_before = beam.and_then(|pid| cpu_ticks(pid).ok());
    let started = Instant::now();
    // `amqp.max_channels` is 1,000 by default: a file with more does not load.
    let config = app.config_toml().replacen(
        "\n[amqp]\n",
        &format!("\n[amqp]\nmax_channels = {}\n", channels.max(1000)),
        1,
    );
    let mut bridge = ChildBridge::spawn_with(&args.xbridge, app, "xbridge.toml", &config)?;
    let pid = bridge.child.id().context("the bridge has a pid")?;
    let measured = async {
        bridge.wait_ready().await?;
        let ready_after = started.elapsed();
        let bridge_cpu = cpu_ticks(pid)? as f64 / ticks as f64;
        let beam_cpu = beam
            .and_then(|pid| cpu_ticks(pid).ok())
            .zip(beam_before)
            .map(|(after, before)| (after - before) as f64 / ticks as f64);
        eprintln!(
            "scale: {channels} channel(s), {start} start: ready after {:.1} s",
            ready_after.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        let mut run = measure_idle(args, pid, ticks, channels, ready_after, start).await?;
        run.start_cpu = (bridge_cpu, beam_cpu);
        Ok(run)
    }
    .await;
    bridge.terminate();
    bridge.wait_exit().await;
    match &measured {
        Ok(run) => eprintln!(
            "scale: {channels} channel(s), {start} start: ready after {:.1} s (CPU to ready: bridge {:.1} s, node {:?} s), VmRSS {:.1} MiB, VmHWM {:.1} MiB, {} threads, idle CPU {:.2} %",
            run.ready_after.as_secs_f64(),
            run.start_cpu.0,
            run.start_cpu.1,
            run.rss_kib as f64 / 1024.0,
            run.hwm_kib as f64 / 1024.0,
            run.threads,
            run.cpu_percent
        ),
        Err(e) => eprintln!("scale: {channels} channel(s), {start} start: {e:#}"),
    }
    measured
}

/// The node's memory, file descriptors, Erlang processes and queue count;
/// what it does not say stays unknown.
async fn broker_figures(broker: &PrivateBroker, beam: Option<u32>) -> BrokerFigures {
    let mut figures = BrokerFigures {
        rss_mib: beam
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|status| status_field(&status, "VmRSS:").ok())
            .map(|kib| kib as f64 / 1024.0),
        ..BrokerFigures::default()
    };
    // A node busy with ten thousand quorum queues may not answer at all.
    let ctl = |args: &'static [&'static str]| async move {
        tokio::time::timeout(CTL_PATIENCE, broker.ctl_output(args))
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {CTL_PATIENCE:?}")))
    };
    match ctl(&["status", "--formatter", "json"]).await {
        Ok(status) => {
            if let Ok(status) = serde_json::from_str::<serde_json::Value>(&status) {
                let total = &status["memory"]["total"];
                figures.memory_mib = total["rss"]
                    .as_u64()
                    .or_else(|| total["erlang"].as_u64())
                    .or_else(|| total.as_u64())
                    .map(|bytes| bytes as f64 / 1024.0 / 1024.0);
                figures.fds = descriptors(&status);
                let processes = &status["processes"];
                figures.processes = processes["used"].as_u64().zip(processes["limit"].as_u64());
            }
        }
        Err(e) => eprintln!("scale: rabbitmqctl status: {e}"),
    }
    match ctl(&["list_queues", "name"]).await {
        Ok(queues) => figures.queues = Some(queues.lines().filter(|l| !l.is_empty()).count()),
        Err(e) => eprintln!("scale: rabbitmqctl list_queues: {e}"),
    }
    figures
}

/// The process's CPU over `idle_seconds` of idleness, then its memory and
/// threads.
async fn measure_idle(
    args: &ScaleArgs,
    pid: u32,
    ticks: u64,
    channels: usize,
    ready_after: Duration,
    start: &'static str,
) -> anyhow::Result<ScaleRun> {
    let before = cpu_ticks(pid)?;
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let after = cpu_ticks(pid)?;
    let idle = idle_start.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let cpu_seconds = (after - before) as f64 / ticks as f64;
    Ok(ScaleRun {
        channels,
        start,
        ready_after,
        start_cpu: (0.0, None),
        rss_kib: status_field(&status, "VmRSS:")?,
        hwm_kib: status_field(&status, "VmHWM:")?,
        threads: status_field(&status, "Threads:")?,
        cpu_percent: 100.0 * cpu_seconds / idle.as_secs_f64(),
        broker: None,
    })
}

/// How long the bench waits for one `rabbitmqctl` answer of a private node.
const CTL_PATIENCE: Duration = Duration::from_secs(30);

/// How long deleting a run's topology may take before the run moves on.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(180);

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')').context("a stat line")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, `state` is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// A `Name:   <number> ...` line of `/proc/<pid>/status`.
pub(crate) fn status_field(status: &str, name: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("{name} in /proc/<pid>/status"))
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> anyhow::Result<u64> {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}
