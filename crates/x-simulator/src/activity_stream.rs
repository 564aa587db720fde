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
//! Tests cut every open stream through [`crate::Simulator::cut_activity_streams`] (or
//! `POST /_sim/activity_stream/cut`): each gets X's `operational-disconnect` line and ends. X
//! allows 2 connections per App; a third is answered 429 `TooManyConnections`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::authorized::{Activity, Authorized};
use crate::problems;

/// X's cap on `backfill_minutes` (the spec's `maximum: 5`).
pub const MAX_BACKFILL_MINUTES: i64 = 5;
/// Open connections X allows per App on this endpoint (rate-limits page: "2 connections").
pub const MAX_CONNECTIONS_PER_APP: usize = 2;
/// X's keep-alive interval on its streams (20 s, "Handling disconnections").
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Lines queued for a slow client before the simulator drops it, as X drops a client that
/// does not keep up.
const CONNECTION_BUFFER: usize = 4096;
/// How many lines the backfill log keeps at most (older ones fall off even inside 5 minutes).
const BACKFILL_LOG_LINES: usize = 100_000;

/// The line X sends before it closes a stream for operational reasons.
const OPERATIONAL_DISCONNECT: &str = r#"{"errors":[{"title":"operational-disconnect","disconnect_type":"UpstreamOperationalDisconnect","detail":"This stream has been disconnected upstream for operational reasons.","type":"https://api.x.com/2/problems/operational-disconnect"}]}"#;

/// One open stream.
struct Connection {
    id: u64,
    app_key: String,
    lines: mpsc::Sender<Bytes>,
}

/// A line the App's stream carried, kept for backfill.
struct Logged {
    at: DateTime<Utc>,
    app_key: String,
    line: Bytes,
}

#[derive(Default)]
struct HubInner {
    connections: Vec<Connection>,
    log: VecDeque<Logged>,
}

/// What tests and the admin API see of the streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamCounters {
    /// Streams open now (all Apps).
    pub open: usize,
    /// Streams ever opened (accepted with 200).
    pub opened: u64,
    /// Streams cut through the admin control.
    pub cut: u64,
}

/// Every open activity stream and the backfill log. Its own lock, never held with
/// [`crate::state::SimState::lock`]'s across an await.
pub(crate) struct StreamHub {
    inner: Mutex<HubInner>,
    next_id: AtomicU64,
    opened: AtomicU64,
    cut: AtomicU64,
    keep_alive_millis: AtomicU64,
    /// Woken when a stream opens or closes, for tests that wait on the counters.
    pub changed: tokio::sync::Notify,
}

impl Default for StreamHub {
    fn default() -> Self {
        StreamHub {
            inner: Mutex::default(),
            next_id: AtomicU64::new(1),
            opened: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            keep_alive_millis: AtomicU64::new(DEFAULT_KEEP_ALIVE.as_millis() as u64),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl StreamHub {
    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn counters(&self) -> StreamCounters {
        StreamCounters {
            open: self.lock().connections.len(),
            opened: self.opened.load(Ordering::SeqCst),
            cut: self.cut.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn set_keep_alive(&self, every: Duration) {
        self.keep_alive_millis
            .store(every.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_millis.load(Ordering::SeqCst))
    }

    /// Sends an event line to the App's open streams and logs it for backfill. A stream whose
    /// buffer is full is dropped (X: "Client too slow").
    pub(crate) fn publish(&self, app_key: &str, at: DateTime<Utc>, envelope: &str) {
        let line = Bytes::from(format!("{envelope}\r\n"));
        let mut inner = self.lock();
        inner.connections.retain(|connection| {
            connection.app_key != app_key || connection.lines.try_send(line.clone()).is_ok()
        });
        inner.log.push_back(Logged {
            at,
            app_key: app_key.to_string(),
            line,
        });
        let horizon = at - chrono::Duration::minutes(MAX_BACKFILL_MINUTES);
        while inner
            .log
            .front()
            .is_some_and(|logged| logged.at < horizon || inner.log.len() > BACKFILL_LOG_LINES)
        {
            inner.log.pop_front();
        }
    }

    /// Ends every open stream after X's operational-disconnect line; returns how many.
    pub(crate) fn cut_all(&self) -> usize {
        let cut = {
            let mut inner = self.lock();
            let connections = std::mem::take(&mut inner.connections);
            for connection in &connections {
                let _ = connection
                    .lines
                    .try_send(Bytes::from(format!("{OPERATIONAL_DISCONNECT}\r\n")));
            }
            connections.len()
        };
        self.cut.fetch_add(cut as u64, Ordering::SeqCst);
        tracing::info!(cut, "activity streams cut");
        self.changed.notify_waiters();
        cut
    }

    fn close(&self, id: u64) {
        self.lock().connections.retain(|c| c.id != id);
        self.changed.notify_waiters();
    }

    /// Joins the App's stream, with the backfill since `since` queued first under the same
    /// lock, so nothing published meanwhile is missed or reordered. `None`: the App is at its
    /// connection limit.
    fn open(
        &self,
        app_key: &str,
        since: Option<DateTime<Utc>>,
    ) -> Option<(u64, mpsc::Receiver<Bytes>)> {
        let (lines, receiver) = mpsc::channel(CONNECTION_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        {
            let mut inner = self.lock();
            let open = inner
                .connections
                .iter()
                .filter(|c| c.app_key == app_key)
                .count();
            if open >= MAX_CONNECTIONS_PER_APP {
                return None;
            }
            if let Some(since) = since {
                for logged in inner
                    .log
                    .iter()
                    .filter(|l| l.app_key == app_key && l.at >= since)
                {
                    // The backfill can exceed the buffer only with a huge log: drop the rest,
                    // as X would drop a client that cannot keep up.
                    if lines.try_send(logged.line.clone()).is_err() {
                        break;
                    }
                }
            }
            inner.connections.push(Connection {
                id,
                app_key: app_key.to_string(),
                lines,
            });
        }
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Some((id, receiver))
    }
}

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
    let since = minutes.map(|m| caller.now - chrono::Duration::minutes(m));
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
