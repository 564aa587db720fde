//! What tests observe besides DMs: every request X-facing routes answered, and running totals.

use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};

use crate::state::{RequestRecord, SimState, CLIENT_CLOSED_REQUEST};

/// Filled in by a handler once it knows who sent the request, so the log can name the account
/// even if the request is abandoned mid-way.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestIdentity(Arc<OnceLock<String>>);

impl RequestIdentity {
    pub(crate) fn set(&self, user_id: &str) {
        let _ = self.0.set(user_id.to_string());
    }

    fn get(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

/// Logs the request when its answer is ready, or as 499 when the client goes away first.
struct PendingRecord {
    state: Arc<SimState>,
    identity: RequestIdentity,
    method: String,
    path: String,
    oauth_token: Option<String>,
    at: DateTime<Utc>,
    answered: bool,
}

impl PendingRecord {
    fn log(&mut self, status: u16) {
        self.answered = true;
        self.state.record_request(RequestRecord {
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            user_id: self.identity.get(),
            oauth_token: self.oauth_token.take(),
            status,
            at: self.at,
        });
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if !self.answered {
            self.log(CLIENT_CLOSED_REQUEST);
        }
    }
}

/// Middleware around the X routes: gives handlers a [`RequestIdentity`] and logs every request.
pub(crate) async fn log_requests(
    State(state): State<Arc<SimState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = RequestIdentity::default();
    request.extensions_mut().insert(identity.clone());
    let mut pending = PendingRecord {
        at: state.now(),
        state,
        identity,
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        oauth_token: oauth_token(&request),
        answered: false,
    };
    let response = next.run(request).await;
    pending.log(response.status().as_u16());
    response
}

/// The `oauth_token` of the request's `Authorization: OAuth …` header, if any.
fn oauth_token(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let header = crate::oauth::parse_authorization_header(value).ok()?;
    header.get("oauth_token").map(str::to_owned)
}
