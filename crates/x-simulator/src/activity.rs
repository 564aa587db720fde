//! X Activity API (XAA) subscriptions: `POST/GET /2/activity/subscriptions` and
//! `DELETE /2/activity/subscriptions/:id` (see docs/x-api-facts.md, "X Activity API (XAA)").
//!
//! A subscription selects one event type of one user (`filter.user_id`) for the App that made
//! it, and names the App's webhook its events are POSTed to. The refusal reasons (duplicate,
//! unknown webhook, limit) are not documented by X; the simulator uses the AAA names.
//!
//! Created with the account's OAuth 1.0a signature, its OAuth 2.0 user token (holding the
//! scope the event type needs: `dm.read` for `dm.*`, per the spec) or the App's Bearer token;
//! each subscription records which ([`CreatedWith`]), so tests can tell how a client
//! subscribed.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::accounts::Account;
use crate::authorized::{Activity, Authorized};
use crate::reply::Reply;
use crate::state::{ActivitySubscription, CreatedWith, Inner, SimState};
use crate::{auth, problems, request_body};

/// The event types X's spec (v2.167) accepts in `POST /2/activity/subscriptions`.
const EVENT_TYPES: &[&str] = &[
    "profile.update.bio",
    "profile.update.profile_picture",
    "profile.update.banner_picture",
    "profile.update.screenname",
    "profile.update.geo",
    "profile.update.url",
    "profile.update.verified_badge",
    "profile.update.affiliate_badge",
    "profile.update.handle",
    "news.new",
    "follow.follow",
    "follow.unfollow",
    "spaces.start",
    "spaces.end",
    "broadcast.start",
    "broadcast.end",
    "broadcast.chat",
    "chat.received",
    "chat.sent",
    "chat.conversation.join",
    "chat.conversation.member_added",
    "chat.conversation.member_removed",
    "chat.conversation.admin_added",
    "chat.conversation.admin_removed",
    "chat.update.group_name",
    "chat.update.restrictions",
    "dm.sent",
    "dm.received",
    "dm.indicate_typing",
    "dm.read",
    "post.create",
    "post.delete",
    "post.mention.create",
    "post.reply.create",
    "post.quote.create",
    "post.repost.create",
    "like.create",
    "mute.mute",
    "mute.unmute",
    "block.block",
    "block.unblock",
];

/// The tag's length limits (characters).
const MAX_TAG_CHARS: usize = 200;

fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl ActivitySubscription {
    /// As X lists it.
    pub(crate) fn to_json(&self) -> Value {
        let mut shown = json!({
            "subscription_id": self.subscription_id,
            "event_type": self.event_type,
            "filter": { "user_id": self.user_id },
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
        });
        if let Some(tag) = &self.tag {
            shown["tag"] = json!(tag);
        }
        if let Some(webhook_id) = &self.webhook_id {
            shown["webhook_id"] = json!(webhook_id);
        }
        shown
    }
}

/// A refusal in the webhook routes' shape: 400 `invalid-request` with X's reason.
fn refusal(reason: &str, parameter: Option<(&str, &str)>) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        problems::invalid_request(reason, parameter),
    )
}

/// 403 for a subscription to another user's private events.
fn not_authorized(user_id: &str) -> (StatusCode, String) {
    let body = json!({
        "title": "Forbidden",
        "detail": format!("You are not authorized to subscribe to the private events of user [{user_id}]."),
        "type": "https://api.twitter.com/2/problems/not-authorized-for-resource",
        "resource_type": "user",
        "resource_id": user_id,
        "section": "data",
        "status": 403,
    });
    (StatusCode::FORBIDDEN, body.to_string())
}

/// Who made a request the gate admitted, and for an OAuth 2.0 user token the scopes it holds.
fn used_token(
    inner: &Inner,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> (CreatedWith, Vec<String>) {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let Some(token) = auth::bearer_token(value) else {
        return (CreatedWith::OAuth1, Vec::new());
    };
    if inner.accounts.by_bearer_token(token).is_some() {
        return (CreatedWith::App, Vec::new());
    }
    let scopes = inner
        .accounts
        .oauth2
        .bearer_user(token, now)
        .map(|user| user.scopes)
        .unwrap_or_default();
    (CreatedWith::OAuth2, scopes)
}

/// The OAuth 2.0 scope an event type's subscription needs (the spec's create description).
fn scope_for(event_type: &str) -> &'static str {
    let family = event_type.split('.').next().unwrap_or_default();
    match family {
        "dm" | "chat" => "dm.read",
        "like" => "like.read",
        "mute" => "mute.read",
        "block" => "block.read",
        _ => "tweet.read",
    }
}

/// A create body's fields, checked against X's schema.
struct Request {
    event_type: String,
    user_id: String,
    tag: Option<String>,
    webhook_id: Option<String>,
}

fn invalid(message: &str) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        problems::invalid_request(message, None),
    )
}

fn string_field(
    fields: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<String>, (StatusCode, String)> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(invalid(&format!("$.{path}{name}: expected a string"))),
    }
}

fn is_id(value: &str) -> bool {
    (1..=19).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
}

fn parse_request(body: &[u8]) -> Result<Request, (StatusCode, String)> {
    let fields = request_body::json_object(body, &["event_type", "filter", "tag", "webhook_id"])
        .map_err(|problem| (StatusCode::BAD_REQUEST, problem))?;
    let event_type = string_field(&fields, "event_type", "")?
        .ok_or_else(|| invalid("$: `event_type` is required"))?;
    if !EVENT_TYPES.contains(&event_type.as_str()) {
        return Err(refusal(
            "$.event_type: is not one of the allowed values",
            Some(("event_type", &event_type)),
        ));
    }
    let filter = match fields.get("filter") {
        Some(Value::Object(filter)) => filter,
        Some(_) => return Err(invalid("$.filter: expected an object")),
        None => return Err(invalid("$: `filter` is required")),
    };
    if let Some(extra) = filter
        .keys()
        .find(|key| !matches!(key.as_str(), "user_id" | "direction" | "keyword"))
    {
        return Err(invalid(&format!(
            "$.filter.{extra}: is not defined in the schema and the schema does not allow additional properties"
        )));
    }
    let user_id = string_field(filter, "user_id", "filter.")?
        .filter(|id| is_id(id))
        .ok_or_else(|| invalid("$.filter.user_id: a user id is required for this event type"))?;
    let tag = string_field(&fields, "tag", "")?;
    if tag
        .as_ref()
        .is_some_and(|tag| tag.is_empty() || tag.chars().count() > MAX_TAG_CHARS)
    {
        return Err(invalid("$.tag: must be 1 to 200 characters"));
    }
    let webhook_id = string_field(&fields, "webhook_id", "")?;
    if webhook_id.as_deref().is_some_and(|id| !is_id(id)) {
        return Err(invalid("$.webhook_id: does not match ^[0-9]{1,19}$"));
    }
    Ok(Request {
        event_type,
        user_id,
        tag,
        webhook_id,
    })
}

/// The App's subscriptions.
fn of_app<'a>(
    inner: &'a Inner,
    app_key: &'a str,
) -> impl Iterator<Item = &'a ActivitySubscription> {
    inner
        .activity_subscriptions
        .iter()
        .filter(move |s| s.app_key == app_key)
}

/// Why X refuses the subscription, if it does.
fn create_refusal(
    state: &SimState,
    inner: &Inner,
    account: &Account,
    (created_with, scopes): &(CreatedWith, Vec<String>),
    request: &Request,
) -> Option<(StatusCode, String)> {
    let app_key = account.consumer_key.as_str();
    let needed = scope_for(&request.event_type);
    if *created_with == CreatedWith::OAuth2 && !scopes.iter().any(|s| s == needed) {
        return Some((StatusCode::FORBIDDEN, problems::FORBIDDEN.to_string()));
    }
    // Private events (DMs among them) only for a user who authorized the App: with a user
    // token, that user; with the App's token, one of the App's accounts.
    let authorized = if *created_with != CreatedWith::App {
        request.user_id == account.user_id
    } else {
        inner
            .accounts
            .by_user_id(&request.user_id)
            .is_some_and(|owner| owner.consumer_key == app_key)
    };
    if request.event_type.starts_with("dm.") && !authorized {
        return Some(not_authorized(&request.user_id));
    }
    if let Some(webhook_id) = &request.webhook_id {
        let known = inner
            .webhooks
            .iter()
            .any(|w| &w.id == webhook_id && w.app_key == app_key);
        if !known {
            return Some(refusal(
                "WebhookIdInvalid",
                Some(("webhook_id", webhook_id)),
            ));
        }
    }
    let duplicate = of_app(inner, app_key).any(|s| {
        s.event_type == request.event_type
            && s.user_id == request.user_id
            && s.webhook_id == request.webhook_id
    });
    if duplicate {
        return Some(refusal("DuplicateSubscriptionFailed", None));
    }
    let limit = state.webhook_config.max_activity_subscriptions_per_app;
    (of_app(inner, app_key).count() >= limit).then(|| refusal("SubscriptionLimitExceeded", None))
}

/// `POST /2/activity/subscriptions`.
pub(crate) async fn create(caller: Authorized<Activity>) -> Reply {
    let Authorized {
        state,
        account,
        now,
        reply,
        headers,
        body,
        ..
    } = caller;
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err((status, problem)) => return reply.answer(status, problem),
    };
    let mut inner = state.lock();
    let used = used_token(&inner, &headers, now);
    if let Some((status, problem)) = create_refusal(&state, &inner, &account, &used, &request) {
        return reply.answer(status, problem);
    }
    let subscription = ActivitySubscription {
        subscription_id: inner.next_event_id(now),
        event_type: request.event_type,
        user_id: request.user_id,
        webhook_id: request.webhook_id,
        tag: request.tag,
        created_at: now,
        updated_at: now,
        created_with: used.0,
        app_key: account.consumer_key.clone(),
    };
    tracing::info!(
        subscription_id = %subscription.subscription_id,
        event_type = %subscription.event_type,
        user_id = %subscription.user_id,
        webhook_id = ?subscription.webhook_id,
        created_with = ?subscription.created_with,
        "XAA subscription created"
    );
    let shown = subscription.to_json();
    inner.activity_subscriptions.push(subscription);
    let total = of_app(&inner, &account.consumer_key).count();
    reply.answer(
        StatusCode::OK,
        json!({ "data": { "subscription": shown }, "meta": { "total_subscriptions": total } })
            .to_string(),
    )
}

/// `GET /2/activity/subscriptions`: every subscription of the App (not only the caller's).
pub(crate) async fn list(caller: Authorized<Activity>) -> Reply {
    let inner = caller.state.lock();
    let data: Vec<Value> = of_app(&inner, &caller.account.consumer_key)
        .map(ActivitySubscription::to_json)
        .collect();
    let meta = json!({ "total_subscriptions": data.len() });
    let body = if data.is_empty() {
        json!({ "meta": meta })
    } else {
        json!({ "data": data, "meta": meta })
    };
    caller.reply.answer(StatusCode::OK, body.to_string())
}

/// `DELETE /2/activity/subscriptions/:subscription_id`.
pub(crate) async fn delete(
    subscription_id: Result<Path<String>, PathRejection>,
    caller: Authorized<Activity>,
) -> Reply {
    let subscription_id = subscription_id.map(|Path(id)| id).unwrap_or_default();
    let app_key = caller.account.consumer_key.clone();
    let mut inner = caller.state.lock();
    let before = inner.activity_subscriptions.len();
    inner
        .activity_subscriptions
        .retain(|s| !(s.subscription_id == subscription_id && s.app_key == app_key));
    if inner.activity_subscriptions.len() == before {
        return caller.reply.answer(
            StatusCode::NOT_FOUND,
            subscription_not_found(&subscription_id),
        );
    }
    tracing::info!(%subscription_id, "XAA subscription deleted");
    let total = of_app(&inner, &app_key).count();
    caller.reply.answer(
        StatusCode::OK,
        json!({ "data": { "deleted": true }, "meta": { "total_subscriptions": total } })
            .to_string(),
    )
}

/// X's `resource-not-found` problem for a subscription id the App does not have.
fn subscription_not_found(id: &str) -> String {
    json!({
        "title": "Not Found Error",
        "detail": format!("Could not find subscription with id: [{id}]."),
        "type": "https://api.twitter.com/2/problems/resource-not-found",
        "resource_type": "subscription",
        "resource_id": id,
        "parameter": "subscription_id",
        "value": id,
        "status": 404,
    })
    .to_string()
}
