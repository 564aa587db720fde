//! Scale: the resident memory and idle CPU of a real `xbridge run` process
//! configured with many channels, each a simulator account with its own
//! reply queue.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

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
}

/// The figures of one process.
struct ScaleRun {
    channels: usize,
    ready_after: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    cpu_percent: f64,
}

/// Runs each channel count in turn and prints the table.
pub async fn run(args: &ScaleArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    let ticks = clock_ticks()?;
    let mut runs = Vec::new();
    for &channels in &args.channels {
        runs.push(one(args, channels, ticks).await?);
    }
    print_table(args, &runs);
    Ok(())
}

fn print_table(args: &ScaleArgs, runs: &[ScaleRun]) {
    println!("## Scale (one `xbridge run` process)\n");
    println!(
        "`{}` as a child process, channels backed by simulator accounts in the benchmark's process, \
         no webhook server, no polling (`inbound` unset), the ops server on. After `/readyz` answers \
         200 and {} s of settling: `VmRSS` and `VmHWM` from `/proc/<pid>/status`, then `utime + stime` \
         from `/proc/<pid>/stat` over {} s of idleness (no replies, no events).\n",
        args.xbridge.display(),
        args.settle_seconds,
        args.idle_seconds
    );
    println!(
        "| channels | ready after | VmRSS | VmHWM (peak) | threads | idle CPU (% of one core) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for run in runs {
        println!(
            "| {} | {:.1} s | {:.1} MiB | {:.1} MiB | {} | {:.2} % |",
            run.channels,
            run.ready_after.as_secs_f64(),
            run.rss_kib as f64 / 1024.0,
            run.hwm_kib as f64 / 1024.0,
            run.threads,
            run.cpu_percent
        );
    }
    crate::stats::print_load();
    println!();
}

async fn one(args: &ScaleArgs, channels: usize, ticks: u64) -> anyhow::Result<ScaleRun> {
    eprintln!("scale: {channels} channel(s)");
    let names = (0..channels).map(|i| format!("c{i:04}")).collect();
    let app = world(options(names)).await;
    let started = Instant::now();
    let mut bridge = ChildBridge::spawn(&args.xbridge, &app, "xbridge.toml")?;
    let pid = bridge.child.id().context("the bridge has a pid")?;
    let measured = async {
        bridge.wait_ready().await?;
        let ready_after = started.elapsed();
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        measure_idle(args, pid, ticks, channels, ready_after).await
    }
    .await;
    bridge.terminate();
    bridge.wait_exit().await;
    // The figures first: a broker that chokes on deleting a thousand quorum
    // queues must not take them with it.
    match &measured {
        Ok(run) => eprintln!(
            "scale: {channels} channel(s): ready after {:.1} s, VmRSS {:.1} MiB, VmHWM {:.1} MiB, {} threads, idle CPU {:.2} %",
            run.ready_after.as_secs_f64(),
            run.rss_kib as f64 / 1024.0,
            run.hwm_kib as f64 / 1024.0,
            run.threads,
            run.cpu_percent
        ),
        Err(e) => eprintln!("scale: {channels} channel(s): {e:#}"),
    }
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

/// The process's CPU over `idle_seconds` of idleness, then its memory and
/// threads.
async fn measure_idle(
    args: &ScaleArgs,
    pid: u32,
    ticks: u64,
    channels: usize,
    ready_after: Duration,
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
        ready_after,
        rss_kib: status_field(&status, "VmRSS:")?,
        hwm_kib: status_field(&status, "VmHWM:")?,
        threads: status_field(&status, "Threads:")?,
        cpu_percent: 100.0 * cpu_seconds / idle.as_secs_f64(),
    })
}

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
