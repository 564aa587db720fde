//! deploy/rabbitmq/definitions.json is for operators who pre-provision the
//! topology: it must load into RabbitMQ and match what the bridge declares,
//! or the bridge would fail with PRECONDITION_FAILED at startup. Loaded into
//! a scratch virtual host, so nothing else on the broker is touched.

use std::process::Command;

use tokio_util::sync::CancellationToken;

use xbridge::app::Bridge;
use xbridge_core::config::Settings;
use xbridge_test_support::{spawn_app, TestOptions, PATIENCE};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_definitions_load_and_the_bridge_starts_against_them() {
    let vhost = format!(
        "xbridge-defs-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);

    // The file as shipped, moved to the scratch virtual host.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rabbitmq/definitions.json"
    ))
    .unwrap();
    let mut definitions: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    for section in ["exchanges", "queues", "bindings"] {
        for item in definitions[section].as_array_mut().unwrap() {
            item["vhost"] = serde_json::json!(vhost);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("definitions.json");
    std::fs::write(&file, definitions.to_string()).unwrap();
    rabbitmqctl(&["import_definitions", file.to_str().unwrap()]);

    // The bridge with the default names and the file's channel, `acme`, polled
    // as well as served by the webhook (so its poll lease queue is declared).
    let app = spawn_app(TestOptions::default()).await;
    let account = app.account("acme");
    let config = format!(
        r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/{vhost}"
[x]
api_base_url = "{x}"
[state]
path = "{state}"
[[channels]]
name = "acme"
consumer_key = "{ck}"
consumer_secret = "{cs}"
access_token = "{at}"
access_token_secret = "{ats}"
bearer_token = "{bt}"
inbound = "both"
user_id = "{user_id}"
"#,
        x = app.simulator.base_url(),
        state = dir.path().join("state.redb").display(),
        ck = account.consumer_key,
        cs = account.consumer_secret,
        at = account.access_token,
        ats = account.access_token_secret,
        bt = account.bearer_token,
        user_id = app.user_id("acme"),
    );
    let bridge = Bridge::build(Settings::from_toml(&config).unwrap())
        .await
        .unwrap();
    let mut outbound = bridge.readiness();
    let mut inbound = bridge.inbound_readiness();
    let states = bridge.channel_states();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    // A shared declaration that differed from the file would close the channel
    // and the bridge would never become ready; a reply queue that differed would
    // leave acme `broker_refused`, and a lease queue that differed, no poller.
    for ready in [&mut outbound, &mut inbound] {
        tokio::time::timeout(PATIENCE, ready.wait_for(|r| *r))
            .await
            .expect("the bridge starts against the pre-provisioned topology")
            .unwrap();
    }
    // (No webhook is registered on the simulated X: `webhook_invalid` is fine here.)
    let acme = states.get("acme").expect("acme is served");
    assert_ne!(acme.state.as_str(), "broker_refused", "{acme:?}");
    let broker = lapin::Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let amqp = broker.create_channel().await.unwrap();
    let lease_queue = xbridge_core::config::TopologyNames::default().poll_lease_queue("acme");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let queue = amqp
                .queue_declare(
                    lease_queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("the lease queue is there");
            if queue.consumer_count() > 0 {
                break;
            }
            // The contender consumes once it declared the queue: look again.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a poller consumes acme's lease queue");
    broker.close(0, "done".into()).await.ok();
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    rabbitmqctl(&["delete_vhost", &vhost]);
}
