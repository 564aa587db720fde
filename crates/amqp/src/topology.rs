//! Declares every exchange and queue the bridge uses. Idempotent: run at
//! startup and again after every reconnect, so a broker that lost its
//! definitions (or a fresh one) is put right without an operator.

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use xbridge_core::config::{ChannelSettings, Settings, TopologyNames};

/// What to declare: the names, the channels that get a reply queue, the
/// polled channels that get a poll lease queue and the delay steps that get a
/// delay queue.
#[derive(Debug, Clone)]
pub struct TopologyPlan {
    /// Exchange and queue names.
    pub names: TopologyNames,
    /// Configured channel names.
    pub channels: Vec<String>,
    /// Channels that are polled (`inbound = "poll"` or `"both"`): only they
    /// need a poll lease queue.
    pub polled_channels: Vec<String>,
    /// Retry delay steps.
    pub delays: Vec<Duration>,
}

impl TopologyPlan {
    /// What every side needs whichever channels are served: the exchanges,
    /// the incoming, dead-letter and unrouted queues and the delay queues.
    /// Each session declares it on connecting, so whichever connects first
    /// declares it, the same way. No channel's queue is in it: a queue the
    /// broker refuses (declared before with other arguments, say) would end
    /// the session of every channel. The outbound side declares each reply
    /// queue on its own ([`declare_reply_queue`]), and each poll lease
    /// contender its lease queue.
    pub fn shared(settings: &Settings) -> TopologyPlan {
        TopologyPlan::for_channels(settings, [])
    }

    /// What `channels` need, with the names and delays of `settings`: for a
    /// session that serves the channels of the moment (the file's and the
    /// CRM's, `LiveChannels`) rather than the file's as read at startup.
    pub fn for_channels<'a>(
        settings: &Settings,
        channels: impl IntoIterator<Item = &'a ChannelSettings>,
    ) -> TopologyPlan {
        let (mut names, mut polled) = (Vec::new(), Vec::new());
        for channel in channels {
            names.push(channel.name.clone());
            if channel.inbound.polls() {
                polled.push(channel.name.clone());
            }
        }
        TopologyPlan {
            names: settings.amqp.topology.clone(),
            channels: names,
            polled_channels: polled,
            delays: settings.outbound.retry.delays.clone(),
        }
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

/// Queues the bridge consumes replies from. The bridge dead-letters replies
/// itself, with its own headers; this is only a safety net. RabbitMQ 4.x
/// gives quorum queues a default delivery limit (20) and drops a message
/// that exceeds it unless the queue has a dead-letter exchange, and a reply
/// held through many reconnects can be redelivered that often. With this,
/// such a reply lands in the dead-letter queue (with RabbitMQ's `x-death`
/// reason `delivery_limit`) instead of vanishing. RabbitMQ 3.10 to 3.13 have
/// no default limit, so nothing changes there.
fn safety_net_args(names: &TopologyNames) -> FieldTable {
    dead_lettering_args(&names.dead_letter_exchange)
}

/// A quorum queue whose dead messages go on to `exchange` at least once,
/// which RabbitMQ allows only with `reject-publish` overflow.
fn dead_lettering_args(exchange: &str) -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-dead-letter-exchange".into(), long_string(exchange));
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

/// A channel's reply queue: the safety net plus single active consumer. With
/// several replicas on one broker only one of them consumes a channel's
/// replies at a time, so replies of a conversation still go out in the order
/// the CRM published them; when that replica goes away, RabbitMQ makes the
/// next one active and redelivers what was unacknowledged, in order.
fn reply_queue_args(names: &TopologyNames) -> FieldTable {
    let mut args = safety_net_args(names);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// A channel's poll lease queue (see `xbridge_inbound::polling::lease`): single active
/// consumer, so the broker, not the replicas, decides who polls.
fn poll_lease_args() -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// Declares one poll lease queue `name`, exactly as [`declare_topology`]
/// does. A lease contender calls it before consuming, so a lease queue an
/// operator deleted is back without waiting for a reconnect.
pub async fn declare_poll_lease_queue(channel: &Channel, name: &str) -> lapin::Result<()> {
    declare_queue(channel, name, poll_lease_args()).await
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the whole topology on `channel`: the safety net first, so the
/// outgoing exchange's alternate exists before anything can be routed to it.
pub async fn declare_topology(channel: &Channel, plan: &TopologyPlan) -> lapin::Result<()> {
    let names = &plan.names;
    declare_unrouted(channel, names).await?;
    declare_outgoing(channel, plan).await?;
    declare_topic_with_queue(channel, &names.incoming_exchange, &names.incoming_queue).await?;
    declare_topic_with_queue(
        channel,
        &names.dead_letter_exchange,
        &names.dead_letter_queue,
    )
    .await?;
    for delay in &plan.delays {
        declare_delay(channel, names, *delay).await?;
    }
    Ok(())
}

/// Replies for channels nobody configured land here instead of vanishing.
async fn declare_unrouted(channel: &Channel, names: &TopologyNames) -> lapin::Result<()> {
    declare_exchange(
        channel,
        &names.unrouted,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    declare_queue(channel, &names.unrouted, safety_net_args(names)).await?;
    bind(channel, &names.unrouted, &names.unrouted, "").await
}

/// The CRM's replies: one queue per configured channel, bound by the
/// channel's name, and the poll lease queues of the polled channels.
async fn declare_outgoing(channel: &Channel, plan: &TopologyPlan) -> lapin::Result<()> {
    let names = &plan.names;
    let mut outgoing_args = FieldTable::default();
    outgoing_args.insert("alternate-exchange".into(), long_string(&names.unrouted));
    declare_exchange(
        channel,
        &names.outgoing_exchange,
        ExchangeKind::Direct,
        outgoing_args,
    )
    .await?;
    for name in &plan.channels {
        declare_reply_queue(channel, names, name).await?;
    }
    // Reached through the default exchange by the lease holders themselves:
    // no exchange, no binding.
    for name in &plan.polled_channels {
        declare_poll_lease_queue(channel, &names.poll_lease_queue(name)).await?;
    }
    Ok(())
}

/// One channel's reply queue, bound by the channel's name, exactly as
/// [`declare_topology`] does.
pub async fn declare_reply_queue(
    channel: &Channel,
    names: &TopologyNames,
    name: &str,
) -> lapin::Result<()> {
    let queue = names.outgoing_queue(name);
    declare_queue(channel, &queue, reply_queue_args(names)).await?;
    bind(channel, &queue, &names.outgoing_exchange, name).await
}

/// How many reply queues one AMQP channel has in flight at once in
/// [`declare_reply_queues`]: enough that the broker always has the next
/// method at hand, few enough that a refusal (which closes the AMQP channel)
/// fails a bounded number of declarations that are then tried again one by one.
pub const DECLARES_IN_FLIGHT: usize = 256;

/// Declares (and binds) the reply queues of `channels` on one AMQP channel,
/// as [`declare_reply_queue`] does for one, without waiting for each answer
/// before sending the next: a session serving thousands of channels would
/// otherwise wait two round trips per channel in turn (issue 16). RabbitMQ
/// handles an AMQP channel's methods in the order they came, so each binding
/// still follows its queue. A queue the broker refuses closes `channel`, and
/// every declaration after it fails too: each channel's own result comes
/// back, in no particular order, for the caller to try the failed ones again
/// one by one and tell a refusal from its collateral.
pub async fn declare_reply_queues(
    channel: &Channel,
    names: &TopologyNames,
    channels: &[String],
) -> Vec<(String, lapin::Result<()>)> {
    let declares = channels
        .iter()
        .map(|name| declare_named(channel, names, name))
        .collect();
    in_flight(declares, DECLARES_IN_FLIGHT).await
}

async fn declare_named(
    channel: &Channel,
    names: &TopologyNames,
    name: &str,
) -> (String, lapin::Result<()>) {
    let declared = declare_reply_queue(channel, names, name).await;
    (name.to_owned(), declared)
}

/// Runs `futures` with at most `limit` of them started and not finished at
/// a time, starting them in order; their outputs in the order they finished.
/// An AMQP method is sent when its future is first polled, so this is how
/// many methods are in flight.
pub async fn in_flight<F: std::future::Future>(futures: Vec<F>, limit: usize) -> Vec<F::Output> {
    let mut results = Vec::with_capacity(futures.len());
    let mut waiting = futures.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < limit.max(1) {
            match waiting.next() {
                Some(future) => running.push(future),
                None => break,
            }
        }
        match running.next().await {
            Some(output) => results.push(output),
            None => return results,
        }
    }
}

/// A topic exchange whose one quorum queue takes every routing key (the
/// incoming events and the dead letters are both shaped so).
async fn declare_topic_with_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
) -> lapin::Result<()> {
    declare_exchange(
        channel,
        exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await?;
    declare_queue(channel, queue, quorum_args()).await?;
    bind(channel, queue, exchange, "#").await
}

/// One delay queue behind its own fanout exchange. When the TTL runs out the
/// reply goes back to the outgoing exchange under its own routing key (its
/// channel), at least once.
async fn declare_delay(
    channel: &Channel,
    names: &TopologyNames,
    delay: Duration,
) -> lapin::Result<()> {
    let name = names.delay_queue(delay);
    declare_exchange(channel, &name, ExchangeKind::Fanout, FieldTable::default()).await?;
    let mut args = dead_lettering_args(&names.outgoing_exchange);
    let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    declare_queue(channel, &name, args).await?;
    bind(channel, &name, &name, "").await
}

/// Declares a durable exchange of `kind` (the control session's exchanges too).
pub async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> lapin::Result<()> {
    channel
        .exchange_declare(name.into(), kind, durable_exchange(), args)
        .await
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    channel
        .queue_declare(name.into(), durable_queue(), args)
        .await
        .map(|_| ())
}

/// Binds `queue` to `exchange` with `key`, no arguments.
pub async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
