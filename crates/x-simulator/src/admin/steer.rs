//! The admin routes that change what the simulator does: customer DMs, accounts, faults, media
//! processing, webhook invalidation, redeliveries and reset.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::extract::{error, known_account, AdminBody, ForAccount, UnknownAccount};
use crate::accounts::Account;
use crate::customers::Customer;
use crate::delivery;
use crate::events::{MediaSpec, Written};
use crate::faults::Fault;
use crate::signal::SignalKind;
use crate::state::{DmEvent, MediaProcessing, SimState};

/// Body of `POST /_sim/faults`.
#[derive(Debug, Deserialize)]
pub(super) struct SetFault {
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

impl CustomerBody {
    fn into_customer(self) -> Customer {
        let generated = Customer::generate(&self.username);
        Customer {
            user_id: self.user_id.unwrap_or(generated.user_id),
            username: self.username,
            name: self.name.unwrap_or(generated.name),
            profile_image_url: self
                .profile_image_url
                .unwrap_or(generated.profile_image_url),
        }
    }
}

/// Body of `POST /_sim/customer_dm`.
#[derive(Debug, Deserialize)]
pub(super) struct CustomerDm {
    user_id: String,
    customer: CustomerBody,
    #[serde(default)]
    text: String,
    media: Option<MediaSpec>,
    created_at: Option<DateTime<Utc>>,
}

/// Body of `POST /_sim/customer_typing` and `POST /_sim/customer_read` (which needs
/// `last_read_event_id`).
#[derive(Debug, Deserialize)]
pub(super) struct CustomerSignal {
    user_id: String,
    customer: CustomerBody,
    last_read_event_id: Option<String>,
}

/// Body of `POST /_sim/media_processing`.
#[derive(Debug, Deserialize)]
pub(super) struct SetMediaProcessing {
    user_id: String,
    #[serde(default)]
    processing: MediaProcessing,
}

/// Body of `POST /_sim/webhooks/invalidate`.
#[derive(Debug, Deserialize)]
pub(super) struct InvalidateWebhook {
    webhook_id: String,
}

/// Body of `POST /_sim/redeliver`.
#[derive(Debug, Deserialize)]
pub(super) struct Redeliver {
    event_id: String,
}

pub(super) async fn add_account(
    State(state): State<Arc<SimState>>,
    AdminBody(account): AdminBody<Account>,
) -> Response {
    tracing::info!(user_id = %account.user_id, username = %account.username, "account added");
    state.lock().accounts.upsert(account);
    StatusCode::CREATED.into_response()
}

pub(super) async fn set_fault(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<SetFault>,
) -> Response {
    if let Err(unknown) = known_account(&state.lock(), &request.user_id) {
        return unknown.into_response();
    }
    tracing::info!(user_id = %request.user_id, fault = ?request.fault, "fault set");
    state.set_fault(&request.user_id, request.fault);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn clear_faults(
    State(state): State<Arc<SimState>>,
    account: ForAccount,
) -> Response {
    match account.0 {
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

pub(super) async fn reset(State(state): State<Arc<SimState>>) -> Response {
    tracing::info!("simulator reset");
    state.reset();
    StatusCode::NO_CONTENT.into_response()
}

/// Records a DM from a customer to one of the accounts and delivers it to the account's
/// webhooks, as when the customer writes on X.
pub(super) async fn customer_dm(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<CustomerDm>,
) -> Response {
    if request.text.is_empty() && request.media.is_none() {
        return error(StatusCode::BAD_REQUEST, "a DM needs `text` or `media`");
    }
    let event = match record_customer_dm(&state, request) {
        Ok(event) => event,
        Err(unknown) => return unknown.into_response(),
    };
    tracing::info!(event_id = %event.id, sender_id = %event.sender_id, "customer DM received (admin)");
    delivery::schedule(&state, &event);
    (StatusCode::CREATED, Json(event)).into_response()
}

/// The customer types to the account: `{"deliveries":n}` started, 404 for an unknown account.
pub(super) async fn customer_typing(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<CustomerSignal>,
) -> Response {
    signal(&state, request, SignalKind::Typing)
}

/// The customer reads the account's DMs up to `last_read_event_id`.
pub(super) async fn customer_read(
    State(state): State<Arc<SimState>>,
    AdminBody(mut request): AdminBody<CustomerSignal>,
) -> Response {
    let Some(last_read_event_id) = request.last_read_event_id.take() else {
        return error(StatusCode::BAD_REQUEST, "`last_read_event_id` is required");
    };
    signal(&state, request, SignalKind::Read { last_read_event_id })
}

fn signal(state: &Arc<SimState>, request: CustomerSignal, kind: SignalKind) -> Response {
    if let Err(unknown) = known_account(&state.lock(), &request.user_id) {
        return unknown.into_response();
    }
    let customer = request.customer.into_customer();
    let started = delivery::customer_signal(state, &request.user_id, &customer, kind);
    Json(json!({ "deliveries": started })).into_response()
}

/// The DM event of `request`, recorded, or 404 for an unknown account.
fn record_customer_dm(state: &SimState, request: CustomerDm) -> Result<DmEvent, UnknownAccount> {
    let customer = request.customer.into_customer();
    let mut inner = state.lock();
    known_account(&inner, &request.user_id)?;
    let written = match request.created_at {
        Some(at) => Written::At(at),
        None => Written::Now(state.now()),
    };
    Ok(inner.record_customer_dm(
        &state.base_url,
        &request.user_id,
        &customer,
        &request.text,
        request.media.as_ref(),
        written,
    ))
}

pub(super) async fn invalidate_webhook(
    State(state): State<Arc<SimState>>,
    AdminBody(body): AdminBody<InvalidateWebhook>,
) -> Response {
    if crate::webhooks::invalidate(&state, &body.webhook_id) {
        Json(json!({ "webhook_id": body.webhook_id, "valid": false })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no webhook with this id")
    }
}

pub(super) async fn redeliver(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<Redeliver>,
) -> Response {
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

pub(super) async fn set_media_processing(
    State(state): State<Arc<SimState>>,
    AdminBody(request): AdminBody<SetMediaProcessing>,
) -> Response {
    let mut inner = state.lock();
    if let Err(unknown) = known_account(&inner, &request.user_id) {
        return unknown.into_response();
    }
    tracing::info!(user_id = %request.user_id, processing = ?request.processing, "media processing set");
    inner
        .media_processing
        .insert(request.user_id, request.processing);
    StatusCode::NO_CONTENT.into_response()
}
