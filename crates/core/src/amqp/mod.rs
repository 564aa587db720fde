//! The AMQP plumbing both directions share: connecting, declaring the
//! topology, publishing with confirms, and the failure headers of parked and
//! dead-lettered replies.

pub mod dead_letters;
mod headers;
mod publisher;
mod topology;
pub mod wire;

pub use headers::{
    Applied, DroppedHeader, FailureHeaders, HEADER_PREFIX, MAX_DETAIL_BYTES, MAX_DROPPED_BYTES,
    MAX_NAME_BYTES,
};
pub use publisher::{PublishError, Publisher, MIN_FRAME_MAX};
pub use topology::{declare_poll_lease_queue, declare_topology, TopologyPlan};

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// Why the broker could not be reached. The AMQP URL (which holds a password)
/// is never part of the message.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to RabbitMQ: {0}")]
pub struct ConnectError(String);

/// Opens a connection named after this process, so operators can tell the
/// bridge's connections apart in the management UI.
pub async fn connect(
    url: &SecretString,
    connection_name: &str,
) -> Result<Connection, ConnectError> {
    let properties =
        ConnectionProperties::default().with_connection_name(connection_name.to_owned().into());
    Connection::connect(url.expose_secret(), properties)
        .await
        .map_err(|e| ConnectError(redact(&e.to_string(), url.expose_secret())))
}

/// The pause schedule between reconnection attempts: from 200 ms, doubling
/// with jitter, up to 15 s, forever (the broker will come back).
pub fn reconnect_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(15))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long a close waits for the broker's answer.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes each of `channels` still open, before the caller closes their
/// connection with [`close`]. Callers keep a handle to every channel they
/// opened until then, because lapin closes a channel whose last handle is
/// dropped in the background: when that happens just before the connection
/// closes, the background close finds the connection closing and lapin logs it
/// as a connection `ERROR` ("invalid channel state: Closing") on an otherwise
/// clean stop. A channel closed here is closed; dropping it later does nothing.
pub async fn close_channels(channels: &[lapin::Channel]) {
    for channel in channels.iter().filter(|c| c.status().connected()) {
        match tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "closing".into())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing a RabbitMQ channel"),
            Err(_) => tracing::debug!("RabbitMQ did not confirm closing a channel in time"),
        }
    }
}

/// Closes `connection`, but never waits long for a broker that is gone:
/// unacknowledged deliveries are requeued by the broker either way. Close the
/// channels you hold first ([`close_channels`]).
pub async fn close(connection: &Connection, code: u16, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, connection.close(code, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing the RabbitMQ connection"),
        Err(_) => tracing::warn!("RabbitMQ did not confirm closing the connection in time"),
    }
}

/// Removes the URL, and its password on its own, from an error text.
fn redact(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<amqp url>");
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
            text = text.replace(password, "<password>");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_password() {
        let text = super::redact(
            "failed amqp://u:pw123@host/%2f and pw123",
            "amqp://u:pw123@host/%2f",
        );
        assert!(!text.contains("pw123"), "{text}");
    }
}
