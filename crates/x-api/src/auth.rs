//! How an [`crate::XClient`] proves whose account it acts for: OAuth 1.0a user credentials
//! (a signature per request) or an OAuth 2.0 user access token from an
//! [`AccessTokenSource`] (`Authorization: Bearer`). The rest of the client does not care
//! which: it asks [`crate::XClient`] for an [`Authorization`] per request and reports the
//! answer's status back, so a token X refused (401) is not used again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};

use crate::oauth2::{TokenEndpoint, TokenError, TokenGrant};
use crate::{Problem, UserCredentials, XError};

/// The future of [`AccessTokenSource::access_token`].
pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SecretString, TokenError>> + Send + 'a>>;

/// The future of [`GrantSink::store`].
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where an OAuth 2.0 client gets a current user access token. The bridge's implementation
/// will keep the grant in the state store, shared by replicas; [`RefreshingTokenSource`]
/// keeps it in memory.
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

/// Where [`RefreshingTokenSource`] puts every new grant before using it: X has already
/// spent the previous refresh token, so the new one must be kept.
pub trait GrantSink: Send + Sync {
    /// Stores `grant` durably; `Err` says why not (it is tried again on the next use).
    fn store<'a>(&'a self, grant: &'a TokenGrant) -> StoreFuture<'a>;
}

/// How long before its expiry an access token is refreshed, so a request does not leave with
/// a token that dies on the way.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// An [`AccessTokenSource`] that holds one grant in memory and refreshes it at the token
/// endpoint when the access token nears its expiry or X refused it. One refresh at a time
/// per source: concurrent callers wait for it and share its result. A refused grant is
/// remembered, so X is not asked again with a dead refresh token.
pub struct RefreshingTokenSource {
    endpoint: TokenEndpoint,
    sink: Option<Arc<dyn GrantSink>>,
    state: Mutex<Held>,
    refreshing: tokio::sync::Mutex<()>,
}

struct Held {
    access: Option<SecretString>,
    expires_at: Option<Instant>,
    refresh: Option<SecretString>,
    refused: Option<TokenError>,
    unsaved: Option<TokenGrant>,
}

impl fmt::Debug for RefreshingTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshingTokenSource")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RefreshingTokenSource {
    /// A source starting from `grant` (from the authorize flow or the store), received now.
    pub fn new(endpoint: TokenEndpoint, grant: TokenGrant) -> RefreshingTokenSource {
        let mut held = Held {
            access: None,
            expires_at: None,
            refresh: None,
            refused: None,
            unsaved: None,
        };
        held.take(&grant);
        // The caller has this grant already (from the authorize flow or its store).
        held.unsaved = None;
        RefreshingTokenSource {
            endpoint,
            sink: None,
            state: Mutex::new(held),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The same source, storing every new grant in `sink` before it uses it.
    pub fn with_sink(mut self, sink: Arc<dyn GrantSink>) -> RefreshingTokenSource {
        self.sink = Some(sink);
        self
    }

    /// The refresh token held now, for a caller that keeps the grant elsewhere.
    pub fn refresh_token(&self) -> Option<SecretString> {
        self.held().refresh.clone()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The held access token if it is still good for [`REFRESH_MARGIN`], or the remembered
    /// refusal.
    fn current(&self) -> Option<Result<SecretString, TokenError>> {
        let held = self.held();
        if let Some(refused) = &held.refused {
            return Some(Err(refused.clone()));
        }
        let fresh = held
            .expires_at
            .is_none_or(|at| Instant::now() + REFRESH_MARGIN < at);
        held.access.clone().filter(|_| fresh).map(Ok)
    }

    async fn refresh(&self) -> Result<SecretString, TokenError> {
        let _one_at_a_time = self.refreshing.lock().await;
        // Another caller may have refreshed while this one waited.
        if let Some(current) = self.current() {
            return current;
        }
        let refresh = self.held().refresh.clone();
        let Some(refresh) = refresh else {
            return Err(TokenError::GrantRefused {
                error: "no_refresh_token".to_owned(),
                description:
                    "the access token expired and the grant has no refresh token (offline.access)"
                        .to_owned(),
            });
        };
        match self.endpoint.refresh(&refresh).await {
            Ok(grant) => {
                let access = grant.access_token.clone();
                self.held().take(&grant);
                self.save().await;
                Ok(access)
            }
            Err(error) => {
                if error.needs_authorization() {
                    self.held().refused = Some(error.clone());
                }
                Err(error)
            }
        }
    }

    /// Stores the newest grant in the sink if it is not stored yet.
    async fn save(&self) {
        let Some(sink) = &self.sink else {
            return;
        };
        let Some(grant) = self.held().unsaved.clone() else {
            return;
        };
        match sink.store(&grant).await {
            Ok(()) => {
                let mut held = self.held();
                // Only if no newer grant arrived meanwhile.
                let text =
                    |secret: Option<&SecretString>| secret.map(|s| s.expose_secret().to_owned());
                if text(held.refresh.as_ref()) == text(grant.refresh_token.as_ref()) {
                    held.unsaved = None;
                }
            }
            Err(why) => {
                tracing::error!(%why, "could not store the rotated OAuth 2.0 grant; trying again on next use");
            }
        }
    }
}

impl Held {
    fn take(&mut self, grant: &TokenGrant) {
        self.access = Some(grant.access_token.clone());
        self.expires_at = grant.expires_in.map(|lifetime| Instant::now() + lifetime);
        if let Some(refresh) = &grant.refresh_token {
            self.refresh = Some(refresh.clone());
        }
        self.refused = None;
        self.unsaved = Some(grant.clone());
    }
}

impl AccessTokenSource for RefreshingTokenSource {
    fn access_token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            self.save().await;
            match self.current() {
                Some(current) => current,
                None => self.refresh().await,
            }
        })
    }

    fn rejected(&self, token: &SecretString) {
        let mut held = self.held();
        if held
            .access
            .as_ref()
            .is_some_and(|access| access.expose_secret() == token.expose_secret())
        {
            held.access = None;
        }
    }
}
