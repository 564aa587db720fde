//! What every measurement sets up: a world from the test harness (its own
//! topology names, simulator and state file), the bridge in this process, a
//! confirming publisher and a reader of the events the bridge publishes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use x_simulator::Fault;
use xbridge::app::Bridge;
use xbridge_core::config::Settings;
use xbridge_test_support::{spawn_app, TestApp, TestOptions};

/// How long any setup step may take before the run is abandoned.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(120);

/// The test harness's options with the logs of a benchmark in mind.
pub fn options(channels: Vec<String>) -> TestOptions {
    TestOptions {
        channels,
        ..TestOptions::default()
    }
}

/// A world whose simulator lets every account send and read without a
/// practical limit (X's 1,000 sends per 15 minutes would stop a 2,000-reply
/// run), unless a measurement sets a window of its own.
pub async fn world(options: TestOptions) -> TestApp {
    let app = spawn_app(options).await;
    for (_, account) in &app.accounts {
        app.simulator.set_fault(
            &account.user_id,
            Fault::RateLimitWindow {
                limit: 1_000_000,
                window_secs: 900,
            },
        );
        app.simulator.set_fault(
            &account.user_id,
            Fault::ReadRateLimitWindow {
                limit: 1_000_000,
                window_secs: 900,
            },
        );
    }
    app
}

/// The bridge running in this process.
pub struct InProcessBridge {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Where X's webhook is served, when configured.
    pub webhook_addr: Option<std::net::SocketAddr>,
}

impl InProcessBridge {
    /// Builds the bridge from the world's configuration and waits until both
    /// sides are ready.
    pub async fn start(app: &TestApp) -> anyhow::Result<InProcessBridge> {
        let settings = Settings::from_toml(&app.config_toml()).context("the bench config")?;
        let bridge = Bridge::build(settings).await?;
        let mut outbound = bridge.readiness();
        let mut inbound = bridge.inbound_readiness();
        let webhook_addr = bridge.webhook_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bridge.run(shutdown.clone()));
        tokio::time::timeout(SETUP_PATIENCE, outbound.wait_for(|r| *r))
            .await
            .context("the bridge's outbound side did not become ready")??;
        tokio::time::timeout(SETUP_PATIENCE, inbound.wait_for(|r| *r))
            .await
            .context("the bridge's inbound side did not become ready")??;
        Ok(InProcessBridge {
            shutdown,
            task,
            webhook_addr,
        })
    }

    /// Stops it as SIGTERM would.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(SETUP_PATIENCE, self.task)
            .await
            .context("the bridge did not stop")???;
        Ok(())
    }
}

/// A connection and a channel in confirm mode, publishing persistent JSON.
pub struct Publisher {
    _connection: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Publisher> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            _connection: connection,
            channel,
        })
    }

    /// The channel, for declaring and deleting.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes every body without waiting between them, then waits for all
    /// confirms. Returns when each was handed to the connection.
    pub async fn publish_all(
        &self,
        exchange: &str,
        routing_key: &str,
        bodies: Vec<Vec<u8>>,
    ) -> anyhow::Result<Vec<Instant>> {
        let routed = bodies
            .into_iter()
            .map(|body| (routing_key.to_owned(), body))
            .collect();
        self.publish_routed(exchange, routed).await
    }

    /// [`Publisher::publish_all`] with a routing key per message, so one
    /// backlog can reach several channels' reply queues in an order of the
    /// caller's choosing.
    pub async fn publish_routed(
        &self,
        exchange: &str,
        messages: Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<Vec<Instant>> {
        let mut sent_at = Vec::with_capacity(messages.len());
        let mut confirms = Vec::with_capacity(messages.len());
        for (routing_key, body) in messages {
            sent_at.push(Instant::now());
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in futures::future::join_all(confirms).await {
            anyhow::ensure!(confirm?.is_ack(), "the broker refused a message");
        }
        Ok(sent_at)
    }
}

/// One message read from a queue: its JSON body and when it was read.
pub struct Received {
    /// The body.
    pub body: serde_json::Value,
    /// When it was read.
    pub at: Instant,
}

/// How a backlog of replies `m-<i>` ended, as the CRM saw it.
pub struct Outcomes {
    /// When the first `message.sent` of each reply was read.
    pub sent_at: HashMap<usize, Instant>,
    /// Replies that ended otherwise (`message.failed`).
    pub other: usize,
}

/// Reads status events until `expected` replies have an outcome, or gives up
/// after `timeout` and says so on stderr (prefixed with `what`).
pub async fn collect_outcomes(
    events: &mut mpsc::UnboundedReceiver<Received>,
    expected: usize,
    timeout: Duration,
    what: &str,
) -> Outcomes {
    let mut sent_at: HashMap<usize, Instant> = HashMap::new();
    let mut other = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while sent_at.len() + other < expected {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            eprintln!(
                "{what}: gave up after {timeout:?} with {} of {expected} outcomes",
                sent_at.len() + other,
            );
            break;
        };
        let kind = event.body["type"].as_str().unwrap_or_default();
        let id = event.body["message_id"]
            .as_str()
            .and_then(|id| id.strip_prefix("m-")?.parse::<usize>().ok());
        match (kind, id) {
            ("message.sent", Some(i)) => {
                sent_at.entry(i).or_insert(event.at);
            }
            ("channel.state", _) => {}
            (_, Some(_)) => other += 1,
            _ => {}
        }
    }
    Outcomes { sent_at, other }
}

/// Counts `message.received` events on top of `received` until there are
/// `expected`, the reader closes or `deadline` passes.
pub async fn count_received(
    events: &mut mpsc::UnboundedReceiver<Received>,
    mut received: usize,
    expected: usize,
    deadline: tokio::time::Instant,
) -> usize {
    while received < expected {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if event.body["type"] == "message.received" => received += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    received
}

/// Operations offered open-loop at a fixed rate: the first `warmup` are
/// left out of the figures, `total` in all.
pub struct OpenLoop {
    /// Operations before the measured ones.
    pub warmup: usize,
    /// Operations in all.
    pub total: usize,
    interval: Duration,
}

impl OpenLoop {
    /// `rate` per second for `warmup_seconds`, then for `seconds`.
    pub fn new(rate: u32, warmup_seconds: u32, seconds: u32) -> OpenLoop {
        let warmup = (rate * warmup_seconds) as usize;
        OpenLoop {
            warmup,
            total: warmup + (rate * seconds) as usize,
            interval: Duration::from_secs_f64(1.0 / f64::from(rate)),
        }
    }

    /// Starts operation `i` when it is due, by `start_one(i, due)`, whatever
    /// the earlier ones are doing; the started tasks and when the first
    /// measured one was offered.
    pub async fn offer<T>(
        &self,
        mut start_one: impl FnMut(usize, Instant) -> JoinHandle<T>,
    ) -> (Vec<JoinHandle<T>>, Option<Instant>) {
        let mut tasks = Vec::with_capacity(self.total);
        let start = tokio::time::Instant::now();
        let mut measured_start = None;
        for i in 0..self.total {
            let due = start + self.interval * i as u32;
            tokio::time::sleep_until(due).await;
            if i == self.warmup {
                measured_start = Some(Instant::now());
            }
            tasks.push(start_one(i, due.into_std()));
        }
        (tasks, measured_start)
    }
}

/// Reads `queue` without acknowledgements (the reader's own cost stays out
/// of the figures) and hands every message over with its arrival time.
pub async fn read_queue(
    url: &str,
    queue: &str,
) -> anyhow::Result<(Connection, mpsc::UnboundedReceiver<Received>)> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut consumer = consume_no_ack(&channel, queue, "bench").await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            let body = serde_json::from_slice(&delivery.data).unwrap_or(serde_json::Value::Null);
            if tx.send(Received { body, at }).is_err() {
                break;
            }
        }
    });
    Ok((connection, rx))
}

/// Durable quorum queue arguments, as the bridge declares its own.
pub fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

/// Declares a durable quorum queue.
pub async fn declare_quorum_queue(channel: &Channel, name: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum(),
        )
        .await?;
    Ok(())
}

/// Deletes a queue, ignoring failures (cleanup).
pub async fn delete_queue(channel: &Channel, name: &str) {
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
}

/// A duration between two instants, zero if they are out of order.
pub fn between(from: Instant, to: Instant) -> Duration {
    to.saturating_duration_since(from)
}

/// A consumer of `queue` that acks nothing (a reader's, which only counts),
/// tagged `<prefix>-<random>` so two runs never clash.
pub async fn consume_no_ack(
    channel: &Channel,
    queue: &str,
    prefix: &str,
) -> anyhow::Result<lapin::Consumer> {
    channel
        .basic_consume(
            queue.into(),
            format!("{prefix}-{}", uuid::Uuid::new_v4().simple()).into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))
}
