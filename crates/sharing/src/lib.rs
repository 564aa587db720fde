//! Fair sharing of the channels between replicas.
//!
//! Replicas of one bridge share a PostgreSQL state store, and only that: each
//! keeps a row there alive with its heartbeat ([`membership`]), and from the
//! live replicas and the channels served every replica computes the same
//! assignment ([`assignment`]): about `channels / replicas` each, the polled
//! ones spread as evenly. A replica serves a channel (consumes its reply
//! queue, polls it) only while it holds the channel in the store, and lets a
//! channel go only once its reply consumer has stopped and handed back what
//! it had not settled; the next holder takes it only then, or once the old
//! holder's heartbeat expired. So a planned move keeps each conversation's
//! order, and the reply queues' single active consumer and the send fence
//! (the owner epoch) stay as the guard for what a lost replica left.
//!
//! [`Shares`] is what the two directions read: the channels this replica
//! serves now, and a watch to follow it.

#![warn(missing_docs)]

pub mod assignment;
pub mod membership;
mod shares;

pub use membership::{replica_id, Membership, MembershipSettings};
pub use shares::Shares;
