//! The `/_sim/` admin API: what tests do through [`crate::Simulator`]'s methods, over HTTP, for
//! CRM developers and docker-compose setups that run the binary. It takes no credentials.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::Account;
use crate::customers::Customer;
use crate::delivery;
use crate::events::{MediaSpec, Written};
use crate::faults::Fault;
use crate::state::SimState;
use crate::uploads::{MediaProcessing, UploadRecord};

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/customer_dm", post(customer_dm))
        .route("/dm_events", get(dm_events))
        .route("/billing", get(billing))
        .route("/webhooks", get(webhooks))
        .route("/webhooks/invalidate", post(invalidate_webhook))
        .route("/deliveries", get(deliveries))
        .route("/redeliver", post(redeliver))
        .route("/dms", get(dms))
        .route("/requests", get(requests))
        .route("/counters", get(counters))
        .route("/accounts", get(accounts).post(add_account))
        .route("/faults", post(set_fault).delete(clear_faults))
        .route("/reset", post(reset))
        .route("/uploads", get(uploads))
        .route("/media_processing", post(set_media_processing))
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

/// The customer of `POST /_sim/customer_dm`: only `username` is required; missing fields are
/// generated as by [`Customer::generate`] (so without `user_id`, every call is a new customer).
#[derive(Debug, Deserialize)]
struct CustomerBody {
    username: String,
    user_id: Option<String>,
    name: Option<String>,
    profile_image_url: Option<String>,
}

/// Body of `POST /_sim/customer_dm`.
#[derive(Debug, Deserialize)]
struct CustomerDm {
    user_id: String,
    customer: CustomerBody,
    #[serde(default)]
    text: String,
    media: Option<MediaSpec>,
    created_at: Option<DateTime<Utc>>,
}

/// Body of `POST /_sim/media_processing`.
#[derive(Debug, Deserialize)]
struct SetMediaProcessing {
    user_id: String,
    #[serde(default)]
    processing: MediaProcessing,
}

/// Body of `POST /_sim/webhooks/invalidate`.
#[derive(Debug, Deserialize)]
struct InvalidateWebhook {
    webhook_id: String,
}

/// Body of `POST /_sim/redeliver`.
#[derive(Debug, Deserialize)]
struct Redeliver {
    event_id: String,
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

async fn customer_dm(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<CustomerDm>(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    if request.text.is_empty() && request.media.is_none() {
        return error(StatusCode::BAD_REQUEST, "a DM needs `text` or `media`");
    }
    let generated = Customer::generate(&request.customer.username);
    let customer = Customer {
        user_id: request.customer.user_id.unwrap_or(generated.user_id),
        username: request.customer.username,
        name: request.customer.name.unwrap_or(generated.name),
        profile_image_url: request
            .customer
            .profile_image_url
            .unwrap_or(generated.profile_image_url),
    };
    let event = {
        let mut inner = state.lock();
        if !inner.accounts.contains(&request.user_id) {
            return error(
                StatusCode::NOT_FOUND,
                format!("no account with user_id {}", request.user_id),
            );
        }
        let written = match request.created_at {
            Some(at) => Written::At(at),
            None => Written::Now(state.now()),
        };
        inner.record_customer_dm(
            &state.base_url,
            &request.user_id,
            &customer,
            &request.text,
            request.media.as_ref(),
            written,
        )
    };
    tracing::info!(event_id = %event.id, sender_id = %event.sender_id, "customer DM received (admin)");
    delivery::schedule(&state, &event);
    (StatusCode::CREATED, Json(event)).into_response()
}

async fn dm_events(
    State(state): State<Arc<SimState>>,
    query: Result<Query<ByAccount>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    let inner = state.lock();
    let events = match &query.user_id {
        Some(user_id) => inner.events_of(user_id),
        None => {
            let mut events = inner.events.clone();
            events.sort_by_key(crate::events::DmEvent::numeric_id);
            events
        }
    };
    Json(events).into_response()
}

async fn billing(State(state): State<Arc<SimState>>) -> Response {
    let billed = state.lock().billed_dm_events.clone();
    Json(json!({ "dm_events_billed": billed })).into_response()
}

async fn webhooks(State(state): State<Arc<SimState>>) -> Response {
    let inner = state.lock();
    Json(json!({
        "webhooks": inner.webhooks,
        "subscriptions": inner.subscriptions,
    }))
    .into_response()
}

async fn invalidate_webhook(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let body = match serde_json::from_slice::<InvalidateWebhook>(&body) {
        Ok(body) => body,
        Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    if crate::webhooks::invalidate(&state, &body.webhook_id) {
        Json(json!({ "webhook_id": body.webhook_id, "valid": false })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no webhook with this id")
    }
}

async fn deliveries(State(state): State<Arc<SimState>>) -> Response {
    let deliveries = state.lock().deliveries.clone();
    Json(deliveries).into_response()
}

async fn redeliver(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<Redeliver>(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    let event = state
        .lock()
        .events
        .iter()
        .find(|event| event.id == request.event_id)
        .cloned();
    match event {
        Some(event) => {
            let started = delivery::schedule(&state, &event);
            Json(json!({ "deliveries_started": started })).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no DM event with id {}", request.event_id),
        ),
    }
}

async fn uploads(
    State(state): State<Arc<SimState>>,
    query: Result<Query<ByAccount>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query();
    };
    let inner = state.lock();
    let uploads: Vec<_> = inner
        .uploads
        .iter()
        .filter(|u| query.user_id.as_ref().is_none_or(|id| *id == u.user_id))
        .map(UploadRecord::snapshot)
        .collect();
    Json(uploads).into_response()
}

async fn set_media_processing(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<SetMediaProcessing>(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    let mut inner = state.lock();
    if !inner.accounts.contains(&request.user_id) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no account with user_id {}", request.user_id),
        );
    }
    tracing::info!(user_id = %request.user_id, processing = ?request.processing, "media processing set");
    inner
        .media_processing
        .insert(request.user_id, request.processing);
    StatusCode::NO_CONTENT.into_response()
}
