//! X's body formats: what a webhook body or a `GET /2/dm_events` page says, read into
//! [`InboundItem`](item::InboundItem)s without touching the network, the store or the
//! broker. Everything else in the crate works on these types.
//!
//! - [`webhook_body`]: an Account Activity or X Activity webhook body.
//! - [`dm_events`]: a `GET /2/dm_events` page, with its `next_token`.
//! - [`item`]: one event of either: a DM, typing, a read receipt, or ignored (with why).
//! - [`sender`]: the sender and its profile, as far as the body tells it.
//! - [`attachment`]: a DM's media attachment, in either of X's shapes.
//!
//! What they read into, the DM with its sender and media, typing and read receipts, is
//! the contract's (`xbridge_core::contract`), since those are what the CRM receives.
//! - [`text`]: taking the attachment's t.co link out of the DM's text.
//! - [`json`]: the JSON readers the formats share (ids as strings of digits).
//! - [`error`]: [`PayloadError`](error::PayloadError), a body that is not X's.

pub mod attachment;
pub mod dm_events;
pub mod error;
pub mod item;
pub mod json;
pub mod sender;
pub mod text;
pub mod webhook_body;
