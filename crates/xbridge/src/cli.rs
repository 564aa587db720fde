//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// xbridge: X Direct Messages <-> your CRM over RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "xbridge", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge with a configuration file (environment overrides:
    /// XBRIDGE_<SECTION>__<KEY>).
    Run {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Run a self-contained demo: the built-in X simulator, the bridge and a
    /// reply published the way a CRM would, against the local RabbitMQ.
    Demo {
        /// AMQP URL of the RabbitMQ to use.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// Keep the bridge and simulator running after the demo reply, to
        /// publish your own.
        #[arg(long)]
        keep_running: bool,
    },
    /// Validate a configuration file and print what it configures (no
    /// secrets), without connecting anywhere.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
    },
}
