//! Failures X is known to produce, switched on per account so tests can drive the bridge through
//! every error path without a real X account in trouble.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::problems;
use crate::rate_limit::RateLimitWindow;

/// One way X misbehaves, applied to an account's requests until cleared (or used up).
///
/// Serialised with a `kind` tag in snake_case, e.g. `{"kind":"server_error","status":503,"times":2}`,
/// which is also what `POST /_sim/faults` takes. Several faults may be active at once; setting a
/// fault of a kind already active replaces it (for `recipient_refuses`: of the same participant).
/// A faulted request never records a DM, except a slow one (`slow_send`), which does, late.
///
/// Which requests a fault reaches: the account's *states* — billing (`credits_depleted`,
/// `payment_required`, `usage_capped`, `spend_cap_reached`), `not_enrolled`, `unauthorized`
/// and `latency` — apply to DM sends, `GET /2/dm_events` and `GET /2/users/:id` alike, as X
/// bills and blocks reads too (`missing_permission` reaches sends and DM reads, not user
/// lookups, which need no DM permission). One-off *incidents* are scoped, so a counted fault
/// meant for sends is never used up by a poll: `server_error`, `timeout`, `slow_send`,
/// `rate_limit_window` and `recipient_refuses` reach DM sends only; `read_server_error`, `read_timeout` and
/// `read_rate_limit_window` reach the two reads only. The media upload routes
/// (`/2/media/upload…`) are the sending direction too: they feel the states (but not
/// `missing_permission`, as uploading needs no DM permission), `server_error` and `timeout`,
/// and their own window, `upload_rate_limit_window`. `GET /2/users/me` only feels
/// `unauthorized` and `latency`; the webhook and subscription routes only `latency` (and the
/// subscription routes, which take a user token, `unauthorized`); the CRC X runs against the
/// webhooks the account registered only `crc_fails`; media downloads (the TON
/// URL and the video and GIF renditions) only the `media_*` faults, which reach nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Out of prepaid credits: 402 with `error_402_credits_depleted.json`, X's most common variant.
    CreditsDepleted,
    /// The other observed out-of-credits answer: 402 with `error_402_payment_required.json`.
    PaymentRequired,
    /// Monthly product cap reached: 429 with `error_429_usage_capped.json` while the rate-limit
    /// headers still show plenty remaining, so a client must branch on the body, not the status.
    UsageCapped,
    /// Billing-cycle spend cap reached: 403 `SpendCapReached` with a `reset_date` on the 1st of next month.
    SpendCapReached,
    /// The App lacks "Read, write, and Direct Messages": 403 `oauth1-permissions`, and the answers'
    /// `x-access-level` header says `read-write`.
    MissingPermission,
    /// The App is not in a Project or has no plan: 403 `client-not-enrolled`.
    NotEnrolled,
    /// The token was revoked: every request of the account gets 401, before any other check.
    Unauthorized,
    /// The recipient does not accept DMs from this account: 403 `error_403_forbidden.json`, for
    /// sends to that participant only.
    RecipientRefuses {
        /// The recipient's user id; sends into a 1:1 conversation with them are refused too.
        participant_id: String,
    },
    /// X has an outage: that status (e.g. 500, 503) with an `about:blank` problem body.
    ServerError {
        /// The HTTP status to answer; an invalid one becomes 500.
        status: u16,
        /// How many requests fail before X recovers; `None` fails until cleared.
        times: Option<u32>,
    },
    /// A slow network: every answer to the account (not only DM sends) is delayed. The effect
    /// happens at once (a DM is recorded before its delayed 201), like a real slow response.
    Latency {
        /// The delay added to every response, in milliseconds.
        millis: u64,
    },
    /// X accepts the connection but never answers, so the client's own timeout must fire. The
    /// request is held for an hour, or until the client gives up or the simulator shuts down.
    Timeout {
        /// How many requests are held; `None` holds every one until cleared.
        times: Option<u32>,
    },
    /// X is slow to create a DM: a send is answered `millis` after it arrived, and the DM is
    /// created then, whether or not the client still waits. A client that gives up sooner sees
    /// a timeout for a DM that exists, created after it gave up; so does a replica that died
    /// with the request on its way. Reaches DM sends only.
    SlowSend {
        /// How long X takes, in milliseconds.
        millis: u64,
        /// How many sends are slow; `None` every one until cleared.
        times: Option<u32>,
    },
    /// Replaces the account's rate-limit window (and starts a fresh one), so a test can reach a
    /// 429 and its recovery in seconds; clearing faults restores the configured window.
    RateLimitWindow {
        /// Requests allowed per window.
        limit: u32,
        /// Length of the window in seconds.
        window_secs: u64,
    },
    /// [`Fault::RateLimitWindow`] for the account's separate DM-read window
    /// (`GET /2/dm_events`; X allows 15 per 15 minutes per user).
    ReadRateLimitWindow {
        /// Reads allowed per window.
        limit: u32,
        /// Length of the window in seconds.
        window_secs: u64,
    },
    /// [`Fault::RateLimitWindow`] for the account's separate media upload window
    /// (`/2/media/upload…`; X allows 1,875 per 15 minutes per user).
    UploadRateLimitWindow {
        /// Upload requests allowed per window.
        limit: u32,
        /// Length of the window in seconds.
        window_secs: u64,
    },
    /// [`Fault::ServerError`] for the account's reads (`GET /2/dm_events`, `GET /2/users/:id`).
    ReadServerError {
        /// The HTTP status to answer; an invalid one becomes 500.
        status: u16,
        /// How many reads fail before X recovers; `None` fails until cleared.
        times: Option<u32>,
    },
    /// [`Fault::Timeout`] for the account's reads (`GET /2/dm_events`, `GET /2/users/:id`).
    ReadTimeout {
        /// How many reads are held; `None` holds every one until cleared.
        times: Option<u32>,
    },
    /// [`Fault::ServerError`] for downloads of the account's DM media (the TON URL, and the
    /// renditions of media in the account's conversations).
    MediaServerError {
        /// The HTTP status to answer; an invalid one becomes 500.
        status: u16,
        /// How many downloads fail before X recovers; `None` fails until cleared.
        times: Option<u32>,
    },
    /// [`Fault::Timeout`] for downloads of the account's DM media: no response head is sent.
    MediaTimeout {
        /// How many downloads are held; `None` holds every one until cleared.
        times: Option<u32>,
    },
    /// Downloads of the account's DM media answer 200 with `bytes` filler bytes instead of
    /// the media, so a client's size bound can be tested without a real large file.
    MediaLargeBody {
        /// How many bytes the body has.
        bytes: u64,
        /// Whether the answer announces its size in `Content-Length`; if not, the body is
        /// streamed in chunks and the client only learns the size by counting.
        content_length: bool,
    },
    /// X's CRC of the webhooks the account registered fails as if nothing answered at the
    /// URL (a proxy, DNS or TLS problem between X and the receiver, which the receiver cannot
    /// see): registering is refused and a `PUT` or periodic check marks the webhook invalid.
    CrcFails {
        /// How many CRC checks fail; `None` fails every one until cleared.
        times: Option<u32>,
    },
}

/// Which family of X routes a request belongs to, for deciding which faults reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The two DM send routes.
    DmSend,
    /// `GET /2/dm_events`.
    DmRead,
    /// `GET /2/users/:id`.
    UserLookup,
    /// The media upload routes: INITIALIZE, APPEND, FINALIZE and STATUS.
    MediaUpload,
}

/// How a `media_*` fault answers a media download instead of the media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MediaFailure {
    /// Keep the client waiting (the [`Fault::MediaTimeout`] case).
    Hold,
    /// An error status with X's generic problem body.
    Answer { status: StatusCode, body: String },
    /// 200 with filler bytes (the [`Fault::MediaLargeBody`] case).
    LargeBody { bytes: u64, content_length: bool },
}

impl Fault {
    /// Whether `other` takes this fault's place when set, rather than adding to it.
    fn replaces(&self, other: &Fault) -> bool {
        match (self, other) {
            (
                Fault::RecipientRefuses { participant_id: a },
                Fault::RecipientRefuses { participant_id: b },
            ) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// How a fault answers a request instead of the normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SendFailure {
    /// Keep the client waiting (the [`Fault::Timeout`] case).
    Hold,
    Answer {
        status: StatusCode,
        body: String,
    },
}

/// The active faults of every account, keyed by user id.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    by_user: HashMap<String, Vec<Fault>>,
}

impl FaultBook {
    pub(crate) fn set(&mut self, user_id: &str, fault: Fault) {
        let active = self.by_user.entry(user_id.to_string()).or_default();
        active.retain(|known| !known.replaces(&fault));
        active.push(fault);
    }

    pub(crate) fn clear(&mut self, user_id: &str) {
        self.by_user.remove(user_id);
    }

    /// Drops the account's [`Fault::MissingPermission`]: it belongs to the token, and a
    /// regenerated token carries the App's permissions as they are now.
    pub(crate) fn forget_missing_permission(&mut self, user_id: &str) {
        if let Some(active) = self.by_user.get_mut(user_id) {
            active.retain(|fault| *fault != Fault::MissingPermission);
        }
    }

    pub(crate) fn clear_all(&mut self) {
        self.by_user.clear();
    }

    fn active(&self, user_id: &str) -> &[Fault] {
        self.by_user.get(user_id).map(Vec::as_slice).unwrap_or(&[])
    }

    pub(crate) fn latency(&self, user_id: &str) -> Option<Duration> {
        self.active(user_id).iter().find_map(|fault| match fault {
            Fault::Latency { millis } => Some(Duration::from_millis(*millis)),
            _ => None,
        })
    }

    /// How long X takes to create the account's next DM ([`Fault::SlowSend`]), using up one
    /// count of it.
    pub(crate) fn take_slow_send(&mut self, user_id: &str) -> Option<Duration> {
        let active = self.by_user.get_mut(user_id)?;
        let index = active
            .iter()
            .position(|fault| matches!(fault, Fault::SlowSend { .. }))?;
        let Fault::SlowSend { millis, .. } = active[index] else {
            return None;
        };
        use_one(active, index).then(|| Duration::from_millis(millis))
    }

    /// Whether any account still has a [`Fault::SlowSend`] to use.
    pub(crate) fn any_slow_send(&self) -> bool {
        self.by_user
            .values()
            .flatten()
            .any(|fault| matches!(fault, Fault::SlowSend { .. }))
    }

    pub(crate) fn rate_limit_window(&self, user_id: &str) -> Option<RateLimitWindow> {
        self.active(user_id).iter().find_map(|fault| match fault {
            Fault::RateLimitWindow { limit, window_secs } => Some(RateLimitWindow {
                limit: *limit,
                window: Duration::from_secs(*window_secs),
            }),
            _ => None,
        })
    }

    pub(crate) fn read_rate_limit_window(&self, user_id: &str) -> Option<RateLimitWindow> {
        self.active(user_id).iter().find_map(|fault| match fault {
            Fault::ReadRateLimitWindow { limit, window_secs } => Some(RateLimitWindow {
                limit: *limit,
                window: Duration::from_secs(*window_secs),
            }),
            _ => None,
        })
    }

    pub(crate) fn upload_rate_limit_window(&self, user_id: &str) -> Option<RateLimitWindow> {
        self.active(user_id).iter().find_map(|fault| match fault {
            Fault::UploadRateLimitWindow { limit, window_secs } => Some(RateLimitWindow {
                limit: *limit,
                window: Duration::from_secs(*window_secs),
            }),
            _ => None,
        })
    }

    /// Whether X's CRC of a webhook `user_id` registered fails, using up one count of
    /// [`Fault::CrcFails`].
    pub(crate) fn take_crc_failure(&mut self, user_id: &str) -> bool {
        let Some(active) = self.by_user.get_mut(user_id) else {
            return false;
        };
        match active
            .iter()
            .position(|f| matches!(f, Fault::CrcFails { .. }))
        {
            Some(index) => use_one(active, index),
            None => false,
        }
    }

    pub(crate) fn revokes_token(&self, user_id: &str) -> bool {
        self.active(user_id).contains(&Fault::Unauthorized)
    }

    pub(crate) fn lacks_dm_permission(&self, user_id: &str) -> bool {
        self.active(user_id).contains(&Fault::MissingPermission)
    }

    pub(crate) fn recipient_refuses(&self, user_id: &str, participant: &str) -> bool {
        self.active(user_id).iter().any(|fault| {
            matches!(fault, Fault::RecipientRefuses { participant_id } if participant_id == participant)
        })
    }

    /// The failure, if any, that answers this DM send, using up one count of a limited fault.
    #[cfg(test)]
    pub(crate) fn take_send_failure(
        &mut self,
        user_id: &str,
        today: NaiveDate,
    ) -> Option<SendFailure> {
        self.take_failure(user_id, today, Endpoint::DmSend)
    }

    /// The failure, if any, that answers this request, using up one count of a limited fault.
    ///
    /// Order: outages first (the request never reaches billing), then billing, then permissions.
    pub(crate) fn take_failure(
        &mut self,
        user_id: &str,
        today: NaiveDate,
        endpoint: Endpoint,
    ) -> Option<SendFailure> {
        let active = self.by_user.get_mut(user_id)?;
        take_outage(active, endpoint).or_else(|| account_state(active, today, endpoint))
    }
}

/// A timeout, then a server error, of the endpoint's direction, using up one count. Uploads
/// are part of sending: a send's outage is theirs too.
fn take_outage(active: &mut Vec<Fault>, endpoint: Endpoint) -> Option<SendFailure> {
    let sends = matches!(endpoint, Endpoint::DmSend | Endpoint::MediaUpload);
    if let Some(index) = active.iter().position(|f| match f {
        Fault::Timeout { .. } => sends,
        Fault::ReadTimeout { .. } => !sends,
        _ => false,
    }) {
        if use_one(active, index) {
            return Some(SendFailure::Hold);
        }
    }
    let (index, status) = active
        .iter()
        .enumerate()
        .find_map(|(index, fault)| match fault {
            Fault::ServerError { status, .. } if sends => Some((index, *status)),
            Fault::ReadServerError { status, .. } if !sends => Some((index, *status)),
            _ => None,
        })?;
    if !use_one(active, index) {
        return None;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(SendFailure::Answer {
        status,
        body: problems::generic(status),
    })
}

/// The account's billing state, then its permissions, as X answers them.
fn account_state(active: &[Fault], today: NaiveDate, endpoint: Endpoint) -> Option<SendFailure> {
    let answer = |status: StatusCode, body: &str| {
        Some(SendFailure::Answer {
            status,
            body: body.to_string(),
        })
    };
    let has = |wanted: &Fault| active.contains(wanted);
    if has(&Fault::CreditsDepleted) {
        return answer(StatusCode::PAYMENT_REQUIRED, problems::CREDITS_DEPLETED);
    }
    if has(&Fault::PaymentRequired) {
        return answer(StatusCode::PAYMENT_REQUIRED, problems::PAYMENT_REQUIRED);
    }
    if has(&Fault::SpendCapReached) {
        return answer(StatusCode::FORBIDDEN, &problems::spend_cap_reached(today));
    }
    if has(&Fault::UsageCapped) {
        return answer(StatusCode::TOO_MANY_REQUESTS, problems::USAGE_CAPPED);
    }
    if has(&Fault::NotEnrolled) {
        return answer(StatusCode::FORBIDDEN, problems::CLIENT_NOT_ENROLLED);
    }
    if matches!(endpoint, Endpoint::DmSend | Endpoint::DmRead) && has(&Fault::MissingPermission) {
        return answer(StatusCode::FORBIDDEN, problems::OAUTH1_PERMISSIONS);
    }
    None
}

impl FaultBook {
    /// The failure, if any, that answers a download of `user_id`'s DM media, using up one
    /// count of a limited fault. Only `media_*` faults reach media downloads.
    pub(crate) fn take_media_failure(&mut self, user_id: &str) -> Option<MediaFailure> {
        let active = self.by_user.get_mut(user_id)?;
        if let Some(index) = active
            .iter()
            .position(|f| matches!(f, Fault::MediaTimeout { .. }))
        {
            if use_one(active, index) {
                return Some(MediaFailure::Hold);
            }
        }
        let server_error = active
            .iter()
            .enumerate()
            .find_map(|(index, fault)| match fault {
                Fault::MediaServerError { status, .. } => Some((index, *status)),
                _ => None,
            });
        if let Some((index, status)) = server_error {
            if use_one(active, index) {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Some(MediaFailure::Answer {
                    status,
                    body: problems::generic(status),
                });
            }
        }
        active.iter().find_map(|fault| match fault {
            Fault::MediaLargeBody {
                bytes,
                content_length,
            } => Some(MediaFailure::LargeBody {
                bytes: *bytes,
                content_length: *content_length,
            }),
            _ => None,
        })
    }
}

/// Uses one count of the limited fault at `index`, removing it once spent. Returns whether it
/// still applied to this request.
fn use_one(active: &mut Vec<Fault>, index: usize) -> bool {
    let times = match &mut active[index] {
        Fault::Timeout { times }
        | Fault::ServerError { times, .. }
        | Fault::ReadTimeout { times }
        | Fault::ReadServerError { times, .. }
        | Fault::MediaTimeout { times }
        | Fault::MediaServerError { times, .. }
        | Fault::CrcFails { times }
        | Fault::SlowSend { times, .. } => times,
        _ => return true,
    };
    match times {
        None => true,
        Some(0) => {
            active.remove(index);
            false
        }
        Some(left) => {
            *left -= 1;
            if *left == 0 {
                active.remove(index);
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 14).unwrap()
    }

    #[test]
    fn faults_use_the_documented_json_shape() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"server_error","status":503,"times":2}"#).unwrap();
        assert_eq!(
            fault,
            Fault::ServerError {
                status: 503,
                times: Some(2)
            }
        );
        let fault: Fault = serde_json::from_str(r#"{"kind":"server_error","status":500}"#).unwrap();
        assert_eq!(
            fault,
            Fault::ServerError {
                status: 500,
                times: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Fault::CreditsDepleted).unwrap(),
            r#"{"kind":"credits_depleted"}"#
        );
        assert_eq!(
            serde_json::to_string(&Fault::RecipientRefuses {
                participant_id: "42".into()
            })
            .unwrap(),
            r#"{"kind":"recipient_refuses","participant_id":"42"}"#
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"no_such_fault"}"#).is_err());
    }

    #[test]
    fn limited_server_error_fails_that_many_times_then_clears() {
        let mut book = FaultBook::default();
        book.set(
            "1",
            Fault::ServerError {
                status: 503,
                times: Some(2),
            },
        );
        for _ in 0..2 {
            let failure = book.take_send_failure("1", today());
            assert!(matches!(
                failure,
                Some(SendFailure::Answer { status, .. }) if status == StatusCode::SERVICE_UNAVAILABLE
            ));
        }
        assert_eq!(book.take_send_failure("1", today()), None);
    }

    #[test]
    fn setting_a_kind_again_replaces_it() {
        let mut book = FaultBook::default();
        book.set("1", Fault::Latency { millis: 10 });
        book.set("1", Fault::Latency { millis: 20 });
        assert_eq!(book.latency("1"), Some(Duration::from_millis(20)));
        book.set(
            "1",
            Fault::RecipientRefuses {
                participant_id: "a".into(),
            },
        );
        book.set(
            "1",
            Fault::RecipientRefuses {
                participant_id: "b".into(),
            },
        );
        assert!(book.recipient_refuses("1", "a") && book.recipient_refuses("1", "b"));
        book.clear("1");
        assert_eq!(book.latency("1"), None);
        assert!(!book.recipient_refuses("1", "a"));
    }

    #[test]
    fn incidents_are_scoped_and_states_apply_to_reads_too() {
        let mut book = FaultBook::default();
        book.set(
            "1",
            Fault::ServerError {
                status: 503,
                times: Some(1),
            },
        );
        assert_eq!(book.take_failure("1", today(), Endpoint::DmRead), None);
        assert_eq!(book.take_failure("1", today(), Endpoint::UserLookup), None);
        assert!(book.take_failure("1", today(), Endpoint::DmSend).is_some());

        book.set("1", Fault::ReadTimeout { times: Some(1) });
        assert_eq!(book.take_failure("1", today(), Endpoint::DmSend), None);
        assert_eq!(
            book.take_failure("1", today(), Endpoint::DmRead),
            Some(SendFailure::Hold)
        );
        assert_eq!(book.take_failure("1", today(), Endpoint::DmRead), None);

        book.set("1", Fault::MissingPermission);
        assert!(book.take_failure("1", today(), Endpoint::DmRead).is_some());
        assert_eq!(book.take_failure("1", today(), Endpoint::UserLookup), None);

        book.set("1", Fault::PaymentRequired);
        for endpoint in [Endpoint::DmSend, Endpoint::DmRead, Endpoint::UserLookup] {
            assert!(matches!(
                book.take_failure("1", today(), endpoint),
                Some(SendFailure::Answer { status, .. }) if status == StatusCode::PAYMENT_REQUIRED
            ));
        }
    }

    #[test]
    fn media_faults_reach_media_downloads_only() {
        let mut book = FaultBook::default();
        book.set(
            "1",
            Fault::MediaServerError {
                status: 502,
                times: Some(1),
            },
        );
        for endpoint in [Endpoint::DmSend, Endpoint::DmRead, Endpoint::UserLookup] {
            assert_eq!(book.take_failure("1", today(), endpoint), None);
        }
        assert!(matches!(
            book.take_media_failure("1"),
            Some(MediaFailure::Answer { status, .. }) if status == StatusCode::BAD_GATEWAY
        ));
        assert_eq!(book.take_media_failure("1"), None, "used up");
        book.set("1", Fault::MediaTimeout { times: Some(1) });
        assert_eq!(book.take_media_failure("1"), Some(MediaFailure::Hold));
        book.set(
            "1",
            Fault::MediaLargeBody {
                bytes: 10,
                content_length: false,
            },
        );
        assert_eq!(
            book.take_media_failure("1"),
            Some(MediaFailure::LargeBody {
                bytes: 10,
                content_length: false
            })
        );
        let parsed: Fault =
            serde_json::from_str(r#"{"kind":"media_large_body","bytes":10,"content_length":true}"#)
                .unwrap();
        assert!(matches!(
            parsed,
            Fault::MediaLargeBody {
                bytes: 10,
                content_length: true
            }
        ));
    }

    #[test]
    fn faults_are_per_account() {
        let mut book = FaultBook::default();
        book.set("1", Fault::CreditsDepleted);
        assert!(book.take_send_failure("1", today()).is_some());
        assert_eq!(book.take_send_failure("2", today()), None);
    }
}
