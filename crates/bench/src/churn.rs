//! Churn: a real `xbridge run` process with control on gets many channels
//! added one by one by the CRM's `channel.upsert` commands, then removed one
//! by one by `channel.remove`, and what the process holds is measured before,
//! in between and after: memory, threads, open files, tokio tasks, its AMQP
//! connections and channels, and the metric series it exports. What the
//! removal leaves behind, compared with before, is what the channels leaked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use x_simulator::Account;
use xbridge_test_support::TestApp;

use crate::child::{ensure_built, ChildBridge};
use crate::harness::{options, read_queue, world, Publisher, Received, SETUP_PATIENCE};
use crate::probe::{self, Snapshot};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChurnArgs {
    /// Channels added, then removed, at run time.
    pub channels: usize,
    /// Channels of the configuration file, there throughout.
    pub file_channels: usize,
    /// Seconds to let the process settle before each measurement.
    pub settle_seconds: u64,
    /// The node `rabbitmqctl` asks (`-n`), when not the default one.
    pub rabbitmq_node: Option<String>,
    /// The `xbridge` binary.
    pub xbridge: PathBuf,
}

/// The three measurements and how long the two phases took.
struct ChurnRun {
    before: Snapshot,
    added: Snapshot,
    removed: Snapshot,
    adding: Duration,
    removing: Duration,
}

/// Adds and removes the channels, then prints the table.
pub async fn run(args: &ChurnArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    let names = (0..args.file_channels).map(|i| format!("f{i:02}")).collect();
    let app = world(options(names)).await;
    let prefix = app
        .names
        .outgoing_exchange
        .trim_end_matches(".outgoing")
        .to_owned();
    let mut bridge = ChildBridge::spawn_with(
        &args.xbridge,
        &app,
        "xbridge.toml",
        &control_config(&app, &prefix),
    )?;
    let measured = churn(args, &app, &mut bridge, &prefix).await;
    bridge.terminate();
    bridge.wait_exit().await;
    if let Err(e) = crate::cleanup::run_on(&prefix, args.rabbitmq_node.as_deref()).await {
        eprintln!("churn: cleanup of {prefix}.… failed: {e:#}; `xbridge-bench cleanup {prefix}`");
    }
    print_table(args, &measured?);
    Ok(())
}

/// The configuration of `app` with control on: `guest` may manage channels,
/// the control names under the run's prefix, a credentials key.
fn control_config(app: &TestApp, prefix: &str) -> String {
    let key = "5e".repeat(32);
    app.config_toml().replacen(
        "\n[state]\n",
        &format!("\n[state]\ncredentials_key = \"{key}\"\n"),
        1,
    ) + &format!(
        "\n[amqp.control]\nallowed_users = [\"guest\"]\nexchange = \"{prefix}.control\"\n\
         commands_queue = \"{prefix}.control.commands\"\nchanges_exchange = \"{prefix}.control.changes\"\n"
    )
}

async fn churn(
    args: &ChurnArgs,
    app: &TestApp,
    bridge: &mut ChildBridge,
    prefix: &str,
) -> anyhow::Result<ChurnRun> {
    let pid = bridge.child.id().context("the bridge has a pid")?;
    let node = args.rabbitmq_node.as_deref();
    bridge.wait_ready().await?;
    let crm = Crm::connect(app, prefix).await?;
    let settle = Duration::from_secs(args.settle_seconds);
    tokio::time::sleep(settle).await;
    let before = probe::snapshot(pid, bridge.ops_port, node).await?;
    eprintln!("churn: before: {before}");
    let mut crm = crm;
    let accounts: Vec<(String, Account)> = (0..args.channels)
        .map(|i| {
            let account = Account::generate(&format!("churn_{i:04}"));
            app.simulator.add_account(account.clone());
            (format!("churn{i:04}"), account)
        })
        .collect();
    let started = Instant::now();
    for (i, (name, account)) in accounts.iter().enumerate() {
        let answer = crm.command(upsert(&format!("add-{i}"), name, account)).await?;
        anyhow::ensure!(answer["state"] == "ok", "adding {name}: {answer}");
        progress("added", i + 1, args.channels, started);
    }
    let adding = started.elapsed();
    tokio::time::sleep(settle).await;
    let added = probe::snapshot(pid, bridge.ops_port, node).await?;
    eprintln!("churn: after adding: {added}");
    let started = Instant::now();
    for (i, (name, _)) in accounts.iter().enumerate() {
        let command = json!({"command": "channel.remove", "command_id": format!("rm-{i}"), "channel": name});
        let answer = crm.command(command).await?;
        anyhow::ensure!(answer["state"] == "removed", "removing {name}: {answer}");
        progress("removed", i + 1, args.channels, started);
    }
    let removing = started.elapsed();
    tokio::time::sleep(settle).await;
    let removed = probe::snapshot(pid, bridge.ops_port, node).await?;
    eprintln!("churn: after removing: {removed}");
    Ok(ChurnRun {
        before,
        added,
        removed,
        adding,
        removing,
    })
}

fn progress(what: &str, done: usize, total: usize, started: Instant) {
    if done % 100 == 0 || done == total {
        eprintln!(
            "churn: {what} {done}/{total} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// `channel.upsert` of `account` as channel `name` (webhook inbound, the
/// default: no poller, no lease queue).
fn upsert(command_id: &str, name: &str, account: &Account) -> Value {
    json!({
        "command": "channel.upsert", "command_id": command_id, "channel": name,
        "consumer_key": account.consumer_key, "consumer_secret": account.consumer_secret,
        "access_token": account.access_token, "access_token_secret": account.access_token_secret,
        "bearer_token": account.bearer_token,
    })
}

/// The CRM's side: publishes commands as `guest` and reads the answers.
struct Crm {
    publisher: Publisher,
    exchange: String,
    answers: mpsc::UnboundedReceiver<Received>,
    _reader: lapin::Connection,
}

impl Crm {
    /// Connects once the bridge has declared the control topology.
    async fn connect(app: &TestApp, prefix: &str) -> anyhow::Result<Crm> {
        let publisher = Publisher::connect(&app.amqp_url()).await?;
        let commands = format!("{prefix}.control.commands");
        wait_declared(&app.amqp_url(), &commands).await?;
        let (reader, answers) = read_queue(&app.amqp_url(), &app.names.incoming_queue).await?;
        Ok(Crm {
            publisher,
            exchange: format!("{prefix}.control"),
            answers,
            _reader: reader,
        })
    }

    /// Publishes `command` and waits for the answer carrying its id.
    async fn command(&mut self, command: Value) -> anyhow::Result<Value> {
        let key = command["command"].as_str().unwrap_or_default().to_owned();
        let confirm = self
            .publisher
            .channel()
            .basic_publish(
                self.exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&command)?,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_user_id("guest".into()),
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "the broker refused a command");
        let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
        loop {
            let event = tokio::time::timeout_at(deadline, self.answers.recv())
                .await
                .with_context(|| format!("no answer to {}", command["command_id"]))?
                .context("the answer reader stopped")?;
            if event.body["command_id"] == command["command_id"] {
                return Ok(event.body);
            }
            if event.body["type"] == "command.refused" {
                anyhow::bail!("refused: {}", event.body);
            }
        }
    }
}

/// Waits until `queue` exists (a passive declare succeeds).
async fn wait_declared(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = lapin::Connection::connect(url, Default::default()).await?;
    let deadline = Instant::now() + SETUP_PATIENCE;
    loop {
        // A failed passive declare closes the channel: a new one each time.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if channel
            .queue_declare(queue.into(), passive, Default::default())
            .await
            .is_ok()
        {
            let _ = connection.close(200, "ok".into()).await;
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{queue} was never declared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_table(args: &ChurnArgs, run: &ChurnRun) {
    println!("## Channels added and removed at run time\n");
    println!(
        "`{}` as a child process with {} file channel(s) and control on; {} channels added one by one \
         (`channel.upsert`, each answer awaited: {:.1} s in all), then removed one by one \
         (`channel.remove`, {:.1} s). Each column measured after {} s of settling.\n",
        args.xbridge.display(),
        args.file_channels,
        args.channels,
        run.adding.as_secs_f64(),
        run.removing.as_secs_f64(),
        args.settle_seconds
    );
    println!("| | before | {} added | all removed | removed − before |", args.channels);
    println!("| --- | --- | --- | --- | --- |");
    for (label, value) in probe::ROWS {
        let (b, a, r) = (value(&run.before), value(&run.added), value(&run.removed));
        println!("| {label} | {b} | {a} | {r} | {:+} |", r - b);
    }
    crate::stats::print_load();
    println!();
}
