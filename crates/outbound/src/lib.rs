//! The outbound side of xbridge: replies the CRM publishes become X Direct
//! Messages, each sent at most once, in order per conversation, with its
//! outcome reported back to the CRM.
//!
//! - [`service`]: the [`Outbound`] `xbridge run` starts: every channel's context, and
//!   the session run under the shared supervisor (`xbridge_amqp::Supervisor`), which
//!   reconnects.
//! - [`session`]: what runs on each connection: the topology, one consumer per channel,
//!   the unrouted one and the channel state reports, following the channels served
//!   (`LiveChannels`) while it runs; the grace period on shutdown;
//!   [`session::SessionError`], why a session ended.
//! - `channel_consumers`: one channel's consumer started and stopped on its own (added,
//!   removed, paused, resumed) while the others run on; consumers share AMQP channels
//!   (`amqp.consumers_per_channel`).
//! - `channel_contexts`: every served channel's context, kept across reconnects, built on
//!   add, given new credentials on change, dropped on removal.
//! - [`context`]: what one channel keeps across reconnects ([`context::ChannelContext`]).
//! - [`worker`]: one channel's consumer, a lane per conversation, and
//!   `process`: what becomes of a reply (a [`settle::Settlement`]).
//! - [`send`]: one delivery's sending of a reply: credits, X's rate limit,
//!   retries in place, until it is sent or must be parked or dead-lettered.
//! - [`settle`]: carrying a settlement out: status events, parking, dead
//!   letters, conversation order and the ack, in one place; a sent reply's
//!   finish beside its lane's next sends.
//! - [`unsettled`]: why a delivery is left unacknowledged (the consumer reconnects).
//! - [`fence`]: each consumer's claim of its channel, which fences an old owner's
//!   sends.
//! - [`parts`]: a reply as the DMs it becomes, each recorded as it goes out.
//! - [`fate`]: the pure decisions of what a failure means for the reply and
//!   for its channel's state.
//! - [`credits`]: the per-channel pause while an account has no credits.
//! - [`ordering`]: conversation order while replies are parked.
//! - [`report`]: publishing status events, parked replies and dead letters.
//! - [`reconcile`]: looking on X for a send the bridge could not record.
//! - [`recent_events`]: the account's DM events as that lookup reads and
//!   matches them, and the last read kept for the channel.
//! - [`store_outage`]: replies while the state store cannot write.
//! - [`unrecorded`]: sends X accepted whose records the store has not taken yet.
//! - [`media`]: a reply's attachments made local bytes, downloaded safely.
//! - [`state_sync`]: channel states published to the CRM.
//! - [`failpoints`]: points where tests can stop the process.
//! - `unrouted`: replies for no configured channel, dead-lettered.

#![warn(missing_docs)]

mod channel_consumers;
mod channel_contexts;
pub mod context;
pub mod credits;
pub mod failpoints;
pub mod fate;
pub mod fence;
pub mod media;
pub mod ordering;
pub mod parts;
#[cfg(test)]
mod properties;
pub mod recent_events;
pub mod reconcile;
mod refused_channels;
pub mod report;
pub mod send;
pub mod service;
pub mod session;
pub mod settle;
pub mod state_sync;
pub mod store_outage;
pub mod unrecorded;
mod unrouted;
pub mod unsettled;
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
