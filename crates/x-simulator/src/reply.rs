//! How the simulator answers X routes: X's JSON content type and headers, plus the delays and
//! holds that faults add once the answer is decided.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};

use crate::rate_limit::RateLimitStatus;
use crate::request_log::RequestIdentity;
use crate::state::SimState;

/// How long a `Timeout` fault keeps a request waiting: far beyond any sane client timeout.
const HOLD_FOR: Duration = Duration::from_secs(60 * 60);

/// What X would answer, decided under the state lock; [`Reply::deliver`] then sends it, after
/// whatever delay the account's faults impose.
#[derive(Debug)]
pub(crate) struct Reply {
    pub user_id: Option<String>,
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: String,
    latency: Option<Duration>,
    hold: bool,
}

impl Reply {
    pub(crate) fn new(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            user_id: None,
            status,
            headers: Vec::new(),
            body: body.into(),
            latency: None,
            hold: false,
        }
    }

    pub(crate) fn for_account(mut self, user_id: &str, latency: Option<Duration>) -> Reply {
        self.user_id = Some(user_id.to_string());
        self.latency = latency;
        self
    }

    /// Replaces status and body, keeping account, headers and delay.
    pub(crate) fn answer(mut self, status: StatusCode, body: impl Into<String>) -> Reply {
        self.status = status;
        self.body = body.into();
        self
    }

    pub(crate) fn header(mut self, name: HeaderName, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The `x-rate-limit-*` headers X puts on every answer of a rate-limited endpoint.
    pub(crate) fn rate_limit(self, status: RateLimitStatus) -> Reply {
        self.header(
            HeaderName::from_static("x-rate-limit-limit"),
            status.limit.to_string(),
        )
        .header(
            HeaderName::from_static("x-rate-limit-remaining"),
            status.remaining.to_string(),
        )
        .header(
            HeaderName::from_static("x-rate-limit-reset"),
            status.reset_epoch_secs.to_string(),
        )
    }

    /// The token's permission, which X reports on OAuth 1.0a user-context answers.
    pub(crate) fn access_level(self, can_send_dms: bool) -> Reply {
        let level = if can_send_dms {
            "read-write-directmessages"
        } else {
            "read-write"
        };
        self.header(HeaderName::from_static("x-access-level"), level)
    }

    /// Keep the client waiting instead of answering (a `Timeout` fault).
    pub(crate) fn hold(mut self) -> Reply {
        self.hold = true;
        self
    }

    /// Sends the answer after the account's latency, or holds it; both end early on shutdown.
    pub(crate) async fn deliver(self, state: &SimState, identity: &RequestIdentity) -> Response {
        if let Some(user_id) = &self.user_id {
            identity.set(user_id);
        }
        if let Some(latency) = self.latency {
            tokio::select! {
                () = tokio::time::sleep(latency) => {}
                () = state.shutdown.cancelled() => {}
            }
        }
        if self.hold {
            tokio::select! {
                () = tokio::time::sleep(HOLD_FOR) => {}
                () = state.shutdown.cancelled() => {}
            }
            let unavailable = StatusCode::SERVICE_UNAVAILABLE;
            return Reply::new(unavailable, crate::problems::generic(unavailable)).into_response();
        }
        self.into_response()
    }

    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in self.headers {
            // Values are built from ids and numbers; one that is not a valid header is dropped.
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}
