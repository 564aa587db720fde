//! Publishing that the bridge can rely on: persistent, `mandatory` and
//! confirmed by the broker before the caller moves on (and acks what it
//! consumed), and never a frame the broker would close the connection for.

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::wire;

/// The smallest `frame_max` the bridge works with: a republished reply needs
/// room for its AMQP properties (up to about 3.6 KiB), the bridge's bounded
/// `x-xbridge-*` headers (about 5 KiB at most) and the room kept for what
/// RabbitMQ adds on the way back. RabbitMQ's default is 131,072.
pub const MIN_FRAME_MAX: usize = 16 * 1024;

/// Why a publish is not known to be safe in the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker could not route it (no queue bound): it was returned.
    #[error("the broker returned the message as unroutable ({exchange} / {routing_key})")]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// The broker refused it (e.g. a full queue with reject-publish).
    #[error("the broker refused the message (nack) on {exchange} / {routing_key}")]
    Nacked {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// Not sent: the message's properties (its headers, mostly) make a
    /// content-header frame larger than the connection's `frame_max`, and
    /// RabbitMQ closes the whole connection (every channel's consumer with
    /// it) for such a frame. The same message fails the same way every time.
    #[error("not published to {exchange} / {routing_key}: its properties make a {size}-byte frame, over the connection's frame_max of {frame_max} bytes")]
    FrameTooLarge {
        /// Exchange it was for.
        exchange: String,
        /// Routing key it was for.
        routing_key: String,
        /// The content-header frame's size, as lapin would encode it.
        size: usize,
        /// The negotiated `frame_max`.
        frame_max: usize,
    },
    /// Not sent: a value AMQP carries as a short string (exchange, routing
    /// key, `message_id`, …) is over 255 bytes. The same message fails the
    /// same way every time.
    #[error("not published: {field} is {len} bytes, over AMQP's limit of 255 for it")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The channel or connection failed before the confirm arrived.
    #[error("publish failed: {0}")]
    Broker(#[from] lapin::Error),
}

impl PublishError {
    /// True when the message itself cannot be published as it is, so trying
    /// it again is pointless: the caller must change it (or give it up), and
    /// the connection is fine.
    pub fn is_refused_locally(&self) -> bool {
        matches!(
            self,
            PublishError::FrameTooLarge { .. } | PublishError::FieldTooLong { .. }
        )
    }
}

/// A confirm-mode channel for publishing. Cheap to clone; many tasks may
/// publish concurrently and each waits for its own confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// The connection's negotiated `frame_max` (fixed once connected).
    frame_max: usize,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> lapin::Result<Publisher> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // lapin stores "no limit" (0) as u32::MAX.
        let frame_max =
            usize::try_from(connection.configuration().frame_max()).unwrap_or(usize::MAX);
        Ok(Publisher { channel, frame_max })
    }

    /// The underlying channel (for declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The connection's negotiated `frame_max` in bytes: no message's
    /// properties may take a larger content-header frame.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// `properties` as [`Publisher::publish`] sends them: with delivery mode
    /// 2, and a timestamp, `app_id` and a headers table when the caller did
    /// not set them.
    pub fn complete(properties: BasicProperties) -> BasicProperties {
        let mut properties = properties.with_delivery_mode(2);
        if properties.timestamp().is_none() {
            properties = properties.with_timestamp(Utc::now().timestamp().max(0) as u64);
        }
        if properties.app_id().is_none() {
            properties = properties.with_app_id("xbridge".into());
        }
        if properties.headers().is_none() {
            properties = properties.with_headers(FieldTable::default());
        }
        properties
    }

    /// How many bytes the headers table of a message with `properties` (as
    /// [`Publisher::complete`] makes them; their own headers do not count)
    /// may take so that its content-header frame fits in `frame_max`.
    pub fn headers_room(&self, properties: &BasicProperties) -> usize {
        let without_headers = properties.clone().with_headers(FieldTable::default());
        (self.frame_max.saturating_add(wire::EMPTY_TABLE_LEN))
            .saturating_sub(wire::header_frame_len(&without_headers))
    }

    /// Publishes `body` persistently and mandatorily and waits for the
    /// broker's confirm. `properties` are completed as in
    /// [`Publisher::complete`].
    ///
    /// Refuses locally, without sending anything, what the broker would kill
    /// the connection for: a content-header frame over `frame_max`
    /// ([`PublishError::FrameTooLarge`]) or an exchange or routing key over
    /// 255 bytes ([`PublishError::FieldTooLong`]).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let exchange_name = wire::short_string(exchange).ok_or(PublishError::FieldTooLong {
            field: "the exchange name",
            len: exchange.len(),
        })?;
        let key = wire::short_string(routing_key).ok_or(PublishError::FieldTooLong {
            field: "the routing key",
            len: routing_key.len(),
        })?;
        let properties = Publisher::complete(properties);
        let size = wire::header_frame_len(&properties);
        if size > self.frame_max {
            tracing::warn!(
                exchange,
                routing_key,
                size,
                frame_max = self.frame_max,
                "a message's properties do not fit in one AMQP frame; not published"
            );
            return Err(PublishError::FrameTooLarge {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                size,
                frame_max: self.frame_max,
            });
        }
        let confirmation = self
            .channel
            .basic_publish(
                exchange_name,
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
            // Confirm mode is set in `open`, so this means the channel was
            // replaced under us: treat it as not confirmed.
            Confirmation::NotRequested => Err(PublishError::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
        }
    }
}
