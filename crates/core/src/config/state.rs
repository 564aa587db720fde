//! `[state]`: where durable state lives, the embedded file or PostgreSQL.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use xbridge_store::postgres::{is_valid_schema_name, url_sets_sslmode};
use xbridge_store::postgres_tls::check_ca_file;
use xbridge_store::sealed::{CredentialsKey, SealError};
pub use xbridge_store::PostgresTls;

use crate::secret::SecretSource;

/// Where durable state lives (`[state]`): which replies were sent, which DM
/// events were delivered, each poller's cursor.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// The store and how to reach it.
    pub backend: StateBackend,
    /// The secret the channel registry's credentials are encrypted with in
    /// the store (`state.credentials_key`: random key material of at least
    /// 32 bytes in base64 or hex, checked at load). Unset,
    /// channels with credentials are not stored at all.
    pub credentials_key: Option<SecretString>,
    /// How long records of sent replies and delivered DMs are kept
    /// (`state.retention`); older ones are pruned.
    pub retention: Duration,
    /// How often the records older than the retention are pruned
    /// (`state.prune_interval`).
    pub prune_interval: Duration,
    /// How often this replica renews its heartbeat in the store
    /// (`state.replica_heartbeat`), and rebalances its share of the channels.
    pub replica_heartbeat: Duration,
    /// How long a heartbeat keeps a replica live (`state.replica_expiry`): a
    /// replica lost without leaving (killed, cut off) keeps its channels that
    /// long before the others take them.
    pub replica_expiry: Duration,
}

/// The retention by default: X's DM history reaches 30 days back (a poll or a
/// lookup of a sent DM can still return an event that old, whose record must
/// still say it was delivered or sent), plus 15 days for what can hold a reply
/// back before it is redelivered (a paused channel, a queue backed up over a
/// long outage, a restore).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(45 * 24 * 3600);

/// The shortest retention taken: below X's 30-day DM history, a DM X still
/// returns could be delivered to the CRM again.
pub const MIN_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);

/// How often records are pruned by default: each run removes a day's records
/// in small batches, so hourly keeps every run short.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Between a replica's heartbeats by default: a channel a replica lets go is
/// taken by the next within about this long.
pub const DEFAULT_REPLICA_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a heartbeat keeps a replica live by default: five heartbeats, so
/// a slow database or a pause of the process does not move every channel.
pub const DEFAULT_REPLICA_EXPIRY: Duration = Duration::from_secs(10);

impl StateSettings {
    /// The key credentials are sealed with, derived from
    /// `state.credentials_key`; [`SealError::NoKey`] when it is not set, so
    /// a command that would store credentials is refused with that reason.
    pub fn credentials_key(&self) -> Result<CredentialsKey, SealError> {
        CredentialsKey::derive(self.credentials_key.as_ref().ok_or(SealError::NoKey)?)
    }
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
        /// TLS to the database (`state.tls`, `state.ca_file`).
        tls: PostgresTls,
    },
}

impl StateBackend {
    /// Where the state is, for operators, without secrets: the file's path,
    /// or the PostgreSQL schema (the URL is never shown).
    pub fn describe(&self) -> String {
        match self {
            StateBackend::Embedded { path } => format!("embedded, {}", path.display()),
            StateBackend::Postgres { schema, tls, .. } => {
                format!("postgres, schema {schema}, tls {}", tls.mode())
            }
        }
    }
}

/// The schema used when `state.schema` is not set: the store's own default.
pub const DEFAULT_STATE_SCHEMA: &str = xbridge_store::postgres::DEFAULT_SCHEMA;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawState {
    backend: RawStateBackend,
    pub(super) path: PathBuf,
    pub(super) url: Option<SecretSource>,
    pub(super) schema: Option<String>,
    pub(super) credentials_key: Option<SecretSource>,
    tls: Option<RawTls>,
    ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    retention: Duration,
    #[serde(with = "humantime_serde")]
    prune_interval: Duration,
    #[serde(with = "humantime_serde")]
    replica_heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    replica_expiry: Duration,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawStateBackend {
    #[default]
    Embedded,
    Postgres,
}

/// `state.tls`, as libpq names its modes.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RawTls {
    Disable,
    Require,
    VerifyFull,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: RawStateBackend::Embedded,
            path: PathBuf::from("xbridge-state.redb"),
            url: None,
            schema: None,
            credentials_key: None,
            tls: None,
            ca_file: None,
            retention: DEFAULT_RETENTION,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
            replica_heartbeat: DEFAULT_REPLICA_HEARTBEAT,
            replica_expiry: DEFAULT_REPLICA_EXPIRY,
        }
    }
}

/// Validates `[state]`.
pub(super) fn validate(mut raw: RawState, errors: &mut Vec<String>) -> StateSettings {
    let credentials_key = credentials_key(raw.credentials_key.take(), errors);
    if raw.retention < MIN_RETENTION {
        errors.push(format!(
            "state.retention: {} is shorter than 31 days: X returns 30 days of DM history, so a DM it still returns could reach the CRM again",
            humantime::format_duration(raw.retention)
        ));
    }
    if raw.prune_interval.is_zero() {
        errors.push("state.prune_interval: must be longer than 0".into());
    }
    replica_timing(&raw, errors);
    let (retention, prune_interval) = (raw.retention, raw.prune_interval);
    let (replica_heartbeat, replica_expiry) = (raw.replica_heartbeat, raw.replica_expiry);
    let backend = match raw.backend {
        RawStateBackend::Embedded => embedded(raw, errors),
        RawStateBackend::Postgres => postgres(raw, errors),
    };
    StateSettings {
        backend,
        credentials_key,
        retention,
        prune_interval,
        replica_heartbeat,
        replica_expiry,
    }
}

/// A heartbeat of at least 100 ms (each is a few statements in the store),
/// and an expiry of at least three heartbeats, so one slow heartbeat does not
/// make a live replica look lost.
fn replica_timing(raw: &RawState, errors: &mut Vec<String>) {
    if raw.replica_heartbeat < Duration::from_millis(100) {
        errors.push("state.replica_heartbeat: must be at least 100ms".into());
    }
    if raw.replica_expiry < raw.replica_heartbeat * 3 {
        errors.push(format!(
            "state.replica_expiry: {} must be at least three times state.replica_heartbeat ({})",
            humantime::format_duration(raw.replica_expiry),
            humantime::format_duration(raw.replica_heartbeat)
        ));
    }
}

/// The secret the registry's credentials are sealed with, resolved and
/// checked to be key material a key derives from, so a weak secret stops
/// the start rather than the first command. The error never shows it.
fn credentials_key(source: Option<SecretSource>, errors: &mut Vec<String>) -> Option<SecretString> {
    let key = match source?.resolve() {
        Ok(key) => key,
        Err(e) => {
            errors.push(format!("state.credentials_key: {e}"));
            return None;
        }
    };
    if let Err(e) = CredentialsKey::derive(&key) {
        errors.push(e.to_string());
        return None;
    }
    Some(key)
}

/// The local file store. A URL or schema without the backend is a half-done
/// switch to PostgreSQL: running on a local file instead would split state.
fn embedded(raw: RawState, errors: &mut Vec<String>) -> StateBackend {
    for (field, set) in [
        ("url", raw.url.is_some()),
        ("schema", raw.schema.is_some()),
        ("tls", raw.tls.is_some()),
        ("ca_file", raw.ca_file.is_some()),
    ] {
        if set {
            errors.push(format!(
                "state.{field}: only used with state.backend = \"postgres\""
            ));
        }
    }
    StateBackend::Embedded { path: raw.path }
}

/// The PostgreSQL store: its URL (a secret) and the schema to keep state in.
fn postgres(raw: RawState, errors: &mut Vec<String>) -> StateBackend {
    let url = postgres_url(raw.url, errors);
    let schema = raw
        .schema
        .unwrap_or_else(|| DEFAULT_STATE_SCHEMA.to_owned());
    if !is_valid_schema_name(&schema) {
        errors.push(format!(
            "state.schema: {schema:?} must be 1 to 63 of a-z, 0-9 and _, starting with a letter or _, not pg_"
        ));
    }
    let tls = tls(raw.tls, raw.ca_file, errors);
    StateBackend::Postgres { url, schema, tls }
}

/// TLS to PostgreSQL: `disable` unless set (plain TCP, as before TLS was
/// supported); `verify-full` needs a CA file that holds a certificate, read
/// at load so a wrong path stops the start rather than every connection.
fn tls(mode: Option<RawTls>, ca_file: Option<PathBuf>, errors: &mut Vec<String>) -> PostgresTls {
    match (mode.unwrap_or(RawTls::Disable), ca_file) {
        (RawTls::VerifyFull, Some(ca_file)) => {
            if let Err(why) = check_ca_file(&ca_file) {
                errors.push(why);
            }
            PostgresTls::VerifyFull { ca_file }
        }
        (RawTls::VerifyFull, None) => {
            errors.push(
                "state.ca_file: required when state.tls = \"verify-full\" (the PEM file of the CA that signed the database's certificate)"
                    .into(),
            );
            PostgresTls::Disable
        }
        (_, Some(_)) => {
            errors.push("state.ca_file: only used with state.tls = \"verify-full\"".into());
            PostgresTls::Disable
        }
        (RawTls::Require, None) => PostgresTls::Require,
        (RawTls::Disable, None) => PostgresTls::Disable,
    }
}

/// The database URL, resolved and checked for a PostgreSQL scheme so a typo
/// fails at load rather than at the first connect.
fn postgres_url(source: Option<SecretSource>, errors: &mut Vec<String>) -> SecretString {
    let url = match source {
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
    if !value.is_empty() && !value.starts_with("postgres://") && !value.starts_with("postgresql://")
    {
        errors.push("state.url: must start with postgres:// or postgresql://".into());
    }
    if url_sets_sslmode(value) {
        errors.push("state.url: sslmode is not taken from the URL: remove it and set state.tls (disable, require or verify-full)".into());
    }
    url
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, Settings, VALID};

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
        let StateBackend::Postgres {
            url, schema, tls, ..
        } = &settings.state.backend
        else {
            panic!("expected the postgres store");
        };
        assert_eq!(
            url.expose_secret(),
            "postgres://xbridge:pg-s3cret@db:5432/xbridge"
        );
        assert_eq!(schema, "bridge");
        assert_eq!(
            *tls,
            PostgresTls::Disable,
            "plain TCP unless asked, as before"
        );
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
    fn the_credentials_key_is_key_material_of_at_least_32_bytes() {
        // 48 bytes in base64, as `openssl rand -base64 48` writes them.
        let key = "cmVnaXN0cnkta2V5LW9mLWZvcnR5LWVpZ2h0LXJhbmRvbS1ieXRlcy1pbi10ZXN0";
        std::env::set_var("XBRIDGE_TEST_STATE_CREDENTIALS_KEY_OK", key);
        let toml = format!(
            "{VALID}\n[state]\ncredentials_key = {{ env = \"XBRIDGE_TEST_STATE_CREDENTIALS_KEY_OK\" }}\n"
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let state = &settings.state;
        assert_eq!(state.credentials_key.as_ref().unwrap().expose_secret(), key);
        let derived = state.credentials_key().expect("a key");
        let shown = format!("{settings:?} {derived:?}");
        assert!(!shown.contains(key), "{shown}");

        // Unset: allowed (nothing is stored yet), but storing is refused.
        let settings = Settings::from_toml(VALID).unwrap();
        assert!(settings.state.credentials_key.is_none());
        assert_eq!(
            settings.state.credentials_key().unwrap_err(),
            SealError::NoKey
        );

        let cases = [
            (
                "credentials_key = \"short-registry-secret\"",
                "state.credentials_key must be random key material of at least 32 bytes",
            ),
            (
                "credentials_key = \"a-passphrase-of-more-than-32-characters-short-registry-secret\"",
                "openssl rand -base64 48",
            ),
            (
                "credentials_key = { env = \"XBRIDGE_TEST_SURELY_UNSET_CREDENTIALS_KEY\" }",
                "state.credentials_key: environment variable XBRIDGE_TEST_SURELY_UNSET_CREDENTIALS_KEY is not set",
            ),
        ];
        for (state, expected) in cases {
            let toml = format!("{VALID}\n[state]\n{state}\n");
            let ConfigError::Invalid(errors) = Settings::from_toml(&toml).unwrap_err() else {
                panic!("expected validation errors for {state}");
            };
            let all = errors.join("\n");
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
            assert!(!all.contains("short-registry-secret"), "{all}");
        }
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
        let toml = format!(
            "{VALID}\n[state]\nbackend = \"postgres\"\nurl = \"postgres://db/x\"\ntls = \"verify-ca\"\n"
        );
        assert!(matches!(
            Settings::from_toml(&toml),
            Err(ConfigError::Read(_))
        ));
    }

    #[test]
    fn verify_full_takes_a_readable_ca_file_and_is_refused_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // A certificate rustls takes as a trust anchor (a throwaway CA).
        std::fs::write(&ca, TEST_CA).unwrap();
        let postgres = "backend = \"postgres\"\nurl = \"postgres://xb:pw-s3cret@db.example/x\"";
        let toml = format!(
            "{VALID}\n[state]\n{postgres}\ntls = \"verify-full\"\nca_file = {:?}\n",
            ca.display().to_string()
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let StateBackend::Postgres { tls, .. } = &settings.state.backend else {
            panic!("expected the postgres store");
        };
        assert_eq!(
            *tls,
            PostgresTls::VerifyFull {
                ca_file: ca.clone()
            }
        );
        assert!(settings
            .state
            .backend
            .describe()
            .contains("tls verify-full"));

        let toml = format!("{VALID}\n[state]\n{postgres}\ntls = \"require\"\n");
        let StateBackend::Postgres { tls, .. } = Settings::from_toml(&toml).unwrap().state.backend
        else {
            panic!("expected the postgres store");
        };
        assert_eq!(tls, PostgresTls::Require);

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let cases = [
            (
                "tls = \"verify-full\"".to_owned(),
                "state.ca_file: required when state.tls = \"verify-full\"",
            ),
            (
                format!(
                    "tls = \"verify-full\"\nca_file = {:?}",
                    missing.display().to_string()
                ),
                "missing.pem: cannot read it",
            ),
            (
                format!(
                    "tls = \"verify-full\"\nca_file = {:?}",
                    not_pem.display().to_string()
                ),
                "not.pem: holds no PEM certificate",
            ),
            (
                format!(
                    "tls = \"require\"\nca_file = {:?}",
                    ca.display().to_string()
                ),
                "state.ca_file: only used with state.tls = \"verify-full\"",
            ),
        ];
        for (state, expected) in cases {
            let toml = format!("{VALID}\n[state]\n{postgres}\n{state}\n");
            let ConfigError::Invalid(errors) = Settings::from_toml(&toml).unwrap_err() else {
                panic!("expected validation errors for {state}");
            };
            let all = errors.join("\n");
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
            assert!(!all.contains("pw-s3cret"), "{all}");
        }

        let toml = format!(
            "{VALID}\n[state]\nbackend = \"postgres\"\nurl = \"postgres://xb:pw-s3cret@db/x?sslmode=require\"\n"
        );
        let ConfigError::Invalid(errors) = Settings::from_toml(&toml).unwrap_err() else {
            panic!("expected validation errors");
        };
        let all = errors.join("\n");
        assert!(all.contains("sslmode is not taken from the URL"), "{all}");
        assert!(!all.contains("pw-s3cret"), "{all}");
        let toml = format!("{VALID}\n[state]\ntls = \"require\"\n");
        let ConfigError::Invalid(errors) = Settings::from_toml(&toml).unwrap_err() else {
            panic!("expected validation errors");
        };
        assert!(errors.join("\n").contains("state.tls: only used with"));
    }

    #[test]
    fn the_retention_covers_x_s_dm_history_by_default_and_at_least() {
        let settings = Settings::from_toml(VALID).unwrap();
        assert_eq!(settings.state.retention, DEFAULT_RETENTION);
        assert_eq!(settings.state.retention, Duration::from_secs(45 * 86400));
        assert_eq!(settings.state.prune_interval, Duration::from_secs(3600));

        let toml = format!("{VALID}\n[state]\nretention = \"90d\"\nprune_interval = \"10m\"\n");
        let settings = Settings::from_toml(&toml).unwrap();
        assert_eq!(settings.state.retention, Duration::from_secs(90 * 86400));
        assert_eq!(settings.state.prune_interval, Duration::from_secs(600));

        for (state, expected) in [
            (
                "retention = \"7d\"",
                "state.retention: 7days is shorter than 31 days",
            ),
            (
                "prune_interval = \"0s\"",
                "state.prune_interval: must be longer than 0",
            ),
        ] {
            let toml = format!("{VALID}\n[state]\n{state}\n");
            let ConfigError::Invalid(errors) = Settings::from_toml(&toml).unwrap_err() else {
                panic!("expected validation errors for {state}");
            };
            let all = errors.join("\n");
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    /// A throwaway self-signed CA (P-256), made with `openssl req -x509`.
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBiTCCAS6gAwIBAgIUPghLGyHK5+nAap+KNYq71NZIeJgwCgYIKoZIzj0EAwIw\n\
ITEfMB0GA1UEAwwWeGJyaWRnZSBjb25maWcgdGVzdCBDQTAgFw0yNjEyMDUwNjQ1\n\
MzFaGA8yMTI2MTExMTA2NDUzMVowITEfMB0GA1UEAwwWeGJyaWRnZSBjb25maWcg\n\
dGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABIzXfi5kmk8UDlpT2tes\n\
2Dn4Fo+6BSl9vXxmwY8LXXju465HVdqj0msRTNmJL0FkiGxwedE4Wza3zSkZ18a5\n\
pUCjQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQW\n\
BBReTXADVb/Trwtlymq3ni9YA8F92jAKBggqhkjOPQQDAgNJADBGAiEAwV2hT7p9\n\
/LxpY7pWLFzPS/NjfwjD1v2Cq2D/IknOOMwCIQDyGMcnuDVQXjWso3WOeYb97srM\n\
fBDfFMSkLWQNtlWh9w==\n\
-----END CERTIFICATE-----\n\
";
}
