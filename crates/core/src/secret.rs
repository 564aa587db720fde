//! Where a credential comes from: inline, an environment variable or a file.
//!
//! Operators keep X credentials in Kubernetes secrets (mounted files) or in the
//! environment, and only in demos inline. Each source resolves to a
//! [`SecretString`], which never prints, so a resolved value cannot leak through
//! `Debug` into a log line or an error.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// A credential as written in the configuration file, before it is read.
///
/// `Debug` shows where the value comes from (`env:VAR`, `file:/path`,
/// `inline`), never the value itself.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    /// The value written in the file itself (demos, local tests).
    Inline(String),
    /// The value of an environment variable, read at startup.
    Env {
        /// Name of the environment variable.
        env: String,
    },
    /// The content of a file (e.g. a mounted Kubernetes secret), trailing
    /// newline removed, read at startup.
    File {
        /// Path of the file.
        file: PathBuf,
    },
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("inline"),
            SecretSource::Env { env } => write!(f, "env:{env}"),
            SecretSource::File { file } => write!(f, "file:{}", file.display()),
        }
    }
}

impl SecretSource {
    /// For a file that every user of the host can read (mode `o+r`, as in
    /// 0644 or 0666): a warning naming `setting`, the file and its mode,
    /// never any of its content. `None` for other sources, a private file, or
    /// a file that cannot be looked at (reading it reports that).
    pub fn exposure(&self, setting: &str) -> Option<String> {
        let SecretSource::File { file } = self else {
            return None;
        };
        let mode = world_readable_mode(file)?;
        Some(format!(
            "{setting}: {} can be read by every user of this host (mode {mode:04o}); let only the bridge's user read it (0600 or 0400; in Kubernetes, the secret volume's defaultMode)",
            file.display()
        ))
    }

    /// Reads the value. The error says which variable or file failed and why,
    /// never any part of a value.
    pub fn resolve(&self) -> Result<SecretString, String> {
        let value = match self {
            SecretSource::Inline(value) => value.clone(),
            SecretSource::Env { env } => std::env::var(env).map_err(|e| match e {
                std::env::VarError::NotPresent => {
                    format!("environment variable {env} is not set")
                }
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable {env} is not valid UTF-8")
                }
            })?,
            SecretSource::File { file } => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.trim().is_empty() {
            return Err(format!("{self:?} is empty"));
        }
        Ok(SecretString::from(value))
    }
}

/// The permission bits of `file` (following links, as Kubernetes mounts
/// secrets through them) when others may read it.
#[cfg(unix)]
fn world_readable_mode(file: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn world_readable_mode(_file: &std::path::Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn debug_never_shows_an_inline_value() {
        let source = SecretSource::Inline("hunter2".into());
        assert_eq!(format!("{source:?}"), "inline");
    }

    #[test]
    fn file_source_drops_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let value = SecretSource::File { file: path }.resolve().unwrap();
        assert_eq!(value.expose_secret(), "s3cret");
    }

    #[test]
    fn missing_env_var_is_named_in_the_error() {
        let err = SecretSource::Env {
            env: "XBRIDGE_TEST_SURELY_UNSET_VAR".into(),
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("XBRIDGE_TEST_SURELY_UNSET_VAR"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_is_named_with_its_setting_never_its_content() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        let source = SecretSource::File { file: path.clone() };
        for (mode, exposed) in [(0o644, true), (0o666, true), (0o640, false), (0o600, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = source.exposure("channels[0] (acme).consumer_secret");
            assert_eq!(warning.is_some(), exposed, "mode {mode:o}");
            if let Some(warning) = warning {
                assert!(
                    warning.contains("channels[0] (acme).consumer_secret"),
                    "{warning}"
                );
                assert!(warning.contains(&path.display().to_string()), "{warning}");
                assert!(warning.contains(&format!("{mode:04o}")), "{warning}");
                assert!(!warning.contains("s3cret"), "{warning}");
            }
        }
        assert!(SecretSource::Inline("x".into())
            .exposure("amqp.url")
            .is_none());
    }

    #[test]
    fn empty_values_are_refused() {
        assert!(SecretSource::Inline("  ".into()).resolve().is_err());
    }
}
