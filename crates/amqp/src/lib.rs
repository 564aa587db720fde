//! The AMQP plumbing both directions of xbridge share, on lapin.
//!
//! - [`session`]: the reconnecting session supervisor both directions run
//!   ([`Supervisor`], [`Session`]), the pauses between attempts, and the setup every
//!   session starts with (a publisher on a declared topology).
//! - `connection.rs`: opening a connection (its URL never in an error, [`ConnectError`]),
//!   watching it fail ([`connection_lost`]), closing it and its channels without hanging.
//! - `topology.rs`: the exchanges and queues `[amqp]` names, declared ([`TopologyPlan`]).
//! - `publisher.rs`: publishing with confirms, within the connection's `frame_max`.
//! - `headers.rs`: the `x-xbridge-*` failure headers of parked and dead-lettered messages;
//!   [`wire`]: AMQP's encoded sizes and bounded texts, for those headers and frames.
//! - [`dead_letters`]: reading, replaying and removing dead letters (`xbridge dlq`).

#![warn(missing_docs)]

mod connection;
pub mod dead_letters;
mod headers;
mod publisher;
pub mod session;
mod topology;
pub mod wire;

pub use connection::{
    close, close_channels, connect, connect_any, connection_lost, ConnectError, ConnectionLost,
    Redacted,
};
pub use headers::{
    Applied, DroppedHeader, FailureHeaders, HEADER_PREFIX, MAX_DETAIL_BYTES, MAX_DROPPED_BYTES,
    MAX_NAME_BYTES,
};
pub use publisher::{PublishError, Publisher, MIN_FRAME_MAX};
pub use session::{
    declare, declare_plan, declared_publisher, open_publisher, reconnect_backoff, Session,
    SessionLog, SetupError, Supervisor,
};
pub use topology::{
    bind, declare_exchange, declare_poll_lease_queue, declare_reply_queue, declare_reply_queues,
    declare_topology, in_flight, TopologyPlan, DECLARES_IN_FLIGHT,
};

#[cfg(test)]
mod properties;
