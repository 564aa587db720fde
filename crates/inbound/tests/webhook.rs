//! The webhook against the real RabbitMQ: each test gets its own topology (unique
//! prefix), its own state file and its own server on a free port, and reads what the
//! webhook published from its own incoming queue.
//!
//! Tests synchronize on events (consumed with a timeout), never on sleeps. To show
//! that something was published exactly once (or not at all), a test follows it with a
//! second, distinct event and checks that the next event on the queue is that one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xbridge_test_support::{amqp_url, assert_valid};

mod common;
use common::Broker;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::BasicProperties;
use secrecy::SecretString;
use serde_json::{json, Value};

use xbridge_amqp::dead_letters::DIRECTION_HEADER;
use xbridge_amqp::{connect, FailureHeaders, Publisher};
use xbridge_core::channel_identity::{ChannelAccount, ChannelIdentities};
use xbridge_core::contract::EventToCrm;
use xbridge_inbound::delivery::sink::{AmqpSink, EventSink, InboundDeadLetter, SinkError};
use xbridge_inbound::webhook::auth::{crc_response_token, SIGNATURE_HEADER};
use xbridge_inbound::webhook::server::{router, WebhookChannel, WebhookConfig, WebhookState};
use xbridge_store::{EmbeddedStore, SentRecord, StateStore};

/// The consumer secret X's own examples are signed with (see `webhook_auth`).
const SECRET: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
/// The consumer key of that App, which acme and jordan share.
const APP_KEY: &str = "the-apps-consumer-key";
/// Another App, with its own channel and account.
const OTHER_APP_KEY: &str = "another-apps-consumer-key";
const OTHER_APP_SECRET: &str = "another-apps-consumer-secret";
const OTHER_ACCOUNT: &str = "5555555555";
/// X's signature of `webhook_aaa_dm.json` with [`SECRET`], computed independently.
const FIXTURE_SIGNATURE: &str = "sha256=UxI5VQCQ3mj9W74QtbAd7Pp8wOgWdC/A3vMYL3yp92Q=";
/// The company's account ("acme") and the customer in the fixture.
const ACME: &str = "4337869213";
const CUSTOMER: &str = "3001969357";
const FIXTURE_EVENT: &str = "954491830116155396";
const PATIENCE: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/x-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture's DM, re-addressed: `event_id` from `sender` to `recipient`, delivered
/// to the subscription of `for_user_id`.
fn dm_body(for_user_id: &str, event_id: &str, sender: &str, recipient: &str) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&fixture("webhook_aaa_dm.json")).unwrap();
    body["for_user_id"] = json!(for_user_id);
    let event = &mut body["direct_message_events"][0];
    event["id"] = json!(event_id);
    event["message_create"]["sender_id"] = json!(sender);
    event["message_create"]["target"]["recipient_id"] = json!(recipient);
    serde_json::to_vec(&body).unwrap()
}

/// A customer's DM to acme, with its own event id.
fn customer_dm(event_id: &str) -> Vec<u8> {
    dm_body(ACME, event_id, CUSTOMER, ACME)
}

fn sign(body: &[u8]) -> String {
    // The body signature has the CRC answer's formula, over the raw body.
    crc_response_token(
        &SecretString::from(SECRET),
        std::str::from_utf8(body).unwrap(),
    )
}

/// An event the webhook published.
#[derive(Debug)]
struct Event {
    routing_key: String,
    body: Value,
    properties: BasicProperties,
}

/// A sink that fails on demand in front of the real one, to play a broker outage.
struct FlakySink {
    inner: AmqpSink,
    /// Fail every publish.
    down: AtomicBool,
    /// Fail publishes whose AMQP message id contains this.
    fail_on: Mutex<Option<String>>,
}

#[async_trait]
impl EventSink for FlakySink {
    async fn publish(&self, event: &EventToCrm) -> Result<(), SinkError> {
        let targeted = self
            .fail_on
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|id| event.message_id.contains(id));
        if self.down.load(Ordering::SeqCst) || targeted {
            return Err(SinkError::Unavailable(
                "the test took the broker away".into(),
            ));
        }
        self.inner.publish(event).await
    }

    async fn dead_letter(&self, letter: &InboundDeadLetter) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable(
                "the test took the broker away".into(),
            ));
        }
        self.inner.dead_letter(letter).await
    }
}

/// The channels of every world: acme and jordan on one App (the customer's account
/// configured too, as when two configured accounts write to each other: acme's
/// customer DMs are its own sends), and `other` on another App.
fn channels() -> Vec<WebhookChannel> {
    let channel = |name: &str, key: &str, secret: &str, id: &str| WebhookChannel {
        name: name.into(),
        consumer_key: SecretString::from(key),
        consumer_secret: SecretString::from(secret),
        own_user_id: Some(id.into()),
    };
    vec![
        channel("acme", APP_KEY, SECRET, ACME),
        channel("jordan", APP_KEY, SECRET, CUSTOMER),
        channel("other", OTHER_APP_KEY, OTHER_APP_SECRET, OTHER_ACCOUNT),
    ]
}

/// One test's world.
struct World {
    base: String,
    http: reqwest::Client,
    state: Arc<WebhookState>,
    store: Arc<EmbeddedStore>,
    flaky: Arc<FlakySink>,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(config: WebhookConfig) -> World {
        World::start_with(config, None).await
    }

    /// A world whose bodies are routed by `identities` instead of the configured ids.
    async fn start_with(
        config: WebhookConfig,
        identities: Option<Arc<ChannelIdentities>>,
    ) -> World {
        let broker = Broker::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let flaky = Arc::new(FlakySink {
            inner: AmqpSink::new(
                broker.publisher.clone(),
                broker.names.incoming_exchange.clone(),
            )
            .with_dead_letters(broker.names.dead_letter_exchange.clone()),
            down: AtomicBool::new(false),
            fail_on: Mutex::new(None),
        });
        let state = WebhookState::new(channels(), flaky.clone(), store.clone(), config);
        let state = Arc::new(match identities {
            Some(identities) => state.with_identities(identities),
            None => state,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        World {
            base,
            http: reqwest::Client::new(),
            state,
            store,
            flaky,
            broker,
            _dir: dir,
        }
    }

    fn url(&self, channel: &str) -> String {
        format!("{}/webhooks/{channel}", self.base)
    }

    /// `channel`'s CRC URL for `token`, encoded as X would.
    fn crc_url(&self, channel: &str, token: &str) -> url::Url {
        let mut url = url::Url::parse(&self.url(channel)).unwrap();
        url.query_pairs_mut().append_pair("crc_token", token);
        url
    }

    /// POSTs `body` to `channel`'s webhook with `signature` (none when `None`).
    async fn post_signed(
        &self,
        channel: &str,
        body: Vec<u8>,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(channel))
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        request.send().await.expect("the webhook answers")
    }

    /// POSTs `body` signed correctly and returns the status.
    async fn post(&self, channel: &str, body: &[u8]) -> u16 {
        let signature = sign(body);
        self.post_signed(channel, body.to_vec(), Some(&signature))
            .await
            .status()
            .as_u16()
    }

    async fn next_event(&mut self) -> Event {
        let delivery = tokio::time::timeout(PATIENCE, self.broker.events.next())
            .await
            .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for an event"))
            .expect("the consumer is open")
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        Event {
            routing_key: delivery.routing_key.as_str().to_owned(),
            body: serde_json::from_slice(&delivery.data).expect("events are JSON"),
            properties: delivery.properties.clone(),
        }
    }

    /// The next message in the dead-letter queue, if any. The webhook answers 200 only
    /// once the broker confirmed a dead letter, so after that answer it is there.
    async fn take_dead_letter(&self) -> Option<(String, Vec<u8>, BasicProperties)> {
        let message = self
            .broker
            .publisher
            .channel()
            .basic_get(
                self.broker.names.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()?;
        let delivery = message.delivery;
        Some((
            delivery.routing_key.as_str().to_owned(),
            delivery.data,
            delivery.properties,
        ))
    }

    /// Publishes a fresh customer DM and checks it is the next event: whatever the
    /// test did before published nothing more than what it already consumed.
    async fn assert_nothing_else_published(&mut self, fresh_event_id: &str) {
        assert_eq!(self.post("acme", &customer_dm(fresh_event_id)).await, 200);
        let next = self.next_event().await;
        assert_eq!(
            next.body["event_id"], fresh_event_id,
            "an unexpected event was published before the marker: {next:?}"
        );
    }
}

#[tokio::test]
async fn the_crc_answer_matches_an_independent_computation() {
    let world = World::start(WebhookConfig::default()).await;
    let answer = world
        .http
        .get(format!(
            "{}?crc_token=8f3ba2b1-1d87-4d5e-9f1b-0c2c4c1a7a5e",
            world.url("acme")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    // Computed with Python's hmac module.
    assert_eq!(
        body,
        json!({"response_token": "sha256=MosEQWJAvCCWOIKRBC6aYDNH4A7Xf/PiRiaANbd+3qI="})
    );

    let missing = world.http.get(world.url("acme")).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    let unknown = world
        .http
        .get(format!("{}?crc_token=x", world.url("nobody")))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(world.post("nobody", &customer_dm("1")).await, 404);
}

/// X's CRC answer and its body signatures are the same HMAC with the same secret, so a
/// CRC that answered any token would sign any body for whoever asks: here, a DM no
/// customer sent. Only tokens shaped like X's (which no JSON body can be) are answered.
#[tokio::test]
async fn the_crc_answer_cannot_be_used_to_sign_a_forged_body() {
    let mut world = World::start(WebhookConfig::default()).await;
    let forged = customer_dm("954491830116155399");
    let crc = world
        .http
        .get(world.crc_url("acme", std::str::from_utf8(&forged).unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(crc.status(), 400, "a token no X CRC sends is not answered");
    let answer: Value = crc.json().await.unwrap();
    assert!(answer.get("response_token").is_none(), "{answer}");

    // Whatever the attacker got, the forged body is refused and nothing published.
    let mut signature = answer["response_token"].as_str().unwrap_or("").to_owned();
    if signature.is_empty() {
        signature = "sha256=AAAA".into();
    }
    let posted = world.post_signed("acme", forged, Some(&signature)).await;
    assert_eq!(posted.status(), 401);
    world
        .assert_nothing_else_published("954491830116155398")
        .await;

    // X's own tokens (letters, digits, base64 and base64url signs) are answered.
    for token in [
        "8f3ba2b1-1d87-4d5e-9f1b-0c2c4c1a7a5e",
        "ZmY4MTk0ZTAtYTQ2Ni00MzQ3LWJmYjYtNzM5NjdkZDc5ZDQ1",
        "a+b/c=_-",
    ] {
        let crc = world
            .http
            .get(world.crc_url("acme", token))
            .send()
            .await
            .unwrap();
        assert_eq!(crc.status(), 200, "{token}");
        let body: Value = crc.json().await.unwrap();
        assert_eq!(
            body["response_token"],
            crc_response_token(&SecretString::from(SECRET), token),
            "{token}"
        );
    }
}

#[tokio::test]
async fn a_dm_signed_by_x_becomes_one_message_received() {
    let mut world = World::start(WebhookConfig::default()).await;
    let answer = world
        .post_signed(
            "acme",
            fixture("webhook_aaa_dm.json"),
            Some(FIXTURE_SIGNATURE),
        )
        .await;
    assert_eq!(answer.status(), 200);

    let event = world.next_event().await;
    assert_eq!(event.routing_key, "acme.message.received");
    assert_valid("message-received", &event.body);
    let body = &event.body;
    assert_eq!(body["type"], "message.received");
    assert_eq!(body["channel"], "acme");
    assert_eq!(body["event_id"], FIXTURE_EVENT);
    assert_eq!(body["text"], "Hello World!");
    assert_eq!(body["created_at"], "2018-01-19T23:12:40.557Z");
    assert_eq!(body["received_via"], "webhook");
    assert_eq!(
        body["sender"],
        json!({"id": CUSTOMER, "username": "furiouscamper", "name": "Jordan Brinks",
            "avatar_url": "https://pbs.twimg.com/profile_images/851526626785480705/cW4WTi7C_normal.jpg"})
    );
    let properties = &event.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.as_str()),
        Some("acme:954491830116155396:received")
    );
    assert_eq!(
        properties.kind().as_ref().map(|kind| kind.as_str()),
        Some("message.received")
    );
    assert_eq!(
        properties.content_type().as_ref().map(|ct| ct.as_str()),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert!(properties.timestamp().is_some());
    assert!(world
        .store
        .is_delivered("acme", FIXTURE_EVENT)
        .await
        .unwrap());

    // X delivers it again, twice in a row, then three times at once.
    for _ in 0..2 {
        assert_eq!(
            world.post("acme", &fixture("webhook_aaa_dm.json")).await,
            200
        );
    }
    let body = fixture("webhook_aaa_dm.json");
    let concurrent = futures::future::join_all((0..3).map(|_| world.post("acme", &body))).await;
    assert_eq!(concurrent, vec![200, 200, 200]);
    world
        .assert_nothing_else_published("954491830116155400")
        .await;
}

#[tokio::test]
async fn concurrent_first_deliveries_of_one_event_publish_it_once() {
    let mut world = World::start(WebhookConfig::default()).await;
    let body = customer_dm("954491830116155410");
    let answers = futures::future::join_all((0..3).map(|_| world.post("acme", &body))).await;
    assert_eq!(answers, vec![200, 200, 200]);
    let event = world.next_event().await;
    assert_eq!(event.body["event_id"], "954491830116155410");
    world
        .assert_nothing_else_published("954491830116155411")
        .await;
}

#[tokio::test]
async fn bad_signatures_are_refused_counted_and_the_server_keeps_serving() {
    let mut world = World::start(WebhookConfig::default()).await;
    let body = customer_dm("954491830116155420");
    let wrong = sign(b"another body");
    for signature in [None, Some("sha256=***"), Some(wrong.as_str())] {
        let answer = world.post_signed("acme", body.clone(), signature).await;
        assert_eq!(answer.status(), 401, "{signature:?}");
    }
    assert_eq!(world.state.signature_failures(), 3);

    // The same body, signed right, is taken; none of the refused ones published.
    assert_eq!(world.post("acme", &body).await, 200);
    let event = world.next_event().await;
    assert_eq!(event.body["event_id"], "954491830116155420");
    assert_eq!(world.state.signature_failures(), 3);
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let mut world = World::start(WebhookConfig::default()).await;
    // Valid JSON and signed, just one byte over the default 1 MiB.
    let mut body = customer_dm("954491830116155430");
    body.pop(); // the closing brace
                // `,"pad":"` + padding + `"}` fill it up to the limit plus one.
    let padding = 1024 * 1024 + 1 - body.len() - 10;
    body.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(padding)).as_bytes());
    assert_eq!(body.len(), 1024 * 1024 + 1);
    assert_eq!(world.post("acme", &body).await, 413);
    // Still serving, and nothing of the refused body was published.
    world
        .assert_nothing_else_published("954491830116155431")
        .await;
}

#[tokio::test]
async fn the_limit_applies_before_the_body_is_read_in_full() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut world = World::start(WebhookConfig::default()).await;
    // A client announcing 100 MiB and sending a little over the limit: the answer must
    // come without the server waiting for (and buffering) the rest.
    let address = world.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /webhooks/acme HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{SIGNATURE_HEADER}: sha256=AAAA\r\n\r\n",
        100 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..17 {
        stream.write_all(&chunk).await.unwrap();
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let status_line = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if answer.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .map(str::to_owned)
    })
    .await
    .expect("the webhook answers without reading 100 MiB");
    assert_eq!(
        status_line.as_deref(),
        Some("HTTP/1.1 413 Payload Too Large")
    );
    // Refused before the signature was looked at.
    assert_eq!(world.state.signature_failures(), 0);
    world
        .assert_nothing_else_published("954491830116155432")
        .await;
}

/// Bodies are read whole before their signature can be checked, so each connection
/// can make the webhook buffer up to `body_limit`: 1,000 unsigned connections of 1 MiB
/// each held 840 MB of the bridge. Together, bodies hold at most `body_memory`; a body
/// that would go past it is answered 503 at once (X sends it again), not buffered.
#[tokio::test]
async fn unsigned_bodies_together_hold_at_most_the_body_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PIECE: usize = 60 * 1024;
    let mut world = World::start(WebhookConfig {
        body_limit: 64 * 1024,
        body_memory: 4 * PIECE + 1024,
        ..WebhookConfig::default()
    })
    .await;
    let address = world.base.trim_start_matches("http://").to_owned();
    let start = |address: String| async move {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /webhooks/acme HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{SIGNATURE_HEADER}: sha256=AAAA\r\n\r\n",
            64 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Most of the body, and then nothing.
        stream.write_all(&vec![b' '; PIECE]).await.unwrap();
        stream
    };
    // Five of them do not fit together: one (whichever is read last) is answered
    // at once, not buffered, while the others wait for the rest of their bodies.
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(start(address.clone()).await);
    }
    let answers = streams.iter_mut().map(|stream| {
        Box::pin(async move {
            let mut answer = Vec::new();
            let mut buffer = [0u8; 4096];
            while !answer.windows(2).any(|w| w == b"\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buffer[..n]),
                }
            }
            String::from_utf8_lossy(&answer).into_owned()
        })
    });
    let (answer, _, _) = tokio::time::timeout(PATIENCE, futures::future::select_all(answers))
        .await
        .expect("a body past the memory for bodies is answered without waiting for it");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let held = streams;
    assert_eq!(world.state.signature_failures(), 0);

    // Once they are gone, X's POST is taken.
    drop(held);
    let body = customer_dm("954491830116155433");
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            let status = world.post("acme", &body).await;
            if status != 503 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the memory is given back when the connections go");
    assert_eq!(status, 200);
    assert_eq!(
        world.next_event().await.body["event_id"],
        "954491830116155433"
    );
}

/// A POST for a channel nobody configured is refused before its body is read.
#[tokio::test]
async fn a_post_for_an_unknown_channel_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let world = World::start(WebhookConfig::default()).await;
    let address = world.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /webhooks/nobody HTTP/1.1\r\nhost: {address}\r\ncontent-length: 1000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .expect("answered without the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test]
async fn malformed_json_with_a_valid_signature_is_a_400_that_says_why() {
    let world = World::start(WebhookConfig::default()).await;
    let body = br#"{"for_user_id":"4337869213","direct_message_events":["#.to_vec();
    let signature = sign(&body);
    let answer = world.post_signed("acme", body, Some(&signature)).await;
    assert_eq!(answer.status(), 400);
    let error: Value = answer.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("not valid JSON"),
        "{error}"
    );

    let wrong_shape = br#"{"direct_message_events":{}}"#;
    assert_eq!(world.post("acme", wrong_shape).await, 400);
    assert_eq!(world.state.signature_failures(), 0);
}

#[tokio::test]
async fn the_bridges_own_reply_is_dropped_and_a_company_echo_is_published() {
    let mut world = World::start(WebhookConfig::default()).await;
    // jordan's account sent 954491830116155396 through the bridge.
    world
        .store
        .record_sent(
            "jordan",
            "crm-reply-1",
            &SentRecord {
                dm_event_id: FIXTURE_EVENT.into(),
                conversation_id: format!("{CUSTOMER}-{ACME}"),
                sent_at: chrono::Utc::now(),
                reported: true,
                parts: Vec::new(),
            },
        )
        .await
        .unwrap();
    // X delivers it to jordan's subscription: the sender is the account itself.
    let own_send = dm_body(CUSTOMER, FIXTURE_EVENT, CUSTOMER, ACME);
    assert_eq!(world.post("jordan", &own_send).await, 200);

    // Someone at jordan wrote from X's app: an echo, for the CRM to see.
    let company = dm_body(CUSTOMER, "954491830116155440", CUSTOMER, ACME);
    assert_eq!(world.post("jordan", &company).await, 200);
    let echo = world.next_event().await;
    assert_eq!(echo.routing_key, "jordan.message.echo");
    assert_eq!(echo.body["type"], "message.echo");
    assert_eq!(echo.body["event_id"], "954491830116155440");
    assert_eq!(
        echo.properties.message_id().as_ref().map(|id| id.as_str()),
        Some("jordan:954491830116155440:echo")
    );
    assert_valid("message-echo", &echo.body);
    world
        .assert_nothing_else_published("954491830116155441")
        .await;
}

#[tokio::test]
async fn a_dm_for_another_account_of_the_app_is_published_under_that_accounts_channel() {
    let mut world = World::start(WebhookConfig::default()).await;
    // X has one webhook per App: a customer's DM to jordan's account arrives at
    // acme's URL, signed with the App's secret.
    let body = dm_body(CUSTOMER, "954491830116155450", "7777777777", CUSTOMER);
    assert_eq!(world.post("acme", &body).await, 200);
    let event = world.next_event().await;
    assert_eq!(event.routing_key, "jordan.message.received");
    assert_eq!(event.body["channel"], "jordan");
    assert_eq!(event.body["recipient_id"], CUSTOMER);
    assert_eq!(
        event.properties.message_id().as_ref().map(|id| id.as_str()),
        Some("jordan:954491830116155450:received")
    );
    // Delivered once, whichever URL X uses again.
    assert_eq!(world.post("jordan", &body).await, 200);
    assert_eq!(world.post("acme", &body).await, 200);
    assert!(world
        .store
        .is_delivered("jordan", "954491830116155450")
        .await
        .unwrap());
    assert!(!world
        .store
        .is_delivered("acme", "954491830116155450")
        .await
        .unwrap());
    world
        .assert_nothing_else_published("954491830116155451")
        .await;
}

#[tokio::test]
async fn a_body_for_an_account_no_channel_of_the_app_is_is_kept_not_published() {
    let mut world = World::start(WebhookConfig::default()).await;
    // An account nobody configured, then the account of a channel on another App: the
    // App that signed the body does not vouch for that one.
    for (account, event_id) in [
        ("1111111111", "954491830116155452"),
        (OTHER_ACCOUNT, "954491830116155453"),
    ] {
        let body = dm_body(account, event_id, CUSTOMER, account);
        assert_eq!(world.post("acme", &body).await, 200);
        let (routing_key, kept, properties) = world
            .take_dead_letter()
            .await
            .expect("the body is kept as a dead letter");
        assert_eq!(kept, body, "kept as X sent it");
        assert_eq!(routing_key, "acme");
        let table = properties.headers().clone().unwrap();
        let headers = FailureHeaders::read(Some(&table));
        assert_eq!(headers.reason.as_deref(), Some("unknown_account"));
        assert_eq!(headers.channel.as_deref(), Some("acme"));
        let detail = headers.detail.unwrap();
        assert!(detail.contains(account), "{detail}");
        assert!(table.contains_key(DIRECTION_HEADER));
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            Some(format!("unknown_account:{account}:{event_id}").as_str())
        );
        if account == OTHER_ACCOUNT {
            assert!(
                detail.contains("channel other is this account but on another X App"),
                "{detail}"
            );
        }
    }

    // Not kept, not answered 200: X must send it again.
    world.flaky.down.store(true, Ordering::SeqCst);
    let body = dm_body("1111111111", "954491830116155454", CUSTOMER, "1111111111");
    assert_eq!(world.post("acme", &body).await, 503);
    world.flaky.down.store(false, Ordering::SeqCst);
    assert!(world.take_dead_letter().await.is_none());

    world
        .assert_nothing_else_published("954491830116155455")
        .await;
}

#[tokio::test]
async fn a_body_waits_with_503_while_a_channel_of_the_app_is_not_known() {
    // jordan's account is not configured and X has not told it yet.
    let key = SecretString::from(APP_KEY);
    let other_key = SecretString::from(OTHER_APP_KEY);
    let identities = Arc::new(ChannelIdentities::new([
        ChannelAccount {
            name: "acme",
            consumer_key: &key,
            user_id: Some(ACME),
        },
        ChannelAccount {
            name: "jordan",
            consumer_key: &key,
            user_id: None,
        },
        ChannelAccount {
            name: "other",
            consumer_key: &other_key,
            user_id: Some(OTHER_ACCOUNT),
        },
    ]));
    let mut world = World::start_with(WebhookConfig::default(), Some(identities.clone())).await;
    let for_jordan = dm_body(CUSTOMER, "954491830116155456", "7777777777", CUSTOMER);
    assert_eq!(world.post("acme", &for_jordan).await, 503);
    assert!(world.take_dead_letter().await.is_none(), "not kept either");
    // acme's own DMs do not wait.
    assert_eq!(
        world.post("acme", &customer_dm("954491830116155457")).await,
        200
    );
    assert_eq!(
        world.next_event().await.body["event_id"],
        "954491830116155457"
    );

    // X told: its retry is published under jordan.
    identities.learn("jordan", CUSTOMER).unwrap();
    assert_eq!(world.post("acme", &for_jordan).await, 200);
    let event = world.next_event().await;
    assert_eq!(event.routing_key, "jordan.message.received");
    world
        .assert_nothing_else_published("954491830116155458")
        .await;
}

#[tokio::test]
async fn repeated_typing_and_read_events_are_published_once() {
    let mut world = World::start(WebhookConfig {
        publish_activity: true,
        ..WebhookConfig::default()
    })
    .await;
    let typing = fixture("webhook_aaa_typing.json");
    let read = serde_json::to_vec(&json!({
        "for_user_id": ACME,
        "direct_message_mark_read_events": [{
            "created_timestamp": "1518452444662",
            "sender_id": CUSTOMER,
            "target": {"recipient_id": ACME},
            "last_read_event_id": "963085315333238788"
        }]
    }))
    .unwrap();
    for body in [&typing, &read] {
        // X sends it again and again, some at once.
        let at_once = futures::future::join_all((0..10).map(|_| world.post("acme", body))).await;
        assert!(at_once.iter().all(|status| *status == 200), "{at_once:?}");
        for _ in 0..40 {
            assert_eq!(world.post("acme", body).await, 200);
        }
    }
    let first = world.next_event().await;
    assert_eq!(first.routing_key, "acme.conversation.typing");
    let second = world.next_event().await;
    assert_eq!(second.routing_key, "acme.message.read");
    world
        .assert_nothing_else_published("954491830116155459")
        .await;
}

#[tokio::test]
async fn typing_is_dropped_by_default_and_published_when_activity_is_on() {
    let mut world = World::start(WebhookConfig::default()).await;
    // Bogus Bogart types to Jordan, in a conversation of acme's account.
    let typing = fixture("webhook_aaa_typing.json");
    assert_eq!(world.post("acme", &typing).await, 200);
    world
        .assert_nothing_else_published("954491830116155460")
        .await;

    let mut world = World::start(WebhookConfig {
        publish_activity: true,
        ..WebhookConfig::default()
    })
    .await;
    assert_eq!(world.post("acme", &typing).await, 200);
    let event = world.next_event().await;
    assert_eq!(event.routing_key, "acme.conversation.typing");
    assert_eq!(
        event.properties.message_id().as_ref().map(|id| id.as_str()),
        Some("acme:typing:3284025577:1518127183443")
    );
    assert_valid("conversation-typing", &event.body);
}

#[tokio::test]
async fn a_failed_publish_is_a_503_and_x_retry_delivers_once() {
    let mut world = World::start(WebhookConfig::default()).await;
    let body = customer_dm("954491830116155470");
    world.flaky.down.store(true, Ordering::SeqCst);
    assert_eq!(world.post("acme", &body).await, 503);
    assert!(!world
        .store
        .is_delivered("acme", "954491830116155470")
        .await
        .unwrap());

    // The broker is back; X retries (twice, as it may).
    world.flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(world.post("acme", &body).await, 200);
    assert_eq!(world.post("acme", &body).await, 200);
    let event = world.next_event().await;
    assert_eq!(event.body["event_id"], "954491830116155470");
    world
        .assert_nothing_else_published("954491830116155471")
        .await;
}

#[tokio::test]
async fn a_body_that_fails_halfway_is_completed_by_the_retry() {
    let mut world = World::start(WebhookConfig::default()).await;
    // Two DMs in one body; the broker refuses the second.
    let mut body: Value = serde_json::from_slice(&customer_dm("954491830116155480")).unwrap();
    let mut second = body["direct_message_events"][0].clone();
    second["id"] = json!("954491830116155481");
    body["direct_message_events"]
        .as_array_mut()
        .unwrap()
        .push(second);
    let body = serde_json::to_vec(&body).unwrap();
    *world.flaky.fail_on.lock().unwrap() = Some("954491830116155481".into());
    assert_eq!(world.post("acme", &body).await, 503);
    assert_eq!(
        world.next_event().await.body["event_id"],
        "954491830116155480"
    );

    *world.flaky.fail_on.lock().unwrap() = None;
    assert_eq!(world.post("acme", &body).await, 200);
    assert_eq!(
        world.next_event().await.body["event_id"],
        "954491830116155481"
    );
    world
        .assert_nothing_else_published("954491830116155482")
        .await;
}

#[tokio::test]
async fn a_closed_amqp_channel_is_a_503_not_a_crash() {
    let world = World::start(WebhookConfig::default()).await;
    // A state whose real AMQP sink publishes on a channel that is gone.
    let connection = connect(&SecretString::from(amqp_url()), "xbridge-inbound-test")
        .await
        .unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    publisher.channel().close(200, "test".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(WebhookState::new(
        vec![WebhookChannel {
            name: "acme".into(),
            consumer_key: SecretString::from(APP_KEY),
            consumer_secret: SecretString::from(SECRET),
            own_user_id: Some(ACME.into()),
        }],
        Arc::new(AmqpSink::new(
            publisher,
            world.broker.names.incoming_exchange.clone(),
        )),
        Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap()),
        WebhookConfig::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/acme", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let body = customer_dm("954491830116155490");
    for _ in 0..2 {
        let answer = world
            .http
            .post(&url)
            .header(SIGNATURE_HEADER, sign(&body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Log lines written while it is held, by the tasks of this (current-thread) runtime.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn unsigned_requests_are_logged_bounded_in_size_and_rate() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let world = World::start(WebhookConfig::default()).await;

    // A 16 KB channel name, a line break in another, bad signatures: hundreds of each.
    let long = "x".repeat(16 * 1024);
    let forged = "acme\nERROR forged line";
    let body = customer_dm("954491830116155499");
    let answer = world
        .http
        .post(world.url(&urlencode(forged)))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    for _ in 0..200 {
        assert_eq!(world.post(&long, &body).await, 404);
        let crc = world
            .http
            .get(format!("{}?crc_token=t", world.url(&long)))
            .send()
            .await
            .unwrap();
        assert_eq!(crc.status(), 404);
        let answer = world
            .post_signed("acme", body.clone(), Some("sha256=AAAA"))
            .await;
        assert_eq!(answer.status(), 401);
    }
    // Every refusal counted, whatever the log shows.
    assert_eq!(world.state.signature_failures(), 200);

    let text = logs.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("unknown channel")),
        "refusals are still logged:\n{text}"
    );
    assert!(lines.iter().any(|l| l.contains("bad signature")), "{text}");
    assert!(
        lines.iter().all(|l| l.len() < 1024),
        "a line is longer than 1 KB:\n{text}"
    );
    assert!(
        lines.len() <= 20,
        "{} lines for 601 refused requests:\n{text}",
        lines.len()
    );
    assert!(
        text.contains("acme\\nERROR forged line"),
        "escaped:\n{text}"
    );
    assert!(!text.contains("\nERROR forged line"), "{text}");
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
