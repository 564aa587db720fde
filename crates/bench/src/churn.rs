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
    /// Times the channels are added and removed, each time new ones.
    pub rounds: usize,
    /// The state store on PostgreSQL instead of the embedded file.
    pub postgres: bool,
    /// Every round adds the first round's names again (new credentials),
    /// rather than channels the bridge never saw.
    pub same_names: bool,
    /// Seconds to let the process settle before each measurement.
    pub settle_seconds: u64,
    /// The node `rabbitmqctl` asks (`-n`), when not the default one.
    pub rabbitmq_node: Option<String>,
    /// The `xbridge` binary.
    pub xbridge: PathBuf,
}

/// The measurements, labelled, and how long each phase took.
struct ChurnRun {
    snapshots: Vec<(String, Snapshot)>,
    phases: Vec<(String, Duration)>,
}

/// Adds and removes the channels, then prints the table.
pub async fn run(args: &ChurnArgs) -> anyhow::Result<()> {
    ensure_built(&args.xbridge)?;
    let names = (0..args.file_channels)
        .map(|i| format!("f{i:02}"))
        .collect();
    let mut options = options(names);
    options.postgres = args.postgres;
    let app = world(options).await;
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
    // The figures first: a broker that chokes on deleting a thousand quorum
    // queues (see `scale`) must not take them with it.
    if let Ok(run) = &measured {
        print_table(args, run);
    }
    let node = args.rabbitmq_node.as_deref();
    // The harness's cleanup drops the PostgreSQL schema and the fixed topology;
    // the channels' queues are deleted by name.
    let cleanup = async {
        app.cleanup().await;
        crate::cleanup::run_on(&prefix, node).await
    };
    match tokio::time::timeout(CLEANUP_PATIENCE, cleanup).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("churn: deleting {prefix}.… failed: {e:#}"),
        Err(_) => eprintln!(
            "churn: the broker did not delete {prefix}.… in {CLEANUP_PATIENCE:?}; \
             `xbridge-bench cleanup {prefix}` deletes them later"
        ),
    }
    measured.map(|_| ())
}

/// How long deleting the run's queues may take.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(180);

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
    let mut crm = Crm::connect(app, prefix).await?;
    let settle = Duration::from_secs(args.settle_seconds);
    let mut run = ChurnRun {
        snapshots: Vec::new(),
        phases: Vec::new(),
    };
    let look = Look {
        pid,
        ops_port: bridge.ops_port,
        node,
        settle,
    };
    run.measure(&look, "before".into()).await?;
    for round in 1..=args.rounds {
        let names_of = if args.same_names { 1 } else { round };
        let accounts = accounts(app, names_of, args.channels);
        let started = Instant::now();
        add_all(&mut crm, round, &accounts).await?;
        run.phases
            .push((format!("adding (round {round})"), started.elapsed()));
        run.measure(&look, format!("{} added (round {round})", args.channels))
            .await?;
        let started = Instant::now();
        remove_all(&mut crm, round, &accounts).await?;
        run.phases
            .push((format!("removing (round {round})"), started.elapsed()));
        run.measure(&look, format!("all removed (round {round})"))
            .await?;
    }
    Ok(run)
}

/// Adds every channel of `accounts`, one command at a time.
async fn add_all(
    crm: &mut Crm,
    round: usize,
    accounts: &[(String, Account)],
) -> anyhow::Result<()> {
    let started = Instant::now();
    for (i, (name, account)) in accounts.iter().enumerate() {
        let answer = crm
            .command(upsert(&format!("add-{round}-{i}"), name, account))
            .await?;
        anyhow::ensure!(answer["state"] == "ok", "adding {name}: {answer}");
        progress("added", i + 1, accounts.len(), started);
    }
    Ok(())
}

/// Removes every channel of `accounts`, one command at a time.
async fn remove_all(
    crm: &mut Crm,
    round: usize,
    accounts: &[(String, Account)],
) -> anyhow::Result<()> {
    let started = Instant::now();
    for (i, (name, _)) in accounts.iter().enumerate() {
        let id = format!("rm-{round}-{i}");
        let command = json!({"command": "channel.remove", "command_id": id, "channel": name});
        let answer = crm.command(command).await?;
        anyhow::ensure!(answer["state"] == "removed", "removing {name}: {answer}");
        progress("removed", i + 1, accounts.len(), started);
    }
    Ok(())
}

/// Where and when to look at the process.
struct Look<'a> {
    pid: u32,
    ops_port: u16,
    node: Option<&'a str>,
    settle: Duration,
}

impl ChurnRun {
    /// Lets the process settle, then looks at it.
    async fn measure(&mut self, look: &Look<'_>, label: String) -> anyhow::Result<()> {
        tokio::time::sleep(look.settle).await;
        let snapshot = probe::snapshot(look.pid, look.ops_port, look.node).await?;
        eprintln!("churn: {label}: {snapshot}");
        self.snapshots.push((label, snapshot));
        Ok(())
    }
}

/// `count` new simulator accounts for a round, each a channel of its own
/// name (`churn<round>x<i>`): every round adds channels the bridge never saw.
fn accounts(app: &TestApp, round: usize, count: usize) -> Vec<(String, Account)> {
    (0..count)
        .map(|i| {
            let account = Account::generate(&format!("churn_{round}_{i:04}"));
            app.simulator.add_account(account.clone());
            (format!("churn{round}x{i:04}"), account)
        })
        .collect()
}

fn progress(what: &str, done: usize, total: usize, started: Instant) {
    if done.is_multiple_of(100) || done == total {
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
    let phases: Vec<String> = run
        .phases
        .iter()
        .map(|(label, took)| format!("{label} {:.1} s", took.as_secs_f64()))
        .collect();
    println!(
        "`{}` as a child process with {} file channel(s), control on and the state store {}; {} round(s) of {} {} \
         channels added one by one (`channel.upsert`, each answer awaited), then removed one by \
         one (`channel.remove`). Each column measured after {} s of settling. Took: {}.\n",
        args.xbridge.display(),
        args.file_channels,
        if args.postgres {
            "on PostgreSQL"
        } else {
            "embedded (redb file)"
        },
        args.rounds,
        args.channels,
        if args.same_names {
            "(the same names each round)"
        } else {
            "new"
        },
        args.settle_seconds,
        phases.join(", ")
    );
    let labels: Vec<&str> = run.snapshots.iter().map(|(l, _)| l.as_str()).collect();
    println!("| | {} | last − before |", labels.join(" | "));
    println!("|{}", " --- |".repeat(labels.len() + 2));
    let before = &run.snapshots[0].1;
    let last = &run.snapshots[run.snapshots.len() - 1].1;
    for (label, value) in probe::ROWS {
        let cells: Vec<String> = run
            .snapshots
            .iter()
            .map(|(_, s)| value(s).to_string())
            .collect();
        println!(
            "| {label} | {} | {:+} |",
            cells.join(" | "),
            value(last) - value(before)
        );
    }
    crate::stats::print_load();
    println!();
}
