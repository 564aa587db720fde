//! The admin `GET` routes: what the simulator saw, as JSON, optionally narrowed to one account
//! by `?user_id=`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::extract::ForAccount;
use crate::state::{DmEvent, SimState, UploadRecord};

impl ForAccount {
    /// The JSON array of `items` this filter admits, by their `owner`, each as `view` shows it.
    fn list<T, V: Serialize>(
        &self,
        items: &[T],
        owner: impl Fn(&T) -> Option<&str>,
        view: impl Fn(&T) -> V,
    ) -> Response {
        let listed: Vec<V> = items
            .iter()
            .filter(|item| self.admits(owner(item)))
            .map(view)
            .collect();
        Json(listed).into_response()
    }
}

pub(super) async fn dms(State(state): State<Arc<SimState>>, account: ForAccount) -> Response {
    let inner = state.lock();
    account.list(&inner.dms, |dm| Some(&dm.sender_id), Clone::clone)
}

pub(super) async fn requests(State(state): State<Arc<SimState>>, account: ForAccount) -> Response {
    let inner = state.lock();
    account.list(&inner.requests, |r| r.user_id.as_deref(), Clone::clone)
}

pub(super) async fn uploads(State(state): State<Arc<SimState>>, account: ForAccount) -> Response {
    let inner = state.lock();
    account.list(&inner.uploads, |u| Some(&u.user_id), UploadRecord::snapshot)
}

/// An account's events as `GET /2/dm_events` orders them, or every event by id.
pub(super) async fn dm_events(State(state): State<Arc<SimState>>, account: ForAccount) -> Response {
    let inner = state.lock();
    let events = match &account.0 {
        Some(user_id) => inner.events_of(user_id),
        None => {
            let mut events = inner.events.clone();
            events.sort_by_key(DmEvent::numeric_id);
            events
        }
    };
    Json(events).into_response()
}

pub(super) async fn counters(State(state): State<Arc<SimState>>) -> Response {
    let counters = state.lock().counters;
    Json(counters).into_response()
}

pub(super) async fn accounts(State(state): State<Arc<SimState>>) -> Response {
    let accounts = state.lock().accounts.all();
    Json(accounts).into_response()
}

pub(super) async fn billing(State(state): State<Arc<SimState>>) -> Response {
    let billed = state.lock().billed_dm_events.clone();
    Json(json!({ "dm_events_billed": billed })).into_response()
}

pub(super) async fn webhooks(State(state): State<Arc<SimState>>) -> Response {
    let inner = state.lock();
    Json(json!({
        "webhooks": inner.webhooks,
        "subscriptions": inner.subscriptions,
        "activity_subscriptions": inner.activity_subscriptions,
    }))
    .into_response()
}

pub(super) async fn deliveries(State(state): State<Arc<SimState>>) -> Response {
    let deliveries = state.lock().deliveries.clone();
    Json(deliveries).into_response()
}
