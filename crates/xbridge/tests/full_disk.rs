//! A full disk, for real: the `xbridge` binary keeps its state file on a small
//! tmpfs that the test fills up and frees again. While the store cannot
//! write, the health endpoints say so, replies wait and a DM X delivers again
//! is not published again; once there is room, everything flows again in the
//! same process, each reply sent once and each DM delivered once.
//!
//! Mounting a tmpfs needs root, which the tests have (CI runs them as root).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use x_simulator::Customer;
use xbridge_test_support::{reply, spawn_app, BridgeProcess, Event, TestOptions, PATIENCE};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

/// A tmpfs of its own, unmounted (and its mount point removed) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("xbridge-full-disk-")
            .tempdir()
            .expect("a mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}); this test needs root"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of it with a file; returns the file, to free it later.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler is created");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Whatever fits of a last partial page.
        while let Ok(1..) = file.write(&[0u8; 1]) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a failed test that left the bridge running still unmounts.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The address in the first log line containing `needle` (`addr=…`).
fn logged_addr(bridge: &BridgeProcess, needle: &str) -> String {
    bridge
        .logs()
        .iter()
        .find(|line| line.contains(needle))
        .and_then(|line| line.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address logged with {needle:?}"))
        .to_owned()
}

/// The event id of the first log line containing `needle`.
fn logged_event_id(bridge: &BridgeProcess, needle: &str) -> Option<String> {
    bridge
        .logs()
        .iter()
        .find(|line| line.contains(needle))
        .and_then(|line| line.split("event_id=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|id| id.trim_matches('"').to_owned())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let answer = http.get(url).send().await.expect("the endpoint answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_once_freed_every_reply_and_dm_goes_through_once() {
    let tmpfs = Tmpfs::mount("2m");
    let app = spawn_app(TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    })
    .await;
    let state = tmpfs.path().join("state.redb");
    let config = app.config_toml().replace(
        &format!("path = \"{}\"", app.state_path().display()),
        &format!("path = \"{}\"", state.display()),
    ) + "\n[telemetry]\nlisten = \"127.0.0.1:0\"\n";
    let config_path = app.dir.path().join("xbridge.toml");
    std::fs::write(&config_path, config).unwrap();

    let bridge = BridgeProcess::start(binary(), &config_path, &[]);
    bridge.wait_for_log("outbound running", 1).await;
    bridge.wait_for_log("inbound connected", 1).await;
    let ops = format!("http://{}", logged_addr(&bridge, "serving /healthz"));
    let webhook = logged_addr(&bridge, "serving X's webhook");
    app.subscribe_webhook("acme", &format!("http://{webhook}/webhooks/acme"))
        .await;
    let http = reqwest::Client::new();
    let mut crm = app.crm().await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");

    // The disk fills up. redb still has free pages of its own, so customers'
    // DMs come in until a record no longer fits.
    let filler = tmpfs.fill();
    let mut dms = Vec::new();
    while get(&http, &format!("{ops}/healthz")).await.1["store"] == true {
        assert!(dms.len() < 5000, "the store never ran out of room");
        let before = app.simulator.deliveries().len();
        let dm = app
            .simulator
            .customer_dm(&user, &jane, &format!("dm {}", dms.len()), None);
        dms.push(dm.id);
        tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 1))
            .await
            .expect("the DM was delivered");
    }

    // The health endpoints say so.
    let (status, health) = get(&http, &format!("{ops}/healthz")).await;
    assert_eq!((status, &health["store"]), (200, &Value::Bool(false)));
    let (status, ready) = get(&http, &format!("{ops}/readyz")).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["store"], false, "{ready}");
    let metrics = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("xbridge_state_store_writable 0"),
        "{metrics}"
    );
    assert!(metrics.contains("xbridge_state_store_write_failures_total"));

    // The DM whose record did not fit was published and answered 200; X
    // delivers it three more times: each answered 200, none published again.
    let unrecorded = logged_event_id(&bridge, "event published but not recorded")
        .expect("the failing write was a published DM's record");
    let before = app.simulator.deliveries().len();
    for _ in 0..3 {
        assert!(app.simulator.deliver_again(&unrecorded) >= 1);
    }
    let deliveries = tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 3))
        .await
        .expect("the repeats were delivered");
    for delivery in &deliveries[before..] {
        assert_eq!(delivery.status, Some(200), "{delivery:?}");
    }

    // Replies wait: nothing goes out that could not be recorded.
    let crm_replies = [
        ("f-1", "944480690", "first"),
        ("f-2", "944480690", "second"),
        ("f-3", "5550001", "other conversation"),
    ];
    for (id, to, text) in crm_replies {
        crm.publish_reply("acme", &reply(id, to, text)).await;
    }
    bridge
        .wait_for_log("the state store cannot write; replies wait for it", 1)
        .await;
    assert!(app.simulator.sent_dms_for(&user).is_empty());

    // Room again: the store opens its file again by itself.
    std::fs::remove_file(filler).unwrap();
    bridge
        .wait_for_log("the state file is open again after an I/O error", 1)
        .await;

    // Every DM once, every reply once, and the CRM told of each.
    let mut received: HashMap<String, usize> = HashMap::new();
    let mut sent = Vec::new();
    while received.values().sum::<usize>() < dms.len() || sent.len() < crm_replies.len() {
        let Event { body, .. } = crm.next_event().await;
        match body["type"].as_str() {
            Some("message.received") => {
                *received
                    .entry(body["event_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            Some("message.sent") => sent.push(body["message_id"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected event {body}"),
        }
    }
    for dm in &dms {
        assert_eq!(received.get(dm), Some(&1), "DM {dm} delivered once");
    }
    sent.sort();
    assert_eq!(sent, ["f-1", "f-2", "f-3"]);
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&user)
        .into_iter()
        .map(|dm| dm.text)
        .collect();
    assert_eq!(texts.len(), 3, "each reply sent once: {texts:?}");
    let order = |text: &str| texts.iter().position(|t| t == text).unwrap();
    assert!(order("first") < order("second"), "{texts:?}");

    // The record kept in memory is written: X's next repeat publishes nothing,
    // and the next thing the CRM hears of is a fresh DM.
    let before = app.simulator.deliveries().len();
    assert!(app.simulator.deliver_again(&unrecorded) >= 1);
    let deliveries = tokio::time::timeout(PATIENCE, app.simulator.wait_for_deliveries(before + 1))
        .await
        .expect("the repeat was delivered");
    assert_eq!(deliveries[before].status, Some(200));
    let marker = app.simulator.customer_dm(&user, &jane, "marker", None);
    let next = crm.next_event().await;
    assert_eq!(next.body["event_id"], marker.id.as_str(), "{}", next.body);

    let (status, health) = get(&http, &format!("{ops}/healthz")).await;
    assert_eq!((status, &health["store"]), (200, &Value::Bool(true)));
    assert_eq!(get(&http, &format!("{ops}/readyz")).await.0, 200);
    // Same process, same RabbitMQ session throughout.
    assert_eq!(bridge.count_logs("outbound running"), 1);

    let status = bridge.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    app.cleanup().await;
    drop(tmpfs);
}

/// A bridge restarted while its disk is full (a deploy, a crash, a node
/// drain) used to exit at once, on every start: opening the existing state
/// file commits, and the commit found no room ("No space left on device").
/// A running bridge goes on through a full disk and heals; a restarted one
/// must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_started_on_a_full_disk_runs_and_heals_once_freed() {
    let tmpfs = Tmpfs::mount("4m");
    let app = spawn_app(TestOptions::default()).await;
    let state = tmpfs.path().join("state.redb");
    let config = app.config_toml().replace(
        &format!("path = \"{}\"", app.state_path().display()),
        &format!("path = \"{}\"", state.display()),
    ) + "\n[telemetry]\nlisten = \"127.0.0.1:0\"\n";
    let config_path = app.dir.path().join("xbridge.toml");
    std::fs::write(&config_path, config).unwrap();
    let user = app.user_id("acme");

    // A first run leaves a state file with a record in it.
    let bridge = BridgeProcess::start(binary(), &config_path, &[]);
    bridge.wait_for_log("outbound running", 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply("r-1", "944480690", "before"))
        .await;
    assert_eq!(crm.next_event().await.body["message_id"], "r-1");
    assert!(bridge.terminate().await.success());
    // The file as a fresh one holding that record: the pages a longer history
    // leaves free in it would take the next commit even on a full disk (redb
    // reuses them), and whether there are any depends on that history.
    let record = {
        let store = xbridge_store::EmbeddedStore::open(&state).expect("the state file");
        let record = xbridge_store::StateStore::sent(&store, "acme", "r-1")
            .await
            .expect("readable")
            .expect("r-1 recorded");
        drop(store);
        record
    };
    std::fs::remove_file(&state).unwrap();
    {
        let store = xbridge_store::EmbeddedStore::open(&state).expect("a new state file");
        xbridge_store::StateStore::record_sent(&store, "acme", "r-1", &record)
            .await
            .expect("recorded");
        drop(store);
    }
    let filler = tmpfs.fill();
    let bridge = BridgeProcess::start(binary(), &config_path, &[]);
    bridge.wait_for_log("outbound running", 1).await;
    let ops = format!("http://{}", logged_addr(&bridge, "serving /healthz"));
    let http = reqwest::Client::new();
    let (status, health) = get(&http, &format!("{ops}/healthz")).await;
    assert_eq!((status, &health["store"]), (200, &Value::Bool(false)));
    assert_eq!(get(&http, &format!("{ops}/readyz")).await.0, 503);

    // A copy of the sent reply and a new one wait for the store.
    crm.publish_reply("acme", &reply("r-1", "944480690", "before"))
        .await;
    crm.publish_reply("acme", &reply("r-2", "944480690", "after"))
        .await;
    bridge
        .wait_for_log("the state store cannot write; replies wait for it", 1)
        .await;

    std::fs::remove_file(filler).unwrap();
    // The copy of r-1 is known as sent and reported: nothing is told of it.
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "r-2", "{}", event.body);
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&user)
        .into_iter()
        .map(|dm| dm.text)
        .collect();
    assert_eq!(texts, ["before", "after"], "each reply sent once");
    let (status, health) = get(&http, &format!("{ops}/healthz")).await;
    assert_eq!((status, &health["store"]), (200, &Value::Bool(true)));

    assert!(bridge.terminate().await.success());
    app.cleanup().await;
    drop(tmpfs);
}
