//! `GET /2/users/me`: the credential check clients run at startup. As on X, it answers 200 even
//! while DM sends fail for credits or permissions; only `x-access-level` hints at the latter.
//!
//! `GET /2/users/:id`: any account or customer the simulator knows, with a user or App token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use serde_json::json;

use crate::auth::{self, AuthKind, SignedRequest};
use crate::customers::find_user;
use crate::dm_events::{render_user, user_fields};
use crate::faults::{Endpoint, SendFailure};
use crate::problems;
use crate::reply::Reply;
use crate::request_log::RequestIdentity;
use crate::state::SimState;

pub(crate) async fn me(
    State(state): State<Arc<SimState>>,
    Extension(identity): Extension<RequestIdentity>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = SignedRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let reply = decide(&state, &request);
    reply.deliver(&state, &identity).await
}

fn decide(state: &SimState, request: &SignedRequest<'_>) -> Reply {
    let now = state.now();
    let mut guard = state.lock();
    let inner = &mut *guard;
    let account = match auth::authenticate(request, &inner.accounts, &mut inner.nonces, now) {
        Ok(account) => account.clone(),
        Err(failure) => {
            tracing::warn!(?failure, "refused a users/me request's credentials");
            // X allows Bearer tokens on user lookups, but `/me` needs a user: plain 403 there too.
            return Reply::new(failure.status(), failure.body());
        }
    };
    let user_id = account.user_id.as_str();
    let reply = Reply::new(StatusCode::OK, "").for_account(user_id, inner.faults.latency(user_id));
    if inner.faults.revokes_token(user_id) {
        inner.counters.faults_injected += 1;
        return reply.answer(StatusCode::UNAUTHORIZED, problems::UNAUTHORIZED);
    }
    let body = json!({ "data": {
        "id": account.user_id,
        "name": account.name,
        "username": account.username,
    }})
    .to_string();
    reply
        .access_level(!inner.faults.lacks_dm_permission(user_id))
        .answer(StatusCode::OK, body)
}

/// `GET /2/users/:id`.
pub(crate) async fn by_id(
    State(state): State<Arc<SimState>>,
    Extension(identity): Extension<RequestIdentity>,
    id: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let request = SignedRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let reply = decide_lookup(&state, &request, &id);
    reply.deliver(&state, &identity).await
}

/// Who (401), the account's faults, the id and fields (400), then the user (200) or 404.
fn decide_lookup(state: &SimState, request: &SignedRequest<'_>, id: &str) -> Reply {
    let now = state.now();
    let mut guard = state.lock();
    let inner = &mut *guard;
    let (account, kind) =
        match auth::authenticate_user_or_app(request, &inner.accounts, &mut inner.nonces, now) {
            Ok(caller) => caller,
            Err(failure) => {
                tracing::warn!(?failure, "refused a user lookup's credentials");
                return Reply::new(failure.status(), failure.body());
            }
        };
    let user_id = account.user_id.as_str();
    let mut reply =
        Reply::new(StatusCode::OK, "").for_account(user_id, inner.faults.latency(user_id));
    if kind == AuthKind::User {
        if inner.faults.revokes_token(user_id) {
            inner.counters.faults_injected += 1;
            return reply.answer(StatusCode::UNAUTHORIZED, problems::UNAUTHORIZED);
        }
        reply = reply.access_level(!inner.faults.lacks_dm_permission(user_id));
    }
    match inner
        .faults
        .take_failure(user_id, now.date_naive(), Endpoint::UserLookup)
    {
        Some(SendFailure::Hold) => {
            inner.counters.faults_injected += 1;
            return reply.hold();
        }
        Some(SendFailure::Answer { status, body }) => {
            inner.counters.faults_injected += 1;
            return reply.answer(status, body);
        }
        None => {}
    }
    if !(1..=19).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        let message =
            format!("The `id` query parameter value [{id}] does not match ^[0-9]{{1,19}}$");
        return reply.answer(
            StatusCode::BAD_REQUEST,
            problems::invalid_request(&message, Some(("id", id))),
        );
    }
    let fields = match user_fields(request.uri.query()) {
        Ok(fields) => fields,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    match find_user(&inner.accounts, &inner.customers, id) {
        Some(user) => {
            inner.counters.users_read += 1;
            let body = json!({ "data": render_user(&user, &fields) }).to_string();
            reply.answer(StatusCode::OK, body)
        }
        None => reply.answer(StatusCode::NOT_FOUND, problems::user_not_found(id)),
    }
}
