//! Typed, layered configuration: a TOML file, then `XBRIDGE_…` environment
//! overrides, validated as a whole at startup.
//!
//! The file is read into a raw form first and then validated field by field, so
//! that one run reports every problem at once, each naming its field
//! (`channels[1].consumer_secret: environment variable ACME_SECRET is not set`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::secret::SecretSource;

/// Prefix of the environment variables that override the file
/// (`XBRIDGE_AMQP__URL`, `XBRIDGE_X__API_BASE_URL`, …).
pub const ENV_PREFIX: &str = "XBRIDGE_";

/// Everything the bridge needs to run, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker and the names of the topology on it.
    pub amqp: AmqpSettings,
    /// How to reach X.
    pub x: XSettings,
    /// Retry, credits and shutdown bounds of the outbound side.
    pub outbound: OutboundSettings,
    /// The webhook server and the pollers of the inbound side.
    pub inbound: InboundSettings,
    /// Where durable state lives.
    pub state: StateSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// Timeouts and limits of both HTTP servers.
    pub http: HttpSettings,
    /// The X accounts this deployment serves, in file order.
    pub channels: Vec<ChannelSettings>,
    /// What is allowed but unwise (a secret file every user can read), for
    /// the caller to log once its logging is set up.
    pub warnings: Vec<String>,
}

/// The broker connection and topology.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// AMQP URL; a secret because it usually carries a password.
    pub url: SecretString,
    /// Unacknowledged replies a channel's consumer may hold: bounds memory and
    /// how many replies wait in the bridge while a channel is paused.
    pub prefetch: u16,
    /// Exchange and queue names.
    pub topology: TopologyNames,
}

/// Names of every exchange and queue the bridge declares. Defaults are the
/// documented contract; an integrator may rename them to fit the CRM.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyNames {
    /// Direct exchange the CRM publishes replies to, routing key = channel.
    pub outgoing_exchange: String,
    /// Prefix of the per-channel reply queues (`<prefix><channel>`).
    pub outgoing_queue_prefix: String,
    /// Alternate exchange and queue that catch replies for unknown channels.
    pub unrouted: String,
    /// Topic exchange for events to the CRM (`<channel>.<type>`).
    pub incoming_exchange: String,
    /// Durable queue bound to all of the incoming exchange, so nothing is lost
    /// while the CRM is away.
    pub incoming_queue: String,
    /// Topic exchange failed replies are published to (routing key = channel).
    pub dead_letter_exchange: String,
    /// The queue operators watch and replay from.
    pub dead_letter_queue: String,
    /// Prefix of the delay exchanges and queues (`<prefix><duration>`).
    pub delay_prefix: String,
    /// Prefix of the per-channel poll lease queues (`<prefix><channel>`):
    /// single-active-consumer queues whose token says which replica polls
    /// the channel, so replicas never poll one account at the same time.
    pub poll_lease_prefix: String,
}

impl Default for TopologyNames {
    fn default() -> Self {
        Self::with_prefix("xbridge")
    }
}

impl TopologyNames {
    /// All names under one prefix (`<prefix>.outgoing`, …). Tests use this to
    /// give each test its own topology on a shared broker.
    pub fn with_prefix(prefix: &str) -> Self {
        TopologyNames {
            outgoing_exchange: format!("{prefix}.outgoing"),
            outgoing_queue_prefix: format!("{prefix}.outgoing."),
            unrouted: format!("{prefix}.outgoing.unrouted"),
            incoming_exchange: format!("{prefix}.incoming"),
            incoming_queue: format!("{prefix}.incoming"),
            dead_letter_exchange: format!("{prefix}.dead-letter"),
            dead_letter_queue: format!("{prefix}.dead-letter"),
            delay_prefix: format!("{prefix}.delay."),
            poll_lease_prefix: format!("{prefix}.poll-lease."),
        }
    }

    /// The reply queue of one channel.
    pub fn outgoing_queue(&self, channel: &str) -> String {
        format!("{}{channel}", self.outgoing_queue_prefix)
    }

    /// The poll lease queue of one polled channel.
    pub fn poll_lease_queue(&self, channel: &str) -> String {
        format!("{}{channel}", self.poll_lease_prefix)
    }

    /// The delay exchange and queue (same name) for one delay step.
    pub fn delay_queue(&self, delay: Duration) -> String {
        format!(
            "{}{}",
            self.delay_prefix,
            humantime::format_duration(delay)
                .to_string()
                .replace(' ', "")
        )
    }
}

/// How to reach X's API.
#[derive(Debug, Clone)]
pub struct XSettings {
    /// `https://api.x.com`, or the simulator's URL.
    pub api_base_url: Url,
    /// Bound on one HTTP request; a timeout counts as a transient failure.
    pub request_timeout: Duration,
}

/// Bounds of the outbound side.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundSettings {
    /// How long in-flight sends may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Transient-failure retries.
    pub retry: RetrySettings,
    /// Behaviour while an account is out of credits.
    pub credits: CreditsSettings,
    /// Where and how reply attachments given by URL may be downloaded.
    pub media: MediaSettings,
    /// Largest reply body the bridge parses; a larger one is dead-lettered as
    /// `invalid_message` unread (see [`DEFAULT_MAX_REPLY_BYTES`]).
    pub max_reply_bytes: usize,
}

/// The default bound on a reply body: RabbitMQ 4's default
/// `max_message_size`, so every reply a default RabbitMQ 4 takes is parsed,
/// while RabbitMQ 3's 128 MiB (or a raised limit) cannot make the bridge
/// parse, and hold decoded, several times that per delivery. Inline `data` is
/// for small files; large media go behind a `url`.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// The most `outbound.max_reply_bytes` may be: RabbitMQ's own ceiling for
/// `max_message_size`.
pub const MAX_REPLY_BYTES_LIMIT: usize = 512 * 1024 * 1024;

/// Largest download worth allowing: X's largest media (a `dm_video`).
pub const MAX_MEDIA_BYTES: u64 = 512 * 1024 * 1024;

/// Downloading reply attachments given by URL. The bridge fetches URLs the
/// CRM names, from inside the deployment's network, so by default it fetches
/// from nowhere: an operator names the hosts (the CRM's media store, a CDN),
/// and internal addresses stay out of reach whatever the names resolve to.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSettings {
    /// Hosts the bridge may download from: exact names (or IP addresses) and
    /// `*.example.com` patterns. Empty (the default) refuses every URL
    /// attachment; inline `data` still works.
    pub allowed_hosts: Vec<HostPattern>,
    /// Also fetch plain `http://` URLs. Off: media travel over TLS.
    pub allow_http: bool,
    /// Fetch from loopback, private and other internal addresses too. Only for
    /// tests and a media store on a private network the operator vouches for:
    /// with it, an allowed host name that resolves inward is fetched.
    pub allow_private_networks: bool,
    /// Bound on one whole download (connect, headers and body).
    pub download_timeout: Duration,
    /// Bound on one download's size on top of the media category's limit.
    pub max_download_bytes: u64,
    /// Where downloads are spooled before the upload to X; the system's
    /// temporary directory when unset. The files have no name and vanish when
    /// closed, even after a crash.
    pub spool_dir: Option<PathBuf>,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            allowed_hosts: Vec::new(),
            allow_http: false,
            allow_private_networks: false,
            download_timeout: Duration::from_secs(60),
            max_download_bytes: MAX_MEDIA_BYTES,
            spool_dir: None,
        }
    }
}

/// One entry of `outbound.media.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host name or IP address only (lower case; IPv6 without brackets).
    Exact(String),
    /// Any host name under this domain (`*.example.com` holds `example.com`
    /// here): `a.example.com`, `a.b.example.com`, not `example.com` itself.
    Subdomains(String),
}

impl HostPattern {
    /// Reads `cdn.example.com`, `*.example.com`, `203.0.113.7` or `[::1]`.
    /// Refuses what could only be a mistake: URLs, ports, bare `*`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let unbracketed = lower
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&lower);
        if unbracketed.parse::<std::net::IpAddr>().is_ok() {
            return Ok(HostPattern::Exact(unbracketed.to_owned()));
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a host name, an IP address or *.domain"
            ));
        }
        Ok(if wildcard {
            HostPattern::Subdomains(name.to_owned())
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether `host` (as a URL holds it: lower case, IPv6 in brackets or
    /// not) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host);
        match self {
            HostPattern::Exact(name) => {
                name == host
                    || matches!(
                        (name.parse::<std::net::IpAddr>(), host.parse::<std::net::IpAddr>()),
                        (Ok(a), Ok(b)) if a == b
                    )
            }
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// Transient failures: a few tries in place, then delay queues, then give up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Tries in place (with backoff) before a reply is parked in a delay queue.
    pub immediate_attempts: u32,
    /// First in-place backoff.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Cap of the in-place backoff.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Delay-queue steps; the last one repeats.
    #[serde(deserialize_with = "duration_list")]
    pub delays: Vec<Duration>,
    /// Requests to X before a reply is dead-lettered as `retries_exhausted`.
    pub max_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            immediate_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            delays: vec![
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(300),
            ],
            max_attempts: 8,
        }
    }
}

/// While an X account has no credits, its replies wait and X is probed rarely.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreditsSettings {
    /// How long a reply may wait for credits before it is dead-lettered as
    /// `credits_exhausted` and the CRM is told.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// First pause between probes; doubles up to `probe_max`.
    #[serde(with = "humantime_serde")]
    pub probe_initial: Duration,
    /// Longest pause between probes.
    #[serde(with = "humantime_serde")]
    pub probe_max: Duration,
}

impl Default for CreditsSettings {
    fn default() -> Self {
        CreditsSettings {
            max_wait: Duration::from_secs(15 * 60),
            probe_initial: Duration::from_secs(30),
            probe_max: Duration::from_secs(300),
        }
    }
}

/// The inbound side: X's webhook server and the pollers.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// Where the webhook server listens (X must reach it over HTTPS through
    /// a proxy); unset, no webhook is served. The same server serves the
    /// media proxy (`GET /media/…`).
    pub listen: Option<std::net::SocketAddr>,
    /// Largest webhook body accepted, in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Bytes all webhook bodies being read or handled may hold together; a
    /// body past it gets 503. Bodies are read whole before their signature is
    /// checked, so this bounds what anyone who reaches the port can make the
    /// bridge hold.
    pub body_memory: usize,
    /// Publish DMs the company sent from X's own app as `message.echo`.
    pub publish_echoes: bool,
    /// Publish typing and read events (`conversation.typing`, `message.read`).
    pub publish_activity: bool,
    /// Pause between polls of a channel in `poll` mode. X allows 15 DM reads
    /// per 15 minutes per account, hence one a minute by default.
    pub poll_interval: Duration,
    /// Pause between the safety-net polls of a channel in `both` mode.
    pub safety_poll_interval: Duration,
    /// On a polled channel's first start, deliver the DMs of this many past
    /// days (at most 30, what X keeps); 0 starts from now.
    pub backfill_days: u32,
    /// How long a sender profile looked up with `GET /2/users/:id` (when a
    /// payload lacks it) is reused.
    pub profile_cache_ttl: Duration,
    /// How often the bridge asks X (with each webhook channel's bearer token)
    /// whether the App's webhook is registered and valid, so a webhook X
    /// disabled after a failed CRC shows as `webhook_invalid` instead of as
    /// silence; 0 turns the check off (webhooks managed elsewhere).
    pub webhook_check_interval: Duration,
    /// The media proxy: the bridge URLs attachments carry, since X's own
    /// media URLs need the channel's OAuth signature, which the CRM lacks.
    pub media: MediaProxySettings,
}

impl Default for InboundSettings {
    fn default() -> Self {
        let raw = RawInbound::default();
        InboundSettings {
            listen: raw.listen,
            body_limit: raw.body_limit,
            body_memory: raw.body_memory,
            publish_echoes: raw.publish_echoes,
            publish_activity: raw.publish_activity,
            poll_interval: raw.poll_interval,
            safety_poll_interval: raw.safety_poll_interval,
            backfill_days: raw.backfill_days,
            profile_cache_ttl: raw.profile_cache_ttl,
            webhook_check_interval: raw.webhook_check_interval,
            media: MediaProxySettings::default(),
        }
    }
}

/// X's origins that serve DM media: photos (TON), videos and GIFs, and
/// their preview images. The X API base URL's origin is always allowed on
/// top of the configured list (`/2/dm_conversations/media/…` is there, and
/// the simulator serves all media there); on every origin only DM media
/// paths are fetched.
pub const DEFAULT_MEDIA_ORIGINS: [&str; 3] = [
    "https://ton.twitter.com",
    "https://video.twimg.com",
    "https://pbs.twimg.com",
];

/// The media proxy (`[inbound.media]`): each attachment of a published DM
/// carries a signed URL of the bridge's own HTTP server, which fetches the
/// media from X with the channel's OAuth signature and streams it through.
#[derive(Debug, Clone)]
pub struct MediaProxySettings {
    /// The URL prefix under which the CRM reaches the bridge's HTTP server
    /// (e.g. `https://xbridge.internal.example/`); media URLs are
    /// `<prefix>media/<channel>/<token>`. Unset, `http://<inbound.listen>/`
    /// is used, with loopback for an unspecified address: fine for a
    /// CRM on the same host, wrong behind a proxy or in a cluster.
    pub public_base_url: Option<Url>,
    /// The HMAC-SHA256 key media URLs are signed with (at least 32
    /// characters). Unset, a random key is made at startup: URLs then die
    /// with the process and replicas refuse each other's.
    pub signing_key: Option<SecretString>,
    /// How long a media URL works after the event was published. A week
    /// by default: long enough for a CRM that was down over a long weekend
    /// to fetch what queued up, short enough that a leaked URL soon stops
    /// working; X keeps DMs for 30 days, the upper bound.
    pub url_ttl: Duration,
    /// Largest media passed through, in bytes (default 512 MiB, X's video
    /// limit): a larger announced size is refused, a body that grows past it
    /// is cut.
    pub max_bytes: u64,
    /// How long X may take to answer a media download (connect and
    /// response head), and the longest pause between two pieces of its body.
    pub timeout: Duration,
    /// Origins (`scheme://host[:port]`) media are fetched from; a signed
    /// URL naming another origin, or a path on them that is not DM media,
    /// is refused even with a valid signature, in case the key leaks.
    pub allowed_origins: Vec<String>,
}

impl Default for MediaProxySettings {
    fn default() -> Self {
        MediaProxySettings {
            public_base_url: None,
            signing_key: None,
            url_ttl: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 512 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            allowed_origins: DEFAULT_MEDIA_ORIGINS.map(str::to_owned).to_vec(),
        }
    }
}

/// How a channel receives its customers' DMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// X's Account Activity webhook only.
    #[default]
    Webhook,
    /// Polling `GET /2/dm_events` only.
    Poll,
    /// The webhook for speed, and a slow poll that fills any gap it left.
    Both,
}

impl InboundMode {
    /// Whether the channel is polled.
    pub fn polls(self) -> bool {
        matches!(self, InboundMode::Poll | InboundMode::Both)
    }

    /// Whether X's webhook delivers the channel's DMs.
    pub fn uses_webhook(self) -> bool {
        matches!(self, InboundMode::Webhook | InboundMode::Both)
    }
}

/// Where durable state lives (`[state]`): which replies were sent, which DM
/// events were delivered, each poller's cursor.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// The store and how to reach it.
    pub backend: StateBackend,
}

/// Which state store the bridge uses.
#[derive(Debug, Clone)]
pub enum StateBackend {
    /// One file, no server (`backend = "embedded"`, the default): for a single
    /// bridge process, which locks the file.
    Embedded {
        /// Path of the store's file (created if missing).
        path: PathBuf,
    },
    /// PostgreSQL (`backend = "postgres"`): shared by several replicas on one
    /// RabbitMQ, so a redelivery on another replica is still known.
    Postgres {
        /// Connection URL (`postgres://user:password@host:port/db`); a secret
        /// because it usually carries a password.
        url: SecretString,
        /// The schema the tables live in (created if missing).
        schema: String,
    },
}

impl StateBackend {
    /// Where the state is, for operators, without secrets: the file's path,
    /// or the PostgreSQL schema (the URL is never shown).
    pub fn describe(&self) -> String {
        match self {
            StateBackend::Embedded { path } => format!("embedded, {}", path.display()),
            StateBackend::Postgres { schema, .. } => format!("postgres, schema {schema}"),
        }
    }
}

/// The schema used when `state.schema` is not set.
pub const DEFAULT_STATE_SCHEMA: &str = "public";

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging, health and metrics; the log level comes from `RUST_LOG`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Text or JSON lines.
    pub log_format: LogFormat,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (for probes and
    /// Prometheus); unset, they are not served.
    pub listen: Option<std::net::SocketAddr>,
}

/// Timeouts and limits of the bridge's two HTTP servers (`[http]`): X's
/// webhook with the media proxy (`inbound.listen`), and `/healthz`, `/readyz`
/// and `/metrics` (`telemetry.listen`). Anyone who can reach a port can open
/// connections and stall them; these bounds make a stalled client cost one
/// connection slot for a while, never the server (see `xbridge_core::server`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// How long a client has to send a request's headers, counted from when
    /// the connection opens or the previous response ends; so it is also how
    /// long an idle keep-alive connection is kept.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The longest pause while a request's body arrives.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Bound on a request from its headers to the response's headers (body
    /// read and handling included); a media stream already under way is not
    /// cut by it. Past it the client gets 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest a response may wait to be written because the client reads
    /// nothing (a hung consumer, or requests pipelined and never read). Then
    /// the connection is closed. A slow reader that reads at all is not cut.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Connections each server holds at once. When full, it accepts no more
    /// until one closes: new ones wait in the kernel's listen queue instead
    /// of being accepted and failed.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Most connections a server may be configured to hold: each is a file
/// descriptor and a few kilobytes of buffers.
const MAX_HTTP_CONNECTIONS: usize = 65_536;

/// Validates `[http]`, with `media_timeout` (`inbound.media.timeout`), which
/// must end before the request timeout would answer for it.
fn validate_http(http: &HttpSettings, media_timeout: Duration, errors: &mut Vec<String>) {
    for (key, value) in [
        ("header_read_timeout", http.header_read_timeout),
        ("body_read_timeout", http.body_read_timeout),
        ("request_timeout", http.request_timeout),
        ("write_timeout", http.write_timeout),
    ] {
        if value.is_zero() {
            errors.push(format!("http.{key}: must be greater than zero"));
        }
    }
    if http.request_timeout <= media_timeout {
        errors.push(
            "http.request_timeout: must be longer than inbound.media.timeout (X's answer to a media download must come before the request times out)"
                .into(),
        );
    }
    if !(1..=MAX_HTTP_CONNECTIONS).contains(&http.max_connections) {
        errors.push(format!(
            "http.max_connections: must be 1 to {MAX_HTTP_CONNECTIONS}"
        ));
    }
}

/// One X account, as in the CRM's channel form.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// Channel name: the routing key of its replies and part of queue names.
    pub name: String,
    /// The X App's API key.
    pub consumer_key: SecretString,
    /// The X App's API secret: signs requests and verifies webhooks.
    pub consumer_secret: SecretString,
    /// The account's access token (must have DM permission).
    pub access_token: SecretString,
    /// The access token's secret.
    pub access_token_secret: SecretString,
    /// App-only token for webhook management (never accepted for DMs).
    pub bearer_token: SecretString,
    /// Optional weight from the CRM's channel form (kept for the CRM's sake).
    pub weight: Option<u32>,
    /// Optional URL from the CRM's channel form (e.g. the account's profile).
    pub url: Option<Url>,
    /// How customers' DMs reach the bridge.
    pub inbound: InboundMode,
    /// The account's X user id: needed to poll (to tell its own DMs from the
    /// customers'); the webhook learns it from each delivery.
    pub user_id: Option<String>,
}

/// Every problem found in a configuration, one per field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not valid TOML / not the right shape.
    #[error("configuration could not be read: {0}")]
    Read(String),
    /// The file was read but some fields are invalid.
    #[error("configuration is invalid:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    amqp: RawAmqp,
    #[serde(default)]
    x: RawX,
    #[serde(default)]
    outbound: RawOutbound,
    #[serde(default)]
    inbound: RawInbound,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    telemetry: TelemetrySettings,
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    channels: Vec<RawChannel>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAmqp {
    url: SecretSource,
    prefetch: u16,
    topology: TopologyNames,
}

impl Default for RawAmqp {
    fn default() -> Self {
        RawAmqp {
            url: SecretSource::Inline("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            prefetch: 64,
            topology: TopologyNames::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawX {
    api_base_url: String,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
}

impl Default for RawX {
    fn default() -> Self {
        RawX {
            api_base_url: "https://api.x.com".into(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOutbound {
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    retry: RetrySettings,
    credits: CreditsSettings,
    media: RawMedia,
    max_reply_bytes: usize,
}

impl Default for RawOutbound {
    fn default() -> Self {
        RawOutbound {
            shutdown_grace: Duration::from_secs(10),
            retry: RetrySettings::default(),
            credits: CreditsSettings::default(),
            media: RawMedia::default(),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMedia {
    allowed_hosts: Vec<String>,
    allow_http: bool,
    allow_private_networks: bool,
    #[serde(with = "humantime_serde")]
    download_timeout: Duration,
    max_download_bytes: u64,
    spool_dir: Option<PathBuf>,
}

impl Default for RawMedia {
    fn default() -> Self {
        let defaults = MediaSettings::default();
        RawMedia {
            allowed_hosts: Vec::new(),
            allow_http: defaults.allow_http,
            allow_private_networks: defaults.allow_private_networks,
            download_timeout: defaults.download_timeout,
            max_download_bytes: defaults.max_download_bytes,
            spool_dir: defaults.spool_dir,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawInbound {
    listen: Option<std::net::SocketAddr>,
    body_limit: usize,
    body_memory: usize,
    publish_echoes: bool,
    publish_activity: bool,
    #[serde(with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    safety_poll_interval: Duration,
    backfill_days: u32,
    #[serde(with = "humantime_serde")]
    profile_cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    webhook_check_interval: Duration,
    media: RawMediaProxy,
}

impl Default for RawInbound {
    fn default() -> Self {
        RawInbound {
            listen: None,
            body_limit: 1024 * 1024,
            body_memory: 64 * 1024 * 1024,
            publish_echoes: true,
            publish_activity: false,
            poll_interval: Duration::from_secs(60),
            safety_poll_interval: Duration::from_secs(300),
            backfill_days: 0,
            profile_cache_ttl: Duration::from_secs(3600),
            webhook_check_interval: Duration::from_secs(300),
            media: RawMediaProxy::default(),
        }
    }
}

fn validate_media(raw: RawMedia, errors: &mut Vec<String>) -> MediaSettings {
    let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
    for (i, text) in raw.allowed_hosts.iter().enumerate() {
        match HostPattern::parse(text) {
            Ok(pattern) => allowed_hosts.push(pattern),
            Err(e) => errors.push(format!("outbound.media.allowed_hosts[{i}]: {e}")),
        }
    }
    if raw.download_timeout.is_zero() {
        errors.push("outbound.media.download_timeout: must be greater than zero".into());
    }
    if raw.max_download_bytes == 0 || raw.max_download_bytes > MAX_MEDIA_BYTES {
        errors.push(format!(
            "outbound.media.max_download_bytes: must be 1 to {MAX_MEDIA_BYTES} (X's largest media, a 512 MiB video)"
        ));
    }
    if let Some(dir) = &raw.spool_dir {
        if !dir.is_dir() {
            errors.push(format!(
                "outbound.media.spool_dir: {} is not a directory",
                dir.display()
            ));
        }
    }
    MediaSettings {
        allowed_hosts,
        allow_http: raw.allow_http,
        allow_private_networks: raw.allow_private_networks,
        download_timeout: raw.download_timeout,
        max_download_bytes: raw.max_download_bytes,
        spool_dir: raw.spool_dir,
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMediaProxy {
    public_base_url: Option<String>,
    signing_key: Option<SecretSource>,
    #[serde(with = "humantime_serde")]
    url_ttl: Duration,
    max_bytes: u64,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    allowed_origins: Vec<String>,
}

impl Default for RawMediaProxy {
    fn default() -> Self {
        let defaults = MediaProxySettings::default();
        RawMediaProxy {
            public_base_url: None,
            signing_key: None,
            url_ttl: defaults.url_ttl,
            max_bytes: defaults.max_bytes,
            timeout: defaults.timeout,
            allowed_origins: defaults.allowed_origins,
        }
    }
}

/// Shortest accepted media signing key: 32 characters, as many bits as
/// the random key the bridge makes when none is configured.
const MIN_SIGNING_KEY_CHARS: usize = 32;

/// Longest media URL lifetime: X keeps DM events (and their media) 30 days.
const MAX_MEDIA_URL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Validates `[inbound.media]`.
fn validate_media_proxy(raw: RawMediaProxy, errors: &mut Vec<String>) -> MediaProxySettings {
    let public_base_url = raw.public_base_url.and_then(|text| match Url::parse(&text) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.query().is_none()
                && url.fragment().is_none() =>
        {
            // A prefix: media paths are joined under it, so it must end with '/'.
            let mut url = url;
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            Some(url)
        }
        Ok(_) => {
            errors.push(
                "inbound.media.public_base_url: must be an http or https URL without query or fragment"
                    .into(),
            );
            None
        }
        Err(e) => {
            errors.push(format!("inbound.media.public_base_url: {e}"));
            None
        }
    });
    let signing_key = raw.signing_key.and_then(|source| match source.resolve() {
        Ok(key) if key.expose_secret().chars().count() >= MIN_SIGNING_KEY_CHARS => Some(key),
        Ok(_) => {
            errors.push(format!(
                "inbound.media.signing_key: must be at least {MIN_SIGNING_KEY_CHARS} characters"
            ));
            None
        }
        Err(e) => {
            errors.push(format!("inbound.media.signing_key: {e}"));
            None
        }
    });
    if raw.url_ttl < Duration::from_secs(60) || raw.url_ttl > MAX_MEDIA_URL_TTL {
        errors.push(
            "inbound.media.url_ttl: must be between 1m and 30days (X keeps DMs for 30 days)".into(),
        );
    }
    if raw.max_bytes == 0 {
        errors.push("inbound.media.max_bytes: must be at least 1".into());
    }
    if raw.timeout.is_zero() {
        errors.push("inbound.media.timeout: must be greater than zero".into());
    }
    let mut allowed_origins = Vec::with_capacity(raw.allowed_origins.len());
    for (i, text) in raw.allowed_origins.iter().enumerate() {
        match Url::parse(text) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.path() == "/"
                    && url.query().is_none()
                    && url.fragment().is_none() =>
            {
                allowed_origins.push(url.origin().ascii_serialization());
            }
            _ => errors.push(format!(
                "inbound.media.allowed_origins[{i}]: {text:?} must be an origin such as https://ton.twitter.com (scheme, host, optional port, nothing else)"
            )),
        }
    }
    MediaProxySettings {
        public_base_url,
        signing_key,
        url_ttl: raw.url_ttl,
        max_bytes: raw.max_bytes,
        timeout: raw.timeout,
        allowed_origins,
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawState {
    backend: RawStateBackend,
    path: PathBuf,
    url: Option<SecretSource>,
    schema: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawStateBackend {
    #[default]
    Embedded,
    Postgres,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: RawStateBackend::Embedded,
            path: PathBuf::from("xbridge-state.redb"),
            url: None,
            schema: None,
        }
    }
}

fn validate_state(raw: RawState, errors: &mut Vec<String>) -> StateSettings {
    let backend = match raw.backend {
        RawStateBackend::Embedded => {
            // A URL or schema without the backend is a half-done switch to
            // PostgreSQL: running on a local file instead would split state.
            for (field, set) in [("url", raw.url.is_some()), ("schema", raw.schema.is_some())] {
                if set {
                    errors.push(format!(
                        "state.{field}: only used with state.backend = \"postgres\""
                    ));
                }
            }
            StateBackend::Embedded { path: raw.path }
        }
        RawStateBackend::Postgres => {
            let url = match raw.url {
                Some(source) => source.resolve().unwrap_or_else(|e| {
                    errors.push(format!("state.url: {e}"));
                    SecretString::from("")
                }),
                None => {
                    errors.push("state.url: required when state.backend = \"postgres\"".into());
                    SecretString::from("")
                }
            };
            let value = url.expose_secret();
            if !value.is_empty()
                && !value.starts_with("postgres://")
                && !value.starts_with("postgresql://")
            {
                errors.push("state.url: must start with postgres:// or postgresql://".into());
            }
            let schema = raw
                .schema
                .unwrap_or_else(|| DEFAULT_STATE_SCHEMA.to_owned());
            if !is_valid_schema_name(&schema) {
                errors.push(format!(
                    "state.schema: {schema:?} must be 1 to 63 of a-z, 0-9 and _, starting with a letter or _, not pg_"
                ));
            }
            StateBackend::Postgres { url, schema }
        }
    };
    StateSettings { backend }
}

/// A schema name the PostgreSQL store accepts: a plain lower-case identifier,
/// so it never needs quoting and cannot name a system schema.
fn is_valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Option<String>,
    consumer_key: Option<SecretSource>,
    consumer_secret: Option<SecretSource>,
    access_token: Option<SecretSource>,
    access_token_secret: Option<SecretSource>,
    bearer_token: Option<SecretSource>,
    weight: Option<u32>,
    url: Option<String>,
    #[serde(default)]
    inbound: InboundMode,
    user_id: Option<String>,
}

fn duration_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

/// A warning for each secret read from a file that every user of the host can
/// read, naming the setting and the file (never the content).
fn exposed_secret_files(raw: &RawSettings) -> Vec<String> {
    let mut sources: Vec<(String, &SecretSource)> = vec![("amqp.url".into(), &raw.amqp.url)];
    if let Some(url) = &raw.state.url {
        sources.push(("state.url".into(), url));
    }
    if let Some(key) = &raw.inbound.media.signing_key {
        sources.push(("inbound.media.signing_key".into(), key));
    }
    for (i, channel) in raw.channels.iter().enumerate() {
        let label = match &channel.name {
            Some(name) => format!("channels[{i}] ({name})"),
            None => format!("channels[{i}]"),
        };
        for (field, source) in [
            ("consumer_key", &channel.consumer_key),
            ("consumer_secret", &channel.consumer_secret),
            ("access_token", &channel.access_token),
            ("access_token_secret", &channel.access_token_secret),
            ("bearer_token", &channel.bearer_token),
        ] {
            if let Some(source) = source {
                sources.push((format!("{label}.{field}"), source));
            }
        }
    }
    sources
        .into_iter()
        .filter_map(|(setting, source)| source.exposure(&setting))
        .collect()
}

/// RabbitMQ closes a channel whose delivery stays unacknowledged longer than
/// its `consumer_timeout` (30 minutes by default); replies waiting for credits
/// are held unacknowledged, so their wait must stay well below it.
const MAX_CREDITS_WAIT: Duration = Duration::from_secs(25 * 60);

impl Settings {
    /// Reads `path` (TOML), applies `XBRIDGE_…` environment overrides and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Read(format!(
                "{} does not exist",
                path.display()
            )));
        }
        Self::from_figment(Figment::from(Toml::file(path)))
    }

    /// Parses a configuration from a TOML string (tests, the demo), with the
    /// same environment overrides and validation as [`Settings::load`].
    pub fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let raw: RawSettings = figment
            // Only nested keys (`XBRIDGE_AMQP__URL`) are settings, so an
            // unrelated `XBRIDGE_SOMETHING` in the environment is not an error.
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Read(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
        let mut errors = Vec::new();
        let warnings = exposed_secret_files(&raw);

        let amqp_url = raw.amqp.url.resolve().unwrap_or_else(|e| {
            errors.push(format!("amqp.url: {e}"));
            SecretString::from("")
        });
        let url = amqp_url.expose_secret();
        if !url.is_empty() && !url.starts_with("amqp://") && !url.starts_with("amqps://") {
            errors.push("amqp.url: must start with amqp:// or amqps://".into());
        }
        if raw.amqp.prefetch == 0 {
            errors.push("amqp.prefetch: must be at least 1".into());
        }
        check_topology(&raw.amqp.topology, &mut errors);

        let api_base_url = match Url::parse(&raw.x.api_base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(_) => {
                errors.push("x.api_base_url: must be an http or https URL".into());
                Url::parse("https://api.x.com").expect("static URL")
            }
            Err(e) => {
                errors.push(format!("x.api_base_url: {e}"));
                Url::parse("https://api.x.com").expect("static URL")
            }
        };
        if raw.x.request_timeout.is_zero() {
            errors.push("x.request_timeout: must be greater than zero".into());
        }

        let retry = &raw.outbound.retry;
        if retry.max_attempts == 0 {
            errors.push("outbound.retry.max_attempts: must be at least 1".into());
        }
        if retry.delays.is_empty() {
            errors.push("outbound.retry.delays: needs at least one delay".into());
        }
        if retry.delays.iter().any(|d| d.as_millis() < 1) {
            errors.push("outbound.retry.delays: each delay must be at least 1ms".into());
        }
        if retry.initial_backoff > retry.max_backoff {
            errors.push("outbound.retry.initial_backoff: must not exceed max_backoff".into());
        }
        let credits = &raw.outbound.credits;
        if credits.max_wait > MAX_CREDITS_WAIT {
            errors.push(format!(
                "outbound.credits.max_wait: at most {} (RabbitMQ's consumer timeout would close the channel)",
                humantime::format_duration(MAX_CREDITS_WAIT)
            ));
        }
        if credits.probe_initial.is_zero() || credits.probe_initial > credits.probe_max {
            errors.push(
                "outbound.credits.probe_initial: must be greater than zero and not exceed probe_max"
                    .into(),
            );
        }

        if !(1024..=MAX_REPLY_BYTES_LIMIT).contains(&raw.outbound.max_reply_bytes) {
            errors.push(format!(
                "outbound.max_reply_bytes: must be 1024 to {MAX_REPLY_BYTES_LIMIT} (RabbitMQ's largest max_message_size)"
            ));
        }
        let media = validate_media(raw.outbound.media, &mut errors);

        if raw.inbound.body_limit < 1024 {
            errors.push("inbound.body_limit: must be at least 1024 bytes".into());
        }
        if raw.inbound.body_memory < raw.inbound.body_limit {
            errors.push("inbound.body_memory: must be at least inbound.body_limit".into());
        }
        if raw.inbound.poll_interval.is_zero() || raw.inbound.safety_poll_interval.is_zero() {
            errors.push(
                "inbound.poll_interval and inbound.safety_poll_interval: must be greater than zero"
                    .into(),
            );
        }

        if raw.inbound.backfill_days > 30 {
            errors.push("inbound.backfill_days: at most 30 (X keeps DM events for 30 days)".into());
        }
        let inbound = InboundSettings {
            listen: raw.inbound.listen,
            body_limit: raw.inbound.body_limit,
            body_memory: raw.inbound.body_memory,
            publish_echoes: raw.inbound.publish_echoes,
            publish_activity: raw.inbound.publish_activity,
            poll_interval: raw.inbound.poll_interval,
            safety_poll_interval: raw.inbound.safety_poll_interval,
            backfill_days: raw.inbound.backfill_days,
            profile_cache_ttl: raw.inbound.profile_cache_ttl,
            webhook_check_interval: raw.inbound.webhook_check_interval,
            media: validate_media_proxy(raw.inbound.media, &mut errors),
        };

        let state = validate_state(raw.state, &mut errors);
        validate_http(&raw.http, inbound.media.timeout, &mut errors);

        if raw.channels.is_empty() {
            errors.push("channels: at least one channel is required".into());
        }
        let mut names = HashSet::new();
        let mut channels = Vec::with_capacity(raw.channels.len());
        for (i, raw_channel) in raw.channels.into_iter().enumerate() {
            if let Some(channel) = validate_channel(i, raw_channel, &mut names, &mut errors) {
                channels.push(channel);
            }
        }
        check_shared_apps(&channels, &mut errors);

        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(Settings {
            amqp: AmqpSettings {
                url: amqp_url,
                prefetch: raw.amqp.prefetch,
                topology: raw.amqp.topology,
            },
            x: XSettings {
                api_base_url,
                request_timeout: raw.x.request_timeout,
            },
            outbound: OutboundSettings {
                shutdown_grace: raw.outbound.shutdown_grace,
                retry: raw.outbound.retry,
                credits: raw.outbound.credits,
                media,
                max_reply_bytes: raw.outbound.max_reply_bytes,
            },
            inbound,
            state,
            telemetry: raw.telemetry,
            http: raw.http,
            channels,
            warnings,
        })
    }

    /// The channel with this name, if configured.
    pub fn channel(&self, name: &str) -> Option<&ChannelSettings> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// Whether a channel name is usable in routing keys and queue names: no dots
/// (they separate topic words) and nothing a shell or URL would mangle.
pub fn is_valid_channel_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn check_topology(names: &TopologyNames, errors: &mut Vec<String>) {
    let fields = [
        ("outgoing_exchange", &names.outgoing_exchange),
        ("outgoing_queue_prefix", &names.outgoing_queue_prefix),
        ("unrouted", &names.unrouted),
        ("incoming_exchange", &names.incoming_exchange),
        ("incoming_queue", &names.incoming_queue),
        ("dead_letter_exchange", &names.dead_letter_exchange),
        ("dead_letter_queue", &names.dead_letter_queue),
        ("delay_prefix", &names.delay_prefix),
        ("poll_lease_prefix", &names.poll_lease_prefix),
    ];
    for (field, value) in fields {
        if value.is_empty() || value.len() > 200 {
            errors.push(format!(
                "amqp.topology.{field}: must be 1 to 200 characters"
            ));
        } else if value.starts_with("amq.") {
            errors.push(format!(
                "amqp.topology.{field}: names starting with amq. are reserved by RabbitMQ"
            ));
        }
    }
}

/// Channels with one consumer key are one X App, whose single webhook brings all
/// their accounts' events: they must agree on the App's secret (it checks every
/// body's signature), and no account may be two channels of one App (a body
/// for it could not be routed).
fn check_shared_apps(channels: &[ChannelSettings], errors: &mut Vec<String>) {
    for (i, channel) in channels.iter().enumerate() {
        let Some(first) = channels[..i]
            .iter()
            .find(|c| c.consumer_key.expose_secret() == channel.consumer_key.expose_secret())
        else {
            continue;
        };
        if first.consumer_secret.expose_secret() != channel.consumer_secret.expose_secret() {
            errors.push(format!(
                "channel {}: consumer_secret differs from channel {}'s, which has the same consumer_key (one X App has one secret)",
                channel.name, first.name
            ));
        }
        if let Some(twin) = channels[..i].iter().find(|c| {
            c.consumer_key.expose_secret() == channel.consumer_key.expose_secret()
                && c.user_id.is_some()
                && c.user_id == channel.user_id
        }) {
            errors.push(format!(
                "channel {}: user_id is channel {}'s too, on the same X App (consumer_key); configure each account once",
                channel.name, twin.name
            ));
        }
    }
}

fn validate_channel(
    i: usize,
    raw: RawChannel,
    names: &mut HashSet<String>,
    errors: &mut Vec<String>,
) -> Option<ChannelSettings> {
    let before = errors.len();
    let name = match raw.name {
        Some(name) if is_valid_channel_name(&name) => {
            if !names.insert(name.clone()) {
                errors.push(format!("channels[{i}].name: {name:?} is used twice"));
            }
            name
        }
        Some(name) => {
            errors.push(format!(
                "channels[{i}].name: {name:?} must be 1 to 63 of a-z, 0-9, _ and -, starting with a letter or digit"
            ));
            name
        }
        None => {
            errors.push(format!("channels[{i}].name: missing"));
            String::new()
        }
    };
    let label = if name.is_empty() {
        format!("channels[{i}]")
    } else {
        format!("channels[{i}] ({name})")
    };
    let mut secret = |field: &str, source: Option<SecretSource>| match source {
        Some(source) => source.resolve().unwrap_or_else(|e| {
            errors.push(format!("{label}.{field}: {e}"));
            SecretString::from("")
        }),
        None => {
            errors.push(format!("{label}.{field}: missing"));
            SecretString::from("")
        }
    };
    let consumer_key = secret("consumer_key", raw.consumer_key);
    let consumer_secret = secret("consumer_secret", raw.consumer_secret);
    let access_token = secret("access_token", raw.access_token);
    let access_token_secret = secret("access_token_secret", raw.access_token_secret);
    let bearer_token = secret("bearer_token", raw.bearer_token);
    let url = match raw.url.map(|u| Url::parse(&u)) {
        None => None,
        Some(Ok(url)) => Some(url),
        Some(Err(e)) => {
            errors.push(format!("{label}.url: {e}"));
            None
        }
    };
    if raw.weight == Some(0) {
        errors.push(format!("{label}.weight: must be at least 1"));
    }
    match &raw.user_id {
        Some(id) if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) => {
            errors.push(format!("{label}.user_id: must be the account's X user id (1 to 19 digits)"));
        }
        None if raw.inbound.polls() => errors.push(format!(
            "{label}.user_id: required when inbound is \"poll\" or \"both\" (the account's X user id)"
        )),
        _ => {}
    }
    (errors.len() == before).then_some(ChannelSettings {
        name,
        consumer_key,
        consumer_secret,
        access_token,
        access_token_secret,
        bearer_token,
        weight: raw.weight,
        url,
        inbound: raw.inbound,
        user_id: raw.user_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [amqp]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"

        [[channels]]
        name = "acme"
        consumer_key = "ck"
        consumer_secret = "cs"
        access_token = "at"
        access_token_secret = "ats"
        bearer_token = "bt"
        weight = 2
        url = "https://x.com/acme"
    "#;

    #[cfg(unix)]
    #[test]
    fn a_secret_file_every_user_can_read_is_a_warning_naming_setting_and_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("consumer_secret");
        let private = dir.path().join("access_token");
        for (file, mode) in [(&open, 0o644), (&private, 0o600)] {
            std::fs::write(file, "v3ry-s3cret\n").unwrap();
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let toml = format!(
            r#"
            [[channels]]
            name = "acme"
            consumer_key = "ck"
            consumer_secret = {{ file = {open:?} }}
            access_token = {{ file = {private:?} }}
            access_token_secret = "ats"
            bearer_token = "bt"
            "#
        );
        let settings = Settings::from_toml(&toml).unwrap();
        assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
        let warning = &settings.warnings[0];
        assert!(
            warning.starts_with("channels[0] (acme).consumer_secret: "),
            "{warning}"
        );
        assert!(warning.contains(&open.display().to_string()), "{warning}");
        assert!(!warning.contains("s3cret"), "{warning}");
        assert!(Settings::from_toml(VALID).unwrap().warnings.is_empty());
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let settings = Settings::from_toml(VALID).unwrap();
        assert_eq!(settings.amqp.topology.outgoing_exchange, "xbridge.outgoing");
        assert_eq!(
            settings.amqp.topology.dead_letter_queue,
            "xbridge.dead-letter"
        );
        assert_eq!(settings.x.api_base_url.as_str(), "https://api.x.com/");
        assert_eq!(settings.outbound.credits.max_wait, Duration::from_secs(900));
        assert_eq!(settings.channels[0].name, "acme");
        assert_eq!(settings.channels[0].weight, Some(2));
    }

    #[test]
    fn every_error_names_its_field() {
        let toml = r#"
            [x]
            api_base_url = "ftp://example.com"
            [outbound.retry]
            max_attempts = 0
            [[channels]]
            name = "Bad.Name"
            consumer_key = "ck"
            consumer_secret = { env = "XBRIDGE_TEST_UNSET_SECRET_1" }
            access_token = "at"
            access_token_secret = "ats"
            [[channels]]
            name = "ok"
            consumer_key = "ck"
            consumer_secret = "cs"
            access_token = "at"
            access_token_secret = "ats"
            bearer_token = "bt"
            url = "not a url"
        "#;
        let ConfigError::Invalid(errors) = Settings::from_toml(toml).unwrap_err() else {
            panic!("expected validation errors");
        };
        let all = errors.join("\n");
        for expected in [
            "x.api_base_url",
            "outbound.retry.max_attempts",
            "channels[0].name",
            "channels[0] (Bad.Name).consumer_secret: environment variable XBRIDGE_TEST_UNSET_SECRET_1 is not set",
            "channels[0] (Bad.Name).bearer_token: missing",
            "channels[1] (ok).url",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn duplicate_channel_names_are_refused() {
        let toml = format!("{VALID}\n{}", &VALID[VALID.find("[[channels]]").unwrap()..]);
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("\"acme\" is used twice"), "{err}");
    }

    #[test]
    fn channels_of_one_app_share_its_secret_and_are_distinct_accounts() {
        let second = VALID[VALID.find("[[channels]]").unwrap()..].replace("acme", "beta");
        let shared = format!("{VALID}\nuser_id = \"1\"\n{second}\nuser_id = \"2\"");
        assert_eq!(Settings::from_toml(&shared).unwrap().channels.len(), 2);

        let other_secret = second.replace("\"cs\"", "\"cs2\"");
        let err = Settings::from_toml(&format!("{VALID}\n{other_secret}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channel beta: consumer_secret differs from channel acme's"),
            "{err}"
        );
        assert!(!err.contains("cs2"), "{err}");

        let twice = format!("{VALID}\nuser_id = \"1\"\n{second}\nuser_id = \"1\"");
        let err = Settings::from_toml(&twice).unwrap_err().to_string();
        assert!(
            err.contains("channel beta: user_id is channel acme's too"),
            "{err}"
        );

        // Another App may hold the same account.
        let other_app = second
            .replace("\"ck\"", "\"ck2\"")
            .replace("\"cs\"", "\"cs2\"");
        let toml = format!("{VALID}\nuser_id = \"1\"\n{other_app}\nuser_id = \"1\"");
        assert!(Settings::from_toml(&toml).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused_rather_than_ignored() {
        let toml = format!("{VALID}\nconsumer_secrte = \"typo\"");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("consumer_secrte"), "{err}");
    }

    #[test]
    fn errors_never_contain_secret_values() {
        let toml = VALID.replace("name = \"acme\"", "name = \"ACME!\"");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        for secret in ["\"cs\"", "\"ats\"", "guest:guest"] {
            assert!(!err.contains(secret), "{err}");
        }
    }

    #[test]
    fn polling_needs_the_accounts_user_id() {
        let toml = format!("{VALID}\ninbound = \"poll\"");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(
            err.contains("channels[0] (acme).user_id: required"),
            "{err}"
        );
        let toml = format!("{VALID}\ninbound = \"both\"\nuser_id = \"1553086854915936256\"");
        let settings = Settings::from_toml(&toml).unwrap();
        assert!(settings.channels[0].inbound.polls());
        assert_eq!(
            settings.inbound.listen, None,
            "no webhook unless configured"
        );
        let toml = format!("{VALID}\nuser_id = \"12ab\"");
        assert!(Settings::from_toml(&toml).is_err());
    }

    #[test]
    fn media_urls_default_to_a_week_and_x_origins_without_a_key() {
        let media = Settings::from_toml(VALID).unwrap().inbound.media;
        assert_eq!(media.public_base_url, None);
        assert!(media.signing_key.is_none(), "made at startup");
        assert_eq!(media.url_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(media.timeout, Duration::from_secs(30));
        assert_eq!(
            media.allowed_origins,
            [
                "https://ton.twitter.com",
                "https://video.twimg.com",
                "https://pbs.twimg.com"
            ]
        );
    }

    #[test]
    fn media_settings_are_read_and_the_key_never_shown() {
        let key = "k".repeat(40);
        std::env::set_var("XBRIDGE_TEST_MEDIA_KEY_OK", &key);
        let toml = VALID.replace(
            "[[channels]]",
            r#"[inbound.media]
            public_base_url = "https://bridge.example.com/xbridge"
            signing_key = { env = "XBRIDGE_TEST_MEDIA_KEY_OK" }
            url_ttl = "2h"
            max_bytes = 1048576
            timeout = "5s"
            allowed_origins = ["https://ton.twitter.com", "http://127.0.0.1:8081"]

            [[channels]]"#,
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let media = &settings.inbound.media;
        assert_eq!(
            media.public_base_url.as_ref().unwrap().as_str(),
            "https://bridge.example.com/xbridge/",
            "a prefix, so paths join under it"
        );
        assert_eq!(media.signing_key.as_ref().unwrap().expose_secret(), key);
        assert_eq!(media.url_ttl, Duration::from_secs(7200));
        assert_eq!(media.max_bytes, 1_048_576);
        assert_eq!(media.timeout, Duration::from_secs(5));
        assert_eq!(
            media.allowed_origins,
            ["https://ton.twitter.com", "http://127.0.0.1:8081"]
        );
        assert!(!format!("{settings:?}").contains(&key));
    }

    #[test]
    fn bad_media_settings_name_their_field_but_not_the_key() {
        let toml = VALID.replace(
            "[[channels]]",
            r#"[inbound.media]
            public_base_url = "ftp://bridge.example.com/"
            signing_key = "too-short-secret"
            url_ttl = "90days"
            max_bytes = 0
            timeout = "0s"
            allowed_origins = ["https://ton.twitter.com/1.1/ton"]

            [[channels]]"#,
        );
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        for expected in [
            "inbound.media.public_base_url",
            "inbound.media.signing_key: must be at least 32 characters",
            "inbound.media.url_ttl",
            "inbound.media.max_bytes",
            "inbound.media.timeout",
            "inbound.media.allowed_origins[0]",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        assert!(!err.contains("too-short-secret"), "{err}");
        let typo = VALID.replace(
            "[[channels]]",
            "[inbound.media]\nsigning_kye = \"x\"\n[[channels]]",
        );
        assert!(Settings::from_toml(&typo).is_err());
    }

    #[test]
    fn http_limits_have_defaults_and_bad_ones_name_their_field() {
        let defaults = Settings::from_toml(VALID).unwrap().http;
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.body_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.request_timeout, Duration::from_secs(60));
        assert_eq!(defaults.write_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_connections, 1024);

        let toml = format!(
            "{VALID}\n[http]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"3s\"\nrequest_timeout = \"40s\"\nwrite_timeout = \"5s\"\nmax_connections = 10\n"
        );
        let http = Settings::from_toml(&toml).unwrap().http;
        assert_eq!(http.write_timeout, Duration::from_secs(5));
        assert_eq!(http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(http.body_read_timeout, Duration::from_secs(3));
        assert_eq!(http.request_timeout, Duration::from_secs(40));
        assert_eq!(http.max_connections, 10);

        let toml = format!(
            "{VALID}\n[http]\nheader_read_timeout = \"0s\"\nwrite_timeout = \"0s\"\nrequest_timeout = \"20s\"\nmax_connections = 0\n"
        );
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        for expected in [
            "http.header_read_timeout: must be greater than zero",
            "http.write_timeout: must be greater than zero",
            "http.request_timeout: must be longer than inbound.media.timeout",
            "http.max_connections: must be 1 to 65536",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn the_memory_for_webhook_bodies_holds_at_least_one_body() {
        let defaults = Settings::from_toml(VALID).unwrap().inbound;
        assert_eq!(defaults.body_memory, 64 * 1024 * 1024);
        let toml = format!("{VALID}\n[inbound]\nbody_limit = 4096\nbody_memory = 8192\n");
        assert_eq!(
            Settings::from_toml(&toml).unwrap().inbound.body_memory,
            8192
        );
        let toml = format!("{VALID}\n[inbound]\nbody_limit = 4096\nbody_memory = 4095\n");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(
            err.contains("inbound.body_memory: must be at least inbound.body_limit"),
            "{err}"
        );
    }

    #[test]
    fn channel_names_must_fit_routing_keys() {
        assert!(is_valid_channel_name("acme-support_2"));
        assert!(!is_valid_channel_name("acme.support"));
        assert!(!is_valid_channel_name(""));
        assert!(!is_valid_channel_name("-acme"));
        assert!(!is_valid_channel_name(&"a".repeat(64)));
    }

    #[test]
    fn media_downloads_are_off_until_hosts_are_named() {
        let media = Settings::from_toml(VALID).unwrap().outbound.media;
        assert_eq!(media, MediaSettings::default());
        assert!(media.allowed_hosts.is_empty());
        assert!(!media.allow_http && !media.allow_private_networks);
        assert_eq!(media.download_timeout, Duration::from_secs(60));
        assert_eq!(media.max_download_bytes, 512 * 1024 * 1024);

        let toml = VALID.replace(
            "[[channels]]",
            r#"[outbound.media]
            allowed_hosts = ["CDN.example.com", "*.media.example.net", "[::1]", "203.0.113.7"]
            allow_http = true
            download_timeout = "5s"
            max_download_bytes = 1000
            [[channels]]"#,
        );
        let media = Settings::from_toml(&toml).unwrap().outbound.media;
        assert_eq!(
            media.allowed_hosts,
            vec![
                HostPattern::Exact("cdn.example.com".into()),
                HostPattern::Subdomains("media.example.net".into()),
                HostPattern::Exact("::1".into()),
                HostPattern::Exact("203.0.113.7".into()),
            ]
        );
        assert!(media.allow_http);
        assert_eq!(media.download_timeout, Duration::from_secs(5));
        assert_eq!(media.max_download_bytes, 1000);
    }

    #[test]
    fn bad_media_settings_name_their_field() {
        let toml = VALID.replace(
            "[[channels]]",
            r#"[outbound.media]
            allowed_hosts = ["ok.example.com", "https://cdn.example.com/", "*", "a..b"]
            download_timeout = "0s"
            max_download_bytes = 0
            spool_dir = "/nonexistent/xbridge-spool"
            [[channels]]"#,
        );
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        for expected in [
            "outbound.media.allowed_hosts[1]: \"https://cdn.example.com/\" is not a host name",
            "outbound.media.allowed_hosts[2]",
            "outbound.media.allowed_hosts[3]",
            "outbound.media.download_timeout",
            "outbound.media.max_download_bytes",
            "outbound.media.spool_dir: /nonexistent/xbridge-spool is not a directory",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        assert!(!err.contains("allowed_hosts[0]"), "{err}");
    }

    #[test]
    fn host_patterns_match_exact_names_and_subdomains() {
        let exact = HostPattern::parse("cdn.example.com").unwrap();
        assert!(exact.matches("cdn.example.com"));
        assert!(exact.matches("CDN.example.com."));
        assert!(!exact.matches("a.cdn.example.com"));
        assert!(!exact.matches("evilcdn.example.com"));

        let wildcard = HostPattern::parse("*.example.com").unwrap();
        assert_eq!(wildcard.to_string(), "*.example.com");
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("badexample.com"));
        assert!(!wildcard.matches("example.com.evil.net"));

        let v6 = HostPattern::parse("[::1]").unwrap();
        assert!(v6.matches("[::1]"));
        assert!(v6.matches("0:0:0:0:0:0:0:1"));
        let v4 = HostPattern::parse("127.0.0.1").unwrap();
        assert!(v4.matches("127.0.0.1"));
        assert!(!v4.matches("127.0.0.2"));
        for bad in [
            "",
            "*",
            "*.",
            "a b",
            "cdn.example.com:443",
            "-a.com",
            "http://a.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_embedded_state_store_is_the_default() {
        let settings = Settings::from_toml(VALID).unwrap();
        let StateBackend::Embedded { path } = &settings.state.backend else {
            panic!("expected the embedded store");
        };
        assert_eq!(path, Path::new("xbridge-state.redb"));
    }

    #[test]
    fn the_postgres_state_store_takes_a_secret_url_and_a_schema() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg-url");
        std::fs::write(&file, "postgres://xbridge:pg-s3cret@db:5432/xbridge\n").unwrap();
        let toml = format!(
            "{VALID}\n[state]\nbackend = \"postgres\"\nurl = {{ file = {:?} }}\nschema = \"bridge\"\n",
            file.display().to_string()
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let StateBackend::Postgres { url, schema } = &settings.state.backend else {
            panic!("expected the postgres store");
        };
        assert_eq!(
            url.expose_secret(),
            "postgres://xbridge:pg-s3cret@db:5432/xbridge"
        );
        assert_eq!(schema, "bridge");
        let shown = format!("{settings:?} {}", settings.state.backend.describe());
        assert!(!shown.contains("pg-s3cret"), "{shown}");

        let toml =
            format!("{VALID}\n[state]\nbackend = \"postgres\"\nurl = \"postgresql://db/x\"\n");
        let StateBackend::Postgres { schema, .. } =
            Settings::from_toml(&toml).unwrap().state.backend
        else {
            panic!("expected the postgres store");
        };
        assert_eq!(schema, DEFAULT_STATE_SCHEMA);
    }

    #[test]
    fn state_store_mistakes_name_their_field() {
        let cases = [
            ("backend = \"postgres\"", "state.url: required"),
            (
                "backend = \"postgres\"\nurl = \"mysql://pw@db/x\"",
                "state.url: must start with postgres://",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://db/x\"\nschema = \"Bad-Name\"",
                "state.schema",
            ),
            ("url = \"postgres://db/x\"", "state.url: only used with"),
            ("schema = \"x\"", "state.schema: only used with"),
        ];
        for (state, expected) in cases {
            let toml = format!("{VALID}\n[state]\n{state}\n");
            let ConfigError::Invalid(errors) = Settings::from_toml(&toml).unwrap_err() else {
                panic!("expected validation errors for {state}");
            };
            let all = errors.join("\n");
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
            assert!(!all.contains("pw@"), "{all}");
        }
        let toml = format!("{VALID}\n[state]\nbackend = \"redis\"\n");
        assert!(matches!(
            Settings::from_toml(&toml),
            Err(ConfigError::Read(_))
        ));
    }

    #[test]
    fn delay_queue_names_read_as_durations() {
        let names = TopologyNames::default();
        assert_eq!(
            names.delay_queue(Duration::from_secs(10)),
            "xbridge.delay.10s"
        );
        assert_eq!(
            names.delay_queue(Duration::from_secs(90)),
            "xbridge.delay.1m30s"
        );
        assert_eq!(names.outgoing_queue("acme"), "xbridge.outgoing.acme");
    }
}
