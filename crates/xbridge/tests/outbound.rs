//! The outbound path end to end: a reply published by a CRM client reaches
//! the X simulator as a signed DM, and the CRM hears back; every failure
//! class ends the way the contract says. Real RabbitMQ, simulated X.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use common::start_bridge;
use x_simulator::Fault;
use xbridge_test_support::{assert_valid, reply, spawn_app, TestApp, TestOptions, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_becomes_a_signed_dm_and_the_crm_gets_message_sent() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    let body = reply("crm-1", "944480690", "Hello from support ☃ + & %");
    assert_valid("outgoing-reply", &body);
    crm.publish_reply("acme", &body).await;

    let dms = app.wait_for_dms("acme", 1).await;
    assert_eq!(dms[0].text, "Hello from support ☃ + & %");
    assert_eq!(dms[0].participant_id.as_deref(), Some("944480690"));

    let event = crm.next_event().await;
    assert_eq!(event.routing_key, "acme.message.sent");
    assert_valid("message-sent", &event.body);
    assert_eq!(event.body["message_id"], "crm-1");
    assert_eq!(event.body["channel"], "acme");
    assert_eq!(event.body["dm_event_id"], dms[0].dm_event_id.as_str());
    assert_eq!(
        event.body["conversation_id"],
        dms[0].dm_conversation_id.as_str()
    );
    let props = &event.properties;
    assert_eq!(
        props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("crm-1")
    );
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some("acme:crm-1:sent")
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert!(props.timestamp().is_some());
    // The simulator refuses bad signatures with 401; none happened.
    assert_eq!(app.simulator.counters().unauthorized, 0);

    // A conversation id works as well as a recipient id.
    let conversation = dms[0].dm_conversation_id.clone();
    crm.publish_reply(
        "acme",
        &json!({"message_id": "crm-2", "conversation_id": conversation, "text": "Follow-up"}),
    )
    .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "crm-2");
    assert_eq!(event.body["conversation_id"], conversation.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_published_twice_gives_one_dm() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    crm.publish_reply("acme", &reply("dup-1", "944480690", "only once"))
        .await;
    crm.publish_reply("acme", &reply("dup-1", "944480690", "only once"))
        .await;
    // A later reply in the same conversation is our sync point: when its
    // event arrives, both copies of dup-1 have been handled.
    crm.publish_reply("acme", &reply("after", "944480690", "next"))
        .await;

    let ids: Vec<String> = crm
        .events(2)
        .await
        .iter()
        .map(|e| e.body["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["dup-1", "after"]);
    let texts: Vec<String> = app
        .simulator
        .sent_dms()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["only once", "next"]);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_reply_is_dead_lettered_and_the_next_valid_one_is_sent() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    let long = "x".repeat(10_001);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not valid JSON"),
        (vec![0xff, 0xfe, 0x00], "not valid UTF-8"),
        (
            br#"{"recipient_id":"1","text":"no id"}"#.to_vec(),
            "message_id is missing",
        ),
        (
            br#"{"message_id":42,"recipient_id":"1","text":"a"}"#.to_vec(),
            "message_id must be a string",
        ),
        (
            br#"{"message_id":"bad-1","text":"nobody"}"#.to_vec(),
            "recipient_id or conversation_id is required",
        ),
        (
            br#"{"message_id":"bad-2","recipient_id":"12x","text":"a"}"#.to_vec(),
            "not an X user id",
        ),
        (
            br#"{"message_id":"bad-3","recipient_id":"1","text":""}"#.to_vec(),
            "text must not be empty",
        ),
        (
            br#"{"message_id":"bad-4","recipient_id":"1","text":["a"]}"#.to_vec(),
            "text must be a string",
        ),
        (
            format!(r#"{{"message_id":"bad-5","recipient_id":"1","text":"{long}"}}"#).into_bytes(),
            "at most 10000",
        ),
        (
            br#"{"message_id":"bad-6","recipient_id":"1","text":"a","channel":"other"}"#.to_vec(),
            "does not match the routing key",
        ),
        // Over outbound.max_reply_bytes (16 MiB by default): refused unparsed.
        (
            format!(
                r#"{{"message_id":"bad-7","recipient_id":"1","text":"{}"}}"#,
                "x".repeat(16 * 1024 * 1024)
            )
            .into_bytes(),
            "outbound.max_reply_bytes",
        ),
        // A detail quoting a huge field stays within its bound.
        (
            format!(
                r#"{{"message_id":"bad-8","recipient_id":"1","text":"a","channel":"{}"}}"#,
                "c".repeat(100_000)
            )
            .into_bytes(),
            "channel \"ccc",
        ),
    ];
    for (body, _) in &cases {
        crm.publish_raw("acme", body).await;
    }
    crm.publish_reply("acme", &reply("good", "944480690", "still works"))
        .await;

    let mut details = Vec::new();
    for (body, _) in &cases {
        let dead = crm.next_dead_letter().await;
        assert_valid("dead-letter-headers", &dead.headers_json());
        assert_eq!(dead.reason(), "invalid_message");
        assert_eq!(dead.headers.channel.as_deref(), Some("acme"));
        assert_eq!(dead.headers.attempts, 0);
        assert_eq!(dead.routing_key, "acme");
        assert!(
            cases.iter().any(|(b, _)| *b == dead.body),
            "the original body is kept"
        );
        let _ = body;
        let detail = dead.headers.detail.unwrap_or_default();
        assert!(detail.len() <= xbridge_amqp::MAX_DETAIL_BYTES);
        details.push(detail);
    }
    for (_, expected) in &cases {
        assert!(
            details.iter().any(|d| d.contains(expected)),
            "no dead letter says {expected:?}: {details:?}"
        );
    }

    // The CRM hears about each reply whose id it can know, and the good one is sent.
    let events = crm.events(9).await;
    let failed: HashSet<&str> = events
        .iter()
        .filter(|e| e.body["type"] == "message.failed")
        .inspect(|e| {
            assert_valid("message-failed", &e.body);
            assert_eq!(e.body["reason"], "invalid_message");
        })
        .map(|e| e.body["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        HashSet::from(["bad-1", "bad-2", "bad-3", "bad-4", "bad-5", "bad-6", "bad-7", "bad-8"])
    );
    assert!(events
        .iter()
        .any(|e| e.body["type"] == "message.sent" && e.body["message_id"] == "good"));
    assert_eq!(app.wait_for_dms("acme", 1).await.len(), 1);
    assert_eq!(app.simulator.requests().len(), 1, "no bad reply reached X");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_headers_filling_a_frame_is_dead_lettered_and_every_channel_carries_on() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let app = spawn_app(TestOptions {
        channels: vec!["alpha".into(), "beta".into()],
        ..TestOptions::default()
    })
    .await;
    let mut bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    // RabbitMQ takes this reply (its header frame is just under frame_max);
    // the bridge's own headers on top of it would not fit in one frame.
    let mut headers = FieldTable::default();
    headers.insert(
        "pad".into(),
        AMQPValue::LongString(LongString::from(vec![b'p'; 130_700])),
    );
    headers.insert("x-crm-trace".into(), AMQPValue::LongString("t-1".into()));
    let bad = br#"{"message_id":"p","recipient_id":"1"}"#;
    crm.publish_with_properties(
        "alpha",
        bad,
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .await;
    for i in 1..=5 {
        crm.publish_reply("beta", &reply(&format!("b-{i}"), &format!("{i}00"), "hi"))
            .await;
    }

    let letter = crm.next_dead_letter().await;
    assert_eq!(letter.body, bad);
    assert_eq!(letter.reason(), "invalid_message");
    assert_eq!(
        letter.headers.dropped_headers.as_deref(),
        Some("pad (130709 bytes)"),
        "the letter names what it lost"
    );
    let detail = letter.headers.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("text"), "{detail}");
    assert!(detail.contains("x-xbridge-dropped-headers"), "{detail}");
    let kept = letter.properties.headers().clone().unwrap_or_default();
    assert!(kept.contains_key("x-crm-trace"), "small headers are kept");
    assert_valid("dead-letter-headers", &letter.headers_json());

    let mut sent = HashSet::new();
    for event in crm.events(6).await {
        match event.body["type"].as_str() {
            Some("message.failed") => assert_eq!(event.body["message_id"], "p"),
            _ => {
                assert_eq!(event.routing_key, "beta.message.sent");
                sent.insert(event.body["message_id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(sent.len(), 5, "every reply of the other channel went out");
    assert_eq!(app.wait_for_dms("beta", 5).await.len(), 5);
    assert!(
        !bridge.ready.has_changed().unwrap(),
        "the outbound connection was never lost"
    );
    assert!(*bridge.ready.borrow_and_update());

    bridge.stop().await;
    app.cleanup().await;
}

/// RabbitMQ takes a reply whose header frame is just under `frame_max` and
/// delivers it once; a quorum queue that delivers it again adds
/// `x-delivery-count`, the frame no longer fits, and lapin closes the bridge's
/// connection for it, on every reconnect. Here the reply is held for credits
/// when the bridge stops, the usual way a delivery comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_no_room_left_in_its_frame_leaves_at_once_and_a_restart_brings_nothing_back() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use xbridge_amqp::wire;
    let app = spawn_app(TestOptions {
        channels: vec!["alpha".into(), "beta".into()],
        ..TestOptions::default()
    })
    .await;
    let alpha = app.user_id("alpha");
    app.simulator.set_fault(&alpha, Fault::CreditsDepleted);
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    // A valid reply whose header frame is 8 bytes under RabbitMQ's default
    // frame_max of 131,072.
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let bare = wire::header_frame_len(&properties.clone().with_headers(FieldTable::default()));
    let mut headers = FieldTable::default();
    headers.insert(
        "pad".into(),
        AMQPValue::LongString(LongString::from(vec![b'p'; 131_064 - bare - 9])),
    );
    let properties = properties.with_headers(headers);
    assert_eq!(wire::header_frame_len(&properties), 131_064);
    crm.publish_with_properties(
        "alpha",
        &serde_json::to_vec(&reply("full-1", "100", "hello")).unwrap(),
        properties,
    )
    .await;

    // Dead-lettered before any request to X (without the check, it is sent,
    // refused for credits and held).
    let letter = tokio::select! {
        letter = crm.next_dead_letter() => letter,
        _ = app.wait_for_requests("alpha", 1) => panic!("the reply was held for X"),
    };
    assert_eq!(letter.reason(), "invalid_message");
    let detail = letter.headers.detail.clone().unwrap_or_default();
    assert!(detail.contains("131072-byte frame"), "{detail}");
    assert_eq!(
        letter.headers.dropped_headers,
        Some(format!("pad ({} bytes)", 131_064 - bare))
    );
    let failed = crm.next_event().await;
    assert_eq!(failed.body["type"], "message.failed");
    assert_eq!(failed.body["message_id"], "full-1");

    // A deploy: whatever the bridge held goes back to its queue.
    bridge.stop().await;
    app.simulator.clear_faults(&alpha);
    let bridge = start_bridge(&app).await;
    for i in 1..=3 {
        crm.publish_reply("beta", &reply(&format!("b-{i}"), &format!("{i}00"), "hi"))
            .await;
    }
    assert_eq!(app.wait_for_dms("beta", 3).await.len(), 3);
    assert!(app.simulator.sent_dms_for(&alpha).is_empty());
    assert!(
        !bridge.ready.has_changed().unwrap(),
        "the outbound connection was never lost"
    );
    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_an_unknown_channel_is_dead_lettered_not_lost() {
    let app = spawn_app(TestOptions::default()).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    crm.publish_reply("nosuchchannel", &reply("lost-1", "1", "hello?"))
        .await;

    let dead = crm.next_dead_letter().await;
    assert_valid("dead-letter-headers", &dead.headers_json());
    assert_eq!(dead.reason(), "unknown_channel");
    assert_eq!(
        dead.headers.original_routing_key.as_deref(),
        Some("nosuchchannel")
    );
    assert!(dead.headers.detail.unwrap().contains("nosuchchannel"));
    let event = crm.next_event().await;
    assert_eq!(event.body["reason"], "unknown_channel");
    assert_eq!(event.body["message_id"], "lost-1");
    assert!(app.simulator.requests().is_empty());

    // A routing key of 250 bytes: its `message.failed` would need a routing
    // key and an AMQP message_id over AMQP's 255 bytes, so there is none, but
    // the letter is kept once and the bridge carries on.
    let long_key = "u".repeat(250);
    crm.publish_reply(&long_key, &reply("lost-2", "1", "hello?"))
        .await;
    let dead = crm.next_dead_letter().await;
    assert_eq!(dead.reason(), "unknown_channel");
    assert_eq!(dead.routing_key, long_key);
    assert_eq!(dead.headers.channel.as_deref(), Some(long_key.as_str()));
    crm.publish_reply("acme", &reply("after", "944480690", "still here"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["message_id"], "after");
    assert!(!bridge.ready.has_changed().unwrap(), "no reconnect");
    assert_eq!(crm.queue_depth(&app.names.dead_letter_queue).await, 0);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_one_conversation_go_out_in_order_retries_included() {
    let app = spawn_app(TestOptions {
        retry: "immediate_attempts = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\ndelays = [\"200ms\"]\nmax_attempts = 10\n".into(),
        ..TestOptions::default()
    })
    .await;
    // The first reply fails often enough to be parked in the delay queue.
    app.simulator.set_fault(
        &app.user_id("acme"),
        Fault::ServerError {
            status: 503,
            times: Some(3),
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    for i in 1..=4 {
        crm.publish_reply(
            "acme",
            &reply(&format!("o{i}"), "944480690", &format!("part {i}")),
        )
        .await;
    }
    let texts: Vec<String> = app
        .wait_for_dms("acme", 4)
        .await
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["part 1", "part 2", "part 3", "part 4"]);
    let ids: Vec<String> = crm
        .events(4)
        .await
        .iter()
        .map(|e| e.body["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["o1", "o2", "o3", "o4"]);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_are_retried_then_sent() {
    let app = spawn_app(TestOptions {
        request_timeout: Duration::from_millis(500),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    app.simulator.set_fault(
        &user,
        Fault::ServerError {
            status: 503,
            times: Some(2),
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    crm.publish_reply("acme", &reply("t-1", "944480690", "after 5xx"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "t-1");
    assert_eq!(event.body["type"], "message.sent");

    app.simulator
        .set_fault(&user, Fault::Timeout { times: Some(1) });
    crm.publish_reply("acme", &reply("t-2", "944480690", "after a timeout"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["message_id"], "t-2");
    assert_eq!(event.body["type"], "message.sent");

    let texts: Vec<String> = app
        .simulator
        .sent_dms()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["after 5xx", "after a timeout"]);
    let statuses: Vec<u16> = app
        .simulator
        .requests_for(&user)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );

    bridge.stop().await;
    app.cleanup().await;
}

/// A test app whose X gives up on nothing: a 500 ms request timeout with quick
/// retries, and acme's next DM created `millis` after its send (`slow_send`),
/// whether or not the bridge still waits; on PostgreSQL when `postgres`.
async fn slow_to_create(postgres: bool, millis: u64) -> (TestApp, String) {
    let app = spawn_app(TestOptions {
        postgres,
        request_timeout: Duration::from_millis(500),
        retry: "immediate_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\ndelays = [\"200ms\"]\nmax_attempts = 5\n".into(),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    app.simulator.set_fault(
        &user,
        Fault::SlowSend {
            millis,
            times: Some(1),
        },
    );
    (app, user)
}

/// X creates a DM after the bridge gave up waiting for its answer (as when the
/// replica that sent it lost its broker connection or died mid-request). The
/// retry looks for the DM on X only once the send has settled: a quicker look
/// found nothing and sent the customer the same DM twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_x_creates_after_the_bridge_gave_up_is_found_not_sent_twice() {
    // X answers (and creates the DM) 3 s after the send, long after the bridge's
    // 500 ms timeout and its first retry.
    let (app, user) = slow_to_create(false, 3_000).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    crm.publish_reply("acme", &reply("late-1", "944480690", "created late"))
        .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    tokio::time::timeout(PATIENCE, app.simulator.wait_for_slow_sends())
        .await
        .expect("X created the slow DM");
    let sent = app.simulator.sent_dms_for(&user);
    assert_eq!(sent.len(), 1, "one DM, not a second one");
    assert_eq!(event.body["dm_event_id"], sent[0].dm_event_id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

/// Issue 15's failover race, at unit level: the replica that sent a DM records it
/// while another, which took the reply over, is looking for it. The DM X has is
/// then recorded, and used to be taken for another reply's: the reply went out
/// twice. Here the test plays the old owner and records the DM (the shared store
/// is PostgreSQL) once X created it, while the bridge waits for the send to settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_the_old_owner_records_while_the_new_one_looks_is_not_sent_again() {
    let (app, user) = slow_to_create(true, 1_000).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    crm.publish_reply("acme", &reply("owned-1", "944480690", "recorded elsewhere"))
        .await;

    tokio::time::timeout(PATIENCE, app.simulator.wait_for_slow_sends())
        .await
        .expect("X created the slow DM");
    let created = app.simulator.sent_dms_for(&user);
    assert_eq!(created.len(), 1);
    let old_owner = xbridge_store::PostgresStore::connect(
        &xbridge_test_support::postgres_url(),
        Some(&app.postgres_schema()),
    )
    .await
    .expect("the shared store");
    let record = xbridge_store::SentRecord {
        dm_event_id: created[0].dm_event_id.clone(),
        conversation_id: created[0].dm_conversation_id.clone(),
        sent_at: created[0].created_at,
        reported: false,
        parts: Vec::new(),
    };
    xbridge_store::StateStore::record_sent(&old_owner, "acme", "owned-1", &record)
        .await
        .expect("the old owner records its send");

    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_eq!(event.body["dm_event_id"], created[0].dm_event_id.as_str());
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1, "no second DM");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_server_error_ends_as_retries_exhausted() {
    let app = spawn_app(TestOptions {
        retry: "immediate_attempts = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\ndelays = [\"200ms\"]\nmax_attempts = 5\n".into(),
        ..TestOptions::default()
    })
    .await;
    let user = app.user_id("acme");
    app.simulator.set_fault(
        &user,
        Fault::ServerError {
            status: 500,
            times: None,
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    crm.publish_reply("acme", &reply("p-1", "944480690", "never"))
        .await;
    let dead = crm.next_dead_letter().await;
    assert_valid("dead-letter-headers", &dead.headers_json());
    assert_eq!(dead.reason(), "retries_exhausted");
    // Tries 1-2 in place, parked, 3-4, parked again, 5: given up.
    assert_eq!(dead.headers.times_parked, 2);
    assert_eq!(dead.headers.attempts, 5);
    assert_eq!(dead.headers.http_status, Some(500));
    assert!(dead.headers.first_failure_at.is_some() && dead.headers.last_failure_at.is_some());
    assert_eq!(
        dead.body,
        serde_json::to_vec(&reply("p-1", "944480690", "never")).unwrap()
    );
    let event = crm.next_event().await;
    assert_valid("message-failed", &event.body);
    assert_eq!(event.body["reason"], "retries_exhausted");
    assert_eq!(event.body["attempts"], 5);
    assert_eq!(app.simulator.requests_for(&user).len(), 5);
    assert!(app.simulator.sent_dms().is_empty());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_dead_lettered_after_one_request_with_their_reason() {
    let app = spawn_app(TestOptions {
        channels: vec![
            "refuse".into(),
            "unauth".into(),
            "noperm".into(),
            "noenrol".into(),
        ],
        ..TestOptions::default()
    })
    .await;
    let sim = &app.simulator;
    sim.set_fault(
        &app.user_id("refuse"),
        Fault::RecipientRefuses {
            participant_id: "944480690".into(),
        },
    );
    sim.set_fault(&app.user_id("unauth"), Fault::Unauthorized);
    sim.set_fault(&app.user_id("noperm"), Fault::MissingPermission);
    sim.set_fault(&app.user_id("noenrol"), Fault::NotEnrolled);
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    let expected = [
        ("refuse", "recipient_refuses", 403),
        ("unauth", "unauthorized", 401),
        ("noperm", "missing_permission", 403),
        ("noenrol", "not_enrolled", 403),
    ];
    for (channel, _, _) in expected {
        crm.publish_reply(channel, &reply(&format!("{channel}-1"), "944480690", "hi"))
            .await;
    }
    let mut seen = Vec::new();
    for _ in expected {
        let dead = crm.next_dead_letter().await;
        seen.push((
            dead.headers.channel.clone().unwrap(),
            dead.reason().to_owned(),
            dead.headers.http_status.unwrap(),
        ));
        assert_eq!(dead.headers.attempts, 1);
    }
    for (channel, reason, status) in expected {
        assert!(
            seen.contains(&(channel.to_owned(), reason.to_owned(), status)),
            "{seen:?}"
        );
        assert_eq!(
            sim.requests_for(&app.user_id(channel)).len(),
            1,
            "{channel}: one request only"
        );
    }
    let events = crm.events(4).await;
    let missing_permission = events
        .iter()
        .find(|e| e.body["reason"] == "missing_permission")
        .unwrap();
    let detail = missing_permission.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("Read and write and Direct message") && detail.contains("regenerate"),
        "{detail}"
    );

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_events_carry_no_secrets() {
    let app = spawn_app(TestOptions::default()).await;
    let account = app.account("acme").clone();
    app.simulator
        .set_fault(&account.user_id, Fault::Unauthorized);
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    crm.publish_reply("acme", &reply("s-1", "944480690", "hi"))
        .await;
    let dead = crm.next_dead_letter().await;
    let event = crm.next_event().await;
    let everything = format!("{:?} {:?} {}", dead.properties, dead.headers, event.body);
    for secret in [
        &account.consumer_secret,
        &account.access_token_secret,
        &account.access_token,
        &account.bearer_token,
        &account.consumer_key,
    ] {
        assert!(
            !everything.contains(secret.as_str()),
            "a credential leaked: {everything}"
        );
    }

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crm_is_told_every_channels_state_when_the_bridge_connects() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into()],
        ..TestOptions::default()
    })
    .await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    // A CRM that missed changes (or saw a previous process die mid-outage)
    // learns where every channel stands without waiting for the next change.
    let mut told = Vec::new();
    for _ in 0..2 {
        let event = crm.next_channel_state_event().await;
        assert_valid("channel-state", &event.body);
        assert_eq!(event.body["state"], "ok");
        told.push(event.body["channel"].as_str().unwrap().to_owned());
    }
    told.sort();
    assert_eq!(told, ["acme", "beta"]);

    bridge.stop().await;
    app.cleanup().await;
}
