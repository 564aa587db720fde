//! The checks every user-token X route that spends from a rate-limit window makes before its
//! own, in X's order: who (401, or 403 for an App-only token), a revoked token (401), the
//! account's window (429, with X's headers on every answer from here on), then the account's
//! faults for that family of routes. One helper, so DM sends and media uploads cannot drift
//! apart in what a fault does to them.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use crate::accounts::Account;
use crate::auth::{self, SignedRequest};
use crate::faults::{Endpoint, SendFailure};
use crate::problems;
use crate::reply::Reply;
use crate::state::{Inner, SimState, Window};

/// Runs the shared checks under the state lock. `Ok` carries the account and a 200 reply that
/// already has the account's latency, rate-limit and access-level headers, for the route to
/// fill in; `Err` is the refusal to send as is. `what` names the route family in logs.
pub(crate) fn admit(
    state: &SimState,
    inner: &mut Inner,
    request: &SignedRequest<'_>,
    now: DateTime<Utc>,
    (window, endpoint): (Window, Endpoint),
    what: &'static str,
) -> Result<(Account, Reply), Reply> {
    let account = match auth::authenticate(request, &inner.accounts, &mut inner.nonces, now) {
        Ok(account) => account.clone(),
        Err(failure) => {
            tracing::warn!(
                ?failure,
                path = request.uri.path(),
                what,
                "refused a request's credentials"
            );
            let reply = Reply::new(failure.status(), failure.body());
            return Err(match failure.user_id() {
                Some(user_id) => reply.for_account(user_id, None),
                None => reply,
            });
        }
    };
    let user_id = account.user_id.as_str();
    let reply = Reply::new(StatusCode::OK, "").for_account(user_id, inner.faults.latency(user_id));
    if inner.faults.revokes_token(user_id) {
        inner.counters.faults_injected += 1;
        return Err(reply.answer(StatusCode::UNAUTHORIZED, problems::UNAUTHORIZED));
    }

    let status = inner.count_rate_limit(window, user_id, now, state.default_window(window));
    let reply = reply
        .rate_limit(status)
        .access_level(!inner.faults.lacks_dm_permission(user_id));
    if status.exceeded {
        inner.counters.rate_limited += 1;
        return Err(reply.answer(StatusCode::TOO_MANY_REQUESTS, problems::RATE_LIMITED));
    }

    match inner
        .faults
        .take_failure(user_id, now.date_naive(), endpoint)
    {
        Some(SendFailure::Hold) => {
            inner.counters.faults_injected += 1;
            tracing::info!(
                user_id,
                what,
                "holding a request without answering (timeout fault)"
            );
            Err(reply.hold())
        }
        Some(SendFailure::Answer { status, body }) => {
            inner.counters.faults_injected += 1;
            Err(reply.answer(status, body))
        }
        None => Ok((account, reply)),
    }
}
