//! Exactly once across owners (issue 15): a replica that lost its broker
//! connection but lives on, a reply still in its hands, must not send that
//! reply once another consumer took the channel over. Reply queues are
//! single-active-consumer queues, so the broker picks the new owner; the
//! state store's claim of the channel tells the old one (see
//! `xbridge_outbound::fence`).
//!
//! The race is made wide and certain with a slow X: a reply with an
//! attachment spends a few seconds uploading it, before its send intent is
//! written; the take-over happens in that window. Without the fence, the old
//! owner finishes its upload and sends, and the new owner, which found no
//! intent, sends too.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

use x_simulator::Fault;
use xbridge_store::{PostgresStore, StateStore};
use xbridge_test_support::{postgres_url, spawn_app, BridgeProcess, TestApp, TestOptions};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

const RUNNING: &str = "outbound running";
/// The claim of a consumer at its first delivery.
const CLAIMED: &str = "active consumer of the channel's replies";
/// The fenced lane's one warning.
const FENCED: &str = "another consumer took this channel's replies over";
const SENT: &str = "reply sent";
const ALREADY_SENT: &str = "reply was already sent";

/// Every answer of X this late: the attachment's upload (INIT, APPEND,
/// FINALIZE) takes three of them before the DM's intent is written.
const LATENCY_MS: u64 = 3000;

/// A reply with one inline attachment, to the account's usual recipient.
fn reply_with_attachment(message_id: &str) -> Value {
    let png = b"not really a png, but X's simulator takes it".repeat(20);
    json!({
        "message_id": message_id,
        "recipient_id": "944480690",
        "text": "here is your label",
        "attachments": [{
            "data": base64::engine::general_purpose::STANDARD.encode(png),
            "mime_type": "image/png",
        }],
    })
}

async fn app() -> TestApp {
    spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await
}

/// Waits until either process logged `needle`: the one that did.
async fn first_to_log<'a>(
    a: &'a BridgeProcess,
    b: &'a BridgeProcess,
    needle: &str,
) -> (&'a BridgeProcess, &'a BridgeProcess) {
    tokio::select! {
        () = a.wait_for_log(needle, 1) => (a, b),
        () = b.wait_for_log(needle, 1) => (b, a),
    }
}

/// The unit-level race through the real reply path: the bridge (owner A)
/// took a reply and is uploading its attachment when owner B claims the
/// channel (here the test, on the same store). A's intent is refused, so A
/// sends nothing and leaves the reply unsettled; its consumer winds down,
/// and the reply, taken again under a new claim, goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_channel_was_claimed_since_is_not_sent_by_the_old_owner() {
    let app = app().await;
    let user = app.user_id("acme");
    let config = app.write_config();
    let bridge = BridgeProcess::start(binary(), &config, &[]);
    bridge.wait_for_log(RUNNING, 1).await;
    app.simulator
        .set_fault(&user, Fault::Latency { millis: LATENCY_MS });

    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply_with_attachment("fenced-1"))
        .await;
    bridge.wait_for_log(CLAIMED, 1).await;
    // The upload's first step was answered: the DM's intent is not written yet.
    app.wait_for_requests("acme", 1).await;

    let other_owner = PostgresStore::connect(&postgres_url(), Some(&app.postgres_schema()))
        .await
        .expect("the test reaches the store");
    other_owner
        .claim_channel("acme")
        .await
        .expect("owner B claims the channel");

    // A finishes its upload: it stands down (or, unfenced, sends).
    tokio::select! {
        () = bridge.wait_for_log(FENCED, 1) => {}
        () = bridge.wait_for_log(SENT, 1) => {}
    }
    assert!(
        app.simulator.sent_dms_for(&user).is_empty(),
        "the fenced owner sent nothing"
    );
    let warning = bridge
        .logs()
        .into_iter()
        .find(|line| line.contains(FENCED))
        .expect("logged");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("acme") && warning.contains("fenced-1"),
        "{warning}"
    );

    // The delivery was left unsettled: the consumer that comes next claims
    // the channel again and sends the reply, once.
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "fenced-1");
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1);
    assert_eq!(bridge.count_logs(FENCED), 1, "said once");
    assert!(
        bridge.count_logs(CLAIMED) >= 2,
        "the next consumer claimed anew"
    );

    bridge.terminate().await;
    app.cleanup().await;
}

/// Issue 15's node-loss test on the shared broker: two replicas on one
/// PostgreSQL store; the outbound connection of the one serving the channel
/// (its share) is closed by the broker while a reply is in its hands (X is
/// slow). The replica lives on and the channel stays its share, so the other
/// replica takes nothing over: the lane finishes the send it started, the
/// session reconnects, and the reply the broker hands back is known as sent.
/// It reaches X once, and the other replica neither claims nor sends. (Before
/// fair sharing, the other replica was a standby the broker made active at
/// once, and the old owner's claim was fenced: `fenced_sends.rs` and the test
/// above keep the fence tested.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_connection_the_broker_closed_sends_what_it_held_once() {
    let app = app().await;
    let user = app.user_id("acme");
    // A configuration file each, to tell the processes apart by their
    // command lines.
    let config = app.write_config();
    let second_config = config.with_file_name("second.toml");
    std::fs::copy(&config, &second_config).expect("config copied");
    let first = BridgeProcess::start(binary(), &config, &[]);
    first.wait_for_log(RUNNING, 1).await;
    let second = BridgeProcess::start(binary(), &second_config, &[]);
    second.wait_for_log(RUNNING, 1).await;
    app.simulator
        .set_fault(&user, Fault::Latency { millis: LATENCY_MS });

    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply_with_attachment("failover-1"))
        .await;
    let (active, other) = first_to_log(&first, &second, CLAIMED).await;
    let active_config = if std::ptr::eq(active, &first) {
        &config
    } else {
        &second_config
    };
    // The owner is uploading the attachment: no intent yet.
    app.wait_for_requests("acme", 1).await;
    close_outbound_connection(pid_of(active_config)).await;

    // Its new consumer claims the channel once the lane finished.
    active.wait_for_log(CLAIMED, 2).await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "failover-1");
    active.wait_for_log(ALREADY_SENT, 1).await;
    let dms = app.simulator.sent_dms_for(&user);
    assert_eq!(dms.len(), 1, "exactly once: {dms:?}");
    assert_eq!(active.count_logs(SENT), 1, "sent once, by its owner");
    assert_eq!(
        other.count_logs(CLAIMED),
        0,
        "the other replica took nothing"
    );
    assert_eq!(other.count_logs(SENT), 0);

    first.terminate().await;
    second.terminate().await;
    app.cleanup().await;
}

/// The process running `xbridge run --config <config>`.
fn pid_of(config: &Path) -> u32 {
    let wanted = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == wanted))
        })
        .unwrap_or_else(|| panic!("no process runs with {}", config.display()))
}

/// Closes the outbound AMQP connection of process `pid` from the broker's
/// side (`rabbitmqctl close_connection`), as a node loss or a missed
/// heartbeat does: the connection named `xbridge outbound` whose client port
/// is one of the process's. The broker and every other connection stay.
async fn close_outbound_connection(pid: u32) {
    let ports = broker_ports_of(pid);
    assert!(!ports.is_empty(), "process {pid} has no broker connection");
    let listed = rabbitmqctl(&[
        "list_connections",
        "--no-table-headers",
        "pid",
        "peer_port",
        "client_properties",
    ])
    .await;
    let target = listed
        .lines()
        .filter(|line| line.contains("\"xbridge outbound\""))
        .find_map(|line| {
            let mut columns = line.split('\t');
            let connection = columns.next()?;
            let port: u16 = columns.next()?.trim().parse().ok()?;
            ports.contains(&port).then(|| connection.to_owned())
        })
        .unwrap_or_else(|| panic!("no outbound connection of process {pid} in:\n{listed}"));
    rabbitmqctl(&[
        "close_connection",
        &target,
        "test: the broker lost this replica",
    ])
    .await;
}

/// The local ports of process `pid`'s established TCP connections to the
/// broker's port 5672, from `/proc` (its sockets' inodes, matched in
/// `/proc/net/tcp`).
fn broker_ports_of(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    // `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`, addresses
    // as hex `ADDR:PORT`; state 01 is ESTABLISHED.
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |address: &str| u16::from_str_radix(address.rsplit_once(':')?.1, 16).ok();
            let established = fields.get(3) == Some(&"01");
            let to_broker = port(fields.get(2)?) == Some(5672);
            let ours = inodes
                .iter()
                .any(|inode| Some(&inode.as_str()) == fields.get(9));
            (established && to_broker && ours).then(|| port(fields[1]))?
        })
        .collect()
}

async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("rabbitmqctl")
            .arg("--quiet")
            .args(&args)
            .output()
            .expect("rabbitmqctl runs")
    })
    .await
    .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
