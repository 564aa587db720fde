//! Publishing that the bridge can rely on: persistent, `mandatory` and
//! confirmed by the broker before the caller moves on (and acks what it
//! consumed), and never a frame the broker would close the connection for.

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::wire;

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

    /// The properties of a message someone else published, as the bridge may
    /// publish them again (parking, dead-lettering, replaying): the same, but
    /// without `user_id`.
    ///
    /// RabbitMQ validates `user_id` against the user of the connection that
    /// publishes the message and closes the channel (`PRECONDITION_FAILED`)
    /// when they differ. The CRM publishes as its own user, not the bridge's,
    /// so a reply that carried its (valid) `user_id` closed the bridge's
    /// publishing channel on its first park or dead letter: the session
    /// ended, the reply came back and did it again, and no channel sent
    /// anything. The other properties need nothing of the publisher, and
    /// RabbitMQ already accepted them once.
    pub fn republishable(properties: &BasicProperties) -> BasicProperties {
        let mut out = BasicProperties::default();
        macro_rules! carry {
            ($($get:ident => $set:ident),* $(,)?) => {
                $(if let Some(value) = properties.$get() {
                    out = out.$set(value.clone());
                })*
            };
        }
        carry!(
            content_type => with_content_type,
            content_encoding => with_content_encoding,
            headers => with_headers,
            delivery_mode => with_delivery_mode,
            priority => with_priority,
            correlation_id => with_correlation_id,
            reply_to => with_reply_to,
            expiration => with_expiration,
            message_id => with_message_id,
            timestamp => with_timestamp,
            kind => with_type,
            app_id => with_app_id,
            cluster_id => with_cluster_id,
        );
        out
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
        let exchange_name = short_field(exchange, "the exchange name")?;
        let key = short_field(routing_key, "the routing key")?;
        let properties = Publisher::complete(properties);
        self.check_frame(exchange, routing_key, &properties)?;
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
        confirmed(confirmation, exchange, routing_key)
    }

    /// Refuses properties whose content-header frame would exceed
    /// `frame_max`: the broker would close the whole connection for it.
    fn check_frame(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
    ) -> Result<(), PublishError> {
        let size = wire::header_frame_len(properties);
        if size <= self.frame_max {
            return Ok(());
        }
        tracing::warn!(
            exchange,
            routing_key,
            size,
            frame_max = self.frame_max,
            "a message's properties do not fit in one AMQP frame; not published"
        );
        Err(PublishError::FrameTooLarge {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            size,
            frame_max: self.frame_max,
        })
    }
}

/// `value` as an AMQP short string, or the error naming `field`: a name over
/// 255 bytes would make the broker close the connection.
fn short_field(value: &str, field: &'static str) -> Result<ShortString, PublishError> {
    wire::short_string(value).ok_or(PublishError::FieldTooLong {
        field,
        len: value.len(),
    })
}

/// The broker's answer to a mandatory publish as our result: only a plain
/// ack means the message is queued.
fn confirmed(
    confirmation: Confirmation,
    exchange: &str,
    routing_key: &str,
) -> Result<(), PublishError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, LongString};

    #[test]
    fn a_republished_message_keeps_every_property_but_the_publishers_user_id() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-crm-trace".into(),
            AMQPValue::LongString(LongString::from("t-1")),
        );
        let crm = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c-1".into())
            .with_reply_to("crm.replies".into())
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_767_225_600)
            .with_type("reply".into())
            .with_user_id("crm".into())
            .with_app_id("crm-app".into())
            .with_cluster_id("c".into());

        let again = Publisher::republishable(&crm);
        assert_eq!(
            again.user_id(),
            &None,
            "RabbitMQ would refuse it from our user"
        );
        assert_eq!(
            again.clone().with_user_id("crm".into()),
            crm,
            "nothing else changed"
        );
        assert_eq!(
            Publisher::republishable(&BasicProperties::default()),
            BasicProperties::default()
        );
    }
}
