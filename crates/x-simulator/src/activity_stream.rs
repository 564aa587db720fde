//! The X Activity API stream, `GET /2/activity/stream` (docs/x-api-facts.md, "Activity
//! stream"): one long-lived response per App (the Bearer token's App) carrying, one JSON object
//! per `\r\n`-terminated line, the XAA envelope of every event of every subscription the App
//! has — with or without a `webhook_id` ("delivered to the provided webhook, in addition to
//! the stream if it is open") — and a blank `\r\n` keep-alive line every keep-alive interval.
//!
//! `backfill_minutes` (0–5, X's cap) replays what the App's stream carried in the last N
//! minutes before the live events, atomically with joining, so a client that reconnects with a
//! backfill covering its gap misses nothing (and sees again what it already had: X's
//! documentation promises nothing finer, so the client must de-duplicate).
//!
//! A backfill reaches back X's 5 minutes at most, or less after
//! [`crate::Simulator::set_activity_stream_backfill_window`], so a test can have a gap outlast
//! X's backfill without waiting 5 minutes.
//!
//! [`crate::Simulator::set_activity_stream_down`] has X answer every connection 503 (an outage
//! of the stream alone) until it is up again.
//!
//! Tests cut every open stream through [`crate::Simulator::cut_activity_streams`] (or
//! `POST /_sim/activity_stream/cut`): each gets X's `operational-disconnect` line and ends. X
//! allows 2 connections per App; a third is answered 429 `TooManyConnections`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use crate::authorized::{Activity, Authorized};
use crate::problems;
pub use crate::state::stream::{StreamCounters, MAX_BACKFILL_MINUTES, MAX_CONNECTIONS_PER_APP};

/// X's answer to a third connection.
fn too_many_connections() -> String {
    json!({
        "title": "ConnectionException",
        "detail": "This stream is currently at the maximum allowed connection limit.",
        "connection_issue": "TooManyConnections",
        "type": "https://api.x.com/2/problems/streaming-connection",
    })
    .to_string()
}

/// `backfill_minutes` from the query: `Ok(None)` when absent, `Err` outside 0–5.
fn backfill_minutes(query: Option<&str>) -> Result<Option<i64>, String> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("backfill_minutes="))
    else {
        return Ok(None);
    };
    match value.parse::<i64>() {
        Ok(minutes) if (0..=MAX_BACKFILL_MINUTES).contains(&minutes) => Ok(Some(minutes)),
        _ => Err(problems::invalid_request(
            "The `backfill_minutes` query parameter value is not between 0 and 5",
            Some(("backfill_minutes", value)),
        )),
    }
}

/// Removes the connection from the hub when the response body is dropped (client gone).
struct Leave {
    state: Arc<crate::state::SimState>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.state.streams.close(self.id);
    }
}

/// `GET /2/activity/stream`.
pub(crate) async fn stream(caller: Authorized<Activity>) -> Response {
    let bearer = caller
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("Bearer "));
    if !bearer {
        // The spec lists BearerToken only for this operation.
        return caller
            .reply
            .answer(
                StatusCode::FORBIDDEN,
                problems::invalid_request(
                    "Authenticating with OAuth 1.0a User Context is forbidden for this endpoint.  Supported authentication types are [OAuth 2.0 Application-Only].",
                    None,
                ),
            )
            .into_response();
    }
    if caller.state.streams.is_down() {
        return caller
            .reply
            .answer(
                StatusCode::SERVICE_UNAVAILABLE,
                problems::generic(StatusCode::SERVICE_UNAVAILABLE),
            )
            .into_response();
    }
    let minutes = match backfill_minutes(caller.uri.query()) {
        Ok(minutes) => minutes,
        Err(problem) => {
            return caller
                .reply
                .answer(StatusCode::BAD_REQUEST, problem)
                .into_response()
        }
    };
    let app_key = caller.account.consumer_key.clone();
    let since = minutes.map(|m| caller.state.streams.backfill_since(caller.now, m));
    let state = caller.state.clone();
    let Some((id, lines)) = state.streams.open(&app_key, since) else {
        tracing::info!("activity stream refused: too many connections");
        return caller
            .reply
            .answer(StatusCode::TOO_MANY_REQUESTS, too_many_connections())
            .into_response();
    };
    tracing::info!(connection = id, backfill_minutes = ?minutes, "activity stream opened");
    let open = Open {
        lines,
        ticker: ticker(state.streams.keep_alive()),
        shutdown: state.shutdown.clone(),
        _leave: Leave { state, id },
    };
    let body = futures::stream::unfold(open, |mut open| async move {
        let next = tokio::select! {
            biased;
            () = open.shutdown.cancelled() => None,
            line = open.lines.recv() => line,
            _ = open.ticker.tick() => Some(Bytes::from_static(b"\r\n")),
        };
        next.map(|line| (Ok::<_, Infallible>(line), open))
    });
    let (parts, _) = caller.reply.into_response().into_parts();
    Response::from_parts(parts, Body::from_stream(body))
}

/// One open stream's body: its lines, its keep-alive ticker, and its place in the hub.
struct Open {
    lines: mpsc::Receiver<Bytes>,
    ticker: tokio::time::Interval,
    shutdown: tokio_util::sync::CancellationToken,
    _leave: Leave,
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// `GET /_sim/activity_stream`: the [`StreamCounters`].
pub(crate) async fn admin_counters(
    axum::extract::State(state): axum::extract::State<Arc<crate::state::SimState>>,
) -> Response {
    axum::Json(state.streams.counters()).into_response()
}

/// `POST /_sim/activity_stream/cut`: cuts every open stream; answers `{"cut": n}`.
pub(crate) async fn admin_cut(
    axum::extract::State(state): axum::extract::State<Arc<crate::state::SimState>>,
) -> Response {
    axum::Json(json!({ "cut": state.streams.cut_all() })).into_response()
}
