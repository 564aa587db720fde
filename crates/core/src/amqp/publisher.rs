//! Publishing that the bridge can rely on: persistent, `mandatory` and
//! confirmed by the broker before the caller moves on (and acks what it
//! consumed).

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

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
    /// The channel or connection failed before the confirm arrived.
    #[error("publish failed: {0}")]
    Broker(#[from] lapin::Error),
}

/// A confirm-mode channel for publishing. Cheap to clone; many tasks may
/// publish concurrently and each waits for its own confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> lapin::Result<Publisher> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// The underlying channel (for declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `body` persistently and mandatorily and waits for the
    /// broker's confirm. `properties` are completed with delivery mode 2, a
    /// timestamp and `app_id` when the caller did not set them.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
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
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
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
