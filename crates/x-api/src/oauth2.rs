//! OAuth 2.0 user context: the token endpoint (`POST /2/oauth2/token`) with the
//! authorization-code grant (PKCE) and the refresh grant, the authorize URL an operator
//! opens once, and X's answers read into a [`TokenGrant`] or a [`TokenError`] that tells a
//! grant X refused (authorise again) from a client X does not know and from a passing outage.
//! Facts and sources: docs/x-api-facts.md, section "OAuth 2.0".
//!
//! X rotates refresh tokens: every refresh answers a new one and the one used is dead. The
//! caller must therefore store [`TokenGrant::refresh_token`] durably before it relies on the
//! new access token; this module does not store anything.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use rand::distr::{Distribution as _, Uniform};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::excerpt;
use crate::http::error_chain;
use crate::oauth::sensitive_header;
use crate::XHttp;

/// The most of a token endpoint answer that is read: a real one is well under 1 KiB.
pub const MAX_TOKEN_ANSWER_BYTES: usize = 16 * 1024;

/// The longest token (access or refresh) accepted from X; X's are under 100 characters.
const MAX_TOKEN_CHARS: usize = 2048;

/// The longest access-token lifetime believed: a year. X says two hours; a larger number
/// is read as this, so a garbled `expires_in` cannot keep a dead token in use for ever.
const MAX_EXPIRES_IN_SECS: u64 = 365 * 24 * 60 * 60;

/// The longest excerpt of X's `error_description` kept in a [`TokenError`].
const MAX_DESCRIPTION_BYTES: usize = 256;

/// The scopes a DM channel asks for: read and send DMs, and a refresh token.
pub const DM_SCOPES: &[&str] = &[
    "dm.read",
    "dm.write",
    "tweet.read",
    "users.read",
    "offline.access",
];

/// The scope media uploads need in addition to [`DM_SCOPES`].
pub const MEDIA_SCOPE: &str = "media.write";

/// An App's OAuth 2.0 client, as shown in X's developer console. A confidential client
/// (Web App, Automated App or bot) has a secret and authenticates with HTTP Basic; a public
/// one sends its `client_id` in the form. `Debug` prints no secret.
#[derive(Clone)]
pub struct OAuth2Client {
    /// The Client ID; it appears in the authorize URL, so it is not secret.
    pub client_id: String,
    /// The Client Secret of a confidential client.
    pub client_secret: Option<SecretString>,
}

impl fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Client")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// Where the OAuth 2.0 endpoints are and how long to wait for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEndpointConfig {
    /// X's API root (`https://api.x.com`): `2/oauth2/token` and `2/oauth2/revoke` under it.
    pub api_base_url: Url,
    /// The page the operator opens (`https://x.com/i/oauth2/authorize`).
    pub authorize_url: Url,
    /// Upper bound for one token request, body included.
    pub request_timeout: Duration,
}

impl Default for TokenEndpointConfig {
    fn default() -> TokenEndpointConfig {
        TokenEndpointConfig {
            api_base_url: Url::parse("https://api.x.com").expect("a valid URL"),
            authorize_url: Url::parse("https://x.com/i/oauth2/authorize").expect("a valid URL"),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl TokenEndpointConfig {
    /// The endpoints of a simulator (or any X look-alike) at `base_url`: the authorize page
    /// at `i/oauth2/authorize` under it, like x.com's.
    pub fn at(base_url: &Url) -> TokenEndpointConfig {
        TokenEndpointConfig {
            api_base_url: base_url.clone(),
            authorize_url: base_url
                .join("i/oauth2/authorize")
                .expect("a relative path joins"),
            ..TokenEndpointConfig::default()
        }
    }
}

/// What X's token endpoint granted. `Debug` prints neither token.
#[derive(Clone)]
pub struct TokenGrant {
    /// The Bearer user access token.
    pub access_token: SecretString,
    /// The next refresh token, present when `offline.access` was granted. It replaces the
    /// one the refresh used, which X no longer accepts.
    pub refresh_token: Option<SecretString>,
    /// How long the access token lives from the answer (X: two hours), capped at a year;
    /// `None` if X did not say.
    pub expires_in: Option<Duration>,
    /// The granted scopes.
    pub scopes: Vec<String>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl TokenGrant {
    /// Whether every scope of `needed` was granted.
    pub fn has_scopes(&self, needed: &[&str]) -> bool {
        needed
            .iter()
            .all(|scope| self.scopes.iter().any(|granted| granted == scope))
    }
}

/// Why the token endpoint gave no grant. Where the caller branches: [`TokenError::GrantRefused`]
/// needs an operator to authorise the channel again, [`TokenError::ClientRejected`] needs the
/// client id or secret fixed, [`TokenError::Transient`] passes with time. No variant carries
/// a token or a secret; X's texts are bounded excerpts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// X refused the refresh token or authorization code: spent (rotated), revoked by the
    /// user, expired or unknown. X answers `invalid_request` "Value passed for the token was
    /// invalid." here (only that description: X's `invalid_request` also means a malformed
    /// request); `invalid_grant` (RFC 6749) is read the same way.
    #[error("X refused the OAuth 2.0 grant ({error}: {description}); authorise the channel again")]
    GrantRefused {
        /// X's `error` code.
        error: String,
        /// X's `error_description`, cut.
        description: String,
    },
    /// X does not accept the client: wrong client id or secret, or a confidential client
    /// without its Basic header (`invalid_client`, `unauthorized_client`).
    #[error(
        "X refused the OAuth 2.0 client ({error}: {description}); check the client id and secret"
    )]
    ClientRejected {
        /// X's `error` code.
        error: String,
        /// X's `error_description`, cut.
        description: String,
    },
    /// Another refusal (HTTP 4xx) that retrying will not fix.
    #[error("X refused the token request with HTTP {status} ({detail})")]
    Rejected {
        /// X's HTTP status.
        status: u16,
        /// What X said, cut.
        detail: String,
    },
    /// No usable answer: a transport failure, a timeout, 429 or 5xx, or a 2xx that is not a
    /// token answer. After a refresh the last case may have cost the refresh token (X rotated
    /// it in an answer the bridge could not read); the next refresh then tells.
    #[error("no usable answer from X's token endpoint: {detail}")]
    Transient {
        /// X's HTTP status, if it answered.
        status: Option<u16>,
        /// What went wrong.
        detail: String,
    },
}

impl TokenError {
    /// Whether only an operator running the authorize flow again can fix this.
    pub fn needs_authorization(&self) -> bool {
        matches!(self, TokenError::GrantRefused { .. })
    }

    /// Whether the same request may work later.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Transient { .. })
    }
}

/// A PKCE code verifier (RFC 7636): 64 random unreserved characters, kept secret until the
/// code exchange. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct PkceVerifier(SecretString);

impl fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceVerifier([REDACTED])")
    }
}

/// RFC 7636's unreserved characters, from which verifiers are drawn.
const UNRESERVED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

impl PkceVerifier {
    /// A fresh verifier of 64 characters (RFC 7636 allows 43 to 128).
    pub fn generate() -> PkceVerifier {
        let pick = Uniform::new(0, UNRESERVED.len()).expect("a non-empty range");
        let mut rng = rand::rng();
        let text: String = (0..64)
            .map(|_| UNRESERVED[pick.sample(&mut rng)] as char)
            .collect();
        PkceVerifier(text.into())
    }

    /// The S256 challenge: `BASE64URL(SHA256(verifier))` without padding.
    pub fn challenge(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(self.0.expose_secret().as_bytes()))
    }
}

/// A random `state` for the authorize URL, checked when the redirect comes back (CSRF).
pub fn new_state() -> String {
    use rand::distr::{Alphanumeric, SampleString as _};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Reads the authorization code from what the operator pasted: the whole redirect URL
/// (whose `state` must be `expected_state`) or the bare code. `None` if the redirect's state
/// differs, it carries an `error`, or nothing usable was pasted.
pub fn code_from_redirect(pasted: &str, expected_state: &str) -> Option<SecretString> {
    let pasted = pasted.trim();
    let Ok(url) = Url::parse(pasted) else {
        let bare = !pasted.is_empty()
            && pasted.len() <= MAX_TOKEN_CHARS
            && pasted.bytes().all(|b| b.is_ascii_graphic() && b != b'&');
        return bare.then(|| pasted.to_owned().into());
    };
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    if get("error").is_some() || get("state").map(String::as_str) != Some(expected_state) {
        return None;
    }
    get("code")
        .filter(|code| !code.is_empty())
        .map(|code| code.clone().into())
}

/// X's OAuth 2.0 token endpoint for one client.
#[derive(Clone)]
pub struct TokenEndpoint {
    http: reqwest::Client,
    config: TokenEndpointConfig,
    client: OAuth2Client,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("config", &self.config)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    /// The endpoint on a shared HTTP stack (no redirects: a token request is never replayed
    /// elsewhere).
    pub fn new(config: TokenEndpointConfig, client: OAuth2Client, http: &XHttp) -> TokenEndpoint {
        TokenEndpoint {
            http: http.client().clone(),
            config,
            client,
        }
    }

    /// The client this endpoint speaks for.
    pub fn client(&self) -> &OAuth2Client {
        &self.client
    }

    /// The URL the operator opens to authorise the channel: `response_type=code`, the
    /// client, `redirect_uri`, the space-separated `scopes`, `state` and the S256 challenge
    /// of `verifier`.
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        scopes: &[&str],
        state: &str,
        verifier: &PkceVerifier,
    ) -> Url {
        let mut url = self.config.authorize_url.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", state)
            .append_pair("code_challenge", &verifier.challenge())
            .append_pair("code_challenge_method", "S256");
        url
    }

    /// Exchanges an authorization code (valid 30 seconds on X) for the first grant.
    #[tracing::instrument(skip_all, fields(client_id = %self.client.client_id))]
    pub async fn exchange_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
        verifier: &PkceVerifier,
    ) -> Result<TokenGrant, TokenError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.0.expose_secret()),
        ])
        .await
    }

    /// Trades `refresh_token` for a new access token and a new refresh token; from then on
    /// X refuses `refresh_token`, so the caller stores the new one before anything else.
    #[tracing::instrument(skip_all, fields(client_id = %self.client.client_id))]
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, TokenError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
        .await
    }

    /// Revokes `token` (an access or a refresh token) at `POST /2/oauth2/revoke`.
    pub async fn revoke(&self, token: &SecretString) -> Result<(), TokenError> {
        let url = self.endpoint("2/oauth2/revoke")?;
        let (status, body) = self
            .post_form(url, &[("token", token.expose_secret())])
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(classify_token_error(status, &body))
        }
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenGrant, TokenError> {
        let url = self.endpoint("2/oauth2/token")?;
        let (status, body) = self.post_form(url, form).await?;
        if !(200..300).contains(&status) {
            let error = classify_token_error(status, &body);
            tracing::warn!(status, %error, "X refused a token request");
            return Err(error);
        }
        let grant = parse_token_answer(&body).map_err(|why| {
            tracing::warn!(status, why, "X's token answer is unreadable");
            TokenError::Transient {
                status: Some(status),
                detail: format!("the token answer is unreadable: {why}"),
            }
        })?;
        tracing::info!(
            expires_in_secs = grant.expires_in.map(|d| d.as_secs()),
            scopes = %grant.scopes.join(" "),
            rotated = grant.refresh_token.is_some(),
            "OAuth 2.0 tokens granted"
        );
        Ok(grant)
    }

    fn endpoint(&self, path: &str) -> Result<Url, TokenError> {
        self.config
            .api_base_url
            .join(path)
            .map_err(|error| TokenError::Transient {
                status: None,
                detail: format!("bad X base URL: {error}"),
            })
    }

    /// POSTs `form` with the client's authentication: HTTP Basic for a confidential client,
    /// `client_id` in the form for a public one. The answer's body is read up to
    /// [`MAX_TOKEN_ANSWER_BYTES`].
    async fn post_form(
        &self,
        url: Url,
        form: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), TokenError> {
        let mut request = self
            .http
            .post(url)
            .timeout(self.config.request_timeout)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        let mut pairs = form.to_vec();
        match &self.client.client_secret {
            Some(secret) => {
                let pair = format!("{}:{}", self.client.client_id, secret.expose_secret());
                let basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let header =
                    sensitive_header(&basic).ok_or_else(|| TokenError::ClientRejected {
                        error: "local".to_owned(),
                        description: "the client id or secret holds control characters".to_owned(),
                    })?;
                request = request.header(AUTHORIZATION, header);
            }
            None => pairs.push(("client_id", &self.client.client_id)),
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let started = std::time::Instant::now();
        let response = request.body(body).send().await;
        crate::telemetry::record_request("oauth2_token", started, &response);
        let transient = |error: reqwest::Error| TokenError::Transient {
            status: error.status().map(|s| s.as_u16()),
            detail: error_chain(&error.without_url()),
        };
        let response = response.map_err(transient)?;
        let status = response.status().as_u16();
        let body = crate::body::read_at_most(response, MAX_TOKEN_ANSWER_BYTES)
            .await
            .map_err(transient)?;
        if body.cut_at.is_some() {
            return Err(TokenError::Transient {
                status: Some(status),
                detail: format!("the answer is larger than {MAX_TOKEN_ANSWER_BYTES} bytes"),
            });
        }
        Ok((status, body.bytes))
    }
}

/// X's token answer, as sent.
#[derive(Deserialize)]
struct RawTokenAnswer {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<serde_json::Number>,
    scope: Option<String>,
    refresh_token: Option<String>,
}

/// A token X could put in a header: non-empty, visible ASCII, bounded.
fn header_safe(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_CHARS
        && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads a 2xx token answer: an `access_token` that fits a header, `token_type` bearer if
/// given, `expires_in` seconds (capped at a year; a negative or fractional one is refused),
/// `scope` space-separated, `refresh_token` if any. The error names the field, never a value.
pub(crate) fn parse_token_answer(body: &[u8]) -> Result<TokenGrant, &'static str> {
    let raw: RawTokenAnswer =
        serde_json::from_slice(body).map_err(|_| "not a JSON token answer with an access_token")?;
    if !header_safe(&raw.access_token) {
        return Err("access_token is not a usable token");
    }
    if raw
        .token_type
        .as_deref()
        .is_some_and(|kind| !kind.eq_ignore_ascii_case("bearer"))
    {
        return Err("token_type is not bearer");
    }
    let expires_in = match raw.expires_in {
        None => None,
        Some(number) => {
            let secs = number
                .as_u64()
                .ok_or("expires_in is not a whole number of seconds")?;
            Some(Duration::from_secs(secs.min(MAX_EXPIRES_IN_SECS)))
        }
    };
    let refresh_token = match raw.refresh_token {
        None => None,
        Some(token) if header_safe(&token) => Some(token.into()),
        Some(_) => return Err("refresh_token is not a usable token"),
    };
    let scopes = raw
        .scope
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(|scope| excerpt::cut(scope, 64))
        .take(64)
        .collect();
    Ok(TokenGrant {
        access_token: raw.access_token.into(),
        refresh_token,
        expires_in,
        scopes,
    })
}

/// How X describes a refused refresh token and a refused authorization code in its
/// `invalid_request` answers (docs/x-api-facts.md, "Error bodies of the token endpoint").
/// X answers a malformed request `invalid_request` too ("Missing required parameter
/// [code_verifier]."), which a new authorisation would not fix, so the code alone does not
/// say the grant is gone.
const REFUSED_GRANT_DESCRIPTIONS: &[&str] = &[
    "Value passed for the token was invalid",
    "Value passed for the authorization code was invalid",
];

/// Whether X's `error_description` of an `invalid_request` says the token or code it was
/// given is dead, as opposed to the request being malformed.
fn describes_a_refused_grant(description: &str) -> bool {
    let text = description.trim().trim_end_matches('.');
    REFUSED_GRANT_DESCRIPTIONS
        .iter()
        .any(|known| text.eq_ignore_ascii_case(known))
}

/// X's OAuth error body (RFC 6749 §5.2).
#[derive(Deserialize)]
struct RawTokenError {
    error: Option<String>,
    error_description: Option<String>,
}

/// Sorts a refusal of the token (or revoke) endpoint: 429 and 5xx are transient; a 4xx by
/// its `error` code (see [`TokenError`]), an `invalid_request` also by its description.
pub(crate) fn classify_token_error(status: u16, body: &[u8]) -> TokenError {
    if status == 429 || !(400..500).contains(&status) {
        return TokenError::Transient {
            status: Some(status),
            detail: format!(
                "HTTP {status}: {}",
                excerpt::cut(&String::from_utf8_lossy(body), MAX_DESCRIPTION_BYTES)
            ),
        };
    }
    let raw = serde_json::from_slice::<RawTokenError>(body).ok();
    let error = raw
        .as_ref()
        .and_then(|raw| raw.error.as_deref())
        .map(|error| excerpt::cut(error, 64));
    let description = raw
        .as_ref()
        .and_then(|raw| raw.error_description.as_deref())
        .map(|text| excerpt::cut(text, MAX_DESCRIPTION_BYTES))
        .unwrap_or_default();
    match error.as_deref() {
        Some("invalid_grant") => TokenError::GrantRefused {
            error: error.unwrap_or_default(),
            description,
        },
        Some("invalid_request") if describes_a_refused_grant(&description) => {
            TokenError::GrantRefused {
                error: error.unwrap_or_default(),
                description,
            }
        }
        Some("invalid_client" | "unauthorized_client") => TokenError::ClientRejected {
            error: error.unwrap_or_default(),
            description,
        },
        _ => TokenError::Rejected {
            status,
            detail: match error {
                Some(error) => format!("{error}: {description}"),
                None => excerpt::cut(&String::from_utf8_lossy(body), MAX_DESCRIPTION_BYTES),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_x_token_answer() {
        let grant = parse_token_answer(
            br#"{"token_type":"bearer","expires_in":7200,"access_token":"YWNjZXNz","scope":"dm.read dm.write offline.access","refresh_token":"cmVmcmVzaA"}"#,
        )
        .unwrap();
        assert_eq!(grant.access_token.expose_secret(), "YWNjZXNz");
        assert_eq!(
            grant.refresh_token.as_ref().unwrap().expose_secret(),
            "cmVmcmVzaA"
        );
        assert_eq!(grant.expires_in, Some(Duration::from_secs(7200)));
        assert!(grant.has_scopes(&["dm.read", "offline.access"]));
        assert!(!grant.has_scopes(&["media.write"]));
        let printed = format!("{grant:?}");
        assert!(!printed.contains("YWNjZXNz") && !printed.contains("cmVmcmVzaA"));
    }

    #[test]
    fn a_spent_refresh_token_means_authorise_again() {
        let body = br#"{"error":"invalid_request","error_description":"Value passed for the token was invalid."}"#;
        let error = classify_token_error(400, body);
        assert!(error.needs_authorization(), "{error:?}");
        assert!(classify_token_error(400, br#"{"error":"invalid_grant"}"#).needs_authorization());
        let code = br#"{"error":"invalid_request","error_description":"Value passed for the authorization code was invalid."}"#;
        assert!(classify_token_error(400, code).needs_authorization());
        let client = classify_token_error(
            401,
            br#"{"error":"unauthorized_client","error_description":"Missing valid authorization header"}"#,
        );
        assert!(matches!(client, TokenError::ClientRejected { .. }));
        assert!(classify_token_error(503, b"").is_transient());
        assert!(classify_token_error(429, b"{}").is_transient());
        assert!(matches!(
            classify_token_error(404, b"<html>"),
            TokenError::Rejected { status: 404, .. }
        ));
    }

    #[test]
    fn a_malformed_request_is_no_refused_grant() {
        // X's answer to a token request without its PKCE verifier (docs/x-api-facts.md).
        let body = br#"{"error":"invalid_request","error_description":"Missing required parameter [code_verifier]."}"#;
        let error = classify_token_error(400, body);
        assert!(!error.needs_authorization(), "{error:?}");
        assert!(
            matches!(&error, TokenError::Rejected { status: 400, detail } if detail.contains("code_verifier")),
            "{error:?}"
        );
        let bare = classify_token_error(400, br#"{"error":"invalid_request"}"#);
        assert!(!bare.needs_authorization(), "{bare:?}");
        // X's wording, whatever the case and the final stop.
        let shouted = br#"{"error":"invalid_request","error_description":" VALUE PASSED FOR THE TOKEN WAS INVALID "}"#;
        assert!(classify_token_error(400, shouted).needs_authorization());
    }

    #[test]
    fn verifier_and_challenge_follow_rfc_7636() {
        let verifier = PkceVerifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(
            verifier.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let fresh = PkceVerifier::generate();
        assert_eq!(fresh.0.expose_secret().len(), 64);
        assert!(fresh
            .0
            .expose_secret()
            .bytes()
            .all(|b| UNRESERVED.contains(&b)));
        assert_ne!(fresh.challenge(), PkceVerifier::generate().challenge());
        assert_eq!(format!("{fresh:?}"), "PkceVerifier([REDACTED])");
    }

    #[test]
    fn the_code_comes_from_the_redirect_or_bare() {
        let redirect = "https://example.com/cb?state=abc&code=Q29kZQ";
        assert_eq!(
            code_from_redirect(redirect, "abc").unwrap().expose_secret(),
            "Q29kZQ"
        );
        assert!(code_from_redirect(redirect, "other").is_none(), "CSRF");
        assert!(
            code_from_redirect("https://e.com/cb?state=abc&error=access_denied", "abc").is_none()
        );
        assert_eq!(
            code_from_redirect("  Q29kZQ\n", "abc")
                .unwrap()
                .expose_secret(),
            "Q29kZQ"
        );
        assert!(code_from_redirect("", "abc").is_none());
    }

    #[test]
    fn authorize_url_carries_xs_parameters() {
        let endpoint = TokenEndpoint::new(
            TokenEndpointConfig::default(),
            OAuth2Client {
                client_id: "cid".to_owned(),
                client_secret: None,
            },
            &XHttp::new().unwrap(),
        );
        let verifier = PkceVerifier::generate();
        let url = endpoint.authorize_url("https://example.com/cb", DM_SCOPES, "st", &verifier);
        assert!(url
            .as_str()
            .starts_with("https://x.com/i/oauth2/authorize?"));
        let pairs: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["response_type"], "code");
        assert_eq!(pairs["client_id"], "cid");
        assert_eq!(pairs["scope"], DM_SCOPES.join(" "));
        assert_eq!(pairs["code_challenge"], verifier.challenge());
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert!(
            url.as_str().contains("scope=dm.read+dm.write")
                || url.as_str().contains("scope=dm.read%20dm.write")
        );
    }
}
