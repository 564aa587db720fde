//! X Activity API (XAA) subscriptions: one event type of one user, delivered to a webhook of
//! the App (and, later, to the App's `GET /2/activity/stream`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The XAA event types of unencrypted DMs, the only ones the simulator produces. Others are
/// accepted as subscriptions (X has dozens) but never delivered.
pub const DM_EVENT_TYPES: [&str; 4] = ["dm.received", "dm.sent", "dm.read", "dm.indicate_typing"];

/// How a subscription was created: the subscribing account's own user token (OAuth 1.0a or
/// 2.0), or the App's Bearer token. X does not show it; tests ask which one a client used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreatedWith {
    /// An OAuth 1.0a user signature.
    #[default]
    OAuth1,
    /// An OAuth 2.0 user access token.
    OAuth2,
    /// The App's Bearer token.
    App,
}

/// One XAA subscription, as `GET /2/activity/subscriptions` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivitySubscription {
    /// Its 19-digit id.
    pub subscription_id: String,
    /// The event type, in X's dot notation (`dm.received`).
    pub event_type: String,
    /// `filter.user_id`: whose events it selects.
    pub user_id: String,
    /// The webhook its events are POSTed to, if any (else only the stream would carry them).
    pub webhook_id: Option<String>,
    /// The caller's tag, echoed in every event.
    pub tag: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
    /// Which token created it (not shown by X).
    #[serde(default)]
    pub created_with: CreatedWith,
    /// The App (consumer key) it belongs to: the stream of that App carries it.
    #[serde(skip)]
    pub(crate) app_key: String,
}
