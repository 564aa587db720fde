//! The open `GET /2/activity/stream` connections of every App and the backfill log they
//! replay from ([`crate::activity_stream`] serves them). Kept in the state so the DM
//! deliveries can publish to it without the state importing the route.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

/// X's cap on `backfill_minutes` (the spec's `maximum: 5`).
pub const MAX_BACKFILL_MINUTES: i64 = 5;
/// Open connections X allows per App on this endpoint (rate-limits page: "2 connections").
pub const MAX_CONNECTIONS_PER_APP: usize = 2;
/// X's keep-alive interval on its streams (20 s, "Handling disconnections").
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Lines queued for a slow client before the simulator drops it, as X drops a client that
/// does not keep up.
pub(crate) const CONNECTION_BUFFER: usize = 4096;
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
    /// How far back a backfill reaches at most (X: 5 minutes); tests shorten it.
    backfill_window_millis: AtomicU64,
    /// X's stream endpoint is down: every connection is answered 503.
    down: AtomicBool,
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
            backfill_window_millis: AtomicU64::new(MAX_BACKFILL_MINUTES as u64 * 60_000),
            down: AtomicBool::new(false),
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

    pub(crate) fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_millis.load(Ordering::SeqCst))
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub(crate) fn set_backfill_window(&self, window: Duration) {
        self.backfill_window_millis
            .store(window.as_millis() as u64, Ordering::SeqCst);
    }

    /// Where a backfill of `minutes` asked for at `now` starts: no further back than the
    /// backfill window.
    pub(crate) fn backfill_since(&self, now: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
        let window = self.backfill_window_millis.load(Ordering::SeqCst) as i64;
        now - chrono::Duration::milliseconds((minutes * 60_000).min(window))
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

    pub(crate) fn close(&self, id: u64) {
        self.lock().connections.retain(|c| c.id != id);
        self.changed.notify_waiters();
    }

    /// Joins the App's stream, with the backfill since `since` queued first under the same
    /// lock, so nothing published meanwhile is missed or reordered. `None`: the App is at its
    /// connection limit.
    pub(crate) fn open(
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
