//! The broker side shared by the inbound integration tests: a unique topology per test
//! on the real RabbitMQ, a confirm-mode publisher, a consumer on the test's incoming
//! queue, and the clean-up of it all when the test ends.

use lapin::options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Consumer};
use secrecy::SecretString;
use xbridge_test_support::amqp_url;

use xbridge_amqp::{connect, declare_topology, Publisher, TopologyPlan};
use xbridge_core::config::TopologyNames;

/// One test's topology, declared, with a publisher and a consumer on its incoming queue.
/// Dropping it deletes the topology.
pub struct Broker {
    pub names: TopologyNames,
    pub publisher: Publisher,
    pub events: Consumer,
    _consumer_connection: Connection,
    _publisher_connection: Connection,
    // Last, so the connections are gone before the topology is deleted.
    _cleanup: TopologyCleanup,
}

impl Broker {
    /// Declares a topology with a unique `t-…` prefix and starts consuming its incoming
    /// queue.
    pub async fn start() -> Broker {
        let names = TopologyNames::with_prefix(&format!(
            "t-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let cleanup = TopologyCleanup(names.clone());
        let url = SecretString::from(amqp_url());
        let publisher_connection = connect(&url, "xbridge-inbound-test")
            .await
            .expect("RabbitMQ is reachable");
        let publisher = Publisher::open(&publisher_connection).await.unwrap();
        declare_topology(
            publisher.channel(),
            &TopologyPlan {
                names: names.clone(),
                channels: vec![],
                polled_channels: vec![],
                delays: vec![],
            },
        )
        .await
        .expect("the topology is declared");

        let consumer_connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let events = consumer_connection
            .create_channel()
            .await
            .unwrap()
            .basic_consume(
                names.incoming_queue.as_str().into(),
                "test-crm".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Broker {
            names,
            publisher,
            events,
            _consumer_connection: consumer_connection,
            _publisher_connection: publisher_connection,
            _cleanup: cleanup,
        }
    }
}

/// Deletes a test's queues and exchanges when the test ends, passed or failed.
pub struct TopologyCleanup(pub TopologyNames);

impl Drop for TopologyCleanup {
    fn drop(&mut self) {
        let names = self.0.clone();
        // After a failed assertion the test's runtime is unwinding: use a runtime of
        // our own, on a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(delete_topology(&names));
        })
        .join();
    }
}

async fn delete_topology(names: &TopologyNames) {
    let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for queue in [
        &names.unrouted,
        &names.incoming_queue,
        &names.dead_letter_queue,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        &names.unrouted,
        &names.outgoing_exchange,
        &names.incoming_exchange,
        &names.dead_letter_exchange,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "cleanup".into()).await;
}
