//! X economy: how many requests the bridge spends per DM sent, and how many
//! 429s it provokes, when a backlog meets X's rate limit; and how many DM
//! events X bills per event delivered when a channel is polled.

use std::time::{Duration, Instant};

use x_simulator::{Customer, Fault};
use xbridge_test_support::{amqp_url, reply, TestOptions};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::harness::{
    count_received, options, read_queue, world, InProcessBridge, Publisher, Received,
};

const CHANNEL: &str = "bench";

/// What to run.
#[derive(Debug, Clone)]
pub struct EconomyArgs {
    /// Replies waiting when the bridge meets the rate limit.
    pub backlog: usize,
    /// Sends the simulator allows per window.
    pub limit: u32,
    /// The window's length in seconds.
    pub window_secs: u64,
    /// Customer DMs injected while the channel is polled.
    pub polled_events: usize,
    /// Customer DMs injected per second.
    pub polled_rate: u32,
    /// The channel's `inbound.poll_interval`, in milliseconds.
    pub poll_interval_ms: u64,
    /// Poll intervals to keep watching after the last event arrived.
    pub idle_polls: u32,
}

/// Runs both halves and prints the tables.
pub async fn run(args: &EconomyArgs) -> anyhow::Result<()> {
    println!("## X economy\n");
    rate_limited_backlog(args).await?;
    polling(args).await?;
    Ok(())
}

async fn rate_limited_backlog(args: &EconomyArgs) -> anyhow::Result<()> {
    eprintln!("economy: backlog of {} under a rate limit", args.backlog);
    let app = world(options(vec![CHANNEL.to_owned()])).await;
    let user = app.user_id(CHANNEL);
    app.simulator.set_fault(
        &user,
        Fault::RateLimitWindow {
            limit: args.limit,
            window_secs: args.window_secs,
        },
    );
    let bridge = InProcessBridge::start(&app).await?;
    let (_reader, mut events) = read_queue(&amqp_url(), &app.names.incoming_queue).await?;
    let publisher = Publisher::connect(&amqp_url()).await?;
    let bodies = (0..args.backlog)
        .map(|i| {
            serde_json::to_vec(&reply(
                &format!("e-{i}"),
                &format!("{}", 2_100_000_000_000_000_000u64 + (i % 5) as u64),
                &format!("backlog reply {i}"),
            ))
            .expect("JSON")
        })
        .collect();
    let start = Instant::now();
    publisher
        .publish_all(&app.names.outgoing_exchange, CHANNEL, bodies)
        .await?;
    let windows = args.backlog.div_ceil(args.limit as usize) as u64 + 2;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(windows * args.window_secs + 60);
    let (sent, failed) = wait_outcomes(&mut events, args.backlog, deadline).await;
    let elapsed = start.elapsed();
    print_backlog(args, &app.simulator, &user, (sent, failed), elapsed);
    bridge.stop().await?;
    app.cleanup().await;
    Ok(())
}

/// Counts `message.sent` and `message.failed` until `expected` replies
/// have one, or `deadline` passes.
async fn wait_outcomes(
    events: &mut UnboundedReceiver<Received>,
    expected: usize,
    deadline: tokio::time::Instant,
) -> (usize, usize) {
    let (mut sent, mut failed) = (0, 0);
    while sent + failed < expected {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => match event.body["type"].as_str() {
                Some("message.sent") => sent += 1,
                Some("message.failed") => failed += 1,
                _ => {}
            },
            _ => {
                eprintln!("economy: gave up with {} outcomes", sent + failed);
                break;
            }
        }
    }
    (sent, failed)
}

/// The backlog's table: what X recorded and how many requests it took.
fn print_backlog(
    args: &EconomyArgs,
    simulator: &x_simulator::Simulator,
    user: &str,
    (sent, failed): (usize, usize),
    elapsed: Duration,
) {
    let requests = simulator.requests_for(user);
    let sends: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/2/dm_conversations/"))
        .collect();
    let too_many = sends.iter().filter(|r| r.status == 429).count();
    let dms = simulator.sent_dms_for(user).len();
    println!(
        "### Sends under a rate limit\n\nA backlog of {} replies (5 conversations) published at once; \
         the simulator allows {} sends per {} s window (X's real window is 15 minutes; compressed so the \
         run takes seconds, not hours).\n",
        args.backlog, args.limit, args.window_secs
    );
    println!("| backlog | DMs recorded by X | `message.sent` | `message.failed` | send requests | requests per sent DM | 429s | all X requests | took | ideal time |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {:.1} s | {} s |",
        args.backlog,
        dms,
        sent,
        failed,
        sends.len(),
        if dms > 0 {
            sends.len() as f64 / dms as f64
        } else {
            0.0
        },
        too_many,
        requests.len(),
        elapsed.as_secs_f64(),
        (args.backlog.div_ceil(args.limit as usize) as u64).saturating_sub(1) * args.window_secs,
    );
    crate::stats::print_load();
    println!();
}

async fn polling(args: &EconomyArgs) -> anyhow::Result<()> {
    eprintln!("economy: billing of a polled channel");
    let app = world(TestOptions {
        inbound: format!("poll_interval = \"{}ms\"\n", args.poll_interval_ms),
        inbound_mode: Some("poll".to_owned()),
        ..options(vec![CHANNEL.to_owned()])
    })
    .await;
    let user = app.user_id(CHANNEL);
    let bridge = InProcessBridge::start(&app).await?;
    let (_reader, mut events) = read_queue(&amqp_url(), &app.names.incoming_queue).await?;
    let received = inject_polled(args, &app.simulator, &user, &mut events).await;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(args.poll_interval_ms * 10)
        + Duration::from_secs(30);
    let received = count_received(&mut events, received, args.polled_events, deadline).await;
    let billed_when_delivered = app.simulator.billed_dm_events(&user);
    let polls_when_delivered = dm_reads(&app.simulator, &user);
    tokio::time::sleep(Duration::from_millis(
        args.poll_interval_ms * u64::from(args.idle_polls),
    ))
    .await;
    let billed_after_idle = app.simulator.billed_dm_events(&user);
    let polls_after_idle = dm_reads(&app.simulator, &user);
    print_polling(
        args,
        received,
        (polls_when_delivered, billed_when_delivered),
        (polls_after_idle, billed_after_idle),
    );
    bridge.stop().await?;
    app.cleanup().await;
    Ok(())
}

/// Customer DMs from 20 customers at `polled_rate`, counting the
/// `message.received` events that arrive meanwhile.
async fn inject_polled(
    args: &EconomyArgs,
    simulator: &x_simulator::Simulator,
    user: &str,
    events: &mut UnboundedReceiver<Received>,
) -> usize {
    let customers: Vec<Customer> = (0..20)
        .map(|i| Customer::generate(&format!("bench_customer_{i}")))
        .collect();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.polled_rate.max(1)));
    let start = tokio::time::Instant::now();
    let mut received = 0;
    for i in 0..args.polled_events {
        tokio::time::sleep_until(start + interval * i as u32).await;
        simulator.customer_dm(
            user,
            &customers[i % customers.len()],
            &format!("polled event {i}"),
            None,
        );
        while let Ok(event) = events.try_recv() {
            if event.body["type"] == "message.received" {
                received += 1;
            }
        }
    }
    received
}

/// The polled channel's table: DM reads and billed events when every event
/// was delivered, and again after idle polls.
fn print_polling(
    args: &EconomyArgs,
    received: usize,
    (polls_when_delivered, billed_when_delivered): (usize, u64),
    (polls_after_idle, billed_after_idle): (usize, u64),
) {
    println!(
        "### Billing of a polled channel\n\nOne channel with `inbound = \"poll\"` and `poll_interval = \"{} ms\"`; \
         {} customer DMs injected at {}/s from 20 customers. X bills every DM event `GET /2/dm_events` \
         returns (`Simulator::billed_dm_events`). Counted once every event reached the CRM's queue, and \
         again after {} more poll intervals with no new DM.\n",
        args.poll_interval_ms, args.polled_events, args.polled_rate, args.idle_polls
    );
    println!("| delivered | DM reads | billed events | billed per delivered | after idle: DM reads | billed | billed per delivered |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let ratio = |billed: u64| {
        if received > 0 {
            billed as f64 / received as f64
        } else {
            0.0
        }
    };
    println!(
        "| {}/{} | {} | {} | {:.3} | {} | {} | {:.3} |",
        received,
        args.polled_events,
        polls_when_delivered,
        billed_when_delivered,
        ratio(billed_when_delivered),
        polls_after_idle,
        billed_after_idle,
        ratio(billed_after_idle),
    );
    crate::stats::print_load();
    println!();
}

/// `GET /2/dm_events` requests the simulator answered for `user`.
fn dm_reads(simulator: &x_simulator::Simulator, user: &str) -> usize {
    simulator
        .requests_for(user)
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/2/dm_events")
        .count()
}
