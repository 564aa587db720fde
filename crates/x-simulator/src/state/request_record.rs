//! The request log's entries and the running totals tests assert on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Status logged for a request whose client hung up before the answer (nginx's convention),
/// typically a client timing out on a [`crate::Fault::Timeout`].
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// One request to an X route, logged when it was answered (or abandoned by the client), so tests
/// can assert on retries and backoff without counting DMs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// The path without query, e.g. `/2/dm_conversations/with/42/messages`.
    pub path: String,
    /// The account the request was authenticated as; `None` if its credentials were not accepted
    /// (an account whose token a `Unauthorized` fault revoked is still named, to tell it apart).
    pub user_id: Option<String>,
    /// The `oauth_token` of the request's OAuth 1.0a header, if it had one: which of an
    /// account's access tokens signed it (a test of a token rotation tells old from new by it).
    #[serde(default)]
    pub oauth_token: Option<String>,
    /// The status answered, or 499 if the client closed the connection first.
    pub status: u16,
    /// When the request arrived, by the simulator's clock.
    pub at: DateTime<Utc>,
}

/// Running totals since start or the last reset, for quick assertions and `GET /_sim/counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Requests answered on X routes (admin routes excluded).
    pub requests: u64,
    /// DMs accepted and recorded.
    pub dms_sent: u64,
    /// 401 answers: bad or unknown credentials, stale timestamps, reused nonces, revoked tokens.
    pub unauthorized: u64,
    /// 400 answers: bodies or ids X would reject.
    pub invalid_requests: u64,
    /// 429 answers because the rate-limit window was used up (usage caps count as faults).
    pub rate_limited: u64,
    /// Answers decided by an injected [`crate::Fault`] (latency excluded).
    pub faults_injected: u64,
    /// Requests the client gave up on before they were answered.
    pub abandoned: u64,
    /// Customers' DMs injected ([`crate::Simulator::customer_dm`], `POST /_sim/customer_dm`).
    pub dms_received: u64,
    /// DM events returned in `data` by `GET /2/dm_events`, all accounts together: what X bills
    /// as "DM Event: Read" ($0.010 each). Per account: [`crate::Simulator::billed_dm_events`].
    pub dm_events_billed: u64,
    /// Users returned by `GET /2/users/:id` ("User: Read"; expanded users are not counted).
    pub users_read: u64,
    /// CRC checks run against webhook URLs (registration, `PUT`, [`crate::Simulator::check_webhook`]).
    pub crc_checks: u64,
    /// Webhook POSTs made (every attempt, retries and raw deliveries included).
    pub webhook_deliveries: u64,
}

impl Counters {
    pub(crate) fn count_answer(&mut self, status: u16) {
        self.requests += 1;
        match status {
            400 => self.invalid_requests += 1,
            401 => self.unauthorized += 1,
            CLIENT_CLOSED_REQUEST => self.abandoned += 1,
            _ => {}
        }
    }
}
