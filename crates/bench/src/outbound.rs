//! Outbound: replies published by a CRM, through the bridge, to the
//! simulated X and back as confirmed `message.sent` events; and, for the
//! ceiling, the same count of messages through a plain lapin relay on the
//! same broker.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use x_simulator::Fault;
use xbridge_test_support::amqp_url;

use crate::harness::{
    between, collect_outcomes, declare_quorum_queue, delete_queue, options, read_queue, world,
    InProcessBridge, Outcomes, Publisher, Received,
};
use crate::relay::forward;
use crate::stats::{ms, other_outcomes, p50_p99_max, per_second, print_load, Latencies};

/// The channel every reply goes through.
const CHANNEL: &str = "bench";

/// What to run.
#[derive(Debug, Clone)]
pub struct OutboundArgs {
    /// Replies per run.
    pub replies: usize,
    /// Distinct recipients (conversations).
    pub conversations: usize,
    /// Simulator latencies to run at, in milliseconds.
    pub latencies_ms: Vec<u64>,
    /// How long a run may take before it is reported as incomplete.
    pub timeout: Duration,
}

/// The figures of one bridge run.
#[derive(Debug, Clone)]
pub struct BridgeRun {
    /// The simulator's added latency.
    pub latency_ms: u64,
    /// Replies published.
    pub published: usize,
    /// `message.sent` events read.
    pub sent: usize,
    /// Other outcomes (`message.failed`, dead letters' events).
    pub other_outcomes: usize,
    /// `message.sent` per second, first publish to last event.
    pub rate: f64,
    /// Publish → the simulator recorded the DM.
    pub to_x: Option<Latencies>,
    /// Publish → `message.sent` read by the CRM.
    pub to_sent: Option<Latencies>,
}

/// The figures of the relay run.
#[derive(Debug, Clone)]
pub struct RelayRun {
    /// Messages relayed and read.
    pub relayed: usize,
    /// Per second, first publish to last read.
    pub rate: f64,
    /// Publish → read from the relay's output queue.
    pub latency: Option<Latencies>,
}

/// Runs the relay, then the bridge at each latency, and prints the tables.
pub async fn run(args: &OutboundArgs) -> anyhow::Result<()> {
    println!("## Outbound\n");
    println!(
        "{} replies published at once (persistent, confirmed) by one CRM connection to one channel, \
         spread over {} recipients (conversations); the bridge runs in the benchmark's process with \
         the test harness's configuration (prefetch 64).\n",
        args.replies, args.conversations
    );
    let relay = relay(args.replies, args.timeout).await?;
    let mut runs = Vec::new();
    for latency in &args.latencies_ms {
        runs.push(bridge(args, *latency).await?);
    }
    print_table(args, &relay, &runs);
    Ok(())
}

fn print_table(args: &OutboundArgs, relay: &RelayRun, runs: &[BridgeRun]) {
    println!("| path | X latency | done | replies/s | publish → X p50 | p99 | publish → `message.sent` p50 | p99 | max | ratio to relay |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| plain lapin relay (consume, publish with confirm, ack) | n/a | {}/{} | {:.0} | n/a | n/a | {} | 1.00 |",
        relay.relayed,
        args.replies,
        relay.rate,
        p50_p99_max(relay.latency),
    );
    for run in runs {
        println!(
            "| bridge | {} ms | {}/{}{} | {:.0} | {} | {} | {} | {:.2} |",
            run.latency_ms,
            run.sent,
            run.published,
            other_outcomes(run.other_outcomes),
            run.rate,
            ms(run.to_x.map(|l| l.p50)),
            ms(run.to_x.map(|l| l.p99)),
            p50_p99_max(run.to_sent),
            if relay.rate > 0.0 {
                run.rate / relay.rate
            } else {
                0.0
            },
        );
    }
    print_load();
    println!();
}

/// The reply bodies: `m-<i>` to recipient `i % conversations`.
fn replies(count: usize, conversations: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let recipient = format!(
                "{}",
                2_000_000_000_000_000_000u64 + (i % conversations) as u64
            );
            serde_json::to_vec(&xbridge_test_support::reply(
                &format!("m-{i}"),
                &recipient,
                &format!("bench reply {i}"),
            ))
            .expect("JSON")
        })
        .collect()
}

/// The index in `m-<i>` or `bench reply <i>`.
fn index_of(text: &str, prefix: &str) -> Option<usize> {
    text.strip_prefix(prefix)?.parse().ok()
}

async fn bridge(args: &OutboundArgs, latency_ms: u64) -> anyhow::Result<BridgeRun> {
    eprintln!("outbound: bridge, X latency {latency_ms} ms");
    let app = world(options(vec![CHANNEL.to_owned()])).await;
    let user = app.user_id(CHANNEL);
    if latency_ms > 0 {
        app.simulator
            .set_fault(&user, Fault::Latency { millis: latency_ms });
    }
    let bridge = InProcessBridge::start(&app).await?;
    let (_reader, mut events) = read_queue(&amqp_url(), &app.names.incoming_queue).await?;
    let publisher = Publisher::connect(&amqp_url()).await?;

    let wall_start = SystemTime::now();
    let start = Instant::now();
    let published_at = publisher
        .publish_all(
            &app.names.outgoing_exchange,
            CHANNEL,
            replies(args.replies, args.conversations),
        )
        .await?;
    // Wall-clock publish times, to compare with the simulator's timestamps.
    let published_wall: Vec<SystemTime> = published_at
        .iter()
        .map(|at| wall_start + between(start, *at))
        .collect();

    let Outcomes { sent_at, other } =
        collect_outcomes(&mut events, args.replies, args.timeout, "outbound").await;
    let last = sent_at.values().max().copied().unwrap_or(start);
    let to_sent = sent_at
        .iter()
        .map(|(i, at)| between(published_at[*i], *at))
        .collect();
    let to_x = to_x(&app.simulator.sent_dms_for(&user), &published_wall);
    let run = BridgeRun {
        latency_ms,
        published: args.replies,
        sent: sent_at.len(),
        other_outcomes: other,
        rate: per_second(sent_at.len(), between(start, last)),
        to_x: Latencies::of(to_x),
        to_sent: Latencies::of(to_sent),
    };
    bridge.stop().await?;
    app.cleanup().await;
    Ok(run)
}

/// Publish → the simulator recorded the DM, by the wall clock (the
/// simulator's timestamps are wall-clock times).
fn to_x(dms: &[x_simulator::SentDm], published_wall: &[SystemTime]) -> Vec<Duration> {
    dms.iter()
        .filter_map(|dm| {
            let i = index_of(&dm.text, "bench reply ")?;
            let at: SystemTime = dm.created_at.into();
            Some(at.duration_since(published_wall[i]).unwrap_or_default())
        })
        .collect()
}

/// Consume from one quorum queue, publish each message with a confirm to
/// another, then ack: what the bridge does minus X, the state store and the
/// JSON, with the same prefetch (64) and queue type.
async fn relay(count: usize, timeout: Duration) -> anyhow::Result<RelayRun> {
    eprintln!("outbound: plain lapin relay");
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let input = format!("{prefix}.relay.in");
    let output = format!("{prefix}.relay.out");
    let publisher = Publisher::connect(&amqp_url()).await?;
    declare_quorum_queue(publisher.channel(), &input).await?;
    declare_quorum_queue(publisher.channel(), &output).await?;

    let (relay_connection, relay_task) = start_relay(&input, &output).await?;
    let (_reader, mut out) = read_queue(&amqp_url(), &output).await?;
    let start = Instant::now();
    let published_at = publisher
        .publish_all("", &input, replies(count, 20))
        .await?;
    let read_at = read_relayed(&mut out, count, timeout).await;
    let last = read_at.values().max().copied().unwrap_or(start);
    let latencies = read_at
        .iter()
        .map(|(i, at)| between(published_at[*i], *at))
        .collect();
    relay_task.abort();
    let _ = relay_connection.close(200, "done".into()).await;
    delete_queue(publisher.channel(), &input).await;
    delete_queue(publisher.channel(), &output).await;
    Ok(RelayRun {
        relayed: read_at.len(),
        rate: per_second(read_at.len(), between(start, last)),
        latency: Latencies::of(latencies),
    })
}

/// The relay, on its own connection as a separate service would be: consume
/// from `input` (prefetch 64), publish each message to `output` with a
/// confirm, then ack.
async fn start_relay(
    input: &str,
    output: &str,
) -> anyhow::Result<(Connection, tokio::task::JoinHandle<()>)> {
    let relay_connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .context("the relay connects")?;
    let consume_channel = relay_connection.create_channel().await?;
    consume_channel
        .basic_qos(64, BasicQosOptions::default())
        .await?;
    let publish_channel = relay_connection.create_channel().await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consume_channel
        .basic_consume(
            input.into(),
            "bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let relay_output = output.to_owned();
    let relay_task = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let channel = publish_channel.clone();
            let output = relay_output.clone();
            tokio::spawn(async move { forward(&channel, &output, delivery).await });
        }
    });
    Ok((relay_connection, relay_task))
}

/// When each relayed `m-<i>` was read from the output queue, until all
/// `count` were or `timeout` passed.
async fn read_relayed(
    out: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
    count: usize,
    timeout: Duration,
) -> HashMap<usize, Instant> {
    let mut read_at: HashMap<usize, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while read_at.len() < count {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, out.recv()).await else {
            eprintln!("relay: gave up with {} of {count}", read_at.len());
            break;
        };
        if let Some(i) = message.body["message_id"]
            .as_str()
            .and_then(|id| index_of(id, "m-"))
        {
            read_at.insert(i, message.at);
        }
    }
    read_at
}
