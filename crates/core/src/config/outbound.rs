//! `[outbound]`: retries, credits, the reply size bound and the shutdown grace
//! of the outbound side (its media downloads are in [`super::outbound_media`]).

use std::time::Duration;

use serde::Deserialize;

use super::outbound_media::{self, MediaSettings, RawMedia};

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

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawOutbound {
    #[serde(with = "humantime_serde")]
    pub(super) shutdown_grace: Duration,
    pub(super) retry: RetrySettings,
    pub(super) credits: CreditsSettings,
    pub(super) media: RawMedia,
    pub(super) max_reply_bytes: usize,
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

/// RabbitMQ closes a channel whose delivery stays unacknowledged longer than
/// its `consumer_timeout` (30 minutes by default); replies waiting for credits
/// are held unacknowledged, so their wait must stay well below it.
const MAX_CREDITS_WAIT: Duration = Duration::from_secs(25 * 60);

/// Validates `[outbound]` and its sub-tables.
pub(super) fn validate(raw: RawOutbound, errors: &mut Vec<String>) -> OutboundSettings {
    let retry = &raw.retry;
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
    let credits = &raw.credits;
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
    if !(1024..=MAX_REPLY_BYTES_LIMIT).contains(&raw.max_reply_bytes) {
        errors.push(format!(
            "outbound.max_reply_bytes: must be 1024 to {MAX_REPLY_BYTES_LIMIT} (RabbitMQ's largest max_message_size)"
        ));
    }
    OutboundSettings {
        shutdown_grace: raw.shutdown_grace,
        media: outbound_media::validate(raw.media, errors),
        retry: raw.retry,
        credits: raw.credits,
        max_reply_bytes: raw.max_reply_bytes,
    }
}

fn duration_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}
