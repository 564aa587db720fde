//! Two `xbridge` processes serving one channel on one broker and one shared
//! PostgreSQL store, one of them killed with SIGKILL half way through a
//! backlog: every reply is sent exactly once, each conversation in order.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use xbridge_test_support::{spawn_app, BridgeProcess, TestOptions};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

const RUNNING: &str = "outbound running";
const CONVERSATIONS: usize = 20;
const REPLIES: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_backlog_loses_nothing_duplicates_nothing_and_keeps_order() {
    let app = spawn_app(TestOptions {
        postgres: true,
        ..TestOptions::default()
    })
    .await;
    let config = app.write_config();
    let user = app.user_id("acme");
    let first = BridgeProcess::start(binary(), &config, &[]);
    first.wait_for_log(RUNNING, 1).await;
    let second = BridgeProcess::start(binary(), &config, &[]);
    second.wait_for_log(RUNNING, 1).await;

    let mut crm = app.crm().await;
    for seq in 0..REPLIES / CONVERSATIONS {
        for conversation in 0..CONVERSATIONS {
            let recipient = 1_000_000 + conversation;
            crm.publish_reply(
                "acme",
                &json!({
                    "message_id": format!("r-{conversation}-{seq}"),
                    "recipient_id": recipient.to_string(),
                    "text": format!("{conversation}:{seq}"),
                }),
            )
            .await;
        }
    }

    // Kill whichever replica is sending, once it is well into the backlog.
    app.simulator.wait_for_dms(&user, REPLIES / 3).await;
    let (active, standby) = if first.count_logs("reply sent") >= second.count_logs("reply sent") {
        (first, second)
    } else {
        (second, first)
    };
    active.kill().await;

    // Every reply gets its message.sent (a few twice, with the same AMQP
    // message id, for those whose event was published before the kill).
    let mut told = std::collections::HashSet::new();
    while told.len() < REPLIES {
        let event = crm.next_event().await;
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        told.insert(event.body["message_id"].as_str().unwrap().to_owned());
    }

    let dms = app.simulator.sent_dms_for(&user);
    assert_eq!(dms.len(), REPLIES, "each reply exactly once");
    let mut per_conversation: HashMap<String, Vec<usize>> = HashMap::new();
    for dm in &dms {
        let (conversation, seq) = dm.text.split_once(':').unwrap();
        per_conversation
            .entry(conversation.to_owned())
            .or_default()
            .push(seq.parse().unwrap());
    }
    assert_eq!(per_conversation.len(), CONVERSATIONS);
    for (conversation, seqs) in per_conversation {
        let expected: Vec<usize> = (0..REPLIES / CONVERSATIONS).collect();
        assert_eq!(seqs, expected, "conversation {conversation} in order");
    }

    standby.terminate().await;
    app.cleanup().await;
}
