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
pub mod excerpt;
pub mod metrics_catalog;
pub mod model;
pub mod secret;
pub mod server;
pub mod telemetry;

#[cfg(test)]
mod properties;
