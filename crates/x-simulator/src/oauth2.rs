//! OAuth 2.0 user context as X serves it (docs/x-api-facts.md "OAuth 2.0"): the authorize
//! endpoint (approved at once, since the simulator has no user to ask), the token endpoint
//! with PKCE and rotating refresh tokens, revocation, and the Bearer user access tokens the
//! DM routes accept beside OAuth 1.0a, each checked for its scopes.
//!
//! The grants live in the [`crate::accounts::AccountRegistry`], beside the OAuth 1.0a tokens,
//! because both are credentials acting for an account and [`crate::auth`] looks both up there.
//! Tests expire access tokens and revoke grants on demand ([`crate::Simulator`]'s `oauth2_*`
//! methods and `/_sim/oauth2/*`), since waiting two hours for X's expiry is not a test.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use rand::distr::{Alphanumeric, SampleString as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::state::SimState;
use crate::Simulator;

/// X's access-token lifetime: two hours (`expires_in: 7200`).
pub const DEFAULT_ACCESS_TOKEN_SECS: i64 = 7200;

/// How long an authorization code may wait for its exchange: 30 seconds on X.
const CODE_LIFETIME_SECS: i64 = 30;

/// X's description of a refused refresh (spent, revoked or unknown refresh token).
const INVALID_TOKEN: &str = "Value passed for the token was invalid.";
/// X's description of a refused authorization code (unknown, spent, expired, wrong verifier).
const INVALID_CODE: &str = "Value passed for the authorization code was invalid.";

/// One App's OAuth 2.0 client, and the account its authorize page approves as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Client {
    /// The Client ID of the developer console.
    pub client_id: String,
    /// The Client Secret of a confidential client (Web App, Automated App or bot), which
    /// authenticates at the token endpoint with HTTP Basic; `None` for a public client,
    /// which sends `client_id` in the form instead.
    pub client_secret: Option<String>,
    /// The account that the simulator's authorize endpoint approves as: X would ask the
    /// logged-in user; the simulator has no one to ask.
    pub user_id: String,
    /// Lifetime of the access tokens issued to this client, in seconds (X: 7200).
    #[serde(default = "default_access_token_secs")]
    pub access_token_secs: i64,
}

fn default_access_token_secs() -> i64 {
    DEFAULT_ACCESS_TOKEN_SECS
}

impl OAuth2Client {
    /// A client with random id (and secret, if `confidential`) acting for `user_id`.
    pub fn generate(user_id: &str, confidential: bool) -> OAuth2Client {
        let mut rng = rand::rng();
        OAuth2Client {
            client_id: Alphanumeric.sample_string(&mut rng, 34),
            client_secret: confidential.then(|| Alphanumeric.sample_string(&mut rng, 50)),
            user_id: user_id.to_owned(),
            access_token_secs: DEFAULT_ACCESS_TOKEN_SECS,
        }
    }
}

/// What the token endpoint answers: X's token answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Tokens {
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
    /// The Bearer user access token.
    pub access_token: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// Present when `offline.access` was granted; single use (rotated by every refresh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

#[derive(Debug)]
struct PendingCode {
    code: String,
    client_id: String,
    redirect_uri: String,
    scopes: Vec<String>,
    challenge: String,
    method: ChallengeMethod,
    issued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChallengeMethod {
    S256,
    Plain,
}

impl ChallengeMethod {
    fn verifies(self, challenge: &str, verifier: &str) -> bool {
        match self {
            ChallengeMethod::Plain => challenge == verifier,
            ChallengeMethod::S256 => {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(Sha256::digest(verifier.as_bytes()))
                    == challenge
            }
        }
    }
}

#[derive(Debug)]
struct AccessToken {
    token: String,
    expires_at: DateTime<Utc>,
}

/// One user's authorisation of one client: its scopes, its live access tokens and its one
/// valid refresh token.
#[derive(Debug)]
struct Grant {
    client_id: String,
    user_id: String,
    scopes: Vec<String>,
    access: Vec<AccessToken>,
    refresh_token: Option<String>,
    revoked: bool,
}

/// Why a Bearer token does not stand for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BearerRefusal {
    /// Not a token the simulator issued (or an App-only one, which [`crate::auth`] sorts first).
    Unknown,
    /// Issued, but its expiry has passed or its grant was revoked: X's 401.
    Expired { user_id: String },
}

/// The user a valid Bearer access token acts for, and what it may do.
#[derive(Debug, Clone)]
pub(crate) struct BearerUser {
    pub user_id: String,
    pub scopes: Vec<String>,
}

/// Every OAuth 2.0 client, pending code and grant the simulator knows.
#[derive(Debug, Default)]
pub(crate) struct OAuth2Book {
    clients: Vec<OAuth2Client>,
    codes: Vec<PendingCode>,
    grants: Vec<Grant>,
}

/// A token endpoint refusal: status and X's `{"error","error_description"}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRefusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl TokenRefusal {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        TokenRefusal {
            status,
            error,
            description: description.into(),
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        TokenRefusal::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
}

impl IntoResponse for TokenRefusal {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            json!({ "error": self.error, "error_description": self.description }).to_string(),
        )
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn random_token(kind: &str) -> String {
    // X's tokens end in `:1:0:at:1` / `:rt:1`-like markers; the kind keeps them apart here too.
    format!("{}{kind}", Alphanumeric.sample_string(&mut rand::rng(), 64))
}

impl OAuth2Book {
    /// Adds a client, replacing one with the same id.
    pub(crate) fn add_client(&mut self, client: OAuth2Client) {
        self.clients.retain(|c| c.client_id != client.client_id);
        self.clients.push(client);
    }

    fn client(&self, client_id: &str) -> Option<&OAuth2Client> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }

    /// The user a Bearer access token acts for, if it is a live user token.
    pub(crate) fn bearer_user(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<BearerUser, BearerRefusal> {
        let (grant, access) = self
            .grants
            .iter()
            .find_map(|g| g.access.iter().find(|a| a.token == token).map(|a| (g, a)))
            .ok_or(BearerRefusal::Unknown)?;
        if grant.revoked || access.expires_at <= now {
            return Err(BearerRefusal::Expired {
                user_id: grant.user_id.clone(),
            });
        }
        Ok(BearerUser {
            user_id: grant.user_id.clone(),
            scopes: grant.scopes.clone(),
        })
    }

    /// Starts a grant as if the user approved `scopes` for `client_id`: the tokens the
    /// authorization-code exchange would answer.
    pub(crate) fn grant(
        &mut self,
        client_id: &str,
        scopes: Vec<String>,
        now: DateTime<Utc>,
    ) -> Option<OAuth2Tokens> {
        let client = self.client(client_id)?.clone();
        let refresh_token = scopes
            .iter()
            .any(|s| s == "offline.access")
            .then(|| random_token("rt1"));
        let mut grant = Grant {
            client_id: client.client_id.clone(),
            user_id: client.user_id.clone(),
            scopes,
            access: Vec::new(),
            refresh_token,
            revoked: false,
        };
        let tokens = issue_access(&mut grant, &client, now);
        tracing::info!(user_id = %client.user_id, client_id, "OAuth 2.0 grant issued");
        self.grants.push(grant);
        Some(tokens)
    }

    /// Ends every access token of `user_id`'s grants now, as two hours passing would.
    pub(crate) fn expire_access_tokens(&mut self, user_id: &str, now: DateTime<Utc>) -> usize {
        let mut expired = 0;
        for grant in self.grants.iter_mut().filter(|g| g.user_id == user_id) {
            for access in &mut grant.access {
                access.expires_at = access.expires_at.min(now);
                expired += 1;
            }
        }
        expired
    }

    /// Revokes every grant of `user_id`, as the user does at x.com/settings/connected_apps:
    /// its access tokens stop working and its refresh token is refused.
    pub(crate) fn revoke_grants(&mut self, user_id: &str) -> usize {
        let mut revoked = 0;
        for grant in self.grants.iter_mut().filter(|g| g.user_id == user_id) {
            grant.revoked = true;
            revoked += 1;
        }
        revoked
    }

    fn take_code(&mut self, code: &str) -> Option<PendingCode> {
        let index = self.codes.iter().position(|c| c.code == code)?;
        Some(self.codes.swap_remove(index))
    }
}

/// Issues a fresh access token on `grant` (keeping earlier ones until their expiry).
fn issue_access(grant: &mut Grant, client: &OAuth2Client, now: DateTime<Utc>) -> OAuth2Tokens {
    let access_token = random_token("at1");
    grant.access.retain(|a| a.expires_at > now);
    grant.access.push(AccessToken {
        token: access_token.clone(),
        expires_at: now + Duration::seconds(client.access_token_secs),
    });
    OAuth2Tokens {
        token_type: "bearer".to_owned(),
        expires_in: client.access_token_secs,
        access_token,
        scope: grant.scopes.join(" "),
        refresh_token: grant.refresh_token.clone(),
    }
}

/// The scopes X requires of an OAuth 2.0 user token on a route, and whether the route takes
/// OAuth 1.0a as well (`openapi.json` `paths.*.security`). `None`: the route does not take
/// OAuth 2.0 user tokens at all (webhook management, the TON URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub scopes: &'static [&'static str],
    pub oauth1: bool,
}

const DM_WRITE: Policy = Policy {
    scopes: &["dm.write", "tweet.read", "users.read"],
    oauth1: true,
};
const DM_READ: Policy = Policy {
    scopes: &["dm.read", "tweet.read", "users.read"],
    oauth1: true,
};
const DM_MEDIA: Policy = Policy {
    scopes: &["dm.read"],
    oauth1: false,
};
const MEDIA_WRITE: Policy = Policy {
    scopes: &["media.write"],
    oauth1: true,
};
const USERS_READ: Policy = Policy {
    scopes: &["tweet.read", "users.read"],
    oauth1: true,
};

/// The [`Policy`] of `method path`.
pub(crate) fn policy(method: &Method, path: &str) -> Option<Policy> {
    let dm_conversation = path.starts_with("/2/dm_conversations/");
    if *method == Method::GET && path.starts_with("/2/dm_conversations/media/") {
        Some(DM_MEDIA)
    } else if *method == Method::POST
        && (path == "/2/dm_conversations" || dm_conversation && path.ends_with("/messages"))
    {
        Some(DM_WRITE)
    } else if *method == Method::GET
        && (path == "/2/dm_events"
            || path.starts_with("/2/dm_events/")
            || dm_conversation && path.ends_with("/dm_events"))
    {
        Some(DM_READ)
    } else if path.starts_with("/2/media/upload") {
        Some(MEDIA_WRITE)
    } else if *method == Method::GET && path.starts_with("/2/users/") {
        Some(USERS_READ)
    } else {
        None
    }
}

/// The scopes of `policy` that `granted` lacks.
pub(crate) fn missing_scopes(policy: &Policy, granted: &[String]) -> Vec<&'static str> {
    policy
        .scopes
        .iter()
        .copied()
        .filter(|scope| !granted.iter().any(|g| g == scope))
        .collect()
}

/// X's 403 for a kind of authentication the route does not take, naming the kinds it does.
pub(crate) fn unsupported_authentication(used: &str, supported: &str) -> String {
    json!({
        "title": "Unsupported Authentication",
        "detail": format!("Authenticating with {used} is forbidden for this endpoint.  Supported authentication types are [{supported}]."),
        "type": "https://api.twitter.com/2/problems/unsupported-authentication",
        "status": 403
    })
    .to_string()
}

/// The query of `GET /i/oauth2/authorize` (and of `/2/oauth2/authorize`, `openapi.json`'s name).
#[derive(Debug, Deserialize)]
pub(crate) struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `GET /i/oauth2/authorize`: approves at once as the client's account and redirects (302) to
/// `redirect_uri` with `state` and a `code` valid for 30 seconds. A malformed request is 400
/// with an OAuth error body (X shows an error page to the user instead).
pub(crate) async fn authorize(
    State(state): State<Arc<SimState>>,
    query: Result<Query<AuthorizeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return TokenRefusal::invalid_request("unreadable query string").into_response();
    };
    match authorize_code(&state, query) {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Err(refusal) => refusal.into_response(),
    }
}

fn authorize_code(state: &SimState, query: AuthorizeQuery) -> Result<String, TokenRefusal> {
    let required = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| TokenRefusal::invalid_request(format!("missing {name}")))
    };
    if required(query.response_type, "response_type")? != "code" {
        return Err(TokenRefusal::invalid_request("response_type must be code"));
    }
    let client_id = required(query.client_id, "client_id")?;
    let redirect_uri = required(query.redirect_uri, "redirect_uri")?;
    let challenge = required(query.code_challenge, "code_challenge")?;
    let method = match required(query.code_challenge_method, "code_challenge_method")?.as_str() {
        "S256" => ChallengeMethod::S256,
        "plain" => ChallengeMethod::Plain,
        _ => {
            return Err(TokenRefusal::invalid_request(
                "code_challenge_method must be S256 or plain",
            ))
        }
    };
    let app_state = required(query.state, "state")?;
    if app_state.len() > 500 {
        return Err(TokenRefusal::invalid_request(
            "state is over 500 characters",
        ));
    }
    let mut redirect = url::Url::parse(&redirect_uri)
        .map_err(|_| TokenRefusal::invalid_request("redirect_uri is not a URL"))?;
    let scopes: Vec<String> = query
        .scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let code = random_token("ac1");
    let now = state.now();
    let mut inner = state.lock();
    let book = &mut inner.accounts.oauth2;
    let client = book
        .client(&client_id)
        .ok_or_else(|| TokenRefusal::invalid_request("unknown client_id"))?;
    tracing::info!(user_id = %client.user_id, client_id, "OAuth 2.0 authorize approved");
    book.codes
        .retain(|c| now - c.issued_at <= Duration::seconds(CODE_LIFETIME_SECS));
    book.codes.push(PendingCode {
        code: code.clone(),
        client_id,
        redirect_uri,
        scopes,
        challenge,
        method,
        issued_at: now,
    });
    redirect
        .query_pairs_mut()
        .append_pair("state", &app_state)
        .append_pair("code", &code);
    Ok(redirect.into())
}

/// Who is calling the token endpoint: a confidential client by HTTP Basic, or a public one by
/// `client_id` in the form. A confidential client without its Basic header is X's 401.
fn token_client(
    book: &OAuth2Book,
    headers: &HeaderMap,
    form_client_id: Option<&str>,
) -> Result<OAuth2Client, TokenRefusal> {
    let missing_auth = || {
        TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Missing valid authorization header",
        )
    };
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if let Some(encoded) = basic {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(missing_auth)?;
        let (id, secret) = decoded.split_once(':').ok_or_else(missing_auth)?;
        return book
            .client(id)
            .filter(|c| c.client_secret.as_deref() == Some(secret))
            .cloned()
            .ok_or_else(missing_auth);
    }
    let client = form_client_id
        .and_then(|id| book.client(id))
        .ok_or_else(|| TokenRefusal::invalid_request("Missing required parameter [client_id]."))?;
    if client.client_secret.is_some() {
        return Err(missing_auth());
    }
    Ok(client.clone())
}

/// `POST /2/oauth2/token`: the `authorization_code` (with PKCE) and `refresh_token` grants.
/// A refresh rotates the refresh token: the one used is refused from then on.
pub(crate) async fn token(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match token_answer(&state, &headers, &body) {
        Ok(tokens) => json_response(
            StatusCode::OK,
            serde_json::to_string(&tokens).expect("tokens serialize"),
        ),
        Err(refusal) => {
            tracing::warn!(error = refusal.error, description = %refusal.description, "token request refused");
            refusal.into_response()
        }
    }
}

fn token_answer(
    state: &SimState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<OAuth2Tokens, TokenRefusal> {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let now = state.now();
    let mut inner = state.lock();
    let book = &mut inner.accounts.oauth2;
    let client = token_client(book, headers, field("client_id"))?;
    match field("grant_type") {
        Some("authorization_code") => {
            let code = field("code").ok_or_else(|| TokenRefusal::invalid_request(INVALID_CODE))?;
            let pending = book
                .take_code(code)
                .ok_or_else(|| TokenRefusal::invalid_request(INVALID_CODE))?;
            let verifier = field("code_verifier").unwrap_or_default();
            let fresh = now - pending.issued_at <= Duration::seconds(CODE_LIFETIME_SECS);
            if !fresh
                || pending.client_id != client.client_id
                || field("redirect_uri") != Some(pending.redirect_uri.as_str())
                || !pending.method.verifies(&pending.challenge, verifier)
            {
                return Err(TokenRefusal::invalid_request(INVALID_CODE));
            }
            Ok(book
                .grant(&client.client_id, pending.scopes, now)
                .expect("the client exists"))
        }
        Some("refresh_token") => {
            let presented = field("refresh_token").unwrap_or_default();
            let grant = book
                .grants
                .iter_mut()
                .find(|g| {
                    !g.revoked
                        && g.client_id == client.client_id
                        && g.refresh_token.as_deref() == Some(presented)
                })
                .ok_or_else(|| TokenRefusal::invalid_request(INVALID_TOKEN))?;
            grant.refresh_token = Some(random_token("rt1"));
            tracing::info!(user_id = %grant.user_id, "OAuth 2.0 refresh token rotated");
            Ok(issue_access(grant, &client, now))
        }
        _ => Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        )),
    }
}

/// `POST /2/oauth2/revoke`: revokes an access token (that token only) or a refresh token
/// (the whole grant), answering `{"revoked":true}` even for an unknown token (RFC 7009).
pub(crate) async fn revoke(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut inner = state.lock();
    let book = &mut inner.accounts.oauth2;
    let client = match token_client(book, &headers, field("client_id").as_deref()) {
        Ok(client) => client,
        Err(refusal) => return refusal.into_response(),
    };
    let token = field("token").unwrap_or_default();
    for grant in book
        .grants
        .iter_mut()
        .filter(|g| g.client_id == client.client_id)
    {
        if grant.refresh_token.as_deref() == Some(token.as_str()) {
            grant.revoked = true;
        }
        grant.access.retain(|a| a.token != token);
    }
    json_response(StatusCode::OK, json!({ "revoked": true }).to_string())
}

impl Simulator {
    /// Registers an OAuth 2.0 client whose authorize page approves as `client.user_id`.
    pub fn add_oauth2_client(&self, client: OAuth2Client) {
        self.state().lock().accounts.oauth2.add_client(client);
    }

    /// The tokens of a grant of `scopes` to `client_id`, as if its user had gone through the
    /// authorize page; a refresh token only with `offline.access`. `None` for an unknown client.
    pub fn oauth2_grant(&self, client_id: &str, scopes: &[&str]) -> Option<OAuth2Tokens> {
        let now = self.state().now();
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.state()
            .lock()
            .accounts
            .oauth2
            .grant(client_id, scopes, now)
    }

    /// Expires every OAuth 2.0 access token of the account now; its refresh tokens still
    /// work. Returns how many tokens it ended.
    pub fn oauth2_expire_access_tokens(&self, user_id: &str) -> usize {
        let now = self.state().now();
        self.state()
            .lock()
            .accounts
            .oauth2
            .expire_access_tokens(user_id, now)
    }

    /// Revokes every OAuth 2.0 grant of the account, as its user would in X's settings:
    /// requests with its access tokens get 401 and a refresh gets X's refusal. Returns how
    /// many grants it revoked.
    pub fn oauth2_revoke_grants(&self, user_id: &str) -> usize {
        self.state().lock().accounts.oauth2.revoke_grants(user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_the_rfc_7636_example() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(ChallengeMethod::S256.verifies(challenge, verifier));
        assert!(!ChallengeMethod::S256.verifies(challenge, "another"));
        assert!(ChallengeMethod::Plain.verifies("same", "same"));
        assert!(!ChallengeMethod::Plain.verifies(challenge, verifier));
    }

    #[test]
    fn dm_routes_need_x_scopes_and_media_download_refuses_oauth1() {
        let send = policy(&Method::POST, "/2/dm_conversations/with/12/messages").unwrap();
        assert_eq!(send.scopes, &["dm.write", "tweet.read", "users.read"]);
        let read = policy(&Method::GET, "/2/dm_events").unwrap();
        assert!(read.scopes.contains(&"dm.read"));
        let media = policy(&Method::GET, "/2/dm_conversations/media/1/2/a.jpg").unwrap();
        assert!(!media.oauth1);
        assert_eq!(policy(&Method::POST, "/2/webhooks"), None);
        assert_eq!(policy(&Method::GET, "/1.1/ton/data/dm/1/2/a.jpg"), None);
        let granted = vec!["dm.read".to_owned(), "tweet.read".to_owned()];
        assert_eq!(
            missing_scopes(&send, &granted),
            vec!["dm.write", "users.read"]
        );
    }
}
