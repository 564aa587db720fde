//! The three-node cluster the node-loss tests run on forms, and keeps a
//! quorum queue's messages when the node it was declared through is lost:
//! what those tests, and the bridge on a cluster, rely on.

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use xbridge_test_support::{PrivateCluster, CLUSTER_SIZE, PATIENCE};

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("a connection to a cluster node: {e}"))
}

#[tokio::test]
async fn a_quorum_queue_outlives_the_node_it_was_declared_on() {
    let cluster = PrivateCluster::started().await;
    let running = cluster.running_nodes().await;
    assert_eq!(running.len(), CLUSTER_SIZE, "{running:?}");
    for n in 0..CLUSTER_SIZE {
        assert!(
            running.iter().any(|r| r == cluster.node_name(n)),
            "{} runs in {running:?}",
            cluster.node_name(n)
        );
    }

    let queue = "cluster-test";
    let first = connect(&cluster.amqp_url(0)).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    first
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("a quorum queue declared through node 1");
    // RabbitMQ's default, which the bridge's queues rely on: a member on
    // every node.
    assert_eq!(cluster.quorum_members(0, queue).await, CLUSTER_SIZE);

    cluster.stop_app(0).await;
    assert_eq!(cluster.running_nodes().await.len(), CLUSTER_SIZE - 1);

    // Confirmed by the two members left: a quorum of three.
    let second = connect(&cluster.amqp_url(1)).await;
    let publisher = second.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = publisher
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"kept",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("a publish through node 2")
        .await
        .expect("its confirm");
    assert!(
        confirm.is_ack(),
        "node 2 confirmed the message: {confirm:?}"
    );

    let third = connect(&cluster.amqp_url(2)).await;
    let mut consumer = third
        .create_channel()
        .await
        .unwrap()
        .basic_consume(
            queue.into(),
            "cluster-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("a consumer through node 3");
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("the message within PATIENCE")
        .expect("a delivery")
        .expect("not an error");
    assert_eq!(delivery.data, b"kept");
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    cluster.start_app(0).await;
    assert_eq!(cluster.running_nodes().await.len(), CLUSTER_SIZE);
}
