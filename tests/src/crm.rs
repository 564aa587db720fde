//! The CRM's side of the contract, as a test sees it: publish replies to the
//! outgoing exchange, read events from the incoming queue and failures from
//! the dead-letter queue.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::Value;

use xbridge_amqp::FailureHeaders;
use xbridge_core::config::TopologyNames;

use crate::PATIENCE;

/// An event the bridge published for the CRM.
#[derive(Debug, Clone)]
pub struct Event {
    /// `<channel>.<type>`.
    pub routing_key: String,
    /// The JSON body.
    pub body: Value,
    /// AMQP properties (message_id, correlation_id, …).
    pub properties: BasicProperties,
}

/// A reply in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The original body.
    pub body: Vec<u8>,
    /// Routing key on the dead-letter exchange.
    pub routing_key: String,
    /// Our failure headers.
    pub headers: FailureHeaders,
    /// All properties, to check nothing secret rides along.
    pub properties: BasicProperties,
}

impl DeadLetter {
    /// The AMQP headers as a JSON object, to check them against the
    /// documented schema.
    pub fn headers_json(&self) -> Value {
        let mut object = serde_json::Map::new();
        if let Some(table) = self.properties.headers() {
            for (key, value) in table.inner() {
                object.insert(key.as_str().to_owned(), amqp_to_json(value));
            }
        }
        Value::Object(object)
    }

    /// The reason header.
    pub fn reason(&self) -> &str {
        self.headers.reason.as_deref().unwrap_or("")
    }
}

/// A CRM connected to one test's topology.
pub struct Crm {
    _connection: Connection,
    channel: Channel,
    names: TopologyNames,
    events: Consumer,
    /// `channel.state` events read while waiting for other events.
    channel_states: std::collections::VecDeque<Event>,
    /// The state each channel was last seen in, for [`Crm::next_channel_state`].
    last_states: std::collections::HashMap<String, String>,
    /// Other events read while waiting for a `channel.state`.
    other_events: std::collections::VecDeque<Event>,
    dead_letters: Option<Consumer>,
}

impl Crm {
    /// Connects and starts reading the incoming and dead-letter queues.
    pub async fn connect(url: &str, names: TopologyNames) -> Crm {
        Crm::open(url, names, true).await
    }

    /// Connects and reads only the incoming queue, leaving dead letters in
    /// their queue for tests of the tools that operate on them (`xbridge
    /// dlq`); [`Crm::next_dead_letter`] then panics.
    pub async fn connect_without_dead_letters(url: &str, names: TopologyNames) -> Crm {
        Crm::open(url, names, false).await
    }

    async fn open(url: &str, names: TopologyNames, read_dead_letters: bool) -> Crm {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the CRM connects to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let events = consume(&connection, &names.incoming_queue).await;
        let dead_letters = if read_dead_letters {
            Some(consume(&connection, &names.dead_letter_queue).await)
        } else {
            None
        };
        Crm {
            _connection: connection,
            channel,
            names,
            events,
            dead_letters,
            channel_states: Default::default(),
            last_states: Default::default(),
            other_events: Default::default(),
        }
    }

    /// Publishes a reply as JSON under `channel`'s routing key.
    pub async fn publish_reply(&self, channel: &str, reply: &Value) {
        self.publish_raw(channel, &serde_json::to_vec(reply).expect("json"))
            .await;
    }

    /// Publishes any bytes under `routing_key` (bad input tests), persistent
    /// and confirmed, the way a CRM should.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publish_with_properties(
            routing_key,
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await;
    }

    /// Publishes `body` under `routing_key` with the given AMQP properties
    /// (headers, timestamp, …), confirmed.
    pub async fn publish_with_properties(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirm = self
            .channel
            .basic_publish(
                self.names.outgoing_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took the reply");
    }

    /// The next event for the CRM; fails the test after [`PATIENCE`].
    ///
    /// `channel.state` events are set aside (see [`Crm::next_channel_state`]):
    /// they come whenever a channel changes state, interleaved with the
    /// events about messages that most tests follow.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let event = self.next_any_event().await;
            if event.body["type"] == "channel.state" {
                self.channel_states.push_back(event);
            } else {
                return event;
            }
        }
    }

    /// The next change of a channel's state as a CRM showing the states sees
    /// it: a `channel.state` event repeating the state last seen for its
    /// channel (the bridge tells every state when it connects; channels start
    /// `ok`) is skipped.
    pub async fn next_channel_state(&mut self) -> Event {
        loop {
            let event = self.next_channel_state_event().await;
            let channel = event.body["channel"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let state = event.body["state"].as_str().unwrap_or_default().to_owned();
            let last = self
                .last_states
                .insert(channel, state.clone())
                .unwrap_or_else(|| "ok".to_owned());
            if last != state {
                return event;
            }
        }
    }

    /// The next `channel.state` event as published, including ones already
    /// set aside.
    pub async fn next_channel_state_event(&mut self) -> Event {
        if let Some(event) = self.channel_states.pop_front() {
            return event;
        }
        // Only new deliveries: the events set aside are none of them a
        // `channel.state`, and taking them again would never end.
        loop {
            let event = self.next_delivered_event().await;
            if event.body["type"] == "channel.state" {
                return event;
            }
            self.other_events.push_back(event);
        }
    }

    async fn next_any_event(&mut self) -> Event {
        if let Some(event) = self.other_events.pop_front() {
            return event;
        }
        self.next_delivered_event().await
    }

    async fn next_delivered_event(&mut self) -> Event {
        let delivery = next(&mut self.events, "an event on the incoming queue").await;
        Event {
            routing_key: delivery.routing_key.as_str().to_owned(),
            body: serde_json::from_slice(&delivery.data).expect("events are JSON"),
            properties: delivery.properties.clone(),
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    /// The next dead letter; fails the test after [`PATIENCE`].
    pub async fn next_dead_letter(&mut self) -> DeadLetter {
        let consumer = self
            .dead_letters
            .as_mut()
            .expect("this CRM was connected without reading dead letters");
        let delivery = next(consumer, "a dead letter").await;
        DeadLetter {
            body: delivery.data.clone(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            headers: FailureHeaders::read(delivery.properties.headers().as_ref()),
            properties: delivery.properties.clone(),
        }
    }

    /// Waits until `queue` holds exactly `count` ready messages. RabbitMQ
    /// gives no event when it requeues what a closed connection held (a
    /// quorum queue applies it a moment after the close), so this is the one
    /// place the tests look repeatedly, bounded by [`PATIENCE`].
    pub async fn wait_for_depth(&self, queue: &str, count: u32) {
        let wait = async {
            loop {
                if self.queue_depth(queue).await == count {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!(
                "{queue} holds {} messages, not {count}",
                self.queue_depth(queue).await
            );
        }
    }

    /// Messages ready in `queue` (not counting what our consumers hold).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists")
            .message_count()
    }
}

fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

async fn consume(connection: &Connection, queue: &str) -> Consumer {
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .basic_consume(
            queue.into(),
            format!("test-crm-{}", uuid::Uuid::new_v4()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

async fn next(consumer: &mut Consumer, what: &str) -> lapin::message::Delivery {
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {what}"))
        .unwrap_or_else(|| panic!("the consumer for {what} ended"))
        .unwrap_or_else(|e| panic!("reading {what}: {e}"));
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    delivery
}

/// Deletes a test's queues and exchanges (best effort).
pub(crate) async fn delete_topology(
    url: &str,
    names: &TopologyNames,
    channels: &[String],
    delays: &[std::time::Duration],
) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let mut queues = vec![
        names.unrouted.clone(),
        names.incoming_queue.clone(),
        names.dead_letter_queue.clone(),
    ];
    queues.extend(channels.iter().map(|c| names.outgoing_queue(c)));
    // Only polled channels have one; deleting a missing queue is fine.
    queues.extend(channels.iter().map(|c| names.poll_lease_queue(c)));
    let mut exchanges = vec![
        names.unrouted.clone(),
        names.outgoing_exchange.clone(),
        names.incoming_exchange.clone(),
        names.dead_letter_exchange.clone(),
    ];
    for delay in delays {
        let name = names.delay_queue(*delay);
        queues.push(name.clone());
        exchanges.push(name);
    }
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "cleanup".into()).await;
}
