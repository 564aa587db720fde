//! Replies published under a routing key that names no configured channel:
//! the outgoing exchange's alternate exchange collects them, and this
//! consumer dead-letters each as `unknown_channel` instead of losing it.

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::Consumer;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::FailureHeaders;
use xbridge_core::contract::FailureReason;

use crate::report::{Failure, Reporter};
use crate::unsettled::Unsettled;

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
        let message_id = reportable_id(&channel, &delivery.data);
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

/// The reply's id, when the CRM can be told about it: the body names one (best effort,
/// read without parsing the rest: the body may be as large as RabbitMQ allows) and the `message.failed` event for it fits AMQP's short strings. Its routing key
/// (`<routing key>.message.failed`) and message id (`<routing key>:<id>:failed`) are
/// built from the CRM's routing key, which may be up to 255 bytes itself; publishing
/// either past 255 bytes panics in the AMQP client. Such a reply is still dead-lettered.
pub(crate) fn reportable_id(routing_key: &str, body: &[u8]) -> Option<String> {
    const SHORT_STRING: usize = 255;
    let id = xbridge_core::contract::scan_message_id(body)?;
    let fits = routing_key.len() + ".message.failed".len() <= SHORT_STRING
        && routing_key.len() + id.len() + "::failed".len() <= SHORT_STRING;
    fits.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while sweeping the input paths: a reply under a 250-byte routing key that
    /// names no channel made the status event's ids longer than AMQP's short strings,
    /// and building them for the publish panicked (`ShortString::from`).
    #[test]
    fn a_reply_under_a_long_routing_key_is_not_reported() {
        let key = "k".repeat(250);
        assert_eq!(reportable_id(&key, br#"{"message_id":"m"}"#), None);
        assert_eq!(
            reportable_id("acme", br#"{"message_id":"m"}"#).as_deref(),
            Some("m")
        );
    }
}
