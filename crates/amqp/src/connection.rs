//! One connection to RabbitMQ: opening it (the URL and its password kept out of every
//! error), watching it fail, and closing it and its channels without hanging on a broker
//! that is gone.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use xbridge_core::config::BrokerAddress;

/// Why the broker could not be reached. The AMQP URL (which holds a password)
/// is never part of it: the detail is lapin's text with the URL and the password
/// taken out ([`Redacted`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker answered and said no: wrong credentials, an unknown vhost, no
    /// permission, an AMQP version it does not speak. Another attempt succeeds
    /// only once its configuration (or ours) changes; the supervisor still
    /// retries it like the other, because a broker's users and vhosts are often
    /// created after the bridge starts (definitions loaded late).
    #[error("cannot connect to RabbitMQ: {0}")]
    Refused(Redacted),
    /// No broker answered: DNS, TCP, TLS, an unusable URL, or a connection
    /// that broke while it was being opened. The broker may come back.
    #[error("cannot connect to RabbitMQ: {0}")]
    Unreachable(Redacted),
}

impl ConnectError {
    /// A node that did not complete the handshake within `timeout`.
    pub(crate) fn timed_out(timeout: Duration) -> ConnectError {
        ConnectError::Unreachable(Redacted(format!("no answer within {timeout:?}")))
    }

    fn new(error: &lapin::Error, url: &str) -> ConnectError {
        use lapin::ErrorKind;
        let detail = Redacted(redact(&error.to_string(), url));
        match error.kind() {
            ErrorKind::ProtocolError(_)
            | ErrorKind::AuthProviderError(_)
            | ErrorKind::InvalidProtocolVersion(_) => ConnectError::Refused(detail),
            _ => ConnectError::Unreachable(detail),
        }
    }
}

/// An error text with the AMQP URL and its password taken out; made only here,
/// so an error that carries one cannot leak a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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
        .map_err(|e| ConnectError::new(&e, url.expose_secret()))
}

/// How long connecting to one of several nodes may take before the next is
/// tried: a TCP and AMQP handshake with a live node takes milliseconds, and a
/// node that takes no packets would otherwise hold the connection up until
/// the system's TCP timeout, minutes.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to the first of `brokers` that takes the connection, starting
/// with the one at `first` and going round once; returns the connection and
/// the index of its node, or the last node's error when none did. Logs the
/// node (`host:port`, never the URL) connected to, and each that refused
/// when there are several.
pub async fn connect_any(
    brokers: &[BrokerAddress],
    first: usize,
    connection_name: &str,
) -> Result<(Connection, usize), ConnectError> {
    let count = brokers.len();
    let mut last = ConnectError::Unreachable(Redacted("no RabbitMQ node configured".into()));
    for at in (0..count).map(|k| (first + k) % count) {
        let broker = &brokers[at];
        let attempt = connect(&broker.url, connection_name);
        let result = if count > 1 {
            tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| Err(ConnectError::timed_out(NODE_CONNECT_TIMEOUT)))
        } else {
            attempt.await
        };
        match result {
            Ok(connection) => {
                tracing::info!(connection = connection_name, node = %broker.node, "connected to RabbitMQ");
                return Ok((connection, at));
            }
            Err(error) => {
                if count > 1 {
                    tracing::info!(
                        connection = connection_name,
                        node = %broker.node,
                        error = %error,
                        "RabbitMQ node did not take the connection; trying the next"
                    );
                }
                last = error;
            }
        }
    }
    Err(last)
}

/// Why a connection that was up is no longer usable.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionLost {
    /// lapin reported an error on it (a broker closing one of its channels
    /// reports one too).
    #[error(transparent)]
    Error(lapin::Error),
    /// It closed (the broker closed it, or its events ended).
    #[error("the connection closed")]
    Closed,
}

/// How often a connection's state is looked at, for closes that come without
/// an error event (the broker closing it, for one).
const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until `connection` fails: `events` (its `events_listener`, taken
/// when it was opened) reports an error, or its state is no longer connected.
/// What a session with nothing of its own to fail (no consumer, no publish)
/// watches to learn that its connection is gone.
pub async fn connection_lost(
    connection: &Connection,
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> ConnectionLost {
    use futures::StreamExt as _;
    let mut check = tokio::time::interval(CONNECTION_CHECK_INTERVAL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => return ConnectionLost::Error(error),
                Some(_) => {}
                None => return ConnectionLost::Closed,
            },
            _ = check.tick() => {
                if !connection.status().connected() {
                    return ConnectionLost::Closed;
                }
            }
        }
    }
}

/// How long a close waits for the broker's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
///
/// The password goes in both forms: as written in the URL (percent-encoded) and
/// decoded, as a library that parsed the URL would quote it (`p%40ss` is `p@ss`).
fn redact(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<amqp url>");
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
            let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
            text = text.replace(password, "<password>");
            if !decoded.is_empty() {
                text = text.replace(decoded.as_ref(), "<password>");
            }
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

    #[test]
    fn redact_hides_the_decoded_password_too() {
        let text = super::redact(
            "authentication failed for u with p@ss:w/rd (encoded p%40ss%3Aw%2Frd)",
            "amqp://u:p%40ss%3Aw%2Frd@host/%2f",
        );
        assert!(!text.contains("p@ss:w/rd"), "{text}");
        assert!(!text.contains("p%40ss%3Aw%2Frd"), "{text}");
    }
}
