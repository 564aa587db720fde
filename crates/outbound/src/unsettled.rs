//! Why a delivery was left unacknowledged: the one error of the reply path,
//! after which the channel's consumer reconnects and RabbitMQ delivers the
//! reply again.

use xbridge_amqp::PublishError;
use xbridge_store::StoreError;

/// Why a delivery was left unacknowledged (it will be redelivered).
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    /// Shutdown or a lost connection interrupted a wait.
    #[error("interrupted")]
    Interrupted,
    /// The broker did not confirm a publish or an ack.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The broker connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The state store failed before anything was sent: the lane waits for
    /// the store and takes the reply again (see `store_outage`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another consumer claimed the channel since this one did (see
    /// [`crate::fence`]): the reply is the new owner's, nothing was sent.
    #[error("another consumer owns the channel's replies now")]
    Fenced,
    /// Settling a sent reply panicked (a bug); its delivery comes back after
    /// the reconnect, and the send's records keep it from going out twice.
    #[error("settling a sent reply panicked: {0}")]
    Panicked(String),
}
