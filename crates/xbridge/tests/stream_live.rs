//! A stream channel added and removed while the bridge runs (issue 14's live channels):
//! the CRM's `channel.upsert` with `inbound = "stream"` starts the channel's X App stream,
//! whose DMs then reach the CRM, and `channel.remove` of the App's last stream channel stops
//! it. Real RabbitMQ, simulated X, no webhook server.

#[path = "common/crm.rs"]
mod crm;

use serde_json::json;

use x_simulator::Customer;
use xbridge_test_support::{spawn_app, TestOptions, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_channel_the_crm_adds_joins_its_apps_stream_and_its_removal_ends_it() {
    crm::capture_logs();
    let app = spawn_app(TestOptions::default()).await;
    let bridge = crm::Running::start(&app).await;
    let mut events = app.crm().await;
    let commands = crm::Commands::connect(&app).await;
    let account = crm::new_account(&app, "newco_support");
    app.created_channel("newco");
    app.created_channel(&xbridge_inbound::stream_lease_name(&account.consumer_key));
    assert_eq!(app.simulator.activity_stream_counters().open, 0);

    let mut upsert = crm::upsert("cmd-stream-add", "newco", &account);
    upsert["inbound"] = json!("stream");
    upsert["user_id"] = json!(account.user_id);
    commands.send(&upsert).await;
    let answer = crm::answer(&mut events, "cmd-stream-add").await;
    assert_eq!(answer.body["state"], "ok", "{}", answer.body);
    app.wait_for_open_streams(1, "the new channel's App stream opens")
        .await;

    let dm = app.simulator.customer_dm(
        &account.user_id,
        &Customer::generate("jane"),
        "Hi newco",
        None,
    );
    let received = loop {
        let event = events.next_event().await;
        if event.body["type"] == "message.received" {
            break event;
        }
    };
    assert_eq!(received.routing_key, "newco.message.received");
    assert_eq!(received.body["event_id"], dm.id.as_str());

    let remove =
        json!({"command": "channel.remove", "command_id": "cmd-stream-remove", "channel": "newco"});
    commands.send(&remove).await;
    let answer = crm::answer(&mut events, "cmd-stream-remove").await;
    assert_eq!(answer.body["state"], "removed", "{}", answer.body);
    let streams = tokio::time::timeout(
        PATIENCE,
        app.simulator.wait_for_activity_streams(|c| c.open == 0),
    )
    .await
    .expect("the App's last stream channel gone, its stream ends");
    assert_eq!(streams.cut, 0, "ended by the bridge, not cut by X");

    bridge.stop().await;
    crm::cleanup(&app).await;
}
