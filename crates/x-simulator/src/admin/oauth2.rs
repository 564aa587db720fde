//! The admin routes of OAuth 2.0 user context: register a client, grant tokens without the
//! browser step, expire an account's access tokens now, and revoke its grants, so tests and
//! CRM developers can reach every state a channel's OAuth 2.0 grant can be in.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::extract::{error, known_account, AdminBody};
use crate::oauth2::{OAuth2Client, DEFAULT_ACCESS_TOKEN_SECS};
use crate::state::SimState;

/// Body of `POST /_sim/oauth2/clients`.
#[derive(Debug, Deserialize)]
pub(super) struct NewClient {
    user_id: String,
    #[serde(default)]
    confidential: bool,
    access_token_secs: Option<i64>,
}

/// Body of `POST /_sim/oauth2/grants`.
#[derive(Debug, Deserialize)]
pub(super) struct NewGrant {
    client_id: String,
    scopes: Vec<String>,
}

/// Body of `POST /_sim/oauth2/expire` and `/_sim/oauth2/revoke`.
#[derive(Debug, Deserialize)]
pub(super) struct OfAccount {
    user_id: String,
}

/// `POST /_sim/oauth2/clients`: a new client acting for an existing account; 201 with it.
pub(super) async fn add_client(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<NewClient>,
) -> Response {
    let mut inner = state.lock();
    if let Err(unknown) = known_account(&inner, &request.user_id) {
        return unknown.into_response();
    }
    let client = OAuth2Client {
        access_token_secs: request
            .access_token_secs
            .unwrap_or(DEFAULT_ACCESS_TOKEN_SECS),
        ..OAuth2Client::generate(&request.user_id, request.confidential)
    };
    inner.accounts.oauth2.add_client(client.clone());
    (StatusCode::CREATED, Json(client)).into_response()
}

/// `POST /_sim/oauth2/grants`: the token answer of a grant of `scopes`; 404 for an unknown
/// client.
pub(super) async fn grant(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<NewGrant>,
) -> Response {
    let now = state.now();
    match state
        .lock()
        .accounts
        .oauth2
        .grant(&request.client_id, request.scopes, now)
    {
        Some(tokens) => (StatusCode::CREATED, Json(tokens)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such OAuth 2.0 client"),
    }
}

/// `POST /_sim/oauth2/expire`: expires the account's access tokens now.
pub(super) async fn expire(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<OfAccount>,
) -> Response {
    let now = state.now();
    let expired = state
        .lock()
        .accounts
        .oauth2
        .expire_access_tokens(&request.user_id, now);
    Json(json!({ "expired": expired })).into_response()
}

/// `POST /_sim/oauth2/revoke`: revokes the account's grants.
pub(super) async fn revoke(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<OfAccount>,
) -> Response {
    let revoked = state.lock().accounts.oauth2.revoke_grants(&request.user_id);
    Json(json!({ "revoked": revoked })).into_response()
}
