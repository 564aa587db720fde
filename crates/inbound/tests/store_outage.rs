//! DMs coming in while the state store cannot write, with a store double in
//! front of the real embedded store, the real RabbitMQ and (for polls) the X
//! simulator: a DM whose publish was confirmed is answered 2xx and published
//! once, however often X retries it or a poll finds it, and its record (and
//! the poll cursor) reach the store once it can write.
//!
//! To show that nothing more was published, a test follows with a fresh DM and
//! checks that the next event on the queue is that one.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use x_simulator::{Account, Customer, Simulator, SimulatorConfig};
use xbridge_inbound::delivery::sink::AmqpSink;
use xbridge_inbound::polling::poller::{poll_once, PollBudget, PollContext};
use xbridge_inbound::webhook::auth::{crc_response_token, SIGNATURE_HEADER};
use xbridge_inbound::webhook::server::{router, WebhookChannel, WebhookConfig, WebhookState};
use xbridge_inbound::{write_pending, InFlightDeliveries};
use xbridge_store::{EmbeddedStore, StateStore};
use xbridge_test_support::{FailingStore, Refuse, PATIENCE};
use xbridge_x_api::{UserCredentials, XClient, XClientConfig};

mod common;
use common::Broker;

/// The consumer secret X's own examples are signed with (see `webhook_auth`).
const SECRET: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
/// The company's account ("acme") and the customer in the fixture.
const ACME: &str = "4337869213";
const CUSTOMER: &str = "3001969357";

/// X's sample DM, from `sender` to `recipient` with id `event_id`, for acme.
fn dm_body(event_id: &str, sender: &str, recipient: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/x-api/webhook_aaa_dm.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut body: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    body["for_user_id"] = json!(ACME);
    let event = &mut body["direct_message_events"][0];
    event["id"] = json!(event_id);
    event["message_create"]["sender_id"] = json!(sender);
    event["message_create"]["target"]["recipient_id"] = json!(recipient);
    serde_json::to_vec(&body).unwrap()
}

async fn next_event(broker: &mut Broker) -> Value {
    let delivery = tokio::time::timeout(PATIENCE, broker.events.next())
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for an event"))
        .expect("the consumer is open")
        .expect("a delivery");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    serde_json::from_slice(&delivery.data).expect("events are JSON")
}

/// Waits until `check` holds, looking again every few milliseconds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("waited {PATIENCE:?} until {what}"));
}

#[tokio::test]
async fn a_webhook_dm_published_while_the_store_cannot_write_is_answered_200_and_published_once() {
    let mut broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let real: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
    let store = FailingStore::new(real.clone());
    let in_flight = Arc::new(InFlightDeliveries::default());
    let state = WebhookState::new(
        vec![WebhookChannel {
            name: "acme".into(),
            consumer_key: SecretString::from("acme-consumer-key"),
            consumer_secret: SecretString::from(SECRET),
            own_user_id: Some(ACME.into()),
        }],
        Arc::new(AmqpSink::new(
            broker.publisher.clone(),
            broker.names.incoming_exchange.clone(),
        )),
        store.clone(),
        WebhookConfig::default(),
    )
    .with_in_flight(in_flight.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/acme", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let signature = crc_response_token(
            &SecretString::from(SECRET),
            std::str::from_utf8(&body).unwrap(),
        );
        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };

    store.refuse(Refuse::Writes);
    // The first delivery and three retries of X's: each answered 200, one publish.
    for attempt in 0..4 {
        assert_eq!(
            post(dm_body("9001", CUSTOMER, ACME)).await,
            200,
            "delivery {attempt}"
        );
    }
    assert_eq!(next_event(&mut broker).await["event_id"], "9001");
    assert!(!real.is_delivered("acme", "9001").await.unwrap());

    // A DM of the account's own that the store does not know may echo a
    // reply whose record waits for the store: not published, X retries it.
    assert_eq!(post(dm_body("9002", ACME, CUSTOMER)).await, 503);

    // The store takes writes again: what was kept is written.
    let stop = CancellationToken::new();
    let writer = tokio::spawn({
        let (in_flight, store, stop) = (in_flight.clone(), store.clone(), stop.clone());
        async move { write_pending(&in_flight, store.as_ref(), stop).await }
    });
    store.heal();
    eventually("the delivered DM is recorded", || async {
        real.is_delivered("acme", "9001").await.unwrap()
    })
    .await;
    assert!(in_flight.pending().is_empty());
    assert_eq!(post(dm_body("9001", CUSTOMER, ACME)).await, 200);

    // Nothing else was published before a fresh DM.
    assert_eq!(post(dm_body("9003", CUSTOMER, ACME)).await, 200);
    assert_eq!(next_event(&mut broker).await["event_id"], "9003");

    // While the store answers nothing at all, a DM it cannot judge waits for X's retry.
    store.refuse(Refuse::Everything);
    assert_eq!(post(dm_body("9004", CUSTOMER, ACME)).await, 503);
    store.heal();
    assert_eq!(post(dm_body("9004", CUSTOMER, ACME)).await, 200);
    assert_eq!(next_event(&mut broker).await["event_id"], "9004");
    stop.cancel();
    writer.await.unwrap();
}

#[tokio::test]
async fn polls_while_the_store_cannot_write_publish_each_dm_once_and_the_cursor_follows_later() {
    let account = Account::generate("acme_support");
    let sim = Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    let client = XClient::new(
        XClientConfig {
            base_url: sim.base_url(),
            request_timeout: Duration::from_secs(10),
            ..XClientConfig::default()
        },
        UserCredentials {
            consumer_key: account.consumer_key.clone().into(),
            consumer_secret: account.consumer_secret.clone().into(),
            access_token: account.access_token.clone().into(),
            access_token_secret: account.access_token_secret.clone().into(),
        },
    )
    .unwrap();
    let mut broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let real: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
    let store = FailingStore::new(real.clone());
    let ctx = PollContext {
        channel: "acme".into(),
        own_user_id: account.user_id.clone(),
        client,
        store: store.clone(),
        sink: Arc::new(AmqpSink::new(
            broker.publisher.clone(),
            broker.names.incoming_exchange.clone(),
        )),
        publish_echoes: true,
        backfill: None,
        profiles: None,
        media: None,
        in_flight: Default::default(),
    };
    let mut budget = PollBudget::default();
    let jane = Customer::generate("jane_doe");
    let write = |text: &str| sim.customer_dm(&account.user_id, &jane, text, None).id;

    // The first poll starts from now.
    poll_once(&ctx, &mut budget).await.unwrap();
    let start = real.poll_cursor("acme").await.unwrap();

    store.refuse(Refuse::Writes);
    let first = write("one");
    let second = write("two");
    let outcome = poll_once(&ctx, &mut budget)
        .await
        .expect("a poll whose records fail still succeeds");
    assert_eq!(outcome.delivered, 2);
    assert_eq!(next_event(&mut broker).await["event_id"], first.as_str());
    assert_eq!(next_event(&mut broker).await["event_id"], second.as_str());
    assert_eq!(real.poll_cursor("acme").await.unwrap(), start);
    // The next poll goes on from the cursor kept in memory.
    assert_eq!(poll_once(&ctx, &mut budget).await.unwrap().delivered, 0);

    store.heal();
    ctx.in_flight
        .pending()
        .write_to(store.as_ref())
        .await
        .unwrap();
    assert_eq!(
        real.poll_cursor("acme").await.unwrap().as_deref(),
        Some(second.as_str())
    );
    assert!(real.is_delivered("acme", &first).await.unwrap());
    assert!(ctx.in_flight.pending().is_empty());

    // Nothing else was published before a fresh DM.
    let marker = write("marker");
    assert_eq!(poll_once(&ctx, &mut budget).await.unwrap().delivered, 1);
    assert_eq!(next_event(&mut broker).await["event_id"], marker.as_str());
}
