//! The publisher against the real RabbitMQ: a message whose properties make a
//! frame of exactly `frame_max` goes through, and one byte more is refused
//! before it is sent, so the broker never closes the connection for it.

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use xbridge_amqp::{connect, wire, PublishError, Publisher};

fn amqp_url() -> secrecy::SecretString {
    std::env::var("XBRIDGE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
        .into()
}

fn padded(len: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "pad".into(),
        AMQPValue::LongString(LongString::from(vec![b'x'; len])),
    );
    Publisher::complete(BasicProperties::default().with_headers(headers))
}

#[tokio::test]
async fn a_frame_of_frame_max_is_published_and_a_byte_more_is_refused_on_a_live_connection() {
    let connection = connect(&amqp_url(), "xbridge core test").await.unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    let queue = publisher
        .channel()
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = queue.name().as_str().to_owned();
    let frame_max = publisher.frame_max();
    assert_eq!(frame_max, 131_072, "RabbitMQ's default frame_max");
    let fits = frame_max - wire::header_frame_len(&padded(0));
    assert_eq!(wire::header_frame_len(&padded(fits)), frame_max);

    // Exactly frame_max: RabbitMQ takes it (and hands it back).
    publisher
        .publish("", &queue, b"{}", padded(fits))
        .await
        .expect("a frame of exactly frame_max is published");
    let got = publisher
        .channel()
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is in the queue");
    let pad = got.delivery.properties.headers().as_ref().unwrap().inner()["pad"].clone();
    assert!(matches!(pad, AMQPValue::LongString(s) if s.as_bytes().len() == fits));

    // One byte more: refused here, typed, and the connection carries on.
    let error = publisher
        .publish("", &queue, b"{}", padded(fits + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PublishError::FrameTooLarge { size, .. } if size == frame_max + 1),
        "{error:?}"
    );
    assert!(error.is_refused_locally());
    assert!(connection.status().connected());
    publisher
        .publish("", &queue, b"{}", BasicProperties::default())
        .await
        .expect("the connection still publishes");

    // A routing key over 255 bytes is refused too, instead of a panic.
    let error = publisher
        .publish("", &"k".repeat(256), b"{}", BasicProperties::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, PublishError::FieldTooLong { len: 256, .. }),
        "{error:?}"
    );
    assert!(connection.status().connected());
    xbridge_amqp::close(&connection, 200, "test done").await;
}
