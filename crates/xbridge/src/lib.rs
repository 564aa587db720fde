//! The `xbridge` command: `run` the bridge from a configuration file, or run
//! a self-contained `demo` against the built-in X simulator. The logic lives
//! in the library crates; this crate only wires them together.

#![warn(missing_docs)]

pub mod app;
pub mod check_cmd;
pub mod cli;
pub mod demo;
pub mod dlq_cmd;
pub mod ops;
pub mod output;
pub mod signals;
pub mod webhook_cmd;
