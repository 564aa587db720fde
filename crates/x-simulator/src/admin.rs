//! The `/_sim/` admin API: what tests do through [`crate::Simulator`]'s methods, over HTTP, for
//! CRM developers and docker-compose setups that run the binary. It takes no credentials.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::Account;
use crate::faults::Fault;
use crate::state::SimState;

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/dms", get(dms))
        .route("/requests", get(requests))
        .route("/counters", get(counters))
        .route("/accounts", get(accounts).post(add_account))
        .route("/faults", post(set_fault).delete(clear_faults))
        .route("/reset", post(reset))
}

/// `?user_id=`: narrows a listing to one account, or names whose faults to clear.
#[derive(Debug, Deserialize)]
struct ByAccount {
    user_id: Option<String>,
}

/// Body of `POST /_sim/faults`.
#[derive(Debug, Deserialize)]
struct SetFault {
    user_id: String,
    fault: Fault,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn bad_query() -> Response {
    error(StatusCode::BAD_REQUEST, "unreadable query string")
}

async fn dms(
    State(state): State<Arc<SimState>>,
    query: Result<Query<ByAccount>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    let inner = state.lock();
    let dms: Vec<_> = inner
        .dms
        .iter()
        .filter(|dm| query.user_id.as_ref().is_none_or(|id| *id == dm.sender_id))
        .cloned()
        .collect();
    Json(dms).into_response()
}

async fn requests(
    State(state): State<Arc<SimState>>,
    query: Result<Query<ByAccount>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    let inner = state.lock();
    let requests: Vec<_> = inner
        .requests
        .iter()
        .filter(|r| query.user_id.is_none() || r.user_id == query.user_id)
        .cloned()
        .collect();
    Json(requests).into_response()
}

async fn counters(State(state): State<Arc<SimState>>) -> Response {
    let counters = state.lock().counters;
    Json(counters).into_response()
}

async fn accounts(State(state): State<Arc<SimState>>) -> Response {
    let accounts = state.lock().accounts.all();
    Json(accounts).into_response()
}

async fn add_account(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Account>(&body) {
        Ok(account) => {
            tracing::info!(user_id = %account.user_id, username = %account.username, "account added");
            state.lock().accounts.upsert(account);
            StatusCode::CREATED.into_response()
        }
        Err(why) => error(StatusCode::BAD_REQUEST, why.to_string()),
    }
}

async fn set_fault(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<SetFault>(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    if !state.lock().accounts.contains(&request.user_id) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no account with user_id {}", request.user_id),
        );
    }
    tracing::info!(user_id = %request.user_id, fault = ?request.fault, "fault set");
    state.set_fault(&request.user_id, request.fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(
    State(state): State<Arc<SimState>>,
    query: Result<Query<ByAccount>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    match query.user_id {
        Some(user_id) => {
            tracing::info!(%user_id, "faults cleared");
            state.clear_faults(&user_id);
        }
        None => {
            tracing::info!("all faults cleared");
            state.clear_all_faults();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(state): State<Arc<SimState>>) -> Response {
    tracing::info!("simulator reset");
    state.reset();
    StatusCode::NO_CONTENT.into_response()
}
