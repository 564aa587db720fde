//! `[inbound]`: X's webhook server and the pollers (the media proxy is in
//! [`super::inbound_media`]).

use std::time::Duration;

use serde::Deserialize;

use super::inbound_media::{self, MediaProxySettings, RawMediaProxy};

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
    /// A gap in an X App's activity stream (`inbound = "stream"`) longer than this is
    /// filled by reading the stream channels' DMs (`GET /2/dm_events`) back to its start:
    /// X's backfill on reconnecting covers 5 minutes, the default and the most allowed.
    pub stream_catch_up_after: Duration,
    /// The media proxy: the bridge URLs attachments carry, since X's own
    /// media URLs need the channel's OAuth signature, which the CRM lacks.
    pub media: MediaProxySettings,
}

impl Default for InboundSettings {
    fn default() -> Self {
        RawInbound::default().settings(|_| MediaProxySettings::default())
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawInbound {
    pub(super) listen: Option<std::net::SocketAddr>,
    pub(super) body_limit: usize,
    pub(super) body_memory: usize,
    pub(super) publish_echoes: bool,
    pub(super) publish_activity: bool,
    #[serde(with = "humantime_serde")]
    pub(super) poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) safety_poll_interval: Duration,
    pub(super) backfill_days: u32,
    #[serde(with = "humantime_serde")]
    pub(super) profile_cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) webhook_check_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) stream_catch_up_after: Duration,
    pub(super) media: RawMediaProxy,
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
            stream_catch_up_after: Duration::from_secs(300),
            media: RawMediaProxy::default(),
        }
    }
}

impl RawInbound {
    /// The settings as read, with `[inbound.media]` made by `media` (defaults
    /// or validation): one field list for both.
    fn settings(self, media: impl FnOnce(RawMediaProxy) -> MediaProxySettings) -> InboundSettings {
        InboundSettings {
            listen: self.listen,
            body_limit: self.body_limit,
            body_memory: self.body_memory,
            publish_echoes: self.publish_echoes,
            publish_activity: self.publish_activity,
            poll_interval: self.poll_interval,
            safety_poll_interval: self.safety_poll_interval,
            backfill_days: self.backfill_days,
            profile_cache_ttl: self.profile_cache_ttl,
            webhook_check_interval: self.webhook_check_interval,
            stream_catch_up_after: self.stream_catch_up_after,
            media: media(self.media),
        }
    }
}

/// Validates `[inbound]` and `[inbound.media]`.
pub(super) fn validate(raw: RawInbound, errors: &mut Vec<String>) -> InboundSettings {
    if raw.body_limit < 1024 {
        errors.push("inbound.body_limit: must be at least 1024 bytes".into());
    }
    if raw.body_memory < raw.body_limit {
        errors.push("inbound.body_memory: must be at least inbound.body_limit".into());
    }
    if raw.poll_interval.is_zero() || raw.safety_poll_interval.is_zero() {
        errors.push(
            "inbound.poll_interval and inbound.safety_poll_interval: must be greater than zero"
                .into(),
        );
    }
    if raw.stream_catch_up_after.is_zero() || raw.stream_catch_up_after > Duration::from_secs(300) {
        errors.push(
            "inbound.stream_catch_up_after: more than zero and at most 5m (X's activity stream backfills 5 minutes; a longer gap would be lost)"
                .into(),
        );
    }
    if raw.backfill_days > 30 {
        errors.push("inbound.backfill_days: at most 30 (X keeps DM events for 30 days)".into());
    }
    raw.settings(|media| inbound_media::validate(media, errors))
}

#[cfg(test)]
mod tests {
    use crate::config::{Settings, VALID};

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
}
