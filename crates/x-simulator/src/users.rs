//! `GET /2/users/me`: the credential check clients run at startup. As on X, it answers 200 even
//! while DM sends fail for credits or permissions; only `x-access-level` hints at the latter.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use serde_json::json;

use crate::auth::{self, SignedRequest};
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
