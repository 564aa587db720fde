//! OAuth 2.0 user context as X serves it (docs/x-api-facts.md "OAuth 2.0"): the authorize
//! endpoint (approved at once, since the simulator has no user to ask), the token endpoint
//! with PKCE and rotating refresh tokens, revocation, and the Bearer user access tokens the
//! DM routes accept beside OAuth 1.0a, each checked for its scopes.
//!
//! The grants live in the [`crate::accounts::AccountRegistry`], beside the OAuth 1.0a tokens,
//! because both are credentials acting for an account and [`crate::auth`] looks both up there.
//! Tests expire access tokens and revoke grants on demand (the simulator's `oauth2_*`
//! methods and `/_sim/oauth2/*`), since waiting two hours for X's expiry is not a test.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use rand::distr::{Alphanumeric, SampleString as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// X's access-token lifetime: two hours (`expires_in: 7200`).
pub const DEFAULT_ACCESS_TOKEN_SECS: i64 = 7200;

/// How long an authorization code may wait for its exchange: 30 seconds on X.
pub(crate) const CODE_LIFETIME_SECS: i64 = 30;

/// X's description of a refused refresh (spent, revoked or unknown refresh token).
pub(crate) const INVALID_TOKEN: &str = "Value passed for the token was invalid.";
/// X's description of a refused authorization code (unknown, spent, expired, wrong verifier).
pub(crate) const INVALID_CODE: &str = "Value passed for the authorization code was invalid.";

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
pub(crate) struct PendingCode {
    pub(crate) code: String,
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) challenge: String,
    pub(crate) method: ChallengeMethod,
    pub(crate) issued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChallengeMethod {
    S256,
    Plain,
}

impl ChallengeMethod {
    pub(crate) fn verifies(self, challenge: &str, verifier: &str) -> bool {
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
pub(crate) struct AccessToken {
    pub(crate) token: String,
    pub(crate) expires_at: DateTime<Utc>,
}

/// One user's authorisation of one client: its scopes, its live access tokens and its one
/// valid refresh token.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) client_id: String,
    pub(crate) user_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) access: Vec<AccessToken>,
    pub(crate) refresh_token: Option<String>,
    pub(crate) revoked: bool,
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
    pub(crate) clients: Vec<OAuth2Client>,
    pub(crate) codes: Vec<PendingCode>,
    pub(crate) grants: Vec<Grant>,
}

/// A token endpoint refusal: status and X's `{"error","error_description"}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRefusal {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

impl TokenRefusal {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        TokenRefusal {
            status,
            error,
            description: description.into(),
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
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

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(crate) fn random_token(kind: &str) -> String {
    // X's tokens end in `:1:0:at:1` / `:rt:1`-like markers; the kind keeps them apart here too.
    format!("{}{kind}", Alphanumeric.sample_string(&mut rand::rng(), 64))
}

impl OAuth2Book {
    /// Adds a client, replacing one with the same id.
    pub(crate) fn add_client(&mut self, client: OAuth2Client) {
        self.clients.retain(|c| c.client_id != client.client_id);
        self.clients.push(client);
    }

    pub(crate) fn client(&self, client_id: &str) -> Option<&OAuth2Client> {
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

    pub(crate) fn take_code(&mut self, code: &str) -> Option<PendingCode> {
        let index = self.codes.iter().position(|c| c.code == code)?;
        Some(self.codes.swap_remove(index))
    }
}

/// Issues a fresh access token on `grant` (keeping earlier ones until their expiry).
pub(crate) fn issue_access(
    grant: &mut Grant,
    client: &OAuth2Client,
    now: DateTime<Utc>,
) -> OAuth2Tokens {
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
/// AAA v2's subscribe and check (`…/webhooks/:id/subscriptions/all`): the spec's scopes (X
/// added OAuth 2.0 to AAA v2 on 2026-01-15).
const AAA_SUBSCRIPTION: Policy = Policy {
    scopes: &["dm.read", "dm.write", "tweet.read", "users.read"],
    oauth1: true,
};
/// `POST /2/activity/subscriptions`: the spec lists no scope for the route itself; the one
/// the event type needs (`dm.read` for `dm.*`) is checked by the route, which reads the body.
const ACTIVITY_CREATE: Policy = Policy {
    scopes: &[],
    oauth1: true,
};
/// `GET /2/activity/subscriptions`: the spec's scopes, odd as they are for a DM bridge.
const ACTIVITY_LIST: Policy = Policy {
    scopes: &["like.read", "tweet.read"],
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
    } else if path.starts_with("/2/account_activity/webhooks/")
        && path.ends_with("/subscriptions/all")
        && matches!(*method, Method::POST | Method::GET)
    {
        Some(AAA_SUBSCRIPTION)
    } else if path == "/2/activity/subscriptions" && *method == Method::POST {
        Some(ACTIVITY_CREATE)
    } else if path == "/2/activity/subscriptions" && *method == Method::GET {
        Some(ACTIVITY_LIST)
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
