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

    #[test]
    fn empty_values_are_refused() {
        assert!(SecretSource::Inline("  ".into()).resolve().is_err());
    }
}
