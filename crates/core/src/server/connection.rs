//! One server's connections: each served by hyper in a task of its own
//! within `[http]`'s per-connection limits, holding one of
//! `http.max_connections` slots until it ends, and drained at shutdown.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeout, Timeout};

use crate::config::HttpSettings;

/// The most of a request's head (request line and headers) a connection
/// holds while it arrives; a longer head gets 431. hyper's default (about 400
/// KB) let 1,000 connections sending headers that never end grow the process
/// by 300 MB. X, probes, Prometheus and the CRM send heads of a few hundred
/// bytes. It is also hyper's largest read and write buffer per connection.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long requests in flight at shutdown may finish before their
/// connections are cut; idle connections close at once.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The app as hyper serves it: within the body read and request timeouts.
type AppService = TowerToHyperService<Timeout<RequestBodyTimeout<Router>>>;

/// The connections one server holds, and how each is served.
pub(super) struct Connections {
    server: &'static str,
    service: AppService,
    http: http1::Builder,
    write_timeout: Duration,
    graceful: GracefulShutdown,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Connections {
    /// Every limit of `[http]` but the connection cap, applied per connection.
    pub(super) fn new(
        server: &'static str,
        app: Router,
        limits: &HttpSettings,
        shutdown: CancellationToken,
    ) -> Connections {
        let service = TowerToHyperService::new(Timeout::with_status_code(
            RequestBodyTimeout::new(app, limits.body_read_timeout),
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        Connections {
            server,
            service,
            http,
            write_timeout: limits.write_timeout,
            graceful: GracefulShutdown::new(),
            tasks: JoinSet::new(),
            shutdown,
        }
    }

    /// Forgets the connections that ended, so a long-running server does not
    /// keep one entry per connection it ever had.
    pub(super) fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    /// Serves `stream` in a task of its own, holding its slot (`permit`)
    /// until it ends.
    pub(super) fn spawn(&mut self, permit: OwnedSemaphorePermit, stream: tokio::net::TcpStream) {
        let slot = Slot::taken(self.server, permit);
        let served = slot.served.clone();
        let service = self.service.clone();
        let per_connection = hyper::service::service_fn(move |request| {
            served.store(true, Ordering::Relaxed);
            service.call(request)
        });
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(self.write_timeout));
        let connection = self.graceful.watch(
            self.http
                .serve_connection(TokioIo::new(Box::pin(stream)), per_connection),
        );
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = &mut connection => ended,
                _ = stop.cancelled() => {
                    // hyper closes idle connections and lets a request in
                    // flight finish, but waits for a client still sending
                    // its first request's headers: nothing to wait for.
                    if !slot.served.load(Ordering::Relaxed) {
                        return;
                    }
                    connection.await
                }
            };
            if let Err(error) = ended {
                slot.ended_with(&error);
            }
        });
    }

    /// Closes idle connections and gives requests in flight
    /// [`SHUTDOWN_GRACE`], then cuts what is left.
    pub(super) async fn drain(mut self) {
        let graceful = self.graceful;
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            graceful.shutdown().await;
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let cut = self.tasks.len();
            self.tasks.shutdown().await;
            let server = self.server;
            tracing::info!(server, cut, "requests still in flight at shutdown were cut");
        }
    }
}

/// One connection's place among `http.max_connections`, given back (and
/// counted out of `xbridge_http_connections`) when the connection ends,
/// however it ends.
struct Slot {
    server: &'static str,
    _permit: OwnedSemaphorePermit,
    /// Whether a request got as far as the router: a header timeout before
    /// that is a stalled client, after it an idle keep-alive connection.
    served: Arc<AtomicBool>,
}

impl Slot {
    fn taken(server: &'static str, permit: OwnedSemaphorePermit) -> Slot {
        metrics::gauge!("xbridge_http_connections", "server" => server).increment(1.0);
        Slot {
            server,
            _permit: permit,
            served: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Notes how a connection that ended with `error` ended. Per connection
    /// and caused by clients, so debug only: the metric is what operators see.
    fn ended_with(&self, error: &hyper::Error) {
        let server = self.server;
        if error.is_timeout() && !self.served.load(Ordering::Relaxed) {
            metrics::counter!("xbridge_http_stalled_connections_total", "server" => server, "stage" => "headers")
                .increment(1);
            tracing::debug!(
                server,
                "a client did not send a request's headers in time; connection closed"
            );
        } else if write_timed_out(error) {
            metrics::counter!("xbridge_http_stalled_connections_total", "server" => server, "stage" => "response")
                .increment(1);
            tracing::debug!(
                server,
                "a client read nothing of its response in time; connection closed"
            );
        } else {
            tracing::debug!(server, %error, "connection ended with an error");
        }
    }
}

/// Whether `error` is the write timeout's: an I/O error of kind `TimedOut`
/// somewhere in its sources.
fn write_timed_out(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("xbridge_http_connections", "server" => self.server).decrement(1.0);
    }
}
