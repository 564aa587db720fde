//! OAuth 1.0a user-context signing (HMAC-SHA1), the only auth X accepts for DM sends
//! that works with long-lived tokens of a company account.
//!
//! The signature itself comes from `oauth1-request`; this module decides what goes into it:
//! the query parameters of the URL and any form parameters, but never a JSON body (X signs
//! JSON bodies of DM sends out, see README §7).

use std::fmt;
use std::num::NonZeroU64;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, SampleString};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The four OAuth 1.0a values of one X account, as shown in the X developer console.
///
/// All four are secrets: they are only exposed at the moment a request is signed, and
/// `Debug` prints none of them.
#[derive(Clone, Deserialize)]
pub struct UserCredentials {
    /// The App's API key; identifies the App, so it is kept as secret as the rest.
    pub consumer_key: SecretString,
    /// The App's API key secret; half of the HMAC key.
    pub consumer_secret: SecretString,
    /// The account's access token; says on whose behalf the App acts.
    pub access_token: SecretString,
    /// The account's access token secret; the other half of the HMAC key.
    pub access_token_secret: SecretString,
}

impl fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserCredentials")
            .field("consumer_key", &"[REDACTED]")
            .field("consumer_secret", &"[REDACTED]")
            .field("access_token", &"[REDACTED]")
            .field("access_token_secret", &"[REDACTED]")
            .finish()
    }
}

/// `text` as a header value marked sensitive, so it never shows in a log or a `Debug`;
/// `None` only when it holds control characters (from a credential).
pub(crate) fn sensitive_header(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The signed `Authorization` header of a request whose body is not signed (JSON and
/// multipart bodies are not part of X's signature; query parameters are), marked sensitive.
pub(crate) fn signed_header(
    method: &str,
    url: &Url,
    credentials: &UserCredentials,
) -> Option<HeaderValue> {
    sensitive_header(&authorization_header(method, url, &[], credentials))
}

/// Length of the random nonce; X only asks that it is alphanumeric and unique per request.
const NONCE_LEN: usize = 32;

/// The `Authorization` header value for a request, with a fresh nonce and the current time.
///
/// `form` holds `application/x-www-form-urlencoded` body parameters, if any; query
/// parameters are taken from `url`.
pub(crate) fn authorization_header(
    method: &str,
    url: &Url,
    form: &[(&str, &str)],
    credentials: &UserCredentials,
) -> String {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_secs());
    authorization_header_with(method, url, form, credentials, &new_nonce(), timestamp)
}

/// Same as [`authorization_header`] with a given nonce and timestamp, so the documented test
/// vector can be reproduced.
pub(crate) fn authorization_header_with(
    method: &str,
    url: &Url,
    form: &[(&str, &str)],
    credentials: &UserCredentials,
    nonce: &str,
    timestamp: u64,
) -> String {
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let parameters: oauth1_request::ParameterList<&str, &str> = query
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .chain(form.iter().copied())
        .collect();
    // oauth1-request writes keys into the base string unencoded; every key X uses is plain
    // ASCII, and one that is not would give a wrong signature (a 401), not a leak.
    debug_assert!(
        parameters.iter().all(|(key, _)| key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))),
        "OAuth parameter keys must be unreserved characters"
    );
    // The base string URI is scheme, host, port and path, without query or fragment.
    let base_uri = &url[..url::Position::AfterPath];

    let token = oauth1_request::Token::from_parts(
        credentials.consumer_key.expose_secret(),
        credentials.consumer_secret.expose_secret(),
        credentials.access_token.expose_secret(),
        credentials.access_token_secret.expose_secret(),
    );
    let mut builder = oauth1_request::Builder::with_token(token, oauth1_request::HMAC_SHA1);
    builder
        .nonce(nonce)
        .timestamp(NonZeroU64::new(timestamp))
        .version(true);
    builder.authorize(method, base_uri, &parameters)
}

/// A random alphanumeric nonce (oauth1-request's own is 12 URL-safe base64 characters;
/// X documents alphanumeric ones).
fn new_nonce() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), NONCE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials of X's signature example (README §7).
    fn documented_credentials() -> UserCredentials {
        UserCredentials {
            consumer_key: "xvz1evFS4wEEPTGEFPHBog".into(),
            consumer_secret: "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw".into(),
            access_token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb".into(),
            access_token_secret: "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE".into(),
        }
    }

    fn documented_header(host: &str) -> String {
        let url = Url::parse(&format!(
            "https://{host}/1.1/statuses/update.json?include_entities=true"
        ))
        .unwrap();
        authorization_header_with(
            "POST",
            &url,
            &[(
                "status",
                "Hello Ladies + Gentlemen, a signed OAuth request!",
            )],
            &documented_credentials(),
            "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg",
            1318622958,
        )
    }

    #[test]
    fn reproduces_the_documented_test_vector() {
        assert_eq!(
            documented_header("api.x.com"),
            "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\",\
             oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\",\
             oauth_signature_method=\"HMAC-SHA1\",\
             oauth_timestamp=\"1318622958\",\
             oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\",\
             oauth_version=\"1.0\",\
             oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\""
        );
    }

    #[test]
    fn the_host_is_part_of_the_signature() {
        assert!(documented_header("api.twitter.com")
            .ends_with("oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\""));
    }

    #[test]
    fn header_carries_no_secret() {
        let header = documented_header("api.x.com");
        assert!(!header.contains("kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw"));
        assert!(!header.contains("LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE"));
    }

    #[test]
    fn nonce_is_32_alphanumeric_and_fresh() {
        let (first, second) = (new_nonce(), new_nonce());
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(first, second);
    }

    #[test]
    fn debug_shows_no_credential() {
        let printed = format!("{:?}", documented_credentials());
        assert!(!printed.contains("xvz1evFS4wEEPTGEFPHBog"));
        assert!(!printed.contains("kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw"));
        assert!(!printed.contains("370773112"));
        assert!(!printed.contains("LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE"));
    }
}
