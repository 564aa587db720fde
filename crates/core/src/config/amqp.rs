//! `[amqp]`: the broker connection and the names of the topology on it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::secret::SecretSource;

/// The broker connection and topology.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// AMQP URL; a secret because it usually carries a password.
    pub url: SecretString,
    /// The nodes to connect to, in the order tried: `url` itself, or `url`
    /// with each of `amqp.hosts` as its host and port. Never empty.
    pub brokers: Vec<BrokerAddress>,
    /// Unacknowledged replies a channel's consumer may hold: bounds memory and
    /// how many replies wait in the bridge while a channel is paused.
    pub prefetch: u16,
    /// The most reply consumers one AMQP channel carries. Every channel's
    /// consumer on one AMQP channel of its own made a thousand channels a
    /// thousand AMQP channels on one connection, and a RabbitMQ 3.10 node
    /// stopped accepting connections while it closed them (issue 15). Each
    /// consumer keeps its own `amqp.prefetch` (RabbitMQ's `basic.qos` with
    /// `global=false` is per consumer).
    pub consumers_per_channel: u16,
    /// Exchange and queue names.
    pub topology: TopologyNames,
    /// The most channels (the file's and the CRM's together) the bridge serves.
    /// Each channel holds AMQP channels on the bridge's connections (a poll
    /// lease of its own; reply consumers share `consumers_per_channel` to
    /// one), and RabbitMQ allows 2047 per connection
    /// (`channel_max`): past that the connection's next channel fails, which
    /// would stop replies on every channel. A command, reload or start that
    /// would serve more is refused instead.
    pub max_channels: usize,
    /// The CRM's commands that manage channels (`[amqp.control]`).
    pub control: ControlSettings,
}

/// One RabbitMQ node the bridge may connect to: what connecting needs and
/// what a log may say of it.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    /// The URL to connect with; a secret like `amqp.url`, which it is or
    /// which it copies the credentials, virtual host and options of.
    pub url: SecretString,
    /// `host:port`, how logs name the node: never the credentials.
    pub node: String,
}

impl BrokerAddress {
    /// The node `url` names (its `host:port`, the scheme's port when it has
    /// none; `unknown` for a URL that does not parse).
    pub fn new(url: SecretString) -> BrokerAddress {
        let node = url::Url::parse(url.expose_secret())
            .ok()
            .and_then(|parsed| node_of(&parsed))
            .unwrap_or_else(|| "unknown".to_owned());
        BrokerAddress { url, node }
    }
}

/// `host:port` of an AMQP URL, the scheme's default port when it has none.
fn node_of(url: &url::Url) -> Option<String> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let port = url
        .port()
        .unwrap_or(if url.scheme() == "amqps" { 5671 } else { 5672 });
    Some(format!("{host}:{port}"))
}

/// `url` with `entry` (`host` or `host:port`, an IPv6 address in brackets)
/// as its host and port; `None` when `entry` is not that.
fn with_host(url: &url::Url, entry: &str) -> Option<url::Url> {
    if entry.is_empty() || entry.contains(['@', '/', '?', '#', ' ']) {
        return None;
    }
    let parsed = url::Url::parse(&format!("{}://{entry}", url.scheme())).ok()?;
    let host = parsed.host_str().filter(|h| !h.is_empty())?;
    let mut node = url.clone();
    node.set_host(Some(host)).ok()?;
    node.set_port(parsed.port()).ok()?;
    Some(node)
}

/// `[amqp.control]`: who may manage channels with commands, and the names the
/// commands travel under.
///
/// Empty `allowed_users` (the default) turns control off: the bridge declares
/// and consumes nothing of it, so a deployment that never asked for runtime
/// channels has no way in for them. Turning it on needs
/// `state.credentials_key`, as the CRM's channels are stored only sealed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSettings {
    /// RabbitMQ users whose commands are applied: a command is accepted only
    /// when its AMQP `user_id` (which RabbitMQ checks is the publishing
    /// connection's user) is one of them.
    pub allowed_users: Vec<String>,
    /// Topic exchange the CRM publishes commands to (routing key = command).
    pub exchange: String,
    /// Quorum queue with a single active consumer bound to it: exactly one
    /// replica handles each command.
    pub commands_queue: String,
    /// Fanout exchange of change notices (`{channel, revision}`), one
    /// exclusive queue per replica bound to it.
    pub changes_exchange: String,
    /// How long a command waits for the state store before it is refused
    /// `unavailable` (and acked): held longer, RabbitMQ's `consumer_timeout`
    /// (30 min by default) would close the channel and the command would come
    /// back, counting against the queue's delivery limit, until dropped
    /// without an answer.
    #[serde(with = "humantime_serde")]
    pub store_wait: Duration,
}

/// How long a command waits for the state store by default.
pub const DEFAULT_STORE_WAIT: Duration = Duration::from_secs(300);

/// The most channels by default: half of RabbitMQ's default `channel_max`
/// (2047), which a polled channel on one connection uses two of at worst.
pub const DEFAULT_MAX_CHANNELS: usize = 1000;

/// Reply consumers per AMQP channel by default: 1,000 channels take 10 AMQP
/// channels. An AMQP channel is one process in RabbitMQ, which dispatches
/// and tracks the acknowledgements of all its consumers' deliveries (up to
/// `prefetch` each: 6,400 at the default 64), so a few busy channels do not
/// all queue behind one process; and a channel the broker closes (an error
/// of one consumer's) takes at most this many consumers with it.
pub const DEFAULT_CONSUMERS_PER_CHANNEL: u16 = 100;

/// The most reply consumers per AMQP channel a configuration may ask for.
pub const MAX_CONSUMERS_PER_CHANNEL: u16 = 1000;

impl Default for ControlSettings {
    fn default() -> Self {
        Self::with_prefix("xbridge")
    }
}

impl ControlSettings {
    /// Every name under one prefix (`<prefix>.control`, …), no user allowed;
    /// tests use it for a topology of their own.
    pub fn with_prefix(prefix: &str) -> Self {
        ControlSettings {
            allowed_users: Vec::new(),
            exchange: format!("{prefix}.control"),
            commands_queue: format!("{prefix}.control.commands"),
            changes_exchange: format!("{prefix}.control.changes"),
            store_wait: DEFAULT_STORE_WAIT,
        }
    }

    /// Whether the bridge consumes commands at all.
    pub fn enabled(&self) -> bool {
        !self.allowed_users.is_empty()
    }

    /// Whether `user` may manage channels.
    pub fn allows(&self, user: &str) -> bool {
        self.allowed_users.iter().any(|allowed| allowed == user)
    }
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

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAmqp {
    pub(super) url: SecretSource,
    pub(super) hosts: Vec<String>,
    pub(super) prefetch: u16,
    pub(super) consumers_per_channel: u16,
    pub(super) max_channels: usize,
    pub(super) topology: TopologyNames,
    pub(super) control: ControlSettings,
}

impl Default for RawAmqp {
    fn default() -> Self {
        RawAmqp {
            url: SecretSource::Inline("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            hosts: Vec::new(),
            prefetch: 64,
            consumers_per_channel: DEFAULT_CONSUMERS_PER_CHANNEL,
            max_channels: DEFAULT_MAX_CHANNELS,
            topology: TopologyNames::default(),
            control: ControlSettings::default(),
        }
    }
}

/// Validates `[amqp]`: a usable URL, a prefetch, names RabbitMQ accepts.
pub(super) fn validate(raw: RawAmqp, errors: &mut Vec<String>) -> AmqpSettings {
    let url = raw.url.resolve().unwrap_or_else(|e| {
        errors.push(format!("amqp.url: {e}"));
        SecretString::from("")
    });
    let shown = url.expose_secret();
    if !shown.is_empty() && !shown.starts_with("amqp://") && !shown.starts_with("amqps://") {
        errors.push("amqp.url: must start with amqp:// or amqps://".into());
    }
    let brokers = brokers(&url, &raw.hosts, errors);
    if raw.prefetch == 0 {
        errors.push("amqp.prefetch: must be at least 1".into());
    }
    if raw.max_channels == 0 {
        errors.push("amqp.max_channels: must be at least 1".into());
    }
    if !(1..=MAX_CONSUMERS_PER_CHANNEL).contains(&raw.consumers_per_channel) {
        errors.push(format!(
            "amqp.consumers_per_channel: must be 1 to {MAX_CONSUMERS_PER_CHANNEL}"
        ));
    }
    if raw.control.store_wait.is_zero() {
        errors.push("amqp.control.store_wait: must be more than 0s".into());
    }
    check_topology(&raw.topology, errors);
    check_control(&raw.control, errors);
    AmqpSettings {
        url,
        brokers,
        prefetch: raw.prefetch,
        consumers_per_channel: raw.consumers_per_channel,
        max_channels: raw.max_channels,
        topology: raw.topology,
        control: raw.control,
    }
}

/// The nodes of `amqp.hosts` on `url`'s credentials, virtual host and
/// options, or `url` alone. An entry's error names its index, never the URL.
fn brokers(url: &SecretString, hosts: &[String], errors: &mut Vec<String>) -> Vec<BrokerAddress> {
    if hosts.is_empty() {
        return vec![BrokerAddress::new(url.clone())];
    }
    let Ok(parsed) = url::Url::parse(url.expose_secret()) else {
        errors
            .push("amqp.hosts: amqp.url must be a URL to take the hosts' credentials from".into());
        return vec![BrokerAddress::new(url.clone())];
    };
    let mut brokers = Vec::with_capacity(hosts.len());
    for (i, entry) in hosts.iter().enumerate() {
        match with_host(&parsed, entry.trim()) {
            Some(node) => brokers.push(BrokerAddress {
                node: node_of(&node).unwrap_or_else(|| entry.clone()),
                url: SecretString::from(node.to_string()),
            }),
            None => errors.push(format!(
                "amqp.hosts[{i}]: must be host or host:port (an IPv6 address in brackets), without credentials"
            )),
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = brokers.iter().find(|b| !seen.insert(b.node.as_str())) {
        errors.push(format!("amqp.hosts: {} is listed twice", twice.node));
    }
    if brokers.is_empty() {
        brokers.push(BrokerAddress::new(url.clone()));
    }
    brokers
}

fn check_control(control: &ControlSettings, errors: &mut Vec<String>) {
    if control.allowed_users.iter().any(|user| user.is_empty()) {
        errors.push("amqp.control.allowed_users: a user name must not be empty".into());
    }
    let fields = [
        ("exchange", &control.exchange),
        ("commands_queue", &control.commands_queue),
        ("changes_exchange", &control.changes_exchange),
    ];
    for (field, value) in fields {
        if value.is_empty() || value.len() > 200 || value.starts_with("amq.") {
            errors.push(format!(
                "amqp.control.{field}: must be 1 to 200 characters, not starting with amq."
            ));
        }
    }
}

/// Control on (`amqp.control.allowed_users` set) stores the CRM's channels,
/// whose credentials are stored only sealed: without `state.credentials_key`
/// the first command would fail, so the start does.
pub(super) fn check_control_key(
    amqp: &AmqpSettings,
    has_credentials_key: bool,
    errors: &mut Vec<String>,
) {
    if amqp.control.enabled() && !has_credentials_key {
        errors.push("amqp.control.allowed_users: managing channels needs state.credentials_key (the CRM's credentials are stored only encrypted)".into());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, VALID};

    #[test]
    fn control_is_off_by_default_and_on_needs_the_credentials_key() {
        let settings = Settings::from_toml(VALID).unwrap();
        assert!(!settings.amqp.control.enabled());
        assert_eq!(settings.amqp.control.exchange, "xbridge.control");
        assert_eq!(
            settings.amqp.control.commands_queue,
            "xbridge.control.commands"
        );
        let on = format!("{VALID}\n[amqp.control]\nallowed_users = [\"crm\"]\n");
        let error = Settings::from_toml(&on).unwrap_err().to_string();
        assert!(error.contains("needs state.credentials_key"), "{error}");
        let keyed = format!("{on}\n[state]\ncredentials_key = \"{}\"\n", "ab".repeat(32));
        let settings = Settings::from_toml(&keyed).unwrap();
        assert!(settings.amqp.control.allows("crm"));
        assert!(!settings.amqp.control.allows("guest"));
    }

    #[test]
    fn hosts_take_the_url_s_credentials_vhost_and_options() {
        let settings = Settings::from_toml(VALID).unwrap();
        let nodes: Vec<_> = settings
            .amqp
            .brokers
            .iter()
            .map(|b| b.node.as_str())
            .collect();
        assert_eq!(nodes, ["127.0.0.1:5672"]);

        let cluster = VALID.replace(
            "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            "url = \"amqps://u:p%40ss@ignored/vh?heartbeat=10\"\nhosts = [\"rabbit-1\", \"rabbit-2:5670\", \"[::1]:5673\"]",
        );
        let settings = Settings::from_toml(&cluster).unwrap();
        let brokers: Vec<_> = settings
            .amqp
            .brokers
            .iter()
            .map(|b| (b.node.as_str(), b.url.expose_secret().to_owned()))
            .collect();
        assert_eq!(
            brokers,
            [
                (
                    "rabbit-1:5671",
                    "amqps://u:p%40ss@rabbit-1/vh?heartbeat=10".to_owned()
                ),
                (
                    "rabbit-2:5670",
                    "amqps://u:p%40ss@rabbit-2:5670/vh?heartbeat=10".to_owned()
                ),
                (
                    "[::1]:5673",
                    "amqps://u:p%40ss@[::1]:5673/vh?heartbeat=10".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_host_with_credentials_or_a_path_is_refused_without_showing_the_url() {
        for (hosts, error) in [
            (
                "[\"u:secret@rabbit-1\"]",
                "amqp.hosts[0]: must be host or host:port",
            ),
            (
                "[\"rabbit-1\", \"rabbit-2/vh\"]",
                "amqp.hosts[1]: must be host",
            ),
            ("[\"rabbit-1:99999\"]", "amqp.hosts[0]: must be host"),
            (
                "[\"rabbit-1\", \"rabbit-1:5672\"]",
                "rabbit-1:5672 is listed twice",
            ),
        ] {
            let toml = VALID.replace(
                "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
                &format!("url = \"amqp://guest:topsecret@127.0.0.1:5672/%2f\"\nhosts = {hosts}"),
            );
            let text = Settings::from_toml(&toml).unwrap_err().to_string();
            assert!(text.contains(error), "{hosts}: {text}");
            assert!(!text.contains("topsecret"), "{text}");
        }
    }

    #[test]
    fn consumers_per_channel_is_100_by_default_and_1_to_1000() {
        let settings = Settings::from_toml(VALID).unwrap();
        assert_eq!(settings.amqp.consumers_per_channel, 100);
        for (value, ok) in [("0", false), ("1", true), ("1000", true), ("1001", false)] {
            let toml = VALID.replace(
                "[amqp]\n",
                &format!("[amqp]\nconsumers_per_channel = {value}\n"),
            );
            let parsed = Settings::from_toml(&toml);
            match (parsed, ok) {
                (Ok(s), true) => assert_eq!(s.amqp.consumers_per_channel.to_string(), value),
                (Err(e), false) => assert!(
                    e.to_string()
                        .contains("amqp.consumers_per_channel: must be 1 to 1000"),
                    "{e}"
                ),
                (parsed, _) => panic!("{value}: {:?}", parsed.map(|_| ())),
            }
        }
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
