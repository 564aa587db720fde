//! The outbound side of xbridge: replies the CRM publishes become X Direct
//! Messages, each sent at most once, in order per conversation, with its
//! outcome reported back to the CRM.
//!
//! - [`service`]: connection, topology, one consumer per channel, reconnects
//!   and graceful shutdown.
//! - [`worker`]: one channel's consumer and the life of a single reply.
//! - [`fate`]: the pure decision of what a failure means.
//! - [`credits`]: the per-channel pause while an account has no credits.
//! - [`ordering`]: conversation order while replies are parked.
//! - [`report`]: status events, parking and dead letters.
//! - [`media`]: a reply's attachments made local bytes, downloaded safely.
//! - [`store_outage`]: replies while the state store cannot write.

#![warn(missing_docs)]

pub mod credits;
pub mod failpoints;
pub mod fate;
pub mod media;
pub mod ordering;
pub mod parts;
#[cfg(test)]
mod properties;
pub mod reconcile;
pub mod report;
pub mod service;
pub mod state_sync;
pub mod store_outage;
mod unrouted;
pub mod worker;

pub use service::Outbound;

/// Why the outbound side could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// A channel's X client could not be built.
    #[error("channel {channel}: cannot build the X client: {detail}")]
    Client {
        /// The channel.
        channel: String,
        /// What failed.
        detail: String,
    },
    /// The attachment downloader could not be built.
    #[error("cannot set up attachment downloads: {0}")]
    Media(#[from] media::FetcherInitError),
}
