//! `[inbound.media]`: the media proxy, whose signed URLs let the CRM fetch
//! DM media X serves only to OAuth-signed requests.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::secret::SecretSource;

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

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawMediaProxy {
    pub(super) public_base_url: Option<String>,
    pub(super) signing_key: Option<SecretSource>,
    #[serde(with = "humantime_serde")]
    pub(super) url_ttl: Duration,
    pub(super) max_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub(super) timeout: Duration,
    pub(super) allowed_origins: Vec<String>,
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
pub(super) fn validate(raw: RawMediaProxy, errors: &mut Vec<String>) -> MediaProxySettings {
    let public_base_url = raw
        .public_base_url
        .and_then(|text| public_base_url(&text, errors));
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
    let allowed_origins = allowed_origins(&raw.allowed_origins, errors);
    MediaProxySettings {
        public_base_url,
        signing_key,
        url_ttl: raw.url_ttl,
        max_bytes: raw.max_bytes,
        timeout: raw.timeout,
        allowed_origins,
    }
}

/// `public_base_url`: an http(s) prefix without query or fragment, ending
/// with '/' so media paths are joined under it.
fn public_base_url(text: &str, errors: &mut Vec<String>) -> Option<Url> {
    match Url::parse(text) {
        Ok(mut url)
            if matches!(url.scheme(), "http" | "https")
                && url.query().is_none()
                && url.fragment().is_none() =>
        {
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
    }
}

/// `allowed_origins`: each an origin alone, in its serialized form.
fn allowed_origins(texts: &[String], errors: &mut Vec<String>) -> Vec<String> {
    let mut origins = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        match Url::parse(text) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.path() == "/"
                    && url.query().is_none()
                    && url.fragment().is_none() =>
            {
                origins.push(url.origin().ascii_serialization());
            }
            _ => errors.push(format!(
                "inbound.media.allowed_origins[{i}]: {text:?} must be an origin such as https://ton.twitter.com (scheme, host, optional port, nothing else)"
            )),
        }
    }
    origins
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use crate::config::{Settings, VALID};

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
}
