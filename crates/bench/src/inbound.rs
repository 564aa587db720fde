//! Inbound: Account Activity POSTs, signed as X signs them, offered to the
//! bridge's webhook at a fixed rate; the bridge answers 200 only once the
//! event's `message.received` is confirmed by the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Mutex;
use xbridge_test_support::{amqp_url, TestOptions};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;

use crate::harness::{
    between, count_received, declare_quorum_queue, delete_queue, options, read_queue, world,
    InProcessBridge, OpenLoop, Publisher,
};
use crate::stats::{p50_p99_max, per_second, print_load, Latencies};

const CHANNEL: &str = "bench";

/// What to run.
#[derive(Debug, Clone)]
pub struct InboundArgs {
    /// Offered events per second.
    pub rate: u32,
    /// Measured seconds (after the warm-up).
    pub seconds: u32,
    /// Warm-up seconds at the same rate, left out of the figures.
    pub warmup_seconds: u32,
}

/// One POST's outcome.
struct Outcome {
    /// From the moment it was due to be sent (so a stalled sender counts
    /// against the bridge, not in its favour) to the answer.
    latency: Duration,
    status: u16,
    measured: bool,
}

/// An Account Activity body with one customer DM to `account`, with the
/// sender in `users` (so the bridge needs no profile lookup).
fn payload(account: &str, event_id: u64, sender: u64, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "for_user_id": account,
        "direct_message_events": [{
            "type": "message_create",
            "id": event_id.to_string(),
            "created_timestamp": "1767225600000",
            "message_create": {
                "target": {"recipient_id": account},
                "sender_id": sender.to_string(),
                "message_data": {"text": text, "entities": {"hashtags": [], "symbols": [], "user_mentions": [], "urls": []}}
            }
        }],
        "users": {
            sender.to_string(): {"id": sender.to_string(), "name": "Bench Customer",
                "screen_name": format!("bench_{sender}"),
                "profile_image_url_https": "https://pbs.twimg.com/profile_images/1/bench_normal.jpg"},
            account: {"id": account, "name": "Bench", "screen_name": "bench_support",
                "profile_image_url_https": "https://pbs.twimg.com/profile_images/2/bench_normal.jpg"}
        }
    }))
    .expect("JSON")
}

/// `sha256=<base64 HMAC-SHA256(consumer secret, body)>`.
fn signature(consumer_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(consumer_secret.as_bytes()).expect("any key");
    mac.update(body);
    format!("sha256={}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Runs the offered load and prints the table.
pub async fn run(args: &InboundArgs) -> anyhow::Result<()> {
    eprintln!("inbound: webhook at {} events/s", args.rate);
    let app = world(TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\n".to_owned(),
        inbound_mode: Some("webhook".to_owned()),
        ..options(vec![CHANNEL.to_owned()])
    })
    .await;
    let bridge = InProcessBridge::start(&app).await?;
    let addr = bridge
        .webhook_addr
        .ok_or_else(|| anyhow::anyhow!("the webhook is not served"))?;
    let url = format!("http://{addr}/webhooks/{CHANNEL}");
    let account = app.account(CHANNEL).clone();
    let (_reader, mut events) = read_queue(&amqp_url(), &app.names.incoming_queue).await?;

    let load = OpenLoop::new(args.rate, args.warmup_seconds, args.seconds);
    let (outcomes, offered_for, answered_for) = post_webhooks(&load, &url, &account).await?;
    // Every event must also reach the CRM's queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let received = count_received(&mut events, 0, load.total, deadline).await;

    let measured: Vec<&Outcome> = outcomes.iter().filter(|o| o.measured).collect();
    print_webhook_row(
        args,
        &measured,
        answered_for.max(offered_for),
        received,
        load.total,
    );
    bridge.stop().await?;
    app.cleanup().await;

    let publish = confirmed_publishes(args).await?;
    println!(
        "| confirmed publish alone (no HTTP, no bridge), {}/s for {} s | {} | | {:.0} | {} | |",
        args.rate,
        args.seconds,
        publish.measured,
        publish.rate,
        p50_p99_max(publish.latency),
    );
    print_load();
    println!();
    Ok(())
}

/// Offers the signed POSTs open-loop; their outcomes, and how long the
/// measured ones took to offer and to be answered.
async fn post_webhooks(
    load: &OpenLoop,
    url: &str,
    account: &x_simulator::Account,
) -> anyhow::Result<(Vec<Outcome>, Duration, Duration)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(load.total)));
    let warmup = load.warmup;
    let (tasks, measured_start) = load
        .offer(|i, due| {
            let body = payload(
                &account.user_id,
                1_900_000_000_000_000_000 + i as u64,
                3_000_000_000_000_000_000 + (i % 20) as u64,
                &format!("bench event {i}"),
            );
            let signed = signature(&account.consumer_secret, &body);
            let http = http.clone();
            let url = url.to_owned();
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                let status = match http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(x_simulator::SIGNATURE_HEADER, signed)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(answer) => answer.status().as_u16(),
                    Err(_) => 0,
                };
                outcomes.lock().await.push(Outcome {
                    latency: between(due, Instant::now()),
                    status,
                    measured: i >= warmup,
                });
            })
        })
        .await;
    let offered_for = measured_start.map(|s| s.elapsed()).unwrap_or_default();
    for task in tasks {
        let _ = task.await;
    }
    let answered_for = measured_start.map(|s| s.elapsed()).unwrap_or_default();
    let outcomes = std::mem::take(&mut *outcomes.lock().await);
    Ok((outcomes, offered_for, answered_for))
}

/// The table's head and the webhook's row.
fn print_webhook_row(
    args: &InboundArgs,
    measured: &[&Outcome],
    took: Duration,
    received: usize,
    total: usize,
) {
    let ok = measured.iter().filter(|o| o.status == 200).count();
    let latencies = Latencies::of(measured.iter().map(|o| o.latency).collect());
    println!("## Inbound (webhook)\n");
    println!(
        "Signed Account Activity POSTs, one customer DM each (sender in `users`, so no profile lookup), \
         offered open-loop at a fixed rate from the benchmark's process over pooled HTTP/1.1 connections; \
         {} s warm-up left out. The bridge answers 200 after the `message.received` publish is confirmed. \
         Latency is from when each POST was due to its answer. The last row is the floor under it, \
         measured right after: persistent publishes alone, each confirmed, at the same rate to a quorum queue.\n",
        args.warmup_seconds
    );
    println!("| offered | measured POSTs | 200s | achieved events/s | p50 | p99 | max | reached the CRM queue (all runs) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {}/s for {} s | {} | {} | {:.0} | {} | {}/{} |",
        args.rate,
        args.seconds,
        measured.len(),
        ok,
        per_second(ok, took),
        p50_p99_max(latencies),
        received,
        total,
    );
}

/// The floor under the webhook's latency, in the same run: what the bridge
/// must wait for before its 200 (a persistent publish to a quorum queue,
/// confirmed), offered at the same rate from one confirm-mode channel.
struct PublishRun {
    measured: usize,
    rate: f64,
    latency: Option<Latencies>,
}

async fn confirmed_publishes(args: &InboundArgs) -> anyhow::Result<PublishRun> {
    eprintln!("inbound: confirmed publishes alone at {} /s", args.rate);
    let queue = format!(
        "bench-{}.publish",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let publisher = Arc::new(Publisher::connect(&amqp_url()).await?);
    declare_quorum_queue(publisher.channel(), &queue).await?;
    let body = payload("1", 1, 2, "bench event");

    let load = OpenLoop::new(args.rate, args.warmup_seconds, args.seconds);
    let warmup = load.warmup;
    let (tasks, measured_start) = load
        .offer(|i, due| {
            let publisher = publisher.clone();
            let queue = queue.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let confirmed = async {
                    publisher
                        .channel()
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?
                        .await
                }
                .await
                .is_ok_and(|confirm| confirm.is_ack());
                (i >= warmup && confirmed).then(|| between(due, Instant::now()))
            })
        })
        .await;
    let mut latencies = Vec::with_capacity(load.total);
    for task in tasks {
        if let Ok(Some(latency)) = task.await {
            latencies.push(latency);
        }
    }
    let took = measured_start.map(|s| s.elapsed()).unwrap_or_default();
    delete_queue(publisher.channel(), &queue).await;
    Ok(PublishRun {
        measured: latencies.len(),
        rate: per_second(latencies.len(), took),
        latency: Latencies::of(latencies),
    })
}
