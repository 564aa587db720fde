//! The poller against the X simulator (in-process) and the real RabbitMQ: each test gets
//! its own simulator, topology (unique prefix) and state file, and reads what the poller
//! published from its own incoming queue.
//!
//! Tests synchronize on `poll_once` returning and on events consumed with a timeout,
//! never on sleeps. To show that nothing more was published, a test follows with a
//! fresh DM and checks that the next event on the queue is that one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use serde_json::Value;
use x_simulator::{Account, Customer, Fault, Simulator, SimulatorConfig};
use xbridge_core::contract::EventToCrm;
use xbridge_inbound::delivery::sink::{AmqpSink, EventSink, SinkError};
use xbridge_inbound::polling::poller::{
    poll_once, PollBudget, PollContext, PollError, PollOutcome,
};
use xbridge_store::{EmbeddedStore, StateStore};
use xbridge_test_support::{assert_valid, PATIENCE};
use xbridge_x_api::{UserCredentials, XClient, XClientConfig};

mod common;
use common::Broker;

const CHANNEL: &str = "acme";

/// An event the poller published.
#[derive(Debug)]
struct Event {
    routing_key: String,
    body: Value,
}

/// The real sink, failing on demand for one event id, to play a broker outage.
struct FlakySink {
    inner: AmqpSink,
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
        if targeted {
            return Err(SinkError::Unavailable(
                "the test took the broker away".into(),
            ));
        }
        self.inner.publish(event).await
    }
}

/// One test's world.
struct World {
    sim: Simulator,
    account: Account,
    jane: Customer,
    ctx: PollContext,
    budget: PollBudget,
    store: Arc<EmbeddedStore>,
    flaky: Arc<FlakySink>,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let account = Account::generate("acme_support");
        let sim = Simulator::start(SimulatorConfig {
            accounts: vec![account.clone()],
            ..SimulatorConfig::default()
        })
        .await
        .expect("the simulator starts");
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
        let broker = Broker::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let flaky = Arc::new(FlakySink {
            inner: AmqpSink::new(
                broker.publisher.clone(),
                broker.names.incoming_exchange.clone(),
            ),
            fail_on: Mutex::new(None),
        });
        let ctx = PollContext {
            channel: CHANNEL.into(),
            own_user_id: account.user_id.clone(),
            client,
            store: store.clone(),
            sink: flaky.clone(),
            publish_echoes: true,
            backfill: None,
            profiles: None,
            media: None,
            in_flight: Default::default(),
        };
        World {
            sim,
            jane: Customer::generate("jane_doe"),
            account,
            ctx,
            budget: PollBudget::default(),
            store,
            flaky,
            broker,
            _dir: dir,
        }
    }

    /// Jane writes `text` to acme; returns the DM event id.
    fn customer_writes(&self, text: &str) -> String {
        self.sim
            .customer_dm(&self.account.user_id, &self.jane, text, None)
            .id
    }

    async fn poll(&mut self) -> Result<PollOutcome, PollError> {
        poll_once(&self.ctx, &mut self.budget).await
    }

    /// Polls until a poll delivers nothing; returns how many were delivered in all.
    async fn poll_until_idle(&mut self) -> usize {
        let mut delivered = 0;
        for _ in 0..20 {
            let outcome = self.poll().await.expect("the poll succeeds");
            if outcome.delivered == 0 {
                return delivered;
            }
            delivered += outcome.delivered;
        }
        panic!("the poller kept delivering");
    }

    async fn cursor(&self) -> Option<String> {
        self.store.poll_cursor(CHANNEL).await.unwrap()
    }

    fn billed(&self) -> u64 {
        self.sim.billed_dm_events(&self.account.user_id)
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
        }
    }

    /// A fresh DM, polled: it must be the next event, so nothing else was published.
    async fn assert_nothing_else_published(&mut self) {
        let marker = self.customer_writes("marker");
        assert_eq!(self.poll_until_idle().await, 1);
        let next = self.next_event().await;
        assert_eq!(
            next.body["event_id"], marker,
            "an unexpected event was published before the marker: {next:?}"
        );
    }
}

#[tokio::test]
async fn the_first_poll_starts_from_now_then_new_dms_arrive_once_oldest_first() {
    let mut world = World::start().await;
    let before = world.customer_writes("sent before the bridge polled");

    let first = world.poll().await.unwrap();
    assert_eq!(first.delivered, 0);
    assert_eq!(first.pages, 1);
    assert_eq!(world.cursor().await.as_deref(), Some(before.as_str()));

    let written: Vec<String> = (0..12)
        .map(|n| world.customer_writes(&format!("message {n}")))
        .collect();
    assert_eq!(world.poll_until_idle().await, 12);
    for (n, event_id) in written.iter().enumerate() {
        let event = world.next_event().await;
        assert_eq!(event.routing_key, "acme.message.received");
        assert_eq!(event.body["event_id"], event_id.as_str(), "event {n}");
        assert_eq!(event.body["received_via"], "poll");
        assert_eq!(event.body["text"], format!("message {n}"));
        assert_valid("message-received", &event.body);
    }
    assert_eq!(world.cursor().await.as_deref(), Some(written[11].as_str()));
    // The DM from before the first poll never came, and nothing came twice.
    world.assert_nothing_else_published().await;
}

#[tokio::test]
async fn the_first_poll_of_an_empty_account_counts_everything_after_as_new() {
    let mut world = World::start().await;
    assert_eq!(world.poll().await.unwrap().delivered, 0);
    assert_eq!(world.cursor().await.as_deref(), Some("0"));
    let first = world.customer_writes("first ever");
    assert_eq!(world.poll_until_idle().await, 1);
    assert_eq!(world.next_event().await.body["event_id"], first.as_str());
}

#[tokio::test]
async fn polls_without_news_bill_one_event_and_a_backlog_little_more_than_itself() {
    let mut world = World::start().await;
    world.customer_writes("before");
    world.poll().await.unwrap();

    for _ in 0..10 {
        let billed = world.billed();
        let outcome = world.poll().await.unwrap();
        assert_eq!(
            outcome,
            PollOutcome {
                delivered: 0,
                pages: 1,
                events_read: 1
            }
        );
        assert!(
            world.billed() - billed <= 1,
            "an idle poll billed more than one event"
        );
    }

    let billed = world.billed();
    let written: Vec<String> = (0..3)
        .map(|n| world.customer_writes(&format!("new {n}")))
        .collect();
    assert_eq!(world.poll_until_idle().await, 3);
    let cost = world.billed() - billed;
    assert!(cost <= 3 + 2, "3 new DMs billed {cost} events");
    for event_id in &written {
        assert_eq!(world.next_event().await.body["event_id"], event_id.as_str());
    }
    // Back to the small page.
    assert_eq!(world.budget.page_size(), PollBudget::SMALL);
}

#[tokio::test]
async fn a_steady_stream_costs_one_event_per_poll_beyond_the_new_ones() {
    let mut world = World::start().await;
    world.customer_writes("before");
    world.poll().await.unwrap();

    let mut written = Vec::new();
    for round in 0..4 {
        let billed = world.billed();
        for n in 0..5 {
            written.push(world.customer_writes(&format!("round {round}, DM {n}")));
        }
        let outcome = world.poll().await.unwrap();
        assert_eq!(outcome.delivered, 5);
        let cost = world.billed() - billed;
        if round >= 2 {
            // Two polls have shown the pace: one page of the 5 new and the cursor.
            assert_eq!((outcome.pages, cost), (1, 6), "round {round}");
        }
    }
    for event_id in &written {
        assert_eq!(world.next_event().await.body["event_id"], event_id.as_str());
    }

    // The stream stops: the next quiet poll pays for one page of the size the
    // stream had, then polls are back to one event.
    world.poll().await.unwrap();
    world.poll().await.unwrap();
    let billed = world.billed();
    world.poll().await.unwrap();
    assert_eq!(world.billed() - billed, 1);
    world.assert_nothing_else_published().await;
}

#[tokio::test]
async fn an_event_the_webhook_delivered_is_not_published_again() {
    let mut world = World::start().await;
    world.customer_writes("before");
    world.poll().await.unwrap();

    let older = world.customer_writes("missed by the webhook");
    let by_webhook = world.customer_writes("delivered by the webhook");
    let newer = world.customer_writes("missed by the webhook too");
    world
        .store
        .record_delivered(CHANNEL, std::slice::from_ref(&by_webhook))
        .await
        .unwrap();

    assert_eq!(world.poll_until_idle().await, 2);
    assert_eq!(world.next_event().await.body["event_id"], older.as_str());
    assert_eq!(world.next_event().await.body["event_id"], newer.as_str());
    assert_eq!(world.cursor().await.as_deref(), Some(newer.as_str()));
    world.assert_nothing_else_published().await;
}

#[tokio::test]
async fn out_of_credits_keeps_the_cursor_and_the_next_polls_catch_up() {
    let mut world = World::start().await;
    let before = world.customer_writes("before");
    world.poll().await.unwrap();

    let written: Vec<String> = (0..4)
        .map(|n| world.customer_writes(&format!("new {n}")))
        .collect();
    world
        .sim
        .set_fault(&world.account.user_id, Fault::CreditsDepleted);
    let error = world.poll().await.unwrap_err();
    assert!(matches!(error, PollError::CreditsExhausted(_)), "{error:?}");
    assert_eq!(world.cursor().await.as_deref(), Some(before.as_str()));

    world.sim.clear_faults(&world.account.user_id);
    assert_eq!(world.poll_until_idle().await, 4);
    for event_id in &written {
        assert_eq!(world.next_event().await.body["event_id"], event_id.as_str());
    }
    assert_eq!(world.cursor().await.as_deref(), Some(written[3].as_str()));
    world.assert_nothing_else_published().await;
}

#[tokio::test]
async fn a_failed_publish_moves_the_cursor_only_past_what_was_confirmed() {
    let mut world = World::start().await;
    world.customer_writes("before");
    world.poll().await.unwrap();

    let written: Vec<String> = (0..3)
        .map(|n| world.customer_writes(&format!("new {n}")))
        .collect();
    *world.flaky.fail_on.lock().unwrap() = Some(written[1].clone());
    let error = world.poll().await.unwrap_err();
    assert!(matches!(error, PollError::Publish(_)), "{error:?}");
    assert_eq!(world.cursor().await.as_deref(), Some(written[0].as_str()));
    assert_eq!(
        world.next_event().await.body["event_id"],
        written[0].as_str()
    );

    *world.flaky.fail_on.lock().unwrap() = None;
    assert_eq!(world.poll_until_idle().await, 2);
    assert_eq!(
        world.next_event().await.body["event_id"],
        written[1].as_str()
    );
    assert_eq!(
        world.next_event().await.body["event_id"],
        written[2].as_str()
    );
    world.assert_nothing_else_published().await;
}

/// A sink that must not be reached.
struct NoSink;

#[async_trait]
impl EventSink for NoSink {
    async fn publish(&self, event: &EventToCrm) -> Result<(), SinkError> {
        panic!("nothing should be published: {event:?}");
    }
}

/// X answering every page with the same events and the same `next_token` (a bug on
/// its side, or a page token it keeps handing back): the poll pages back to the cursor
/// and would never reach it, reading (and paying for) the same page for ever while its
/// list of "new" events grows. It stops at the first page that is not older than the
/// one before, with an error saying so.
#[tokio::test]
async fn a_page_that_repeats_an_earlier_one_ends_the_poll_with_an_error() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let pages = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/2/dm_events",
        axum::routing::get({
            let pages = pages.clone();
            move || async move {
                pages.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({
                    "data": [{"id": "1585047616894574596", "event_type": "MessageCreate",
                        "text": "again", "sender_id": "944480690",
                        "created_at": "2022-10-25T23:16:15.000Z",
                        "dm_conversation_id": "944480690-906948460078698496"}],
                    "meta": {"result_count": 1, "next_token": "18LAA581J5II7LA00C00ZZZZ"}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let account = Account::generate("acme_support");
    let client = XClient::new(
        XClientConfig {
            base_url: url::Url::parse(&base).unwrap(),
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
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
    store.set_poll_cursor(CHANNEL, "1").await.unwrap();
    let ctx = PollContext {
        channel: CHANNEL.into(),
        own_user_id: "906948460078698496".into(),
        client,
        store: store.clone(),
        sink: Arc::new(NoSink),
        publish_echoes: true,
        backfill: None,
        profiles: None,
        media: None,
        in_flight: Default::default(),
    };
    let mut budget = PollBudget::default();
    let polled = tokio::time::timeout(PATIENCE, poll_once(&ctx, &mut budget))
        .await
        .expect("the poll ends");
    let error = polled.expect_err("a poll that cannot reach its cursor fails");
    assert!(matches!(error, PollError::Page(_)), "{error}");
    assert!(error.to_string().contains("repeats"), "{error}");
    assert_eq!(
        pages.load(Ordering::SeqCst),
        2,
        "read once more, not for ever"
    );
    assert_eq!(
        store.poll_cursor(CHANNEL).await.unwrap().as_deref(),
        Some("1")
    );
}
