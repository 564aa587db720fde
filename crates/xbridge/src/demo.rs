//! `xbridge demo`: both paths on one machine with no X account.
//!
//! Starts the X simulator with its demo account, runs the bridge against the
//! local RabbitMQ (default topology names), publishes one reply the way a CRM
//! would, and shows the DM the simulator received and the `message.sent` the
//! CRM got back. The demo channel polls X every [`DEMO_POLL_INTERVAL`] (no
//! webhook to register), so with `--keep-running` a customer DM made with the
//! simulator's admin API reaches `xbridge.incoming` too, and a CRM client (the
//! examples in `docs/examples/`) sees both directions.

use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use x_simulator::{Account, Simulator, SimulatorConfig, DEMO_USER_ID};
use xbridge_core::config::{LogFormat, Settings, TopologyNames};
use xbridge_core::telemetry;

use crate::app::Bridge;
use crate::signals;

/// The channel name the demo configures.
pub const DEMO_CHANNEL: &str = "demo";
/// A made-up customer the demo replies to.
const DEMO_CUSTOMER: &str = "2244994945";
/// How often the demo channel polls the simulator for customer DMs: short, so
/// a DM made by hand shows up at once (a real channel polls every minute).
const DEMO_POLL_INTERVAL: &str = "2s";
/// How long each step may take before the demo says what is wrong.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration the demo runs the bridge with: the simulator's demo
/// account as the only channel.
pub fn demo_settings(amqp_url: &str, x_api_base_url: &str, state_path: &std::path::Path) -> String {
    let account = Account::demo();
    format!(
        r#"
[amqp]
url = "{amqp_url}"

[x]
api_base_url = "{x_api_base_url}"

[state]
path = "{state}"

[inbound]
poll_interval = "{DEMO_POLL_INTERVAL}"

[[channels]]
name = "{DEMO_CHANNEL}"
inbound = "poll"
user_id = "{DEMO_USER_ID}"
consumer_key = "{ck}"
consumer_secret = "{cs}"
access_token = "{at}"
access_token_secret = "{ats}"
bearer_token = "{bt}"
"#,
        state = state_path.display(),
        ck = account.consumer_key,
        cs = account.consumer_secret,
        at = account.access_token,
        ats = account.access_token_secret,
        bt = account.bearer_token,
    )
}

/// Runs the demo: the simulator, then the bridge, then one reply followed
/// from the CRM to X and its status event back.
pub async fn run(amqp_url: &str, keep_running: bool) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Text);
    let simulator = Simulator::start(SimulatorConfig {
        accounts: vec![Account::demo()],
        ..SimulatorConfig::default()
    })
    .await
    .context("starting the X simulator")?;
    crate::outln!("X simulator listening on {}", simulator.base_url());

    let state = tempfile::tempdir().context("creating a state folder")?;
    let settings = Settings::from_toml(&demo_settings(
        amqp_url,
        simulator.base_url().as_str(),
        &state.path().join("state.redb"),
    ))?;
    let names = settings.amqp.topology.clone();
    let shutdown = CancellationToken::new();
    let running = start_bridge(settings, amqp_url, &shutdown).await?;

    let crm = Crm::connect(amqp_url, &names).await?;
    let message_id = publish_reply(&crm, &names).await?;
    show_dm(&simulator).await?;
    let event = tokio::time::timeout(STEP_TIMEOUT, crm.next_event_for(&message_id))
        .await
        .map_err(|_| anyhow!("no status event reached the CRM within {STEP_TIMEOUT:?}"))??;
    crate::outln!("\nCRM received on {}:\n  {event}", names.incoming_exchange);

    if keep_running {
        print_what_to_try(&names, &simulator);
    } else {
        shutdown.cancel();
    }
    running.await.context("the bridge task failed")??;
    simulator.shutdown().await;
    Ok(())
}

/// Runs the bridge until `shutdown` (or a signal) and waits until it is
/// connected, so a missing RabbitMQ is named at once instead of showing as a
/// reply that never arrives.
async fn start_bridge(
    settings: Settings,
    amqp_url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let bridge = Bridge::build(settings).await?;
    let mut ready = bridge.readiness();
    signals::cancel_on_signal(shutdown.clone());
    let running = tokio::spawn(bridge.run(shutdown.clone()));

    tokio::time::timeout(STEP_TIMEOUT, ready.wait_for(|r| *r))
        .await
        .map_err(|_| anyhow!("the bridge did not connect to RabbitMQ at {amqp_url} within {STEP_TIMEOUT:?}; is rabbitmq-server running? (see docs/operator.md#getting-rabbitmq)"))?
        .ok();
    crate::outln!("bridge connected; topology declared on RabbitMQ");
    Ok(running)
}

/// Publishes one reply to the demo customer as a CRM would, and returns its
/// message id (the status event names it).
async fn publish_reply(crm: &Crm, names: &TopologyNames) -> anyhow::Result<String> {
    let message_id = format!("demo-{}", uuid::Uuid::new_v4());
    let reply = serde_json::json!({
        "message_id": message_id,
        "recipient_id": DEMO_CUSTOMER,
        "text": "Hello from your CRM, via xbridge!",
    });
    crm.publish_reply(&names.outgoing_exchange, DEMO_CHANNEL, &reply)
        .await?;
    crate::outln!(
        "\nCRM published to {} (routing key {DEMO_CHANNEL}):\n  {reply}",
        names.outgoing_exchange
    );
    Ok(message_id)
}

/// Waits for the DM the reply became at the simulator and shows it.
async fn show_dm(simulator: &Simulator) -> anyhow::Result<()> {
    let already = simulator.sent_dms_for(DEMO_USER_ID).len();
    let dms = tokio::time::timeout(
        STEP_TIMEOUT,
        simulator.wait_for_dms(DEMO_USER_ID, already + 1),
    )
    .await
    .map_err(|_| anyhow!("the simulator received no DM within {STEP_TIMEOUT:?}"))?;
    let dm = dms.last().expect("waited for at least one DM");
    crate::outln!(
        "\nX simulator received a DM (OAuth 1.0a signature verified):\n  dm_event_id {} in conversation {}: {:?}",
        dm.dm_event_id, dm.dm_conversation_id, dm.text
    );
    Ok(())
}

/// With `--keep-running`: how to send more replies and a customer DM.
fn print_what_to_try(names: &TopologyNames, simulator: &Simulator) {
    crate::outln!(
        "\nStill running (Ctrl-C to stop). Publish more replies to exchange {} with routing key {DEMO_CHANNEL}; X simulator admin: {}_sim/dms",
        names.outgoing_exchange,
        simulator.base_url()
    );
    crate::outln!(
        "A customer DM, delivered to {} within {DEMO_POLL_INTERVAL}:\n  curl -s -X POST {}_sim/customer_dm -H 'content-type: application/json' -d '{{\"user_id\":\"{DEMO_USER_ID}\",\"customer\":{{\"username\":\"alice\"}},\"text\":\"Hi, where is my order?\"}}'",
        names.incoming_queue,
        simulator.base_url()
    );
}

/// What the demo does in the CRM's place.
struct Crm {
    _connection: Connection,
    channel: lapin::Channel,
    events: lapin::Consumer,
}

impl Crm {
    async fn connect(amqp_url: &str, names: &TopologyNames) -> anyhow::Result<Crm> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        // A private queue so the demo sees its own event without draining
        // the durable incoming queue a real CRM reads.
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                names.incoming_exchange.as_str().into(),
                format!("{DEMO_CHANNEL}.#").into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let events = channel
            .basic_consume(
                queue.name().clone(),
                "xbridge-demo-crm".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Crm {
            _connection: connection,
            channel,
            events,
        })
    }

    async fn publish_reply(
        &self,
        exchange: &str,
        channel_name: &str,
        reply: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.channel
            .basic_publish(
                exchange.into(),
                channel_name.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(reply)?,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        Ok(())
    }

    async fn next_event_for(&self, message_id: &str) -> anyhow::Result<String> {
        let mut events = self.events.clone();
        while let Some(delivery) = events.next().await {
            let delivery = delivery?;
            delivery.ack(BasicAckOptions::default()).await?;
            let body = String::from_utf8_lossy(&delivery.data).into_owned();
            if body.contains(message_id) {
                return Ok(body);
            }
        }
        Err(anyhow!("the event stream ended"))
    }
}
