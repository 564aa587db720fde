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

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::ExposeSecret as _;
use serde::Deserialize;

pub use amqp::{AmqpSettings, BrokerAddress, ControlSettings, TopologyNames};
pub use channels::{
    is_valid_channel_name, oauth2_client_id_problem, xaa_events_problem, ChannelSettings,
    InboundMode, OAuth2Channel, WebhookApi, XaaEvent,
};
pub use http::HttpSettings;
pub use inbound::InboundSettings;
pub use inbound_media::{MediaProxySettings, DEFAULT_MEDIA_ORIGINS};
pub use outbound::{
    CreditsSettings, OutboundSettings, RetrySettings, DEFAULT_MAX_REPLY_BYTES,
    MAX_REPLY_BYTES_LIMIT,
};
pub use outbound_media::{HostPattern, MediaSettings, MAX_MEDIA_BYTES};
pub use state::{
    PostgresTls, StateBackend, StateSettings, DEFAULT_PRUNE_INTERVAL, DEFAULT_REPLICA_EXPIRY,
    DEFAULT_REPLICA_HEARTBEAT, DEFAULT_RETENTION, DEFAULT_STATE_SCHEMA,
};
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
    secret_sources(raw)
        .into_iter()
        .filter_map(|(setting, source)| source.exposure(&setting))
        .collect()
}

/// The files secrets are read from (`{ file = "…" }`), in file order.
fn secret_files(raw: &RawSettings) -> Vec<PathBuf> {
    secret_sources(raw)
        .into_iter()
        .filter_map(|(_, source)| match source {
            SecretSource::File { file } => Some(file.clone()),
            SecretSource::Inline(_) | SecretSource::Env { .. } => None,
        })
        .collect()
}

/// Every secret of the file, by setting.
fn secret_sources(raw: &RawSettings) -> Vec<(String, &SecretSource)> {
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
}

impl Settings {
    /// Reads `path` (TOML), applies `XBRIDGE_…` environment overrides and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::from_figment(file(path)?)
    }

    /// Parses a configuration from a TOML string (tests, the demo), with the
    /// same environment overrides and validation as [`Settings::load`].
    pub fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    /// [`Settings::load`], keeping what each section was written as, so a
    /// reload can tell which sections changed since the process started.
    pub fn load_with_sections(path: &Path) -> Result<Loaded, ConfigError> {
        Self::with_sections(file(path)?)
    }

    /// Only `[telemetry]` of `path`, with the environment overrides: what a
    /// tool asking the running bridge needs (where its operations port is),
    /// without resolving the secrets the rest of the file names, which the
    /// shell it runs in may not have.
    pub fn load_telemetry(path: &Path) -> Result<TelemetrySettings, ConfigError> {
        let figment = with_env(file(path)?);
        if figment.find_value("telemetry").is_err() {
            return Ok(TelemetrySettings::default());
        }
        figment
            .extract_inner("telemetry")
            .map_err(|e| ConfigError::Read(without_source_lines(&e.to_string())))
    }

    /// [`Settings::from_toml`] with the sections, like [`Settings::load_with_sections`].
    pub fn from_toml_with_sections(toml: &str) -> Result<Loaded, ConfigError> {
        Self::with_sections(Figment::from(Toml::string(toml)))
    }

    fn with_sections(figment: Figment) -> Result<Loaded, ConfigError> {
        let figment = with_env(figment);
        let sections = Sections::of(&figment);
        let secret_files = figment
            .extract::<RawSettings>()
            .map(|raw| secret_files(&raw))
            .unwrap_or_default();
        let settings = Self::from_merged(figment)?;
        Ok(Loaded {
            settings,
            sections,
            secret_files,
        })
    }

    fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        Self::from_merged(with_env(figment))
    }

    fn from_merged(figment: Figment) -> Result<Settings, ConfigError> {
        let raw: RawSettings = figment
            .extract()
            .map_err(|e| ConfigError::Read(without_source_lines(&e.to_string())))?;
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
        if channels.len() > amqp.max_channels {
            errors.push(format!(
                "[[channels]]: {} channels, more than amqp.max_channels ({})",
                channels.len(),
                amqp.max_channels
            ));
        }
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

/// The TOML file at `path`; a missing file is an error (figment would read
/// it as empty).
fn file(path: &Path) -> Result<Figment, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Read(format!(
            "{} does not exist",
            path.display()
        )));
    }
    Ok(Figment::from(Toml::file(path)))
}

/// A TOML parse error without the lines of the file it quotes: the line in
/// error may hold a secret (`access_token = "…` with its quote missing), and
/// the line and column already say where it is.
fn without_source_lines(message: &str) -> String {
    let quoted = |line: &str| {
        let line = line.trim_start();
        line.starts_with('|')
            || line
                .split_once('|')
                .is_some_and(|(n, _)| n.trim().parse::<u64>().is_ok())
    };
    message
        .lines()
        .filter(|line| !quoted(line))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// `figment` with the `XBRIDGE_…` environment overrides on top.
fn with_env(figment: Figment) -> Figment {
    // Only nested keys (`XBRIDGE_AMQP__URL`) are settings, so an unrelated
    // `XBRIDGE_SOMETHING` in the environment is not an error.
    figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    )
}

/// The sections only a restart applies: everything but `[[channels]]`.
pub const RESTART_SECTIONS: [&str; 7] = [
    "amqp",
    "x",
    "outbound",
    "inbound",
    "state",
    "telemetry",
    "http",
];

/// A configuration as validated, and as written.
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// Each section as written.
    pub sections: Sections,
    /// The files its secrets are read from, to watch for a rotation.
    pub secret_files: Vec<PathBuf>,
}

/// Each of [`RESTART_SECTIONS`] as written in the file and the environment
/// (before validation and defaults). Compared as written rather than as
/// validated because most validated sections cannot be compared (secrets)
/// and a section is what the operator edits. No `Debug`: inline secrets are
/// in it.
pub struct Sections(Vec<Option<figment::value::Value>>);

impl Sections {
    fn of(figment: &Figment) -> Sections {
        Sections(
            RESTART_SECTIONS
                .iter()
                .map(|section| figment.find_value(section).ok())
                .collect(),
        )
    }
}

impl Loaded {
    /// The sections other than `[[channels]]` in which `self` differs from
    /// `running`: as written, or in a secret read from a file (a rotated
    /// mounted secret). Named, never shown.
    pub fn restart_sections(&self, running: &Loaded) -> Vec<&'static str> {
        let (now, before) = (
            file_secrets(&self.settings),
            file_secrets(&running.settings),
        );
        RESTART_SECTIONS
            .iter()
            .enumerate()
            .filter(|&(i, section)| {
                let secret_changed = now
                    .iter()
                    .zip(&before)
                    .any(|((s, a), (_, b))| s == section && a != b);
                self.sections.0[i] != running.sections.0[i] || secret_changed
            })
            .map(|(_, section)| *section)
            .collect()
    }
}

fn exposed(secret: &Option<secrecy::SecretString>) -> Option<&str> {
    secret.as_ref().map(|s| s.expose_secret())
}

/// The secrets of the restart sections, by section, as resolved: a secret
/// read from a file changes with the file while the section reads the same.
fn file_secrets(s: &Settings) -> [(&'static str, Option<&str>); 4] {
    let state_url = match &s.state.backend {
        StateBackend::Postgres { url, .. } => Some(url.expose_secret()),
        StateBackend::Embedded { .. } => None,
    };
    [
        ("amqp", Some(s.amqp.url.expose_secret())),
        ("state", state_url),
        ("state", exposed(&s.state.credentials_key)),
        ("inbound", exposed(&s.inbound.media.signing_key)),
    ]
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
    fn more_channels_than_amqp_max_channels_is_refused() {
        assert_eq!(Settings::from_toml(VALID).unwrap().amqp.max_channels, 1000);
        let channel = |name: &str| {
            format!(
                "[[channels]]\nname = \"{name}\"\nconsumer_key = \"ck\"\nconsumer_secret = \"cs\"\naccess_token = \"at-{name}\"\naccess_token_secret = \"ats\"\nbearer_token = \"bt\"\n"
            )
        };
        let one = format!("[amqp]\nmax_channels = 1\n{}", channel("acme"));
        assert!(Settings::from_toml(&one).is_ok());
        let two = format!("{one}{}", channel("globex"));
        let Err(ConfigError::Invalid(errors)) = Settings::from_toml(&two) else {
            panic!("two channels over a bound of one load");
        };
        assert!(
            errors.iter().any(|e| e.contains("amqp.max_channels (1)")),
            "{errors:?}"
        );
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
    fn a_reload_names_the_sections_that_need_a_restart_and_not_the_channels() {
        let dir = tempfile::tempdir().unwrap();
        let amqp_url = dir.path().join("amqp_url");
        std::fs::write(&amqp_url, "amqp://a:one@127.0.0.1:5672/%2f").unwrap();
        let toml = |extra: &str| {
            VALID.replace(
                "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
                &format!("url = {{ file = {amqp_url:?} }}\n{extra}"),
            )
        };
        let load = |toml: &str| Settings::from_toml_with_sections(toml).unwrap();
        let running = load(&toml(""));
        let channels_only =
            load(&toml("").replace("access_token = \"at\"", "access_token = \"at2\""));
        assert!(channels_only.restart_sections(&running).is_empty());
        let more = load(&format!(
            "{}\n[outbound]\nshutdown_grace = \"3s\"\n",
            toml("prefetch = 7")
        ));
        assert_eq!(more.restart_sections(&running), ["amqp", "outbound"]);
        std::fs::write(&amqp_url, "amqp://a:two@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(load(&toml("")).restart_sections(&running), ["amqp"]);
    }

    #[test]
    fn a_toml_syntax_error_says_where_without_quoting_the_line() {
        for toml in [
            "[[channels]]\nname = \"a\"\naccess_token = \"v3ry-s3cret\n",
            "[[channels]]\nname = \"a\"\naccess_token = \"v3ry-s3cret\" x\n",
        ] {
            let err = Settings::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains("line 3"), "{err}");
            assert!(!err.contains("v3ry-s3cret"), "{err}");
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
