//! Scale: the resident memory and idle CPU of a real `xbridge run` process
//! configured with many channels, each a simulator account with its own
//! reply queue.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::harness::{options, world, SETUP_PATIENCE};

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

/// The `xbridge` binary next to this one (both in `target/release`).
pub fn default_xbridge() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("xbridge")))
        .unwrap_or_else(|| PathBuf::from("xbridge"))
}

/// Runs each channel count in turn and prints the table.
pub async fn run(args: &ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.xbridge.exists(),
        "{} does not exist: build it first with `cargo build --release -p xbridge`, or pass --xbridge",
        args.xbridge.display()
    );
    let ticks = clock_ticks()?;
    let mut runs = Vec::new();
    for &channels in &args.channels {
        runs.push(one(args, channels, ticks).await?);
    }
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
    Ok(())
}

async fn one(args: &ScaleArgs, channels: usize, ticks: u64) -> anyhow::Result<ScaleRun> {
    eprintln!("scale: {channels} channel(s)");
    let names = (0..channels).map(|i| format!("c{i:04}")).collect();
    let app = world(options(names)).await;
    let ops_port = free_port()?;
    let config = app.dir.path().join("xbridge.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[telemetry]\nlisten = \"127.0.0.1:{ops_port}\"\n",
            app.config_toml()
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new(&args.xbridge)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn,lapin=off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.xbridge.display()))?;
    let pid = child.id().context("the bridge has a pid")?;
    let measured = async {
        wait_ready(ops_port, &mut child).await?;
        let ready_after = started.elapsed();
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        let before = cpu_ticks(pid)?;
        let idle_start = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        let after = cpu_ticks(pid)?;
        let idle = idle_start.elapsed();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let cpu_seconds = (after - before) as f64 / ticks as f64;
        anyhow::Ok(ScaleRun {
            channels,
            ready_after,
            rss_kib: status_field(&status, "VmRSS:")?,
            hwm_kib: status_field(&status, "VmHWM:")?,
            threads: status_field(&status, "Threads:")?,
            cpu_percent: 100.0 * cpu_seconds / idle.as_secs_f64(),
        })
    }
    .await;
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
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

/// How long deleting a run's topology may take before the run moves on.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(180);

/// Waits until the ops server says the bridge is ready.
pub(crate) async fn wait_ready(port: u16, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + SETUP_PATIENCE * 5;
    loop {
        if let Ok(answer) = http.get(&url).send().await {
            if answer.status().is_success() {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the bridge exited before it was ready: {status}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge was not ready in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

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
fn status_field(status: &str, name: &str) -> anyhow::Result<u64> {
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
