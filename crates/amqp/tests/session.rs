//! The session supervisor against the real RabbitMQ: a session that ends is
//! started again on a new connection, readiness follows it, a broker that
//! cannot be reached is retried, and shutdown ends the loop at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::{ConnectError, Session, SessionLog, Supervisor};
use xbridge_core::config::BrokerAddress;

/// One node at `url`.
fn broker(url: String) -> Vec<BrokerAddress> {
    vec![BrokerAddress::new(url.into())]
}

fn amqp_url() -> String {
    std::env::var("XBRIDGE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

const LOG: SessionLog = SessionLog {
    retrying: "test session cannot reach RabbitMQ",
    lost: "test session lost",
};

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("ended on purpose")]
    Ended,
}

/// Opens a channel, then runs until `end` is cancelled (a failure) or shutdown.
struct Counting {
    starts: Arc<AtomicUsize>,
    stops: Arc<AtomicUsize>,
    end: CancellationToken,
}

impl Session for Counting {
    type Error = TestError;
    type Running = ();

    async fn start(
        &mut self,
        connection: &Arc<Connection>,
        channels: &mut Vec<Channel>,
        _shutdown: &CancellationToken,
    ) -> Result<(), TestError> {
        channels.push(connection.create_channel().await.expect("a channel"));
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn run(&mut self, _: &mut (), shutdown: &CancellationToken) -> Option<TestError> {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            _ = self.end.cancelled() => Some(TestError::Ended),
        }
    }

    async fn stop(&mut self, _: ()) {
        self.stops.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_ended_session_is_started_again_and_shutdown_ends_the_loop() {
    let supervisor = Supervisor::new(broker(amqp_url()), "xbridge test", LOG, Duration::ZERO);
    let mut ready = supervisor.readiness();
    let (starts, stops) = (Arc::default(), Arc::default());
    let end = CancellationToken::new();
    let session = Counting {
        starts: Arc::clone(&starts),
        stops: Arc::clone(&stops),
        end: end.clone(),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(supervisor.run(session, shutdown.clone()));

    timeout(Duration::from_secs(10), ready.wait_for(|up| *up))
        .await
        .expect("ready in time")
        .expect("readiness");
    // A healthy session that ends is reconnected at once.
    end.cancel();
    timeout(Duration::from_secs(10), async {
        while starts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("started again");

    shutdown.cancel();
    timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped in time")
        .expect("no panic");
    assert_eq!(starts.load(Ordering::SeqCst), stops.load(Ordering::SeqCst));
    assert!(ready.has_changed().is_err(), "readiness ends with the loop");
}

#[tokio::test]
async fn an_unreachable_broker_is_retried_until_shutdown() {
    // Port 1: nothing listens, every attempt is refused.
    let url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
    let supervisor = Supervisor::new(broker(url), "xbridge test", LOG, Duration::ZERO);
    let ready = supervisor.readiness();
    let starts = Arc::new(AtomicUsize::new(0));
    let session = Counting {
        starts: Arc::clone(&starts),
        stops: Arc::default(),
        end: CancellationToken::new(),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(supervisor.run(session, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*ready.borrow());
    shutdown.cancel();
    timeout(Duration::from_secs(5), running)
        .await
        .expect("a pause between attempts ends on shutdown")
        .expect("no panic");
    assert_eq!(starts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_node_that_refuses_is_passed_over_for_the_next() {
    // The first node refuses (nothing listens on port 1); the second is the
    // shared broker.
    let brokers = [
        BrokerAddress::new("amqp://guest:guest@127.0.0.1:1/%2f".to_owned().into()),
        BrokerAddress::new(amqp_url().into()),
    ];
    let supervisor = Supervisor::new(brokers, "xbridge test", LOG, Duration::ZERO);
    let mut ready = supervisor.readiness();
    let starts = Arc::new(AtomicUsize::new(0));
    let session = Counting {
        starts: Arc::clone(&starts),
        stops: Arc::default(),
        end: CancellationToken::new(),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(supervisor.run(session, shutdown.clone()));
    // Never ready if the refusal ended the attempt: every retry would start
    // with the first node again.
    timeout(Duration::from_secs(10), ready.wait_for(|up| *up))
        .await
        .expect("ready in time")
        .expect("readiness");
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped in time")
        .expect("no panic");
}
