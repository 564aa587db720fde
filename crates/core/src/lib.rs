//! What both directions of xbridge share: the message contract with the CRM
//! ([`model`]), the configuration ([`config`], [`secret`]), the AMQP plumbing
//! ([`amqp`]), the HTTP serving with its timeouts and limits ([`server`]),
//! logging ([`telemetry`]), the metrics and their help ([`metrics_catalog`]) and
//! bounded quotes of outside input ([`excerpt`]).

#![warn(missing_docs)]

pub mod amqp;
pub mod channel_identity;
pub mod channel_state;
pub mod config;
pub mod metrics_catalog;
pub mod model;
pub mod secret;
pub mod server;
pub mod telemetry;

/// Bounded quotes of outside input; they live in the X client, which depends on
/// nothing of ours, and are re-exported here for the rest of the bridge.
pub use xbridge_x_api::excerpt;

#[cfg(test)]
mod properties;
