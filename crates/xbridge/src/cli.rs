//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The redirect URI used when the operator names none: it must be one of the App's
/// callback URLs in X's developer console. Nothing needs to listen there: the operator
/// copies the address the browser was sent to.
pub const DEFAULT_REDIRECT_URI: &str = "http://localhost:8080/callback";

/// What `xbridge --version` prints after the name: the crate version and the
/// commit it was built from (`build.rs`), so a running binary can be traced to
/// its source between releases.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("XBRIDGE_BUILD_COMMIT"),
    ")"
);

/// xbridge: X Direct Messages <-> your CRM over RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "xbridge", version = VERSION, about)]
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
    #[cfg(feature = "demo")]
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
    /// Check each channel against X: who the access token belongs to, DM
    /// permission, credits, the bearer token and the webhook; print the
    /// problem and its fix. Exit status 0 only when every channel is ready.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// Check only this channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Set up X's webhook so X pushes DMs to `xbridge run` instead of being
    /// polled: register it, subscribe channels' accounts, check and revalidate it.
    Webhook {
        /// What to do with the webhook.
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// The channels the running bridge serves: the configuration file's and
    /// the CRM's, with each one's origin and state (never a credential).
    Channels {
        /// What to show.
        #[command(subcommand)]
        command: ChannelsCommand,
    },
    /// OAuth 2.0 channels: authorise one once (the bridge refreshes its grant).
    #[command(name = "oauth2")]
    OAuth2 {
        /// What to do.
        #[command(subcommand)]
        command: OAuth2Command,
    },
    /// Inspect, replay and purge dead-lettered replies (the dead-letter
    /// queue), e.g. after credits were topped up.
    Dlq {
        /// What to do with the dead letters.
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// The `oauth2` subcommands.
#[derive(Debug, Subcommand)]
pub enum OAuth2Command {
    /// Run X's authorization-code flow (PKCE) for an OAuth 2.0 channel: print the URL to
    /// open, read back the redirect (or its code) and store the grant, encrypted, in the
    /// state store, where the bridge's replicas find it.
    Authorize {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel (one with `oauth2_client_id`).
        #[arg(long)]
        channel: String,
        /// The redirect URI: one of the App's callback URLs in X's developer console.
        #[arg(long, default_value = DEFAULT_REDIRECT_URI)]
        redirect_uri: String,
    },
    /// Delete a channel's OAuth 2.0 grant from the state store: for a channel removed
    /// from the config file, whose grant the bridge does not delete by itself (a CRM
    /// channel's goes with `channel.remove`).
    Forget {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel whose grant to delete.
        #[arg(long)]
        channel: String,
    },
}

/// The `channels` subcommands. They ask the running bridge (its operations
/// port, `telemetry.listen`), since the CRM's channels live in it and its
/// store, not in the file.
#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// One line per channel served now: name, origin (`file` or `crm`),
    /// revision, paused, inbound mode, state and account id.
    List {
        /// The TOML configuration file of the running bridge (only its
        /// `[telemetry]` section is read).
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// Print the bridge's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The `dlq` subcommands. Each reads the dead-letter queue (the oldest 10,000
/// letters or 256 MiB at most), acts on the letters that match its filters
/// and gives the rest back untouched.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts by channel and reason, then one line per dead letter
    /// (message_id, channel, reason, detail, attempts, age). Changes nothing.
    List {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// Everything about one dead letter: headers, properties and body.
    /// Changes nothing.
    Show {
        /// The reply's `message_id` (else the AMQP message id).
        id: String,
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Send matching dead letters to the bridge again (to the outgoing
    /// exchange under their original routing key, failure headers cleared);
    /// each leaves the queue only once its copy is confirmed. Replies that
    /// were already sent are not sent again.
    Replay {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
        /// Only this message (the reply's `message_id`).
        #[arg(long)]
        id: Option<String>,
        /// Print what would be replayed and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop matching dead letters for good.
    Purge {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
        /// Only this message (the reply's `message_id`).
        #[arg(long)]
        id: Option<String>,
        /// Print what would be dropped and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Really drop them (required unless --dry-run): purged replies are
        /// gone.
        #[arg(long)]
        yes: bool,
    },
}

/// The configuration and the filters every `dlq` command takes; no filter
/// means every dead letter.
#[derive(Debug, Args)]
pub struct DlqFilter {
    /// The TOML configuration file (for the broker and the queue names).
    #[arg(long, short, env = "XBRIDGE_CONFIG")]
    pub config: PathBuf,
    /// Only dead letters of this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Only dead letters with this reason (`credits_exhausted`, …).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters whose last failure is at least this old (`10m`, `2h`).
    #[arg(long, value_parser = xbridge_amqp::dead_letters::parse_age)]
    pub older_than: Option<std::time::Duration>,
}

/// The `webhook` subcommands (README §4 of the X API notes). Webhooks belong to
/// the X App and use a channel's Bearer token; subscriptions belong to one
/// account and use the channel's OAuth 1.0a credentials.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register URL as the App's webhook (`POST /2/webhooks`). X checks it with
    /// a CRC at once, so `xbridge run` must already be serving it.
    Register {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel whose Bearer token (and so whose X App) registers it.
        #[arg(long)]
        channel: String,
        /// The public HTTPS URL X should call, e.g.
        /// `https://bridge.example.com/webhooks/CHANNEL`.
        #[arg(long)]
        url: String,
    },
    /// Subscribe the channel's account to the webhook, so X delivers its DMs
    /// there: through the channel's `webhook_api`, the Account Activity API
    /// (`POST /2/account_activity/webhooks/:id/subscriptions/all`) or the X
    /// Activity API (`POST /2/activity/subscriptions`, one per DM event type;
    /// those already present are kept, not duplicated).
    Subscribe {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel whose account subscribes.
        #[arg(long)]
        channel: String,
        /// The webhook's id; by default the App's only registered webhook.
        #[arg(long)]
        webhook_id: Option<String>,
    },
    /// Show the registered webhooks, whether X considers them valid, and
    /// whether each channel's account is subscribed (`GET /2/webhooks`).
    Status {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// Only this channel; by default every configured channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// List the X Activity API subscriptions of the channel's account
    /// (`GET /2/activity/subscriptions`).
    Subscriptions {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel whose account's subscriptions are listed.
        #[arg(long)]
        channel: String,
    },
    /// End the channel's subscriptions: every X Activity API DM subscription of
    /// its account (`DELETE /2/activity/subscriptions/:id`) and, with
    /// `webhook_api = "aaa"`, its Account Activity subscription
    /// (`DELETE /2/account_activity/webhooks/:id/subscriptions/:user_id/all`).
    Unsubscribe {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel whose account unsubscribes.
        #[arg(long)]
        channel: String,
        /// Only this webhook's subscriptions; by default the App's only webhook
        /// (AAA) or every webhook (X Activity API).
        #[arg(long)]
        webhook_id: Option<String>,
    },
    /// Make X run the CRC again and re-enable an invalid webhook
    /// (`PUT /2/webhooks/:id`).
    Revalidate {
        /// The TOML configuration file.
        #[arg(long, short, env = "XBRIDGE_CONFIG")]
        config: PathBuf,
        /// The channel whose Bearer token (and so whose X App) owns the webhook.
        #[arg(long)]
        channel: String,
        /// The webhook's id; by default the App's only registered webhook.
        #[arg(long)]
        webhook_id: Option<String>,
    },
}
