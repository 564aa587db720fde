//! One webhook POST as the simulator logs it ([`crate::Simulator::deliveries`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One POST to a webhook (a first attempt, a retry, a repeat or a raw delivery) and how the
/// receiver answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The webhook it went to.
    pub webhook_id: String,
    /// The URL it was POSTed to.
    pub url: String,
    /// The subscribed account it was for (`for_user_id`); `None` for a raw delivery.
    pub for_user_id: Option<String>,
    /// The DM event it carried; `None` for a raw delivery.
    pub event_id: Option<String>,
    /// 1 for the first attempt, 2 for the first retry, and so on.
    pub attempt: u32,
    /// The receiver's status, or `None` if it did not answer (refused, timed out).
    pub status: Option<u16>,
    /// Why there was no status.
    pub error: Option<String>,
    /// The `x-twitter-webhooks-signature` header sent, if any.
    pub signature: Option<String>,
    /// The exact body sent.
    pub body: String,
    /// When the attempt was made, by the simulator's clock.
    pub at: DateTime<Utc>,
}

impl Delivery {
    /// Whether the receiver answered 2xx.
    pub fn succeeded(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }
}
