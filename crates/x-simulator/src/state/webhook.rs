//! Registered webhooks, the accounts subscribed to them, and the limits and retries they follow.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How webhooks behave: X's Pay Per Use limits and the delivery retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Webhooks one App may register; Pay Per Use allows 1 (`WebhookLimitExceeded` beyond).
    pub max_webhooks_per_app: usize,
    /// Accounts that may subscribe to one App's webhooks; Pay Per Use allows 3
    /// (`SubscriptionLimitExceeded` beyond).
    pub max_subscriptions_per_app: usize,
    /// X Activity API subscriptions one App may hold; self-serve allows 1,500
    /// (`SubscriptionLimitExceeded` beyond, a reason the simulator assumes).
    pub max_activity_subscriptions_per_app: usize,
    /// How many times a delivery the receiver did not answer with a 2xx is retried.
    pub delivery_retries: u32,
    /// The wait before the first retry; each later retry waits twice as long as the one before.
    pub retry_backoff: Duration,
    /// How long a CRC check or a delivery may take before it counts as failed (X allows 10 s).
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    /// Pay Per Use's limits, X's 10-second timeout and 3 retries starting 1 s apart (X's
    /// enterprise AAA retried 3 times over 5 minutes; v2's schedule is not documented).
    fn default() -> Self {
        WebhookConfig {
            max_webhooks_per_app: 1,
            max_subscriptions_per_app: 3,
            max_activity_subscriptions_per_app: 1_500,
            delivery_retries: 3,
            retry_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A registered webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Its 19-digit id.
    pub id: String,
    /// Where CRC checks and events go.
    pub url: String,
    /// Whether the last CRC check passed; events are only delivered to valid webhooks.
    pub valid: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The user id of the account whose token registered it; its consumer secret signs.
    pub registered_by: String,
    /// The App (consumer key) it belongs to.
    #[serde(skip)]
    pub(crate) app_key: String,
    /// The consumer secret that keys its CRC checks and signatures.
    #[serde(skip)]
    pub(crate) secret: String,
}

/// An account subscribed to a webhook: its DM events are delivered there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The webhook's id.
    pub webhook_id: String,
    /// The subscribed account.
    pub user_id: String,
    /// When it subscribed.
    pub created_at: DateTime<Utc>,
}
