//! `[x]`: how to reach X's API, and the X client's configuration built from it.

use std::time::Duration;

use serde::Deserialize;
use url::Url;
use xbridge_x_api::XClientConfig;

/// How to reach X's API.
#[derive(Debug, Clone)]
pub struct XSettings {
    /// `https://api.x.com`, or the simulator's URL.
    pub api_base_url: Url,
    /// Bound on one HTTP request; a timeout counts as a transient failure.
    pub request_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawX {
    pub(super) api_base_url: String,
    #[serde(with = "humantime_serde")]
    pub(super) request_timeout: Duration,
}

impl Default for RawX {
    fn default() -> Self {
        RawX {
            api_base_url: "https://api.x.com".into(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Validates `[x]`: an http(s) base URL and a non-zero request timeout.
pub(super) fn validate(raw: RawX, errors: &mut Vec<String>) -> XSettings {
    let api_base_url = match Url::parse(&raw.api_base_url) {
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
    if raw.request_timeout.is_zero() {
        errors.push("x.request_timeout: must be greater than zero".into());
    }
    XSettings {
        api_base_url,
        request_timeout: raw.request_timeout,
    }
}

/// The X client of every part of the bridge that talks to X (both directions,
/// `xbridge check`, `xbridge webhook`) is configured the same way, from `[x]`.
impl From<&XSettings> for XClientConfig {
    fn from(x: &XSettings) -> XClientConfig {
        XClientConfig {
            base_url: x.api_base_url.clone(),
            request_timeout: x.request_timeout,
            ..XClientConfig::default()
        }
    }
}
