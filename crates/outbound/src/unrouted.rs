//! Replies published under a routing key that names no configured channel:
//! the outgoing exchange's alternate exchange collects them, and this
//! consumer dead-letters each as `unknown_channel` instead of losing it.

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::Consumer;
use tokio_util::sync::CancellationToken;

use xbridge_core::amqp::FailureHeaders;
use xbridge_core::model::FailureReason;

use crate::report::{Failure, Reporter};
use crate::worker::Unsettled;

/// Consumes the unrouted queue until `stop` or a broker failure.
pub async fn consume(
    reporter: Reporter,
    mut consumer: Consumer,
    stop: CancellationToken,
) -> Result<(), Unsettled> {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(Unsettled::Broker(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ))),
            },
        };
        let channel = delivery.routing_key.as_str().to_owned();
        // Best effort: tell the CRM when the body at least names its id (read
        // without parsing the rest: the body may be as large as RabbitMQ allows).
        let message_id = xbridge_core::model::scan_message_id(&delivery.data);
        let failure = Failure::local(
            FailureReason::UnknownChannel,
            format!("no channel named {channel:?} is configured in xbridge; check the routing key or add the channel"),
        );
        let history = FailureHeaders::read(delivery.properties.headers().as_ref());
        reporter
            .dead_letter(
                &delivery,
                &channel,
                message_id.as_deref(),
                &failure,
                history,
            )
            .await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
}
