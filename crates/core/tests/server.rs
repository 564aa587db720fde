//! The HTTP serving both servers use (`xbridge_core::server`), against raw
//! TCP clients that stall where attackers and broken clients stall: before
//! the headers end, inside a body, after a response. Each test asserts what
//! happens to the stalled client and that others are still served; waits are
//! bounded by `PATIENCE`, none asserts how long anything took.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xbridge_core::config::HttpSettings;
use xbridge_core::server;

const PATIENCE: Duration = Duration::from_secs(30);

/// Half a request: the headers never end.
const HALF_A_REQUEST: &[u8] = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Le";

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route("/slow", get(std::future::pending::<&'static str>))
        .route("/stream", get(|| async { Body::from_stream(pieces()) }))
        .route("/held", get(|| async { Body::from_stream(held()) }))
        .route("/big", get(|| async { Body::from_stream(big()) }))
        .route("/medium", get(|| async { vec![b'm'; MEDIUM] }))
}

/// The length of `/medium`: several socket buffers' worth.
const MEDIUM: usize = 16 * 1024 * 1024;

/// 64 MiB in 64 KiB pieces: more than any socket buffers hold.
fn big() -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    futures::stream::iter((0..1024).map(move |_| Ok(piece.clone())))
}

/// Released by [`release_held`].
static HELD: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// One piece, then the rest once the test releases it.
fn held() -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold(0u8, |n| async move {
        match n {
            0 => Some((Ok(Bytes::from_static(b"first piece")), 1)),
            1 => {
                HELD.notified().await;
                Some((Ok(Bytes::from_static(b"last piece")), 2))
            }
            _ => None,
        }
    })
}

/// Five pieces 100 ms apart: longer than the tests' request timeout.
fn pieces() -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold(0u8, |n| async move {
        if n == 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Bytes::from(vec![b'a' + n; 10])), n + 1))
    })
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    fn start(limits: HttpSettings) -> Server {
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { server::serve("test", listener, app(), &limits, shutdown).await }
        });
        Server {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server stops")
            .unwrap();
    }
}

fn limits() -> HttpSettings {
    HttpSettings {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
        max_connections: 64,
    }
}

async fn stalled(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .expect("the kernel takes the connection")
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A whole request on a connection of its own, and the whole answer.
async fn request(addr: SocketAddr, request: &str) -> String {
    let mut stream = stalled(addr, request.as_bytes()).await;
    until_closed(&mut stream).await
}

async fn get_ok(addr: SocketAddr) -> String {
    request(
        addr,
        "GET /ok HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn clients_stalled_in_their_headers_are_cut_and_the_next_is_served_beyond_the_cap() {
    let server = Server::start(HttpSettings {
        max_connections: 2,
        ..limits()
    });
    // Twice the cap: the first two hold every slot, the others wait in the
    // kernel's listen queue, and so does the honest client after them.
    let mut stalled_clients = Vec::new();
    for _ in 0..4 {
        stalled_clients.push(stalled(server.addr, HALF_A_REQUEST).await);
    }
    let answer = get_ok(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    for mut client in stalled_clients {
        let answer = until_closed(&mut client).await;
        assert!(!answer.contains(" 200 "), "{answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = Server::start(limits());
    let mut client = stalled(server.addr, b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n").await;
    // One response, then nothing more is asked: the server hangs up.
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_refused_and_its_connection_closed() {
    let server = Server::start(HttpSettings {
        request_timeout: PATIENCE * 2,
        ..limits()
    });
    let mut client = stalled(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A whole body is read as before.
    let answer = request(
        server.addr,
        "POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with('5'), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_without_an_answer_in_time_gets_408_but_a_stream_under_way_is_not_cut() {
    let server = Server::start(limits());
    let answer = request(
        server.addr,
        "GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Its headers come at once; the body takes longer than the request timeout.
    let answer = request(
        server.addr,
        "GET /stream HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Chunked: each piece is on a line of its own.
    for n in 0..5u8 {
        let piece = String::from_utf8(vec![b'a' + n; 10]).unwrap();
        assert!(answer.contains(&format!("\r\n{piece}\r\n")), "{answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_response_in_flight_finish_and_hangs_up_on_stalled_clients() {
    let server = Server::start(HttpSettings {
        // Only the shutdown can cut the stalled client in this test.
        header_read_timeout: PATIENCE * 2,
        ..limits()
    });
    let mut stalled_client = stalled(server.addr, HALF_A_REQUEST).await;
    let mut streaming = stalled(
        server.addr,
        b"GET /held HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Its response has begun when the server is told to stop.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first piece") {
        let mut buffer = [0u8; 256];
        let n = tokio::time::timeout(PATIENCE, streaming.read(&mut buffer))
            .await
            .expect("the response begins")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    server.shutdown.cancel();
    let answer = until_closed(&mut stalled_client).await;
    assert!(answer.is_empty(), "{answer}");
    // Still within the grace the response in flight has: it ends whole.
    HELD.notify_one();
    let rest = until_closed(&mut streaming).await;
    assert!(rest.contains("last piece"), "{rest}");
    server.stop().await;
}

/// A client that asks for something and then never reads the answer (a hung
/// consumer, or an attacker pipelining requests): the server's writes block
/// once the socket buffers are full. Such a connection must not keep its slot
/// for ever, or a few of them hold every slot of the server.
#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_and_others_are_served() {
    let server = Server::start(HttpSettings {
        max_connections: 1,
        ..limits()
    });
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window, so the server's writes block sooner.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = tokio::time::timeout(PATIENCE, socket.connect(server.addr))
        .await
        .expect("the kernel takes the connection")
        .unwrap();
    reader
        .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // It holds the only slot and reads nothing; the next client is served all
    // the same, once the stuck one is cut.
    let answer = get_ok(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    // The stuck client got a cut answer, not 64 MiB.
    let mut received = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, reader.read(&mut buffer))
            .await
            .expect("the server closed the connection")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < 64 * 1024 * 1024, "{received}");
    server.stop().await;
}

/// The write timeout is about a client reading nothing, not a slow one: a
/// client that reads a little at a time, for longer than the timeout in all,
/// gets the whole response.
#[tokio::test]
async fn a_slow_reader_that_keeps_reading_gets_the_whole_response() {
    let server = Server::start(limits());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut reader = socket.connect(server.addr).await.unwrap();
    reader
        .write_all(b"GET /medium HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = 0usize;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(PATIENCE, reader.read(&mut buffer))
            .await
            .expect("the response goes on")
            .unwrap();
        if n == 0 {
            break;
        }
        received += n;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(received > MEDIUM, "{received}: cut before its end");
    server.stop().await;
}

/// Headers are held in memory until they end: hyper's default lets each
/// connection grow a 400 KB buffer, and 1,000 connections sending 380 KB of
/// headers that never end grew the bridge by 300 MB. A head past
/// `server::MAX_HEAD_BYTES` is refused at once.
#[tokio::test]
async fn headers_past_the_head_limit_are_refused_at_once() {
    let server = Server::start(HttpSettings {
        // Only the head limit can end this request in time.
        header_read_timeout: PATIENCE * 2,
        ..limits()
    });
    let mut head = b"GET /ok HTTP/1.1\r\nHost: test\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', server::MAX_HEAD_BYTES + 1));
    let mut client = stalled(server.addr, &head).await;
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A head of ordinary size is served.
    let mut head = b"GET /ok HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 4 * 1024));
    head.extend(b"\r\n\r\n");
    let answer = request(server.addr, std::str::from_utf8(&head).unwrap()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}
