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
mod connection;
mod open_files;

pub use connection::{MAX_HEAD_BYTES, SHUTDOWN_GRACE};
pub use open_files::{raise_open_files_limit, OpenFiles};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;
use accept::AcceptTrouble;
use connection::Connections;

/// The listen queue asked of the kernel (which caps it at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4): where new
/// connections wait while a server holds `http.max_connections`. std's
/// `TcpListener::bind` asks for 128, fewer than a burst of stalled clients.
pub const LISTEN_BACKLOG: i32 = 4096;

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
            Accepted::Stream(stream) => connections.spawn(permit, stream),
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
