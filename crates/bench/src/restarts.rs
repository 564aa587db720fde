//! `scale --restarts` (issue 15): one `xbridge run` process with many
//! channels on a RabbitMQ node of the run's own ([`PrivateBroker`]), started,
//! serving one reply on each channel, and stopped, three times: stopped with
//! SIGTERM, then SIGKILL, then SIGTERM. Meanwhile a probe opens a new AMQP
//! connection to the node every 200 ms and records each refusal and each
//! connect slower than 5 s: with 1,000 AMQP channels on the bridge's
//! connection, a RabbitMQ 3.10 node stopped accepting connections each time
//! that connection closed. The AMQP channels of the bridge's connections
//! come from the node's `rabbitmqctl list_connections`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use xbridge_test_support::PrivateBroker;

use crate::child::{ensure_built, ChildBridge};
use crate::harness::{options, read_queue, world, Publisher, Received};

/// What to run.
#[derive(Debug, Clone)]
pub struct RestartArgs {
    /// Channels of the process.
    pub channels: usize,
    /// The `xbridge` binary.
    pub xbridge: PathBuf,
    /// What the table calls this binary (e.g. `before`, `after`).
    pub label: String,
    /// Extra `[amqp]` lines for the bridge's configuration.
    pub amqp_extra: String,
}

/// How often the probe opens a connection.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A connect slower than this counts as the broker not accepting.
const PROBE_SLOW: Duration = Duration::from_secs(5);
/// How long the probe goes on after the last stop.
const AFTER_LAST_STOP: Duration = Duration::from_secs(15);
/// How long serving one reply per channel may take.
const SERVE_PATIENCE: Duration = Duration::from_secs(600);

/// How a run of the process ends.
#[derive(Debug, Clone, Copy)]
enum StopBy {
    Term,
    Kill,
}

/// One start-serve-stop of the process.
struct Round {
    stop_by: StopBy,
    ready_after: Duration,
    /// AMQP channels of the bridge's connections once ready, by connection.
    amqp_channels: Vec<(String, u64)>,
    served: usize,
    /// `message.sent` of earlier rounds' replies read meanwhile: replies
    /// whose ack a SIGKILL cut, redelivered and told again (same id).
    earlier: usize,
    serve_took: Duration,
    stop_took: Duration,
    /// From the start to the end of the probe's window after the stop.
    window: (Instant, Instant),
}

/// One connect of the probe.
struct Attempt {
    at: Instant,
    took: Duration,
    outcome: Result<(), String>,
}

/// Runs the cycle and prints its table.
pub async fn run(args: &RestartArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    eprintln!("restarts: starting a RabbitMQ node of the run's own");
    let broker = PrivateBroker::started().await;
    let url = broker.amqp_url();
    let names = (0..args.channels).map(|i| format!("c{i:04}")).collect();
    let mut options = options(names);
    options.amqp_url = Some(url.clone());
    let app = world(options).await;
    let config =
        app.config_toml()
            .replacen("\n[amqp]\n", &format!("\n[amqp]\n{}\n", args.amqp_extra), 1);

    let attempts = Arc::new(Mutex::new(Vec::new()));
    let probe_stop = CancellationToken::new();
    let probe = tokio::spawn(probe(url.clone(), attempts.clone(), probe_stop.clone()));

    let mut rounds = Vec::new();
    let mut events = None;
    let publisher = Publisher::connect(&url).await?;
    let mut failure = None;
    for (round, stop_by) in [StopBy::Term, StopBy::Kill, StopBy::Term]
        .into_iter()
        .enumerate()
    {
        match one(
            args,
            &app,
            &broker,
            &config,
            &publisher,
            &mut events,
            round,
            stop_by,
        )
        .await
        {
            Ok(r) => rounds.push(r),
            Err(e) => {
                eprintln!("restarts: round {}: {e:#}", round + 1);
                failure = Some(e);
                break;
            }
        }
    }
    tokio::time::sleep(AFTER_LAST_STOP).await;
    let dms = app.simulator.sent_dms();
    let distinct: std::collections::HashSet<&str> = dms.iter().map(|dm| dm.text.as_str()).collect();
    eprintln!(
        "restarts: X got {} DMs, {} distinct",
        dms.len(),
        distinct.len()
    );
    let on_x = (dms.len(), distinct.len());
    probe_stop.cancel();
    let _ = probe.await;
    let attempts = std::mem::take(&mut *attempts.lock().unwrap_or_else(|e| e.into_inner()));
    print_table(args, &rounds, &attempts, on_x);
    // The node goes with its data (dropped): deleting a thousand quorum
    // queues one by one is what stalled such a node before.
    drop(events);
    drop(broker);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Starts the process, serves a reply on each channel, and stops it.
#[allow(clippy::too_many_arguments)]
async fn one(
    args: &RestartArgs,
    app: &xbridge_test_support::TestApp,
    broker: &PrivateBroker,
    config: &str,
    publisher: &Publisher,
    events: &mut Option<(
        lapin::Connection,
        tokio::sync::mpsc::UnboundedReceiver<crate::harness::Received>,
    )>,
    round: usize,
    stop_by: StopBy,
) -> anyhow::Result<Round> {
    let n = args.channels;
    eprintln!("restarts: round {}: starting {n} channel(s)", round + 1);
    let started = Instant::now();
    let mut bridge = ChildBridge::spawn_with(&args.xbridge, app, "xbridge.toml", config)?;
    bridge.wait_ready().await?;
    let ready_after = started.elapsed();
    let amqp_channels = bridge_channels(broker).await?;
    eprintln!(
        "restarts: round {}: ready after {:.1} s; AMQP channels {amqp_channels:?}",
        round + 1,
        ready_after.as_secs_f64()
    );
    if events.is_none() {
        *events = Some(read_queue(&app.amqp_url(), &app.names.incoming_queue).await?);
    }
    let (_, received) = events.as_mut().expect("just set");
    let serving = Instant::now();
    let offset = round * n;
    let replies = (0..n)
        .map(|i| {
            let body = serde_json::to_vec(&xbridge_test_support::reply(
                &format!("m-{}", offset + i),
                "2000000000000000000",
                &format!("restart round {} reply {i}", round + 1),
            ))
            .expect("JSON");
            (format!("c{i:04}"), body)
        })
        .collect();
    publisher
        .publish_routed(&app.names.outgoing_exchange, replies)
        .await?;
    let (served, earlier) = count_sent(received, offset..offset + n).await;
    let serve_took = serving.elapsed();
    eprintln!(
        "restarts: round {}: {served} of {n} replies sent in {:.1} s ({earlier} `message.sent` of earlier rounds' replies again)",
        round + 1,
        serve_took.as_secs_f64()
    );
    let stopping = Instant::now();
    match stop_by {
        StopBy::Term => bridge.terminate(),
        StopBy::Kill => {
            if let Some(pid) = bridge.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    bridge.wait_exit().await;
    let stop_took = stopping.elapsed();
    let exited = bridge.child.try_wait()?;
    anyhow::ensure!(exited.is_some(), "the bridge did not exit in 30 s");
    eprintln!(
        "restarts: round {}: stopped ({stop_by:?}) in {:.1} s: {}",
        round + 1,
        stop_took.as_secs_f64(),
        exited.map(|s| s.to_string()).unwrap_or_default()
    );
    // The probe's window of this round reaches past the close into the next
    // start (or the quiet after the last stop).
    Ok(Round {
        stop_by,
        ready_after,
        amqp_channels,
        served,
        earlier,
        serve_took,
        stop_took,
        window: (started, Instant::now()),
    })
}

/// Reads `message.sent` events until every reply `m-<i>` with `i` in
/// `round` has one, or [`SERVE_PATIENCE`] passes: how many did, and how
/// many events named a reply of an earlier round.
async fn count_sent(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
    round: std::ops::Range<usize>,
) -> (usize, usize) {
    let mut sent = std::collections::HashSet::new();
    let mut earlier = 0;
    let deadline = tokio::time::Instant::now() + SERVE_PATIENCE;
    while sent.len() < round.len() {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            eprintln!(
                "restarts: gave up with {} of {} sent",
                sent.len(),
                round.len()
            );
            break;
        };
        if event.body["type"] != "message.sent" {
            continue;
        }
        let id = event.body["message_id"]
            .as_str()
            .and_then(|id| id.strip_prefix("m-")?.parse::<usize>().ok());
        match id {
            Some(i) if round.contains(&i) => {
                sent.insert(i);
            }
            Some(_) => earlier += 1,
            None => {}
        }
    }
    (sent.len(), earlier)
}

/// The AMQP channels of each of the bridge's connections (named `xbridge
/// …`), as the node counts them.
async fn bridge_channels(broker: &PrivateBroker) -> anyhow::Result<Vec<(String, u64)>> {
    let listed = broker
        .ctl_output(&[
            "list_connections",
            "--no-table-headers",
            "channels",
            "client_properties",
        ])
        .await
        .map_err(|e| anyhow::anyhow!("rabbitmqctl list_connections: {e}"))?;
    let mut connections = Vec::new();
    for line in listed.lines() {
        let Some(at) = line.find("\"xbridge ") else {
            continue;
        };
        let name = line[at + 1..].split('"').next().unwrap_or_default();
        let channels = line
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .context("a channel count")?;
        connections.push((name.to_owned(), channels));
    }
    connections.sort();
    Ok(connections)
}

/// Opens a connection to `url` every [`PROBE_EVERY`] until `stop`, each
/// given [`PROBE_SLOW`], and records how each went.
async fn probe(url: String, attempts: Arc<Mutex<Vec<Attempt>>>, stop: CancellationToken) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let at = Instant::now();
        let connecting = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
        let outcome = match tokio::time::timeout(PROBE_SLOW, connecting).await {
            Ok(Ok(connection)) => {
                let _ = connection.close(200, "probe".into()).await;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {PROBE_SLOW:?}")),
        };
        let took = at.elapsed();
        if let Err(e) = &outcome {
            eprintln!("restarts: probe: {e}");
        }
        attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Attempt { at, took, outcome });
    }
}

fn print_table(args: &RestartArgs, rounds: &[Round], attempts: &[Attempt], on_x: (usize, usize)) {
    println!("### {} ({} channels)\n", args.label, args.channels);
    println!(
        "| round | ready after | AMQP channels of the bridge's connections | replies sent | earlier replies told again | serving took | stopped by | stop took | probe connects | refused or > 5 s | slowest connect |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, round) in rounds.iter().enumerate() {
        let (from, to) = round.window;
        let to = if i + 1 == rounds.len() {
            Instant::now()
        } else {
            to
        };
        let window: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .collect();
        let failed = window.iter().filter(|a| a.outcome.is_err()).count();
        let slowest = window.iter().map(|a| a.took).max().unwrap_or_default();
        let channels: Vec<String> = round
            .amqp_channels
            .iter()
            .map(|(name, n)| format!("{name}: {n}"))
            .collect();
        println!(
            "| {} | {:.1} s | {} | {} of {} | {} | {:.1} s | {:?} | {:.1} s | {} | {} | {} ms |",
            i + 1,
            round.ready_after.as_secs_f64(),
            channels.join(", "),
            round.served,
            args.channels,
            round.earlier,
            round.serve_took.as_secs_f64(),
            round.stop_by,
            round.stop_took.as_secs_f64(),
            window.len(),
            failed,
            slowest.as_millis()
        );
    }
    println!(
        "\nX got {} DMs, {} distinct, for {} replies published.",
        on_x.0,
        on_x.1,
        rounds.len() * args.channels
    );
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    println!(
        "Probe: {} connects in all, {} refused or slower than {PROBE_SLOW:?}{}.",
        attempts.len(),
        failed.len(),
        failed
            .first()
            .and_then(|a| a.outcome.as_ref().err())
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    crate::stats::print_load();
    println!();
}
