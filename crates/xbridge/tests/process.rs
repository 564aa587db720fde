//! The bridge as an operator runs it: a real `xbridge` process that is
//! killed, stopped by a signal, or run as the README's demo.

use std::path::Path;

use serde_json::json;

use x_simulator::Fault;
use xbridge_test_support::{amqp_url, spawn_app, BridgeProcess, TestOptions, PATIENCE};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

const RUNNING: &str = "outbound running";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_after_sending_and_before_acking_sends_no_second_dm() {
    let app = spawn_app(TestOptions::default()).await;
    let config = app.write_config();
    let user = app.user_id("acme");

    // The first bridge freezes right after the DM is sent and recorded, before
    // it tells the CRM and acks; then it is killed.
    let first = BridgeProcess::start(
        binary(),
        &config,
        &[("FAILPOINTS", "after_send_recorded=return")],
    );
    first.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "k-1", "recipient_id": "944480690", "text": "exactly once"}),
    )
    .await;
    first.wait_for_log("failpoint reached", 1).await;
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1);
    first.kill().await;

    // RabbitMQ redelivers the unacked reply to the restarted bridge.
    let second = BridgeProcess::start(binary(), &config, &[]);
    second.wait_for_log(RUNNING, 1).await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "k-2", "recipient_id": "944480690", "text": "next"}),
    )
    .await;

    let events = crm.events(2).await;
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e.body["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["k-1", "k-2"], "one message.sent each, in order");
    assert_eq!(
        events[0].body["dm_event_id"],
        app.simulator.sent_dms_for(&user)[0].dm_event_id.as_str()
    );
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&user)
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["exactly once", "next"]);
    assert!(second.count_logs("reply was already sent") >= 1);

    second.terminate().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_send_finish_and_exits_cleanly() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.user_id("acme");
    // X is slow: the DM is accepted at once but the answer takes a while.
    app.simulator
        .set_fault(&user, Fault::Latency { millis: 1500 });
    let bridge = BridgeProcess::start(binary(), &app.write_config(), &[]);
    bridge.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "g-1", "recipient_id": "944480690", "text": "in flight"}),
    )
    .await;
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_dms(&user, 1))
        .await
        .expect("the DM reached X");

    let status = bridge.terminate().await;
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "g-1");
    assert_eq!(event.body["type"], "message.sent");
    // Acked before exit: nothing is left for the next start to redeliver.
    assert_eq!(crm.queue_depth(&app.names.outgoing_queue("acme")).await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_logs_no_error() {
    // Every kind of AMQP channel the bridge opens: the outbound publisher and
    // consumers, the inbound publisher and a poll lease.
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        inbound: "listen = \"127.0.0.1:0\"\npoll_interval = \"50ms\"\n".into(),
        inbound_mode: Some("both".into()),
        ..TestOptions::default()
    })
    .await;
    let bridge = BridgeProcess::start(binary(), &app.write_config(), &[]);
    bridge.wait_for_log(RUNNING, 1).await;
    bridge.wait_for_log("inbound connected", 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "s-1", "recipient_id": "944480690", "text": "before the stop"}),
    )
    .await;
    assert_eq!(crm.next_event().await.body["message_id"], "s-1");

    let status = bridge.terminate_keeping_logs().await;
    assert!(
        status.0.success(),
        "clean exit after SIGTERM: {:?}",
        status.0
    );
    let errors: Vec<&String> = status.1.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "a clean stop logged errors: {errors:#?}");
    assert!(
        status.1.iter().any(|l| l.contains("outbound stopped")),
        "{:#?}",
        status.1
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_names_the_field_and_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[channels]]\nname = \"Bad Name\"\nconsumer_key = \"ck-visible?\"\nconsumer_secret = \"very-secret-value\"\naccess_token = \"at\"\naccess_token_secret = { env = \"XBRIDGE_TEST_SURELY_UNSET\" }\nbearer_token = \"bt\"\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("channels[0].name"), "{stderr}");
    assert!(
        stderr.contains(
            "access_token_secret: environment variable XBRIDGE_TEST_SURELY_UNSET is not set"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("very-secret-value"), "{stderr}");
}

/// Forwards every connection to `port` to the simulator: X "comes back" on a
/// port that refused connections until now.
async fn forward_to_simulator(port: u16, simulator: std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(simulator).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_to_x_is_retried_without_looking_for_an_earlier_send() {
    let app = spawn_app(TestOptions {
        retry: "immediate_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\ndelays = [\"200ms\"]\nmax_attempts = 100\n".into(),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    // X's address is a port nothing listens on, for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let simulator = app.simulator.base_url();
    let config = app.dir.path().join("refused.toml");
    std::fs::write(
        &config,
        app.config_toml()
            .replace(simulator.as_str(), &format!("http://127.0.0.1:{port}/")),
    )
    .unwrap();
    let bridge = BridgeProcess::start(binary(), &config, &[]);
    bridge.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "r-1", "recipient_id": "944480690", "text": "after the outage"}),
    )
    .await;
    // Two refused tries: a maybe-sent first one would make the second look
    // for it on X first.
    bridge.wait_for_log("send failed", 2).await;

    let addr = (
        simulator.host_str().unwrap().to_owned(),
        simulator.port().unwrap(),
    );
    let addr = tokio::net::lookup_host(addr).await.unwrap().next().unwrap();
    forward_to_simulator(port, addr).await;

    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "r-1");
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1);
    let paths: Vec<String> = app
        .simulator
        .requests_for(&user)
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        !paths.iter().any(|p| p.contains("/2/dm_events")),
        "no DM-events lookup (billed) for a request that never reached X: {paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| p.starts_with("POST ")).count(),
        1,
        "{paths:?}"
    );

    assert!(bridge.terminate().await.success());
    app.cleanup().await;
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// A virtual host of the test's own, deleted when the test ends (passed or failed).
struct ScratchVhost(String);

impl ScratchVhost {
    fn new() -> ScratchVhost {
        let name = format!(
            "xbridge-demo-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        ScratchVhost(name)
    }
}

impl Drop for ScratchVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_shows_the_dm_and_the_message_sent() {
    // The demo declares the default names, which on the shared broker's `/` could be
    // left over from another version of the bridge with other queue arguments (and
    // RabbitMQ refuses to redeclare those): give it a virtual host of its own.
    let vhost = ScratchVhost::new();
    let url = amqp_url();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let url = format!("{base}/{}", vhost.0);
    let output = tokio::time::timeout(
        PATIENCE * 2,
        tokio::process::Command::new(binary())
            .args(["demo", "--amqp-url", &url])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("the demo finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("X simulator received a DM"), "{stdout}");
    assert!(stdout.contains("\"type\":\"message.sent\""), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_facing_a_long_rate_limit_wait_is_parked_not_held() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.user_id("acme");
    // One request per hour, like X's daily limits: after the first DM the
    // window opens far later than a delivery may stay unacknowledged.
    app.simulator.set_fault(
        &user,
        Fault::RateLimitWindow {
            limit: 1,
            window_secs: 3600,
        },
    );
    let bridge = BridgeProcess::start(binary(), &app.write_config(), &[]);
    bridge.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "h-1", "recipient_id": "111", "text": "first"}),
    )
    .await;
    assert_eq!(crm.next_event().await.body["message_id"], "h-1");

    crm.publish_reply(
        "acme",
        &json!({"message_id": "h-2", "recipient_id": "222", "text": "later"}),
    )
    .await;
    // Parked, back from the delay queue, parked again: not held, not sent
    // before the window opens, not dead-lettered.
    bridge.wait_for_log("parked until then", 2).await;
    assert_eq!(app.simulator.requests_for(&user).len(), 1);
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    assert!(bridge.terminate().await.success());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_between_the_parts_of_a_reply_sends_no_part_twice() {
    use base64::Engine as _;
    let app = spawn_app(TestOptions::default()).await;
    let config = app.write_config();
    let user = app.user_id("acme");
    let file = |name: &str| {
        let bytes: Vec<u8> = name.bytes().cycle().take(2048).collect();
        json!({"data": base64::engine::general_purpose::STANDARD.encode(bytes), "mime_type": "image/png"})
    };
    let reply = json!({
        "message_id": "parts-1",
        "recipient_id": "944480690",
        "text": "three pictures",
        "attachments": [file("one"), file("two"), file("three")]
    });

    // The first bridge freezes right after the first part is sent and
    // recorded, before the second; then it is killed.
    let first = BridgeProcess::start(binary(), &config, &[("FAILPOINTS", "between_parts=return")]);
    first.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply).await;
    first.wait_for_log("failpoint reached", 1).await;
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1);
    first.kill().await;

    // RabbitMQ redelivers the reply; the restarted bridge sends the rest.
    let second = BridgeProcess::start(binary(), &config, &[]);
    second.wait_for_log(RUNNING, 1).await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "parts-1");
    let dms = app.simulator.sent_dms_for(&user);
    assert_eq!(dms.len(), 3, "each part once");
    let texts: Vec<&str> = dms.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["three pictures", "", ""]);
    let ids: Vec<serde_json::Value> = dms.iter().map(|d| json!(d.dm_event_id)).collect();
    assert_eq!(event.body["dm_event_ids"], serde_json::Value::Array(ids));
    // Each DM carries a different upload, in the reply's order.
    let uploads = app.simulator.uploads_for(&user);
    let sent_media: Vec<Vec<u8>> = dms
        .iter()
        .map(|d| {
            uploads
                .iter()
                .find(|u| u.id == d.media_ids[0])
                .expect("an upload of this account")
                .bytes[..3]
                .to_vec()
        })
        .collect();
    assert_eq!(
        sent_media,
        [b"one".to_vec(), b"two".to_vec(), b"thr".to_vec()]
    );

    second.terminate().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_x_accepted_but_the_bridge_never_recorded_is_found_on_x_not_sent_again() {
    let app = spawn_app(TestOptions::default()).await;
    let config = app.write_config();
    let user = app.user_id("acme");

    // The first bridge freezes after X's 201 and before its own record (the
    // window a crash used to turn into a second DM); then it is killed.
    let first = BridgeProcess::start(
        binary(),
        &config,
        &[("FAILPOINTS", "before_send_recorded=return")],
    );
    first.wait_for_log(RUNNING, 1).await;
    let mut crm = app.crm().await;
    crm.publish_reply(
        "acme",
        &json!({"message_id": "w-1", "recipient_id": "944480690", "text": "only once, please"}),
    )
    .await;
    first.wait_for_log("failpoint reached", 1).await;
    let sent = app.simulator.sent_dms_for(&user);
    assert_eq!(sent.len(), 1);
    first.kill().await;

    // The restarted bridge finds the DM among the account's events on X.
    let second = BridgeProcess::start(binary(), &config, &[]);
    second.wait_for_log(RUNNING, 1).await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "w-1");
    assert_eq!(event.body["dm_event_id"], sent[0].dm_event_id.as_str());
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1, "no second DM");
    assert_eq!(second.count_logs("an earlier send of this DM reached X"), 1);

    // A later reply with the same words is a new DM, not mistaken for it.
    crm.publish_reply(
        "acme",
        &json!({"message_id": "w-2", "recipient_id": "944480690", "text": "only once, please"}),
    )
    .await;
    assert_eq!(crm.next_event().await.body["message_id"], "w-2");
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 2);

    second.terminate().await;
    app.cleanup().await;
}
