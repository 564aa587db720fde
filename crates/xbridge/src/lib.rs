//! The `xbridge` command: `run` the bridge from a configuration file, or run
//! a self-contained `demo` against the built-in X simulator. The logic lives
//! in the library crates; this crate only wires them together.
//!
//! The demo, and with it the simulator, is the default feature `demo`: the
//! production image builds without it (`--no-default-features`), so no fake
//! X ships where a real one is meant.

#![warn(missing_docs)]

pub mod app;
pub mod channel_lookup;
pub mod channels_cmd;
pub mod check_cmd;
pub mod cli;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dlq_cmd;
pub mod oauth2_cmd;
pub mod ops;
pub mod output;
pub mod reload;
pub mod signals;
pub mod webhook_cmd;
