//! The HTTP serving both of the bridge's servers use: X's webhook with the
//! media proxy (`xbridge-inbound`), and `/healthz`, `/readyz` and `/metrics`
//! (the `xbridge` binary).
//!
//! Anyone who reaches a port can open connections and then send nothing, half
//! a request, or a body one byte at a time. `axum::serve` keeps every such
//! connection forever, and once the process runs out of file descriptors every
//! accept fails, X's deliveries and the probes included. So each connection
//! here meets the limits of `[http]` ([`HttpSettings`]):
//!
//! - hyper's header read timeout, from the moment the connection waits for a
//!   request's headers: on a new connection, and after each response (so it is
//!   also the idle keep-alive timeout);
//! - tower-http's body read timeout, the longest pause inside a request body;
//! - tower-http's request timeout, from a request's headers to its response's
//!   (408 after it); a response body already streaming (the media proxy) is
//!   not bounded by it;
//! - a write timeout (tokio-io-timeout), the longest a response may wait
//!   because the client reads nothing: hyper has none, and a client that asks
//!   and never reads (a hung consumer, or requests pipelined and left unread)
//!   would hold its connection, and its slot, for ever;
//! - at most [`MAX_HEAD_BYTES`] of a request's head buffered (431 beyond);
//! - a cap on the connections held at once: when it is reached the server
//!   stops accepting, so new connections wait in the kernel's listen queue
//!   ([`LISTEN_BACKLOG`]) until a stalled one is cut, instead of being
//!   accepted and failed.
//!
//! Failed accepts pause and are logged at most once a minute (`accept.rs`).
//! Only HTTP/1.1 is spoken: X, probes, Prometheus and the CRM's downloads use
//! it, and hyper's HTTP/2 server has no header read timeout.

mod accept;
mod open_files;

pub use open_files::{raise_open_files_limit, OpenFiles};

use std::io;
use std::net::SocketAddr;
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeout, Timeout};

use crate::config::HttpSettings;
use accept::AcceptTrouble;

/// The listen queue asked of the kernel (which caps it at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4): where new
/// connections wait while a server holds `http.max_connections`. std's
/// `TcpListener::bind` asks for 128, fewer than a burst of stalled clients.
pub const LISTEN_BACKLOG: i32 = 4096;

/// The most of a request's head (request line and headers) a connection
/// holds while it arrives; a longer head gets 431. hyper's default (about 400
/// KB) let 1,000 connections sending headers that never end grow the process
/// by 300 MB. X, probes, Prometheus and the CRM send heads of a few hundred
/// bytes. It is also hyper's largest read and write buffer per connection.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long requests in flight at shutdown may finish before their
/// connections are cut; idle connections close at once.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Binds `addr` with a [`LISTEN_BACKLOG`]-long listen queue, non-blocking,
/// ready for [`serve`]. Bound early (at startup), so a port in use fails
/// there.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix: a restarted bridge binds again at once, while the
    // old process's connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves `app` on `listener` within `limits` until `shutdown`; then stops
/// accepting, closes idle connections and gives requests in flight
/// [`SHUTDOWN_GRACE`]. `server` names it in logs and metrics (`webhook`,
/// `ops`).
pub async fn serve(
    server: &'static str,
    listener: std::net::TcpListener,
    app: Router,
    limits: &HttpSettings,
    shutdown: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(server, %error, "cannot serve HTTP");
            return;
        }
    };
    let mut connections = Connections::new(server, app, limits, shutdown.clone());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut trouble = AcceptTrouble::new(server);
    loop {
        connections.reap();
        let Some(permit) = free_slot(&slots, &shutdown).await else {
            break;
        };
        match accept(&listener, &mut trouble, &shutdown).await {
            Accepted::Stream(stream) => connections.spawn(Slot::taken(server, permit), stream),
            Accepted::Retry => continue,
            Accepted::Shutdown => break,
        }
    }
    drop(listener);
    connections.drain().await;
}

/// A free slot first, `None` at shutdown: while every slot is taken, nothing
/// is accepted and the kernel queues new connections.
async fn free_slot(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        permit = slots.clone().acquire_owned() => Some(permit.expect("the semaphore is never closed")),
    }
}

/// What one accept came to.
enum Accepted {
    /// A new connection to serve.
    Stream(tokio::net::TcpStream),
    /// The accept failed and its pause is over: try again.
    Retry,
    /// Shutdown came first.
    Shutdown,
}

/// The next connection. A failed accept (out of file descriptors, most
/// often) pauses before the next try, so a busy loop does not make it worse.
async fn accept(
    listener: &tokio::net::TcpListener,
    trouble: &mut AcceptTrouble,
    shutdown: &CancellationToken,
) -> Accepted {
    tokio::select! {
        _ = shutdown.cancelled() => Accepted::Shutdown,
        accepted = listener.accept() => match accepted {
            Ok((stream, _)) => {
                trouble.cleared();
                Accepted::Stream(stream)
            }
            Err(error) => {
                let pause = trouble.failed(&error);
                tokio::select! {
                    _ = shutdown.cancelled() => Accepted::Shutdown,
                    _ = tokio::time::sleep(pause) => Accepted::Retry,
                }
            }
        },
    }
}

/// The app as hyper serves it: within the body read and request timeouts.
type AppService = TowerToHyperService<Timeout<RequestBodyTimeout<Router>>>;

/// The connections one server holds, and how each is served.
struct Connections {
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
    fn new(
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
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    /// Serves `stream` in a task of its own, holding `slot` until it ends.
    fn spawn(&mut self, slot: Slot, stream: tokio::net::TcpStream) {
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
    async fn drain(mut self) {
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
