//! The checks every X route makes before its own, in X's order: who (401, or 403 for an App
//! token where only a user token will do), a revoked token (401), the account's window (429,
//! with X's headers on every answer from here on), then the account's faults for that family
//! of routes. Each route names its [`Gate`], so what a fault does to a route is read in one
//! table below instead of in every handler.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use crate::accounts::Account;
use crate::auth::{self, AuthFailure, AuthKind, SignedRequest};
use crate::faults::{Endpoint, SendFailure};
use crate::problems;
use crate::reply::Reply;
use crate::state::{Inner, SimState, Window};

/// Which of the shared checks a route makes. The differences are X's (webhook management takes
/// an App token and feels no faults but latency) or the simulator's documented scoping of faults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate {
    /// Names the route family in logs.
    pub what: &'static str,
    /// Whether an App's Bearer token is accepted as its account; if not it gets X's 403.
    pub app_token: bool,
    /// Whether the request log names the account of a refused App token.
    pub names_refused_app: bool,
    /// Whether the account's `latency` fault delays the answer.
    pub latency: bool,
    /// Whether the account's `unauthorized` fault refuses a user token.
    pub revocable: bool,
    /// Whether a user-token answer carries `x-access-level`.
    pub access_level: bool,
    /// The rate-limit window the request spends from, if any.
    pub window: Option<Window>,
    /// The family of routes whose faults answer instead, if any.
    pub faults: Option<Endpoint>,
}

/// A route taking the account's own user token, feeling `latency` and `unauthorized` only.
const USER: Gate = Gate {
    what: "",
    app_token: false,
    names_refused_app: true,
    latency: true,
    revocable: true,
    access_level: false,
    window: None,
    faults: None,
};

/// The two DM send routes.
pub(crate) const DM_SEND: Gate = Gate {
    what: "DM send",
    access_level: true,
    window: Some(Window::Send),
    faults: Some(Endpoint::DmSend),
    ..USER
};

/// `GET /2/dm_events`: its own read window and the read faults.
pub(crate) const DM_READ: Gate = Gate {
    what: "DM read",
    access_level: true,
    window: Some(Window::Read),
    faults: Some(Endpoint::DmRead),
    ..USER
};

/// The media upload routes: the upload window and the sending direction's faults.
pub(crate) const MEDIA_UPLOAD: Gate = Gate {
    what: "media upload",
    access_level: true,
    window: Some(Window::Upload),
    faults: Some(Endpoint::MediaUpload),
    ..USER
};

/// `GET /2/users/me`, the credential check: 200 even while sends fail for credits.
pub(crate) const USERS_ME: Gate = Gate {
    what: "users/me",
    names_refused_app: false,
    access_level: true,
    ..USER
};

/// `GET /2/users/:id`: a user or App token; the account states reach it.
pub(crate) const USER_LOOKUP: Gate = Gate {
    what: "user lookup",
    app_token: true,
    access_level: true,
    faults: Some(Endpoint::UserLookup),
    ..USER
};

/// `/2/webhooks…` and the App-token subscription routes: only `latency` reaches them.
pub(crate) const WEBHOOKS: Gate = Gate {
    what: "webhook",
    app_token: true,
    revocable: false,
    ..USER
};

/// The subscription routes that need the subscribing account's user token.
pub(crate) const SUBSCRIPTION: Gate = Gate {
    what: "subscription",
    ..USER
};

/// The X Activity API subscription routes: a user token or the App's, feeling `latency` and
/// (for a user token) `unauthorized` only.
pub(crate) const ACTIVITY: Gate = Gate {
    what: "activity subscription",
    app_token: true,
    ..USER
};

/// The TON media URL: a participant's user token; only the `media_*` faults, which the route
/// applies itself once it knows the media, reach it.
pub(crate) const MEDIA_DOWNLOAD: Gate = Gate {
    what: "media download",
    names_refused_app: false,
    latency: false,
    revocable: false,
    ..USER
};

/// Who was admitted: the account, and a 200 reply that already has
/// the account's latency, rate-limit and access-level headers, for the route to fill in.
pub(crate) struct Admitted {
    pub account: Account,
    pub reply: Reply,
}

/// Runs `gate`'s checks under the state lock; `Err` is the refusal to send as is.
pub(crate) fn admit(
    state: &SimState,
    inner: &mut Inner,
    request: &SignedRequest<'_>,
    now: DateTime<Utc>,
    gate: &Gate,
) -> Result<Admitted, Reply> {
    let (account, kind) = identify(inner, request, now, gate)?;
    let user_id = account.user_id.as_str();
    let user = kind == AuthKind::User;
    let latency = gate
        .latency
        .then(|| inner.faults.latency(user_id))
        .flatten();
    let reply = Reply::new(StatusCode::OK, "").for_account(user_id, latency);
    if user && gate.revocable && inner.faults.revokes_token(user_id) {
        inner.counters.faults_injected += 1;
        return Err(reply.answer(StatusCode::UNAUTHORIZED, problems::UNAUTHORIZED));
    }

    let reply = count_window(state, inner, gate, user_id, user, now, reply)?;
    let reply = take_fault(inner, gate, user_id, now, reply)?;
    Ok(Admitted { account, reply })
}

/// Counts the request in the route's rate-limit window and puts the window (and the access
/// level) in the answer's headers; 429 once the window is used up.
fn count_window(
    state: &SimState,
    inner: &mut Inner,
    gate: &Gate,
    user_id: &str,
    user: bool,
    now: DateTime<Utc>,
    mut reply: Reply,
) -> Result<Reply, Reply> {
    let window = gate
        .window
        .map(|window| inner.count_rate_limit(window, user_id, now, state.default_window(window)));
    if let Some(status) = window {
        reply = reply.rate_limit(status);
    }
    if user && gate.access_level {
        reply = reply.access_level(!inner.faults.lacks_dm_permission(user_id));
    }
    if window.is_some_and(|status| status.exceeded) {
        inner.counters.rate_limited += 1;
        return Err(reply.answer(StatusCode::TOO_MANY_REQUESTS, problems::RATE_LIMITED));
    }
    Ok(reply)
}

/// The account's fault for the route's endpoint, if one answers it: held (a timeout) or
/// answered with X's error.
fn take_fault(
    inner: &mut Inner,
    gate: &Gate,
    user_id: &str,
    now: DateTime<Utc>,
    reply: Reply,
) -> Result<Reply, Reply> {
    let today = now.date_naive();
    match gate
        .faults
        .and_then(|endpoint| inner.faults.take_failure(user_id, today, endpoint))
    {
        Some(SendFailure::Hold) => {
            inner.counters.faults_injected += 1;
            tracing::info!(
                user_id,
                what = gate.what,
                "holding a request without answering (timeout fault)"
            );
            Err(reply.hold())
        }
        Some(SendFailure::Answer { status, body }) => {
            inner.counters.faults_injected += 1;
            Err(reply.answer(status, body))
        }
        None => Ok(reply),
    }
}

/// Whose credentials signed the request, or X's refusal (logged with the reason at WARN).
fn identify(
    inner: &mut Inner,
    request: &SignedRequest<'_>,
    now: DateTime<Utc>,
    gate: &Gate,
) -> Result<(Account, AuthKind), Reply> {
    let found = if gate.app_token {
        auth::authenticate_user_or_app(request, &inner.accounts, &mut inner.nonces, now)
    } else {
        auth::authenticate(request, &inner.accounts, &mut inner.nonces, now)
            .map(|account| (account.clone(), AuthKind::User))
    };
    found.map_err(|failure| refusal(&failure, request, gate))
}

fn refusal(failure: &AuthFailure, request: &SignedRequest<'_>, gate: &Gate) -> Reply {
    tracing::warn!(
        ?failure,
        path = request.uri.path(),
        what = gate.what,
        "refused a request's credentials"
    );
    let reply = Reply::new(failure.status(), failure.body());
    match failure.user_id() {
        Some(user_id) if gate.names_refused_app => reply.for_account(user_id, None),
        _ => reply,
    }
}
