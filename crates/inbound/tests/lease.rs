//! The poll lease against the real RabbitMQ: two contenders on two connections, as two
//! replicas would be. Each test has its own lease queue (unique prefix) and deletes it.
//!
//! Tests wait on the leases' state changes, never on sleeps.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use secrecy::SecretString;
use xbridge_amqp::connect;
use xbridge_core::config::TopologyNames;
use xbridge_inbound::polling::lease::{LeaseError, LeaseState, PollLease};
use xbridge_test_support::{amqp_url, PATIENCE};

const CHANNEL: &str = "acme";

/// Short, so renewals happen within a test; the service uses minutes.
const RENEW_EVERY: Duration = Duration::from_millis(100);

/// One test's lease queue, deleted when the test ends (passed or failed).
struct LeaseQueue(String);

impl LeaseQueue {
    fn new() -> LeaseQueue {
        let names = TopologyNames::with_prefix(&format!(
            "t-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        LeaseQueue(names.poll_lease_queue(CHANNEL))
    }
}

impl Drop for LeaseQueue {
    fn drop(&mut self) {
        let queue = self.0.clone();
        // After a failed assertion the test's runtime is unwinding: use a runtime of
        // our own, on a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(connection) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "cleanup".into()).await;
            });
        })
        .join();
    }
}

async fn replica(name: &str) -> Connection {
    connect(&SecretString::from(amqp_url()), name)
        .await
        .expect("RabbitMQ is reachable")
}

async fn contend(connection: &Connection, queue: &LeaseQueue) -> PollLease {
    PollLease::contend(connection, &queue.0, CHANNEL, RENEW_EVERY)
        .await
        .expect("contending starts")
}

/// Waits until one of the two leases is acquired; the index of the holder.
async fn first_holder(leases: &mut [PollLease; 2]) -> usize {
    let [a, b] = leases;
    tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            acquired = a.acquired() => { acquired.expect("a is acquired or waits"); 0 }
            acquired = b.acquired() => { acquired.expect("b is acquired or waits"); 1 }
        }
    })
    .await
    .expect("one contender acquires the lease")
}

/// Waits until `lease` has renewed `count` times since it was acquired.
async fn wait_for_renewals(lease: &PollLease, count: u64) {
    let mut state = lease.watch();
    tokio::time::timeout(
        PATIENCE,
        state.wait_for(|s| matches!(s, LeaseState::Held { renewals } if *renewals >= count)),
    )
    .await
    .expect("the holder renews")
    .expect("the lease task runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_holds_the_lease_and_keeps_it_across_renewals() {
    let queue = LeaseQueue::new();
    let connections = [replica("replica-a").await, replica("replica-b").await];
    let mut leases = [
        contend(&connections[0], &queue).await,
        contend(&connections[1], &queue).await,
    ];
    let holder = first_holder(&mut leases).await;
    let other = 1 - holder;

    // Each renewal passes a new token through the queue; the broker gives every
    // one to the same active consumer, so the other one never gets the lease.
    wait_for_renewals(&leases[holder], 5).await;
    assert!(leases[holder].is_held());
    assert_eq!(leases[other].state(), LeaseState::Waiting);
    leases[holder]
        .confirm(PATIENCE)
        .await
        .expect("the broker confirms the holder's lease");
    assert!(leases[other].confirm(PATIENCE).await.is_err());

    for connection in &connections {
        connection.close(200, "test over".into()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_hands_the_lease_to_the_waiting_replica() {
    let queue = LeaseQueue::new();
    let connections = [replica("replica-a").await, replica("replica-b").await];
    let mut leases = [
        contend(&connections[0], &queue).await,
        contend(&connections[1], &queue).await,
    ];
    let holder = first_holder(&mut leases).await;
    let other = 1 - holder;
    assert_eq!(leases[other].state(), LeaseState::Waiting);

    // The holder's process dies: its connection closes, the broker requeues its
    // token and activates the other consumer.
    connections[holder]
        .close(320, "replica gone".into())
        .await
        .unwrap();
    let [a, b] = &mut leases;
    let (gone, successor) = if holder == 0 { (a, b) } else { (b, a) };
    tokio::time::timeout(PATIENCE, successor.acquired())
        .await
        .expect("the waiting replica takes over")
        .expect("it acquires the lease");
    let ended = tokio::time::timeout(PATIENCE, gone.ended())
        .await
        .expect("the old holder notices");
    assert!(matches!(ended, LeaseError::Lost { .. }), "{ended:?}");
    assert!(gone.confirm(PATIENCE).await.is_err());

    // The successor keeps it too.
    wait_for_renewals(successor, 3).await;
    successor.confirm(PATIENCE).await.unwrap();

    connections[other]
        .close(200, "test over".into())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_goes_to_the_waiting_replica_and_a_newcomer_waits() {
    let queue = LeaseQueue::new();
    let connections = [
        replica("replica-a").await,
        replica("replica-b").await,
        replica("replica-c").await,
    ];
    let mut leases = [
        contend(&connections[0], &queue).await,
        contend(&connections[1], &queue).await,
    ];
    let holder = first_holder(&mut leases).await;
    let [a, b] = leases;
    let (gone, mut successor) = if holder == 0 { (a, b) } else { (b, a) };

    // A clean stop hands over as well.
    gone.release().await;
    tokio::time::timeout(PATIENCE, successor.acquired())
        .await
        .expect("the waiting replica takes over")
        .expect("it acquires the lease");

    // A replica started later seeds a spare token while the queue looks empty;
    // the holder gets and drops it, and keeps the lease.
    let newcomer = contend(&connections[2], &queue).await;
    wait_for_renewals(&successor, 3).await;
    assert_eq!(newcomer.state(), LeaseState::Waiting);
    assert!(successor.is_held());

    for connection in &connections {
        connection.close(200, "test over".into()).await.unwrap();
    }
}
