//! Clients that open connections to the bridge's HTTP ports and stall half
//! way through a request (slowloris), against a real `xbridge run` started
//! the way systemd and Docker start it: with a soft open-files limit of 1024.
//! Without timeouts and a connection cap, 1,100 stalled connections on a port
//! are held forever, and near that limit every later accept fails. Each test
//! stalls a server and shows the stalled clients cut and everyone else
//! served. The servers' timeouts are short and their cap small here, so the
//! stalled connections are cut in a few rounds; nothing asserts how long
//! that took.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use x_simulator::Customer;
use xbridge_test_support::{spawn_app, BridgeProcess, Crm, TestApp, TestOptions, PATIENCE};

/// More than the 1024 open files a process gets by default.
const STALLED: usize = 1_100;

/// What systemd and Docker give a process unless told otherwise.
const DEFAULT_SOFT_OPEN_FILES: u64 = 1024;

/// Half a webhook POST: the headers never end.
const HALF_A_REQUEST: &[u8] =
    b"POST /webhooks/acme HTTP/1.1\r\nHost: xbridge\r\nContent-Type: application/json\r\nContent-Le";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

/// The test's configuration with both servers on free ports, short timeouts
/// and a cap well below [`STALLED`].
fn write_config(app: &TestApp) -> PathBuf {
    let toml = format!(
        "{}\n[telemetry]\nlisten = \"127.0.0.1:0\"\n\n[http]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nmax_connections = 200\n",
        app.config_toml()
    );
    let path = app.dir.path().join("xbridge.toml");
    std::fs::write(&path, toml).expect("config written");
    path
}

/// Starts the bridge with the default soft open-files limit and returns it
/// with where its webhook and operations servers listen.
async fn start(app: &TestApp) -> (BridgeProcess, SocketAddr, SocketAddr) {
    let bridge = BridgeProcess::start_with_open_files(
        binary(),
        &write_config(app),
        &[],
        DEFAULT_SOFT_OPEN_FILES,
    );
    bridge.wait_for_log("outbound running", 1).await;
    bridge.wait_for_log("inbound connected", 1).await;
    let webhook = logged_addr(&bridge, "serving X's webhook");
    let ops = logged_addr(&bridge, "serving /healthz");
    (bridge, webhook, ops)
}

/// The `addr` field of the log line containing `needle`.
fn logged_addr(bridge: &BridgeProcess, needle: &str) -> SocketAddr {
    let logs = bridge.logs();
    let line = logs
        .iter()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?}"));
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// This test process holds every stalled connection's socket too (the two
/// tests, three ports' worth, may run at once): raise its own soft limit to
/// the hard one, as the bridge does.
fn room_for_stalled_connections() {
    let needed = 3 * STALLED + 1_000;
    let limit = xbridge_core::server::raise_open_files_limit().expect("RLIMIT_NOFILE");
    assert!(
        limit.soft as usize >= needed,
        "these tests need an open-files hard limit of at least {needed}; it is {}",
        limit.hard
    );
}

/// Opens [`STALLED`] connections to `addr` at once, each sending half a
/// request; every one must be taken by the kernel, whether the bridge has
/// accepted it yet or it waits in the listen queue.
async fn stall(addr: SocketAddr) -> Vec<TcpStream> {
    let mut connecting = JoinSet::new();
    for _ in 0..STALLED {
        connecting.spawn(async move {
            let mut stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            stream.write_all(HALF_A_REQUEST).await.ok()?;
            Some(stream)
        });
    }
    let mut stalled = Vec::with_capacity(STALLED);
    while let Some(stream) = connecting.join_next().await {
        stalled.extend(stream.expect("connect task"));
    }
    assert_eq!(
        stalled.len(),
        STALLED,
        "every stalled connection was taken (accepted or queued by the kernel)"
    );
    stalled
}

/// Waits until the bridge has closed every one of `stalled`.
async fn all_cut(stalled: Vec<TcpStream>) {
    let mut reading = JoinSet::new();
    for mut stream in stalled {
        reading.spawn(async move {
            let mut answer = Vec::new();
            // Some get a 408 first; all end.
            let _ = stream.read_to_end(&mut answer).await;
        });
    }
    tokio::time::timeout(PATIENCE, async {
        while reading.join_next().await.is_some() {}
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} stalled connections were still open after {PATIENCE:?}",
            reading.len()
        )
    });
}

/// The status of `GET <path>` on the operations server.
async fn probe(ops: SocketAddr, path: &str) -> reqwest::StatusCode {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client")
        .get(format!("http://{ops}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} was not answered within {PATIENCE:?}: {e}"))
        .status()
}

/// Waits until `server` holds no connection (`xbridge_http_connections`).
/// The bridge gives no event when it closes an idle keep-alive connection,
/// so this is a bounded look at `/metrics` every 50 ms.
async fn no_open_connections(ops: SocketAddr, server: &str) {
    let series = format!("xbridge_http_connections{{server=\"{server}\"}} ");
    let http = reqwest::Client::new();
    let wait = async {
        loop {
            let metrics = http
                .get(format!("http://{ops}/metrics"))
                .send()
                .await
                .expect("/metrics answers")
                .text()
                .await
                .expect("metrics text");
            let open = metrics
                .lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .and_then(|value| value.trim().parse::<f64>().ok());
            if open == Some(0.0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("the {server} server kept an idle connection open"));
}

async fn next_received(crm: &mut Crm) -> serde_json::Value {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == "message.received" {
            return event.body;
        }
    }
}

/// Waits until X's delivery of `event_id` was answered 200 (X retries
/// deliveries that time out or fail).
async fn answered_200(app: &TestApp, event_id: &str) {
    let wait = async {
        let mut seen = 0;
        loop {
            let deliveries = app.simulator.wait_for_deliveries(seen + 1).await;
            if deliveries
                .iter()
                .any(|d| d.event_id.as_deref() == Some(event_id) && d.status == Some(200))
            {
                return;
            }
            seen = deliveries.len();
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("X's delivery of {event_id} was not answered 200"));
}

fn webhook_options() -> TestOptions {
    TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_dm_is_answered_and_published_and_healthz_answers_while_1100_clients_stall_on_each_port(
) {
    room_for_stalled_connections();
    let app = spawn_app(webhook_options()).await;
    let (bridge, webhook, ops) = start(&app).await;
    app.subscribe_webhook("acme", &format!("http://{webhook}/webhooks/acme"))
        .await;
    let mut crm = app.crm().await;
    // X's client keeps the CRC check's connection for its next POST; the
    // DM below must come on a new one, queued behind the stalled clients.
    no_open_connections(ops, "webhook").await;

    let stalled_webhook = stall(webhook).await;
    let stalled_ops = stall(ops).await;
    // X delivers a customer's DM, signed, to the stalled port.
    let dm = app.simulator.customer_dm(
        &app.user_id("acme"),
        &Customer::generate("jane_doe"),
        "Is anyone there?",
        None,
    );
    let event = next_received(&mut crm).await;
    assert_eq!(event["event_id"], dm.id.as_str());
    assert_eq!(event["text"], "Is anyone there?");
    answered_200(&app, &dm.id).await;
    // The liveness probe gets through the stalled operations port.
    assert_eq!(probe(ops, "/healthz").await, 200);
    all_cut(stalled_webhook).await;
    all_cut(stalled_ops).await;

    bridge.terminate().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_are_answered_and_stalled_clients_cut_on_the_operations_port() {
    room_for_stalled_connections();
    let app = spawn_app(webhook_options()).await;
    let (bridge, _, ops) = start(&app).await;

    let stalled = stall(ops).await;
    assert_eq!(probe(ops, "/healthz").await, 200);
    assert_eq!(probe(ops, "/readyz").await, 200);
    all_cut(stalled).await;

    bridge.terminate().await;
    app.cleanup().await;
}
