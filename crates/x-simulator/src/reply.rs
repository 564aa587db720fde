//! How the simulator answers X routes: X's JSON content type and headers, plus the delays and
//! holds that faults add once the answer is decided.
//!
//! A handler (or the [`crate::authorized::Authorized`] extractor refusing a request) returns a
//! [`Reply`]; the [`deliver`] layer then names the account in the request log and applies the
//! account's latency or hold, so no route awaits those itself.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::rate_limit::RateLimitStatus;
use crate::request_log::RequestIdentity;
use crate::state::SimState;

/// How long a `Timeout` fault keeps a request waiting: far beyond any sane client timeout.
const HOLD_FOR: Duration = Duration::from_secs(60 * 60);

/// What X would answer, decided under the state lock; the [`deliver`] layer then sends it,
/// after whatever delay the account's faults impose.
#[derive(Debug)]
pub(crate) struct Reply {
    user_id: Option<String>,
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
}

/// What the [`deliver`] layer still has to do with an answer: whom to name, how long to wait.
#[derive(Clone, Debug)]
struct Pending {
    user_id: Option<String>,
    latency: Option<Duration>,
    hold: bool,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let pending = Pending {
            user_id: self.user_id,
            latency: self.latency,
            hold: self.hold,
        };
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
        response.extensions_mut().insert(pending);
        response
    }
}

/// Layer around the X routes: names the account of a [`Reply`] in the request log, then sends
/// it after the account's latency, or holds it; both end early on shutdown. Answers that are
/// not replies (media bytes, the 404 fallback) pass untouched.
pub(crate) async fn deliver(
    State(state): State<Arc<SimState>>,
    request: Request,
    next: Next,
) -> Response {
    let identity = request.extensions().get::<RequestIdentity>().cloned();
    let mut response = next.run(request).await;
    let Some(pending) = response.extensions_mut().remove::<Pending>() else {
        return response;
    };
    if let (Some(user_id), Some(identity)) = (&pending.user_id, &identity) {
        identity.set(user_id);
    }
    if let Some(latency) = pending.latency {
        tokio::select! {
            () = tokio::time::sleep(latency) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
    if pending.hold {
        tokio::select! {
            () = tokio::time::sleep(HOLD_FOR) => {}
            () = state.shutdown.cancelled() => {}
        }
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let mut held =
            Reply::new(unavailable, crate::problems::generic(unavailable)).into_response();
        held.extensions_mut().remove::<Pending>();
        return held;
    }
    response
}
