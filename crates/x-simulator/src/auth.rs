//! Who sent a request: OAuth 1.0a user context checked the way X does (signature, timestamp,
//! nonce), with the reason for every refusal logged so a developer can fix their client.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use chrono::{DateTime, Utc};

use crate::accounts::{Account, AccountRegistry};
use crate::oauth::{self, HeaderError, OAuthHeader};
use crate::oauth2::{self, BearerRefusal, Policy};
use crate::{problems, request_body};

/// How far a request's `oauth_timestamp` may be from the simulator's clock, and how long a nonce
/// stays spent.
pub(crate) const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// The parts of a request that its signature covers.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why a request was not accepted as any account's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    MissingHeader,
    NotOAuth,
    Malformed(String),
    /// An App-only Bearer token: valid, but X refuses it for DMs (403, not 401).
    AppOnly {
        user_id: String,
    },
    UnknownCredentials,
    UnsupportedSignatureMethod(String),
    NoHost,
    SignatureMismatch {
        base_string: String,
    },
    StaleTimestamp {
        timestamp: i64,
    },
    NonceReused,
    /// An OAuth 2.0 user access token past its expiry, or of a revoked grant: X's 401.
    ExpiredAccessToken {
        user_id: String,
    },
    /// An OAuth 2.0 user access token without a scope the route needs: X's plain 403.
    MissingScopes {
        user_id: String,
        missing: Vec<&'static str>,
    },
    /// OAuth 1.0a on a route that takes OAuth 2.0 user tokens only (DM media download).
    OAuth1NotAccepted {
        user_id: String,
    },
    /// An OAuth 2.0 user access token on a route that does not take one (webhooks, TON).
    OAuth2NotAccepted {
        user_id: String,
    },
}

impl AuthFailure {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AuthFailure::AppOnly { .. }
            | AuthFailure::MissingScopes { .. }
            | AuthFailure::OAuth1NotAccepted { .. }
            | AuthFailure::OAuth2NotAccepted { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    pub(crate) fn body(&self) -> String {
        match self {
            AuthFailure::AppOnly { .. } => problems::unsupported_authentication(),
            AuthFailure::MissingScopes { .. } => problems::FORBIDDEN.to_string(),
            AuthFailure::OAuth1NotAccepted { .. } => oauth2::unsupported_authentication(
                "OAuth 1.0a User Context",
                "OAuth 2.0 User Context",
            ),
            AuthFailure::OAuth2NotAccepted { .. } => oauth2::unsupported_authentication(
                "OAuth 2.0 User Context",
                "OAuth 1.0a User Context",
            ),
            _ => problems::UNAUTHORIZED.to_string(),
        }
    }

    /// The account identified despite the refusal, for the request log.
    pub(crate) fn user_id(&self) -> Option<&str> {
        match self {
            AuthFailure::AppOnly { user_id }
            | AuthFailure::ExpiredAccessToken { user_id }
            | AuthFailure::MissingScopes { user_id, .. }
            | AuthFailure::OAuth1NotAccepted { user_id }
            | AuthFailure::OAuth2NotAccepted { user_id } => Some(user_id),
            _ => None,
        }
    }
}

/// Nonces seen per account, each kept until its timestamp could no longer pass, which is exactly
/// as long as a replay would otherwise succeed.
#[derive(Debug, Default)]
pub(crate) struct NonceCache {
    by_user: HashMap<String, HashMap<String, i64>>,
}

impl NonceCache {
    /// Remembers the nonce; false if the account already used it within the window.
    fn remember(&mut self, user_id: &str, nonce: &str, timestamp: i64, now: i64) -> bool {
        let seen = self.by_user.entry(user_id.to_string()).or_default();
        seen.retain(|_, expires| *expires >= now);
        if seen.contains_key(nonce) {
            return false;
        }
        seen.insert(nonce.to_string(), timestamp + TIMESTAMP_TOLERANCE_SECS);
        true
    }
}

/// Finds the account whose credentials signed `request` (OAuth 1.0a) or whose OAuth 2.0
/// user access token it carries (`Authorization: Bearer`, with the route's scopes), or says
/// why none did.
pub(crate) fn authenticate<'a>(
    request: &SignedRequest<'_>,
    accounts: &'a AccountRegistry,
    nonces: &mut NonceCache,
    now: DateTime<Utc>,
) -> Result<&'a Account, AuthFailure> {
    let policy = oauth2::policy(request.method, request.uri.path());
    if let Some(token) = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
    {
        return bearer_account(token, policy, accounts, now);
    }
    let oauth_header = oauth_header(request)?;
    let claim = Claim::read(&oauth_header, accounts)?;
    let base_string = base_string(request, &oauth_header.signed_params)?;
    if !oauth::signature_matches(
        &base_string,
        &claim.account.consumer_secret,
        &claim.account.access_token_secret,
        &oauth_header.signature,
    ) {
        return Err(AuthFailure::SignatureMismatch { base_string });
    }
    if (claim.timestamp - now.timestamp()).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(AuthFailure::StaleTimestamp {
            timestamp: claim.timestamp,
        });
    }
    let account = claim.account;
    if !nonces.remember(
        &account.user_id,
        claim.nonce,
        claim.timestamp,
        now.timestamp(),
    ) {
        return Err(AuthFailure::NonceReused);
    }
    if policy.is_some_and(|policy| !policy.oauth1) {
        return Err(AuthFailure::OAuth1NotAccepted {
            user_id: account.user_id.clone(),
        });
    }
    Ok(account)
}

/// The account of a Bearer token: an App's is refused for user routes (X's 403), a user's
/// OAuth 2.0 access token must be live and carry the route's scopes.
fn bearer_account<'a>(
    token: &str,
    policy: Option<Policy>,
    accounts: &'a AccountRegistry,
    now: DateTime<Utc>,
) -> Result<&'a Account, AuthFailure> {
    if let Some(account) = accounts.by_bearer_token(token) {
        return Err(AuthFailure::AppOnly {
            user_id: account.user_id.clone(),
        });
    }
    let user = match accounts.oauth2.bearer_user(token, now) {
        Ok(user) => user,
        Err(BearerRefusal::Unknown) => return Err(AuthFailure::UnknownCredentials),
        Err(BearerRefusal::Expired { user_id }) => {
            return Err(AuthFailure::ExpiredAccessToken { user_id })
        }
    };
    let Some(policy) = policy else {
        return Err(AuthFailure::OAuth2NotAccepted {
            user_id: user.user_id,
        });
    };
    let missing = oauth2::missing_scopes(&policy, &user.scopes);
    if !missing.is_empty() {
        return Err(AuthFailure::MissingScopes {
            user_id: user.user_id,
            missing,
        });
    }
    accounts
        .by_user_id(&user.user_id)
        .ok_or(AuthFailure::UnknownCredentials)
}

/// The request's `Authorization: OAuth …` header, parsed (a Bearer token was sorted out
/// before, by [`bearer_account`]).
fn oauth_header(request: &SignedRequest<'_>) -> Result<OAuthHeader, AuthFailure> {
    let value = request
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthFailure::MissingHeader)?
        .to_str()
        .map_err(|_| AuthFailure::Malformed("Authorization is not visible ASCII".into()))?;
    oauth::parse_authorization_header(value).map_err(|error| match error {
        HeaderError::NotOAuth => AuthFailure::NotOAuth,
        HeaderError::Malformed(why) => AuthFailure::Malformed(why),
    })
}

/// What an OAuth 1.0a header claims before its signature is checked: whose credentials, when
/// and with which nonce.
struct Claim<'a, 'h> {
    account: &'a Account,
    timestamp: i64,
    nonce: &'h str,
}

impl<'a, 'h> Claim<'a, 'h> {
    /// The header's claim, checked in X's order: the credentials are known, HMAC-SHA1, version
    /// 1.0 if given, a numeric timestamp and a nonce.
    fn read(
        oauth_header: &'h OAuthHeader,
        accounts: &'a AccountRegistry,
    ) -> Result<Self, AuthFailure> {
        let required = |name: &str| {
            oauth_header
                .get(name)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| AuthFailure::Malformed(format!("missing {name}")))
        };
        let account = accounts
            .by_user_token(required("oauth_consumer_key")?, required("oauth_token")?)
            .ok_or(AuthFailure::UnknownCredentials)?;
        let method = required("oauth_signature_method")?;
        if method != "HMAC-SHA1" {
            return Err(AuthFailure::UnsupportedSignatureMethod(method.to_string()));
        }
        if oauth_header
            .get("oauth_version")
            .is_some_and(|v| v != "1.0")
        {
            return Err(AuthFailure::Malformed("oauth_version must be 1.0".into()));
        }
        let timestamp: i64 = required("oauth_timestamp")?
            .parse()
            .map_err(|_| AuthFailure::Malformed("oauth_timestamp is not a number".into()))?;
        let nonce = required("oauth_nonce")?;
        Ok(Claim {
            account,
            timestamp,
            nonce,
        })
    }
}

/// How a request that may use either kind of token was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthKind {
    /// OAuth 1.0a user context: the account itself.
    User,
    /// The App-only Bearer token of the account's App.
    App,
}

/// [`authenticate`] for routes that take an App's Bearer token as well as a user token
/// (`GET /2/users/:id`, `/2/webhooks`): the account is the one whose token was used.
pub(crate) fn authenticate_user_or_app(
    request: &SignedRequest<'_>,
    accounts: &AccountRegistry,
    nonces: &mut NonceCache,
    now: DateTime<Utc>,
) -> Result<(Account, AuthKind), AuthFailure> {
    match authenticate(request, accounts, nonces, now) {
        Ok(account) => Ok((account.clone(), AuthKind::User)),
        Err(AuthFailure::AppOnly { user_id }) => accounts
            .by_user_id(&user_id)
            .map(|account| (account.clone(), AuthKind::App))
            .ok_or(AuthFailure::UnknownCredentials),
        Err(failure) => Err(failure),
    }
}

/// The token of an `Authorization: Bearer …` value.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then_some(token.trim())
}

/// Rebuilds the base string from what the client addressed: Host header, path, query, a form
/// body if there is one, and the header's `oauth_*` fields.
fn base_string(
    request: &SignedRequest<'_>,
    oauth_params: &[(String, String)],
) -> Result<String, AuthFailure> {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri.authority().map(|a| a.as_str()))
        .ok_or(AuthFailure::NoHost)?;
    let base_uri = oauth::base_string_uri("http", host, request.uri.path());

    let mut params: Vec<(String, String)> = oauth_params.to_vec();
    if let Some(query) = request.uri.query() {
        params.extend(form_pairs(query.as_bytes()));
    }
    if request_body::has_content_type(request.headers, "application/x-www-form-urlencoded") {
        params.extend(form_pairs(request.body));
    }
    Ok(oauth::signature_base_string(
        request.method.as_str(),
        &base_uri,
        &params,
    ))
}

fn form_pairs(encoded: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    url::form_urlencoded::parse(encoded).map(|(key, value)| (key.into_owned(), value.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn registry_with(account: &Account) -> AccountRegistry {
        let mut registry = AccountRegistry::default();
        registry.upsert(account.clone());
        registry
    }

    fn signed_headers(url: &str, account: &Account, nonce: &str, timestamp: i64) -> HeaderMap {
        let url = url::Url::parse(url).unwrap();
        let value = oauth::authorization_header("POST", &url, &[], account, nonce, timestamp);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8081"));
        headers
    }

    fn check(
        headers: &HeaderMap,
        path_and_query: &str,
        registry: &AccountRegistry,
        nonces: &mut NonceCache,
        now: DateTime<Utc>,
    ) -> Result<String, AuthFailure> {
        let uri: Uri = path_and_query.parse().unwrap();
        let request = SignedRequest {
            method: &Method::POST,
            uri: &uri,
            headers,
            body: b"{\"text\":\"not signed\"}",
        };
        authenticate(&request, registry, nonces, now).map(|a| a.user_id.clone())
    }

    #[test]
    fn signed_request_passes_once_and_its_replay_fails() {
        let account = Account::generate("a");
        let registry = registry_with(&account);
        let mut nonces = NonceCache::default();
        let now = Utc::now();
        let headers = signed_headers(
            "http://127.0.0.1:8081/2/dm_conversations/with/12/messages?x=a%20b",
            &account,
            "nonce1",
            now.timestamp(),
        );
        let path = "/2/dm_conversations/with/12/messages?x=a%20b";
        assert_eq!(
            check(&headers, path, &registry, &mut nonces, now),
            Ok(account.user_id.clone())
        );
        assert_eq!(
            check(&headers, path, &registry, &mut nonces, now),
            Err(AuthFailure::NonceReused)
        );
    }

    #[test]
    fn stale_timestamp_fails_even_when_signed() {
        let account = Account::generate("a");
        let registry = registry_with(&account);
        let now = Utc::now();
        let old = now.timestamp() - TIMESTAMP_TOLERANCE_SECS - 1;
        let headers = signed_headers("http://127.0.0.1:8081/2/x", &account, "n", old);
        assert_eq!(
            check(&headers, "/2/x", &registry, &mut NonceCache::default(), now),
            Err(AuthFailure::StaleTimestamp { timestamp: old })
        );
    }

    #[test]
    fn different_path_host_or_query_breaks_the_signature() {
        let account = Account::generate("a");
        let registry = registry_with(&account);
        let now = Utc::now();
        let headers = signed_headers(
            "http://127.0.0.1:8081/2/x?a=1",
            &account,
            "n",
            now.timestamp(),
        );
        for tampered in ["/2/y?a=1", "/2/x?a=2", "/2/x"] {
            assert!(matches!(
                check(
                    &headers,
                    tampered,
                    &registry,
                    &mut NonceCache::default(),
                    now
                ),
                Err(AuthFailure::SignatureMismatch { .. })
            ));
        }
        let mut other_host = headers.clone();
        other_host.insert(header::HOST, HeaderValue::from_static("localhost:8081"));
        assert!(matches!(
            check(
                &other_host,
                "/2/x?a=1",
                &registry,
                &mut NonceCache::default(),
                now
            ),
            Err(AuthFailure::SignatureMismatch { .. })
        ));
    }

    #[test]
    fn form_body_parameters_are_signed_but_json_is_not() {
        let account = Account::generate("a");
        let registry = registry_with(&account);
        let now = Utc::now();
        let url = url::Url::parse("http://127.0.0.1:8081/1.1/statuses/update.json").unwrap();
        let form = [("status", "Hello Ladies + Gentlemen")];
        let value =
            oauth::authorization_header("POST", &url, &form, &account, "n1", now.timestamp());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8081"));
        let uri: Uri = "/1.1/statuses/update.json".parse().unwrap();
        let mut nonces = NonceCache::default();
        let mut attempt = |content_type: &'static str, body: &[u8]| {
            let mut headers = headers.clone();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            let request = SignedRequest {
                method: &Method::POST,
                uri: &uri,
                headers: &headers,
                body,
            };
            authenticate(&request, &registry, &mut nonces, now).map(|_| ())
        };
        let json = attempt("application/json", b"status=Hello+Ladies+%2B+Gentlemen");
        assert!(matches!(json, Err(AuthFailure::SignatureMismatch { .. })));
        let tampered = attempt("application/x-www-form-urlencoded", b"status=Bye");
        assert!(matches!(
            tampered,
            Err(AuthFailure::SignatureMismatch { .. })
        ));
        let form = attempt(
            "application/x-www-form-urlencoded",
            b"status=Hello+Ladies+%2B+Gentlemen",
        );
        assert_eq!(form, Ok(()));
    }

    #[test]
    fn bearer_token_of_a_known_app_is_refused_as_app_only() {
        let account = Account::generate("a");
        let registry = registry_with(&account);
        let mut headers = HeaderMap::new();
        let value = format!("Bearer {}", account.bearer_token);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        let failure = check(
            &headers,
            "/2/x",
            &registry,
            &mut NonceCache::default(),
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(failure.status(), StatusCode::FORBIDDEN);
        assert_eq!(failure.user_id(), Some(account.user_id.as_str()));
    }
}
