//! How an [`crate::XClient`] proves whose account it acts for: OAuth 1.0a user credentials
//! (a signature per request) or an OAuth 2.0 user access token from an
//! [`AccessTokenSource`] (`Authorization: Bearer`). The rest of the client does not care
//! which: it asks [`crate::XClient`] for an [`Authorization`] per request and reports the
//! answer's status back, so a token X refused (401) is not used again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};

use crate::oauth2::TokenError;
use crate::{Problem, UserCredentials, XError};

/// The future of [`AccessTokenSource::access_token`].
pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SecretString, TokenError>> + Send + 'a>>;

/// Where an OAuth 2.0 client gets a current user access token. The bridge's one
/// (`xbridge_core::oauth2_tokens::StoreTokenSource`) keeps the grant in the state store,
/// shared by replicas, because X rotates refresh tokens: the refresh and where its
/// result is kept belong together, outside this client.
pub trait AccessTokenSource: Send + Sync {
    /// A token valid now, refreshed first if it is (nearly) expired or was refused.
    fn access_token(&self) -> TokenFuture<'_>;

    /// X answered 401 to a request carrying `token`: the next [`Self::access_token`] must
    /// not return it.
    fn rejected(&self, token: &SecretString);
}

/// How a client authenticates.
#[derive(Clone)]
pub enum XAuth {
    /// OAuth 1.0a user context: every request signed with the four credentials.
    OAuth1(Arc<UserCredentials>),
    /// OAuth 2.0 user context: a Bearer access token from the source.
    OAuth2(Arc<dyn AccessTokenSource>),
}

impl fmt::Debug for XAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XAuth::OAuth1(_) => f.write_str("XAuth::OAuth1([REDACTED])"),
            XAuth::OAuth2(_) => f.write_str("XAuth::OAuth2(..)"),
        }
    }
}

impl From<UserCredentials> for XAuth {
    fn from(credentials: UserCredentials) -> XAuth {
        XAuth::OAuth1(Arc::new(credentials))
    }
}

/// The `Authorization` header of one request, and what to tell if X refuses it.
pub(crate) struct Authorization {
    pub(crate) header: HeaderValue,
    bearer: Option<(Arc<dyn AccessTokenSource>, SecretString)>,
}

impl Authorization {
    pub(crate) fn oauth1(header: HeaderValue) -> Authorization {
        Authorization {
            header,
            bearer: None,
        }
    }

    /// The header for an OAuth 2.0 token from `source`.
    pub(crate) async fn bearer(
        source: Arc<dyn AccessTokenSource>,
    ) -> Result<Authorization, XError> {
        let token = source.access_token().await.map_err(token_failure)?;
        let header = crate::oauth::sensitive_header(&format!("Bearer {}", token.expose_secret()))
            .ok_or(XError::Unauthorized { problem: None })?;
        Ok(Authorization {
            header,
            bearer: Some((source, token)),
        })
    }

    /// A header no token source stands behind (an OAuth 1.0a signature, the App's Bearer
    /// token): a 401 to it changes nothing.
    pub(crate) fn fixed(header: HeaderValue) -> Authorization {
        Authorization::oauth1(header)
    }

    /// Whether it carries an OAuth 2.0 user access token, which a 401 drops (so one more try
    /// goes with a fresh one).
    pub(crate) fn is_bearer_user(&self) -> bool {
        self.bearer.is_some()
    }

    /// Tells the token source about a 401, so the token is refreshed before the next request.
    pub(crate) fn answered(&self, status: u16) {
        if status == 401 {
            if let Some((source, token)) = &self.bearer {
                tracing::info!("X refused the OAuth 2.0 access token; it will be refreshed");
                source.rejected(token);
            }
        }
    }
}

/// A token failure as the client's callers see failures: a refused grant or client is
/// [`XError::Unauthorized`] whose detail says to authorise again; anything else transient.
pub(crate) fn token_failure(error: TokenError) -> XError {
    match error {
        TokenError::GrantRefused { .. } | TokenError::ClientRejected { .. } => {
            XError::Unauthorized {
                problem: Some(Problem {
                    problem_type: "about:blank".to_owned(),
                    title: crate::error::OAUTH2_GRANT_REFUSED.to_owned(),
                    detail: Some(error.to_string()),
                    status: None,
                    reason: None,
                }),
            }
        }
        TokenError::Rejected { status, .. } => XError::Transient {
            status: Some(status),
            detail: error.to_string(),
        },
        TokenError::Transient { status, .. } => XError::Transient {
            status,
            detail: error.to_string(),
        },
    }
}

/// How long before its expiry an access token is refreshed, so a request does not leave with
/// a token that dies on the way.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
