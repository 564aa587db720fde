//! Typed, layered configuration: a TOML file, then `XBRIDGE_…` environment
//! overrides, validated as a whole at startup.
//!
//! The file is read into a raw form first and then validated field by field, so
//! that one run reports every problem at once, each naming its field
//! (`channels[1].consumer_secret: environment variable ACME_SECRET is not set`).

mod amqp;
mod channels;
mod http;
mod inbound;
mod inbound_media;
mod outbound;
mod outbound_media;
mod state;
mod telemetry;
mod x;

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

pub use amqp::{AmqpSettings, ControlSettings, TopologyNames};
pub use channels::{is_valid_channel_name, ChannelSettings, InboundMode};
pub use http::HttpSettings;
pub use inbound::InboundSettings;
pub use inbound_media::{MediaProxySettings, DEFAULT_MEDIA_ORIGINS};
pub use outbound::{
    CreditsSettings, OutboundSettings, RetrySettings, DEFAULT_MAX_REPLY_BYTES,
    MAX_REPLY_BYTES_LIMIT,
};
pub use outbound_media::{HostPattern, MediaSettings, MAX_MEDIA_BYTES};
pub use state::{StateBackend, StateSettings, DEFAULT_STATE_SCHEMA};
pub use telemetry::{LogFormat, TelemetrySettings};
pub use x::XSettings;

use crate::secret::SecretSource;
use amqp::RawAmqp;
use channels::RawChannel;
use inbound::RawInbound;
use outbound::RawOutbound;
use state::RawState;
use x::RawX;

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

/// A warning for each secret read from a file that every user of the host can
/// read, naming the setting and the file (never the content).
fn exposed_secret_files(raw: &RawSettings) -> Vec<String> {
    let mut sources: Vec<(String, &SecretSource)> = vec![("amqp.url".into(), &raw.amqp.url)];
    if let Some(url) = &raw.state.url {
        sources.push(("state.url".into(), url));
    }
    if let Some(key) = &raw.state.credentials_key {
        sources.push(("state.credentials_key".into(), key));
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

    /// Validates each section in file order, collecting every error.
    fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
        let mut errors = Vec::new();
        let warnings = exposed_secret_files(&raw);
        let amqp = amqp::validate(raw.amqp, &mut errors);
        let x = x::validate(raw.x, &mut errors);
        let outbound = outbound::validate(raw.outbound, &mut errors);
        let inbound = inbound::validate(raw.inbound, &mut errors);
        let state = state::validate(raw.state, &mut errors);
        amqp::check_control_key(&amqp, state.credentials_key.is_some(), &mut errors);
        http::validate(&raw.http, inbound.media.timeout, &mut errors);
        let channels = channels::validate(raw.channels, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(Settings {
            amqp,
            x,
            outbound,
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

/// A minimal valid configuration the sections' tests start from.
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
