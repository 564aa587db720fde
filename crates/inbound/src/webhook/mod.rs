//! X's webhook: the HTTP endpoint X delivers a channel's events to, and what keeps it
//! registered and valid.
//!
//! - [`server`]: the endpoint ([`server::router`]): answers the CRC, checks signatures,
//!   routes each body to its account's channel, hands the events to
//!   [`delivery`](crate::delivery) and answers 200 only once all are confirmed.
//! - [`auth`]: the CRC answer and the signature check, in constant time.
//! - `body`: the memory budget for bodies being read, and the size limit.
//! - `routing`: which channel a body is for (one App's webhook carries all its accounts).
//! - [`identity`]: learns the channels' X accounts from X, for the routing.
//! - [`watch`]: keeps each App's webhook registered and valid, revalidating when X
//!   stopped trusting it.
//! - [`crc_self_check`]: asks the bridge's own endpoint for a CRC answer before asking X
//!   to revalidate.

pub mod auth;
mod body;
pub mod crc_self_check;
pub mod identity;
mod routing;
pub mod server;
pub mod watch;
