//! Webhooks and Account Activity subscriptions: `POST/GET/PUT/DELETE /2/webhooks` (with the
//! CRC check X runs against the URL) and `/2/account_activity/webhooks/:id/subscriptions/…`.
//!
//! An "App" here is a consumer key: an account's webhook belongs to the App of the token that
//! registered it, and only accounts of that App can subscribe to it. The CRC and every delivery
//! are keyed with the consumer secret of the account whose token registered the webhook.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use rand::distr::{Alphanumeric, SampleString as _};
use serde_json::{json, Value};
use url::Url;

use crate::accounts::Account;
use crate::authorized::{Authorized, Subscription as SubscriptionRoute, Webhooks};
use crate::delivery::crc_response_token;
use crate::events::app_id;
use crate::reply::Reply;
use crate::state::{Inner, SimState, Subscription, Webhook};
use crate::{problems, request_body};

/// X's limit on a webhook URL's length.
pub const MAX_WEBHOOK_URL_CHARS: usize = 200;

impl Webhook {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "valid": self.valid,
            "created_at": self.created_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        })
    }
}

/// Runs X's Challenge-Response Check for a webhook `user_id` registers or registered:
/// `GET url?crc_token=…` must answer 200 with
/// `{"response_token":"sha256=<base64 HMAC-SHA256(secret, token)>"}`. The error says why not.
pub(crate) async fn run_crc(
    state: &SimState,
    user_id: &str,
    url: &str,
    secret: &str,
) -> Result<(), String> {
    {
        let mut inner = state.lock();
        inner.counters.crc_checks += 1;
        if inner.faults.take_crc_failure(user_id) {
            inner.counters.faults_injected += 1;
            return Err("no answer: the crc_fails fault keeps X from reaching the URL".into());
        }
    }
    let mut target = Url::parse(url).map_err(|error| format!("unparsable URL: {error}"))?;
    let token = Alphanumeric.sample_string(&mut rand::rng(), 48);
    target.query_pairs_mut().append_pair("crc_token", &token);
    let request = state.http.get(target).send();
    let response = tokio::select! {
        response = request => response.map_err(|error| format!("no answer: {error}"))?,
        () = state.shutdown.cancelled() => return Err("the simulator is shutting down".into()),
    };
    let status = response.status();
    if status != StatusCode::OK {
        return Err(format!("answered {status}, not 200"));
    }
    let body = response
        .text()
        .await
        .map_err(|error| format!("unreadable body: {error}"))?;
    let answered: Value =
        serde_json::from_str(&body).map_err(|_| format!("body is not JSON: {body:?}"))?;
    let expected = crc_response_token(secret, &token);
    match answered.get("response_token").and_then(Value::as_str) {
        Some(token) if token == expected => Ok(()),
        Some(token) => Err(format!(
            "response_token {token:?} is not the expected one (keyed with the consumer secret)"
        )),
        None => Err(format!("no response_token in {body:?}")),
    }
}

/// A refusal in the webhook routes' one error shape: 400 `invalid-request` whose
/// `errors[0].message` is X's reason (`CrcValidationFailed`, `WebhookIdInvalid`, …).
fn refusal(reason: &str, parameter: Option<(&str, &str)>) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        problems::invalid_request(reason, parameter),
    )
}

/// Why a URL cannot be registered, before any CRC is run.
fn check_url(inner: &Inner, app_key: &str, url: &str, limit: usize) -> Result<(), &'static str> {
    let parsed = Url::parse(url).map_err(|_| "UrlValidationFailed")?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
        || url.chars().count() > MAX_WEBHOOK_URL_CHARS
    {
        return Err("UrlValidationFailed");
    }
    let of_app = inner.webhooks.iter().filter(|w| w.app_key == app_key);
    if of_app.clone().any(|w| w.url == url) {
        return Err("DuplicateUrlFailed");
    }
    if of_app.count() >= limit {
        return Err("WebhookLimitExceeded");
    }
    Ok(())
}

/// The URL of a `POST /2/webhooks` body `{"url":"…"}`.
fn parse_url_body(body: &[u8]) -> Result<String, String> {
    let invalid = |message: &str| problems::invalid_request(message, None);
    let fields = request_body::json_object(body, &["url"])?;
    match fields.get("url") {
        Some(Value::String(url)) => Ok(url.clone()),
        Some(_) => Err(invalid("$.url: expected a string")),
        None => Err(invalid("$: `url` is required")),
    }
}

/// `POST /2/webhooks` `{"url":"…"}`: checks the URL, runs the CRC, registers.
pub(crate) async fn create(caller: Authorized<Webhooks>) -> Reply {
    let Authorized {
        state,
        account,
        reply,
        body,
        ..
    } = caller;
    match register(&state, &account, &body).await {
        Ok(webhook) => reply.answer(StatusCode::OK, json!({ "data": webhook }).to_string()),
        Err((status, problem)) => reply.answer(status, problem),
    }
}

/// The checks of the URL and the CRC, then the webhook registered (as X shows it), or X's
/// refusal.
async fn register(
    state: &SimState,
    account: &Account,
    body: &[u8],
) -> Result<Value, (StatusCode, String)> {
    let url = parse_url_body(body).map_err(|problem| (StatusCode::BAD_REQUEST, problem))?;
    let refused = |reason: &str| refusal(reason, Some(("url", &url)));
    let limit = state.webhook_config.max_webhooks_per_app;
    let checked = check_url(&state.lock(), &account.consumer_key, &url, limit);
    checked.map_err(refused)?;
    let crc = run_crc(state, &account.user_id, &url, &account.consumer_secret).await;
    let now = state.now();
    let mut inner = state.lock();
    if let Err(why) = crc {
        tracing::warn!(%url, %why, "webhook CRC failed; not registered");
        return Err(refused("CrcValidationFailed"));
    }
    // Checked again: another registration may have landed while the CRC ran.
    check_url(&inner, &account.consumer_key, &url, limit).map_err(refused)?;
    let webhook = Webhook {
        id: inner.next_event_id(now),
        url: url.clone(),
        valid: true,
        created_at: now,
        registered_by: account.user_id.clone(),
        app_key: account.consumer_key.clone(),
        secret: account.consumer_secret.clone(),
    };
    tracing::info!(id = %webhook.id, %url, "webhook registered");
    let shown = webhook.to_json();
    inner.webhooks.push(webhook);
    Ok(shown)
}

/// `GET /2/webhooks`: the App's webhooks.
pub(crate) async fn list(caller: Authorized<Webhooks>) -> Reply {
    let inner = caller.state.lock();
    let data: Vec<Value> = inner
        .webhooks
        .iter()
        .filter(|w| w.app_key == caller.account.consumer_key)
        .map(Webhook::to_json)
        .collect();
    let body = if data.is_empty() {
        json!({ "meta": { "result_count": 0 } })
    } else {
        json!({ "data": data, "meta": { "result_count": data.len() } })
    };
    caller.reply.answer(StatusCode::OK, body.to_string())
}

fn webhook_id_of(path: Result<Path<String>, PathRejection>) -> String {
    path.map(|Path(id)| id).unwrap_or_default()
}

/// `PUT /2/webhooks/:webhook_id`: runs the CRC again and marks the webhook valid or not.
pub(crate) async fn revalidate(
    webhook_id: Result<Path<String>, PathRejection>,
    caller: Authorized<Webhooks>,
) -> Reply {
    let webhook_id = webhook_id_of(webhook_id);
    let Authorized {
        state,
        account,
        reply,
        ..
    } = caller;
    let found = webhook_of_app(&state.lock(), &webhook_id, &account.consumer_key).cloned();
    let Some(webhook) = found else {
        let (status, problem) = refusal("WebhookIdInvalid", Some(("webhook_id", &webhook_id)));
        return reply.answer(status, problem);
    };
    if check_webhook(&state, &webhook).await {
        reply.answer(
            StatusCode::OK,
            json!({ "data": { "valid": true } }).to_string(),
        )
    } else {
        let (status, problem) = refusal("CrcValidationFailed", Some(("webhook_id", &webhook_id)));
        reply.answer(status, problem)
    }
}

/// Runs the CRC of a registered webhook and records the outcome as its `valid`.
pub(crate) async fn check_webhook(state: &SimState, webhook: &Webhook) -> bool {
    let outcome = run_crc(state, &webhook.registered_by, &webhook.url, &webhook.secret).await;
    if let Err(why) = &outcome {
        tracing::warn!(id = %webhook.id, url = %webhook.url, %why, "webhook CRC failed; marked invalid");
    }
    let valid = outcome.is_ok();
    if let Some(known) = state
        .lock()
        .webhooks
        .iter_mut()
        .find(|w| w.id == webhook.id)
    {
        known.valid = valid;
    }
    valid
}

/// Marks a registered webhook invalid, as X does after its periodic CRC failed (the receiver
/// was down or unreachable for a while). False if there is no such webhook.
pub(crate) fn invalidate(state: &SimState, webhook_id: &str) -> bool {
    let mut inner = state.lock();
    let Some(webhook) = inner.webhooks.iter_mut().find(|w| w.id == webhook_id) else {
        return false;
    };
    webhook.valid = false;
    tracing::info!(id = %webhook_id, "webhook marked invalid");
    true
}

/// `DELETE /2/webhooks/:webhook_id`: forgets the webhook and its subscriptions.
pub(crate) async fn delete(
    webhook_id: Result<Path<String>, PathRejection>,
    caller: Authorized<Webhooks>,
) -> Reply {
    let webhook_id = webhook_id_of(webhook_id);
    let mut inner = caller.state.lock();
    let before = inner.webhooks.len();
    inner
        .webhooks
        .retain(|w| !(w.id == webhook_id && w.app_key == caller.account.consumer_key));
    if inner.webhooks.len() == before {
        let (status, problem) = refusal("WebhookIdInvalid", Some(("webhook_id", &webhook_id)));
        return caller.reply.answer(status, problem);
    }
    inner.subscriptions.retain(|s| s.webhook_id != webhook_id);
    tracing::info!(id = %webhook_id, "webhook deleted");
    caller.reply.answer(
        StatusCode::OK,
        json!({ "data": { "deleted": true } }).to_string(),
    )
}

/// The webhook of that id, if the App (consumer key) owns it.
fn webhook_of_app<'a>(inner: &'a Inner, webhook_id: &str, app_key: &str) -> Option<&'a Webhook> {
    inner
        .webhooks
        .iter()
        .find(|w| w.id == webhook_id && w.app_key == app_key)
}

/// `POST /2/account_activity/webhooks/:webhook_id/subscriptions/all` with body `{}`: subscribes
/// the account whose user token signed the request.
pub(crate) async fn subscribe(
    webhook_id: Result<Path<String>, PathRejection>,
    caller: Authorized<SubscriptionRoute>,
) -> Reply {
    let webhook_id = webhook_id_of(webhook_id);
    let Authorized {
        state,
        account,
        now,
        reply,
        body,
        ..
    } = caller;
    let body_ok = body.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object());
    if !body_ok {
        return reply.answer(
            StatusCode::BAD_REQUEST,
            problems::invalid_request("$: expected an empty object `{}`", None),
        );
    }
    let mut inner = state.lock();
    let limit = state.webhook_config.max_subscriptions_per_app;
    if let Some((status, problem)) = subscription_refusal(&inner, &webhook_id, &account, limit) {
        return reply.answer(status, problem);
    }
    tracing::info!(%webhook_id, user_id = %account.user_id, "account subscribed");
    inner.subscriptions.push(Subscription {
        webhook_id: webhook_id.clone(),
        user_id: account.user_id.clone(),
        created_at: now,
    });
    reply.answer(
        StatusCode::OK,
        json!({ "data": { "subscribed": true } }).to_string(),
    )
}

/// Why X refuses to subscribe `account` to the webhook: another App's or unknown webhook, a
/// subscription it already has, or the App's subscriptions used up.
fn subscription_refusal(
    inner: &Inner,
    webhook_id: &str,
    account: &Account,
    limit: usize,
) -> Option<(StatusCode, String)> {
    let app_key = account.consumer_key.as_str();
    if webhook_of_app(inner, webhook_id, app_key).is_none() {
        return Some(refusal(
            "WebhookIdInvalid",
            Some(("webhook_id", webhook_id)),
        ));
    }
    if inner
        .subscriptions
        .iter()
        .any(|s| s.webhook_id == webhook_id && s.user_id == account.user_id)
    {
        return Some(refusal("DuplicateSubscriptionFailed", None));
    }
    let subscribers_of_app = inner
        .subscriptions
        .iter()
        .filter(|s| webhook_of_app(inner, &s.webhook_id, app_key).is_some())
        .count();
    (subscribers_of_app >= limit).then(|| refusal("SubscriptionLimitExceeded", None))
}

/// `GET /2/account_activity/webhooks/:webhook_id/subscriptions/all`: 200
/// `{"data":{"subscribed":true|false}}` for the signing account.
pub(crate) async fn check_subscription(
    webhook_id: Result<Path<String>, PathRejection>,
    caller: Authorized<SubscriptionRoute>,
) -> Reply {
    let webhook_id = webhook_id_of(webhook_id);
    let inner = caller.state.lock();
    let account = &caller.account;
    if webhook_of_app(&inner, &webhook_id, &account.consumer_key).is_none() {
        let (status, problem) = refusal("WebhookIdInvalid", Some(("webhook_id", &webhook_id)));
        return caller.reply.answer(status, problem);
    }
    let subscribed = inner
        .subscriptions
        .iter()
        .any(|s| s.webhook_id == webhook_id && s.user_id == account.user_id);
    caller.reply.answer(
        StatusCode::OK,
        json!({ "data": { "subscribed": subscribed } }).to_string(),
    )
}

/// `GET /2/account_activity/webhooks/:webhook_id/subscriptions/all/list` (App token): the
/// subscribed accounts.
pub(crate) async fn list_subscriptions(
    webhook_id: Result<Path<String>, PathRejection>,
    caller: Authorized<Webhooks>,
) -> Reply {
    let webhook_id = webhook_id_of(webhook_id);
    let inner = caller.state.lock();
    let Some(webhook) = webhook_of_app(&inner, &webhook_id, &caller.account.consumer_key) else {
        let (status, problem) = refusal("WebhookIdInvalid", Some(("webhook_id", &webhook_id)));
        return caller.reply.answer(status, problem);
    };
    let subscriptions: Vec<Value> = inner
        .subscriptions
        .iter()
        .filter(|s| s.webhook_id == webhook_id)
        .map(|s| json!({ "user_id": s.user_id }))
        .collect();
    let body = json!({ "data": {
        "application_id": app_id(&caller.account),
        "webhook_id": webhook.id,
        "webhook_url": webhook.url,
        "subscriptions": subscriptions,
    }});
    caller.reply.answer(StatusCode::OK, body.to_string())
}

/// `DELETE /2/account_activity/webhooks/:webhook_id/subscriptions/:user_id/all` (App token).
pub(crate) async fn unsubscribe(
    ids: Result<Path<(String, String)>, PathRejection>,
    caller: Authorized<Webhooks>,
) -> Reply {
    let (webhook_id, user_id) = ids.map(|Path(ids)| ids).unwrap_or_default();
    let mut inner = caller.state.lock();
    if webhook_of_app(&inner, &webhook_id, &caller.account.consumer_key).is_none() {
        let (status, problem) = refusal("WebhookIdInvalid", Some(("webhook_id", &webhook_id)));
        return caller.reply.answer(status, problem);
    }
    inner
        .subscriptions
        .retain(|s| !(s.webhook_id == webhook_id && s.user_id == user_id));
    caller.reply.answer(
        StatusCode::OK,
        json!({ "data": { "subscribed": false } }).to_string(),
    )
}
