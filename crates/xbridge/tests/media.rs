//! Agents' attachments end to end: a reply's files are downloaded or decoded,
//! uploaded to X in chunks, and sent one per DM; bad attachments never reach
//! X. Real RabbitMQ, simulated X (which keeps every upload's bytes), and a
//! local file server standing in for the CRM's file storage.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use serde_json::{json, Value};

use common::start_bridge;
use x_simulator::{Fault, MediaProcessing, ProcessingOutcome, ProcessingState};
use xbridge_test_support::{assert_valid, spawn_app, TestApp, TestOptions};

/// Files the CRM's storage serves, by name.
async fn file_server(files: HashMap<&'static str, Vec<u8>>) -> SocketAddr {
    async fn serve(
        State(files): State<Arc<HashMap<&'static str, Vec<u8>>>>,
        Path(name): Path<String>,
    ) -> axum::response::Response {
        match files.get(name.as_str()) {
            Some(bytes) => (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                bytes.clone(),
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let router = axum::Router::new()
        .route("/files/{name}", axum::routing::get(serve))
        .with_state(Arc::new(files));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Downloads from the local file server are allowed (it is on loopback, so
/// private addresses must be too).
fn local_downloads() -> TestOptions {
    TestOptions {
        outbound_media:
            "allowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private_networks = true\n"
                .into(),
        ..TestOptions::default()
    }
}

fn data(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes that differ per name, so a mix-up between parts shows.
fn bytes_of(name: &str, len: usize) -> Vec<u8> {
    name.bytes().cycle().take(len).collect()
}

/// The paths of the account's requests to X, in order.
fn paths(app: &TestApp, user: &str) -> Vec<String> {
    app.simulator
        .requests_for(user)
        .into_iter()
        .map(|r| {
            let path = r.path;
            if path.starts_with("/2/media/upload/") {
                // Media ids differ per run: keep the step.
                path.rsplit('/').next().unwrap_or_default().to_owned()
            } else if path == "/2/media/upload" {
                "status".to_owned()
            } else if path.starts_with("/2/dm_conversations/") {
                "dm".to_owned()
            } else {
                path
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_an_image_is_uploaded_in_order_and_sent_with_its_media_id() {
    let photo = bytes_of("photo", 300_000);
    let server = file_server(HashMap::from([("photo.png", photo.clone())])).await;
    let app = spawn_app(local_downloads()).await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let user = app.user_id("acme");

    let body = json!({
        "message_id": "img-1",
        "recipient_id": "944480690",
        "text": "Here is the label",
        "attachments": [{"url": format!("http://{server}/files/photo.png"), "mime_type": "image/png", "filename": "label.png"}]
    });
    assert_valid("outgoing-reply", &body);
    crm.publish_reply("acme", &body).await;

    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_valid("message-sent", &event.body);

    let uploads = app.simulator.uploads_for(&user);
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, photo, "X got the file's exact bytes");
    assert_eq!(uploads[0].media_type, "image/png");
    assert_eq!(uploads[0].category, "dm_image");
    let dms = app.wait_for_dms("acme", 1).await;
    assert_eq!(dms[0].text, "Here is the label");
    assert_eq!(dms[0].media_ids, [uploads[0].id.clone()]);
    assert_eq!(event.body["dm_event_ids"], json!([dms[0].dm_event_id]));

    let steps = paths(&app, &user);
    let appends = steps.iter().filter(|s| *s == "append").count();
    assert!(appends >= 1);
    let mut expected = vec!["initialize".to_owned()];
    expected.extend(std::iter::repeat_n("append".to_owned(), appends));
    expected.extend(["finalize".to_owned(), "dm".to_owned()]);
    assert_eq!(steps, expected);

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_attachments_become_three_dms_in_order_and_message_sent_lists_them() {
    let clip = bytes_of("clip", 40_000);
    let server = file_server(HashMap::from([("clip.gif", clip.clone())])).await;
    let app = spawn_app(local_downloads()).await;
    app.simulator.set_media_processing(
        &app.user_id("acme"),
        MediaProcessing {
            check_after_secs: 0,
            ..MediaProcessing::default()
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let user = app.user_id("acme");

    let first = bytes_of("first", 1000);
    let third = bytes_of("third", 2000);
    let body = json!({
        "message_id": "three",
        "recipient_id": "944480690",
        "text": "Three files",
        "attachments": [
            {"data": data(&first), "mime_type": "image/jpeg"},
            {"url": format!("http://{server}/files/clip.gif"), "mime_type": "image/gif"},
            {"data": data(&third), "mime_type": "image/png", "filename": "third.png"}
        ]
    });
    assert_valid("outgoing-reply", &body);
    crm.publish_reply("acme", &body).await;

    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    assert_valid("message-sent", &event.body);
    let dms = app.wait_for_dms("acme", 3).await;
    let texts: Vec<&str> = dms.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(
        texts,
        ["Three files", "", ""],
        "the text goes with the first"
    );
    let uploads = app.simulator.uploads_for(&user);
    let by_id: HashMap<&str, &Vec<u8>> =
        uploads.iter().map(|u| (u.id.as_str(), &u.bytes)).collect();
    let sent_bytes: Vec<&Vec<u8>> = dms.iter().map(|d| by_id[d.media_ids[0].as_str()]).collect();
    assert_eq!(sent_bytes, [&first, &clip, &third], "in the reply's order");
    let ids: Vec<Value> = dms.iter().map(|d| json!(d.dm_event_id)).collect();
    assert_eq!(event.body["dm_event_ids"], Value::Array(ids));
    assert_eq!(event.body["dm_event_id"], dms[0].dm_event_id.as_str());

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_attachments_are_dead_lettered_without_a_request_to_x() {
    let server = file_server(HashMap::new()).await;
    let app = spawn_app(TestOptions {
        // The file server's address is allowed by name, but it is loopback:
        // only an explicit allow_private_networks opens that.
        outbound_media: "allowed_hosts = [\"127.0.0.1\", \"10.0.0.1\", \"files.example.com\"]\nallow_http = true\n".into(),
        ..TestOptions::default()
    })
    .await;
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let user = app.user_id("acme");

    let cases = [
        (
            json!({"data": data(b"%PDF-1.7"), "mime_type": "application/pdf"}),
            "not supported",
        ),
        (
            json!({"data": "not base64!", "mime_type": "image/png"}),
            "base64",
        ),
        (
            // Over X's 5 MiB for images.
            json!({"data": data(&vec![7u8; 5 * 1024 * 1024 + 1]), "mime_type": "image/png"}),
            "5 MiB",
        ),
        (
            json!({"url": format!("http://{server}/files/a.png"), "mime_type": "image/png"}),
            "127.0.0.1",
        ),
        (
            json!({"url": "https://10.0.0.1/a.png", "mime_type": "image/png"}),
            "10.0.0.1",
        ),
        (
            json!({"url": "https://cdn.elsewhere.example/a.png", "mime_type": "image/png"}),
            "allowed_hosts",
        ),
    ];
    for (i, (attachment, _)) in cases.iter().enumerate() {
        let body = json!({
            "message_id": format!("bad-{i}"),
            "recipient_id": "944480690",
            "text": "see attached",
            "attachments": [attachment]
        });
        crm.publish_reply("acme", &body).await;
    }
    // Refusals found while parsing and while downloading settle in their
    // own order: match dead letters to cases by message id.
    let mut details = HashMap::new();
    for _ in 0..cases.len() {
        let dead = crm.next_dead_letter().await;
        assert_eq!(dead.reason(), "invalid_message");
        assert_valid("dead-letter-headers", &dead.headers_json());
        let body: Value = serde_json::from_slice(&dead.body).unwrap();
        let id = body["message_id"].as_str().unwrap().to_owned();
        details.insert(id, dead.headers.detail.clone().unwrap_or_default());
        let failed = crm.next_event().await;
        assert_eq!(failed.body["type"], "message.failed");
        assert_eq!(failed.body["reason"], "invalid_message");
    }
    for (i, (_, named)) in cases.iter().enumerate() {
        let detail = &details[&format!("bad-{i}")];
        assert!(detail.contains("attachments[0]"), "{detail}");
        assert!(detail.contains(named), "case {i}: {detail}");
    }
    assert!(
        app.simulator.requests_for(&user).is_empty(),
        "no bad attachment reached X"
    );

    // The consumer is not stuck: a plain reply still goes out.
    crm.publish_reply(
        "acme",
        &json!({"message_id": "fine", "recipient_id": "944480690", "text": "text only"}),
    )
    .await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_is_sent_once_x_has_processed_it_and_a_failed_one_is_reported() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.user_id("acme");
    app.simulator.set_media_processing(
        &user,
        MediaProcessing {
            status_polls_before_done: 3,
            outcome: ProcessingOutcome::Succeeded,
            check_after_secs: 0,
        },
    );
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;

    let video = bytes_of("video", 50_000);
    crm.publish_reply(
        "acme",
        &json!({"message_id": "vid-1", "recipient_id": "944480690", "text": "",
                "attachments": [{"data": data(&video), "mime_type": "video/mp4"}]}),
    )
    .await;
    let event = crm.next_event().await;
    assert_eq!(event.body["type"], "message.sent", "{}", event.body);
    let uploads = app.simulator.uploads_for(&user);
    assert_eq!(uploads[0].category, "dm_video");
    assert_eq!(uploads[0].processing, ProcessingState::Succeeded);
    let steps = paths(&app, &user);
    let polls = steps.iter().filter(|s| *s == "status").count();
    assert!(polls >= 3, "the DM waited for processing: {steps:?}");
    assert_eq!(steps.last().map(String::as_str), Some("dm"));
    let dms = app.wait_for_dms("acme", 1).await;
    assert_eq!(dms[0].media_ids, [uploads[0].id.clone()]);

    app.simulator.set_media_processing(
        &user,
        MediaProcessing {
            status_polls_before_done: 1,
            outcome: ProcessingOutcome::Failed {
                message: "Unsupported video format".into(),
            },
            check_after_secs: 0,
        },
    );
    crm.publish_reply(
        "acme",
        &json!({"message_id": "vid-2", "recipient_id": "944480690", "text": "broken",
                "attachments": [{"data": data(&video), "mime_type": "video/mp4"}]}),
    )
    .await;
    let failed = crm.next_event().await;
    assert_eq!(failed.body["type"], "message.failed", "{}", failed.body);
    assert_valid("message-failed", &failed.body);
    assert_eq!(failed.body["message_id"], "vid-2");
    let detail = failed.body["detail"].as_str().unwrap();
    assert!(detail.contains("Unsupported video format"), "{detail}");
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 1, "nothing sent");

    bridge.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_failures_take_the_same_fates_as_sends() {
    let app = spawn_app(TestOptions::default()).await;
    let user = app.user_id("acme");
    let bridge = start_bridge(&app).await;
    let mut crm = app.crm().await;
    let photo = |id: &str| {
        json!({"message_id": id, "recipient_id": "944480690", "text": id,
               "attachments": [{"data": data(&bytes_of(id, 5000)), "mime_type": "image/jpeg"}]})
    };

    // A passing 503 on the upload is retried, then the reply goes out.
    app.simulator.set_fault(
        &user,
        Fault::ServerError {
            status: 503,
            times: Some(2),
        },
    );
    crm.publish_reply("acme", &photo("flaky")).await;
    assert_eq!(crm.next_event().await.body["type"], "message.sent");
    assert_eq!(app.wait_for_dms("acme", 1).await[0].text, "flaky");
    let statuses: Vec<u16> = app
        .simulator
        .requests_for(&user)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(&statuses[..2], [503, 503]);

    // Revoked credentials refuse the upload: dead-lettered at once as for a send.
    app.simulator.set_fault(&user, Fault::Unauthorized);
    crm.publish_reply("acme", &photo("revoked")).await;
    let dead = crm.next_dead_letter().await;
    assert_eq!(dead.reason(), "unauthorized");
    assert_eq!(dead.headers.attempts, 1, "one request, no retries");

    bridge.stop().await;
    app.cleanup().await;
}
