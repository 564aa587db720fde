//! What both directions of xbridge share: the contract with the CRM and the configuration.
//!
//! - [`contract`]: the message contract with the CRM, a folder with one file per
//!   document of `docs/schemas/`: from the CRM the reply (`reply.rs`,
//!   `reply_attachment.rs`); to the CRM the reply's status (`status.rs`, `reason.rs`),
//!   the channel's state (`channel_state.rs`) and the DM events (`direct_message.rs`,
//!   `inbound_event.rs`, and `event_to_crm.rs`, their envelope on the incoming exchange);
//!   the control commands that manage channels, and their answers (`control/`).
//! - [`channel_state`], [`channel_identity`]: every channel's state, tracked and
//!   broadcast to the CRM, and the account's X user id, learnt or configured.
//! - [`live_channels`]: the channels served right now (the file's and the CRM's), a
//!   watched map both directions bring what they run in line with.
//! - [`config`]: the configuration, a folder with one file per section:
//!   - `config/mod.rs`: the loader ([`config::Settings::load`], `from_toml`, the
//!     `XBRIDGE_…` environment overrides), [`config::ConfigError`] and the warnings;
//!   - `amqp.rs` (`[amqp]`, topology names), `x.rs` (`[x]`, and the X client's
//!     configuration built from it), `outbound.rs` (retry, credits, reply bound),
//!     `outbound_media.rs` (reply downloads, host patterns), `inbound.rs` (webhook
//!     server, pollers), `inbound_media.rs` (the media proxy), `state.rs`,
//!     `telemetry.rs`, `http.rs` and `channels.rs` (`[[channels]]`, their X
//!     credentials): each with its raw form, defaults, validation and tests.
//! - [`secret`]: secrets given inline, by environment variable or by file.
//! - [`server`]: the HTTP serving with its timeouts and limits (`mod.rs` accepts within the
//!   connection cap, `connection.rs` serves and drains each connection, `accept.rs` failed
//!   accepts, `open_files.rs` the open-files limit); [`telemetry`]: logging;
//!   [`metrics_catalog`]: the metrics and their help.
//! - [`excerpt`]: bounded quotes of outside input (from `xbridge-x-api`, the leaf crate).
//!
//! The AMQP plumbing (connecting, the reconnecting session, topology, publishing, the
//! failure headers) is the `xbridge-amqp` crate, which depends on this one for `[amqp]`.

#![warn(missing_docs)]

pub mod channel_identity;
pub mod channel_state;
pub mod config;
pub mod contract;
pub mod live_channels;
pub mod metrics_catalog;
pub mod oauth2_held;
pub mod oauth2_tokens;
mod oauth2_unsaved;
pub mod secret;
pub mod server;
pub mod telemetry;

/// Bounded quotes of outside input; they live in the X client, which depends on
/// nothing of ours, and are re-exported here for the rest of the bridge.
pub use xbridge_x_api::excerpt;

#[cfg(test)]
mod control_properties;
#[cfg(test)]
mod properties;
