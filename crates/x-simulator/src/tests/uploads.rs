use reqwest::multipart::{Form, Part};
use serde_json::json;

use super::*;
use crate::problems::{self, INVALID_REQUEST_TYPE};
use crate::{
    Fault, MediaProcessing, MediaType, ProcessingOutcome, ProcessingState, MAX_SEGMENT_BYTES,
};

const MIB: u64 = 1024 * 1024;

fn init_body(media_type: &str, total_bytes: u64, category: &str) -> String {
    json!({
        "media_type": media_type,
        "total_bytes": total_bytes,
        "media_category": category,
        "shared": false,
    })
    .to_string()
}

fn processing(polls: u32, outcome: ProcessingOutcome) -> MediaProcessing {
    MediaProcessing {
        status_polls_before_done: polls,
        outcome,
        check_after_secs: 0,
    }
}

impl Harness {
    /// INITIALIZE as the harness account; the answer.
    async fn initialize(&self, media_type: &str, total_bytes: u64, category: &str) -> Answer {
        self.post(
            "/2/media/upload/initialize",
            &init_body(media_type, total_bytes, category),
        )
        .await
    }

    /// INITIALIZE that must succeed; the media id.
    async fn initialized(&self, media_type: &str, total_bytes: u64, category: &str) -> String {
        let answer = self.initialize(media_type, total_bytes, category).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["data"]["id"].as_str().unwrap().to_string()
    }

    /// An APPEND as `account`, signed without the multipart body (as OAuth 1.0a says).
    async fn append_as(&self, account: &Account, id: &str, form: Form) -> Answer {
        let url = self.url(&format!("/2/media/upload/{id}/append"));
        let authorization = self.authorization(account, "POST", &url);
        self.send(
            self.client
                .post(url)
                .header(AUTHORIZATION, authorization)
                .multipart(form),
        )
        .await
    }

    async fn append(&self, id: &str, index: u32, bytes: &[u8]) -> Answer {
        let form = Form::new()
            .text("segment_index", index.to_string())
            .part("media", Part::bytes(bytes.to_vec()));
        self.append_as(&self.account.clone(), id, form).await
    }

    async fn finalize(&self, id: &str) -> Answer {
        self.post(&format!("/2/media/upload/{id}/finalize"), "")
            .await
    }

    async fn status(&self, id: &str) -> Answer {
        self.get(&format!("/2/media/upload?command=STATUS&media_id={id}"))
            .await
    }

    /// Uploads `bytes` in one segment and finalizes; the media id.
    async fn uploaded(&self, media_type: &str, category: &str, bytes: &[u8]) -> String {
        let id = self
            .initialized(media_type, bytes.len() as u64, category)
            .await;
        assert_eq!(self.append(&id, 0, bytes).await.status, 200);
        assert_eq!(self.finalize(&id).await.status, 200);
        id
    }

    async fn send_media(&self, media_id: &str) -> Answer {
        self.post(
            &with_participant(RECIPIENT),
            &json!({ "text": "see attached", "attachments": [{ "media_id": media_id }] })
                .to_string(),
        )
        .await
    }
}

fn assert_invalid(answer: &Answer, context: &str) {
    assert_eq!(answer.status, 400, "{context}: {}", answer.body);
    let problem = answer.json();
    assert_eq!(problem["type"], INVALID_REQUEST_TYPE, "{context}");
    assert_eq!(problem["title"], "Invalid Request", "{context}");
    assert!(problem["errors"][0]["message"].is_string(), "{context}");
}

#[tokio::test]
async fn an_image_uploads_in_segments_and_is_sent_in_a_dm() {
    let h = harness().await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10).collect();
    let init = h.initialize("image/jpeg", 10, "dm_image").await;
    assert_eq!(init.status, 200, "{}", init.body);
    assert_eq!(init.header("x-rate-limit-limit"), "1875");
    assert_eq!(init.header("x-rate-limit-remaining"), "1874");
    let data = &init.json()["data"];
    let id = data["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 19);
    assert_eq!(data["media_key"], format!("3_{id}"));
    assert_eq!(data["expires_after_secs"], 86_400);

    let first = h.append(&id, 0, &bytes[..6]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let expires_at = first.json()["data"]["expires_at"].as_i64().unwrap();
    assert!(expires_at > h.clock.now().timestamp() + 86_000);
    assert_eq!(h.append(&id, 1, &bytes[6..]).await.status, 200);

    let finalized = h.finalize(&id).await;
    assert_eq!(finalized.status, 200, "{}", finalized.body);
    let data = &finalized.json()["data"];
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["size"], 10);
    assert!(
        data.get("processing_info").is_none(),
        "images do not process"
    );

    let uploads = h.sim.uploads();
    assert_eq!(uploads.len(), 1);
    let upload = &uploads[0];
    assert_eq!(upload.user_id, h.user_id());
    assert_eq!(upload.media_type, "image/jpeg");
    assert_eq!(upload.category, "dm_image");
    assert_eq!(upload.total_bytes, 10);
    assert_eq!(upload.segments, [(0, 6), (1, 4)]);
    assert!(upload.finalized);
    assert_eq!(upload.processing, ProcessingState::Succeeded);
    assert_eq!(upload.bytes, bytes);
    let paths: Vec<String> = h.sim.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/2/media/upload/initialize".to_string(),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/finalize"),
        ]
    );

    let sent = h.send_media(&id).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    let dm = &h.sim.sent_dms()[0];
    assert_eq!(dm.media_ids, std::slice::from_ref(&id));
    let event = &h.sim.dm_events_for(h.user_id())[0];
    let attachment = event.attachment.as_ref().unwrap();
    assert_eq!(attachment.media_id, id);
    assert_eq!(attachment.media_type, MediaType::Photo);
}

#[tokio::test]
async fn segments_may_arrive_out_of_order_and_be_retried() {
    let h = harness().await;
    let id = h.initialized("image/png", 6, "dm_image").await;
    assert_eq!(h.append(&id, 1, b"def").await.status, 200);
    assert_eq!(h.append(&id, 0, b"xyz").await.status, 200);
    assert_eq!(h.append(&id, 0, b"abc").await.status, 200);
    assert_eq!(h.finalize(&id).await.status, 200);
    let upload = &h.sim.uploads()[0];
    assert_eq!(upload.segments, [(1, 3), (0, 3), (0, 3)]);
    assert_eq!(upload.bytes, b"abcdef");
}

#[tokio::test]
async fn a_video_processes_over_status_polls_before_it_can_be_sent() {
    let h = harness().await;
    h.sim
        .set_media_processing(h.user_id(), processing(2, ProcessingOutcome::Succeeded));
    let id = h.initialized("video/mp4", 8, "dm_video").await;
    assert_eq!(h.append(&id, 0, b"moovmdat").await.status, 200);
    let finalized = h.finalize(&id).await;
    let data = &finalized.json()["data"];
    assert_eq!(data["media_key"], format!("7_{id}"));
    assert_eq!(
        data["processing_info"],
        json!({ "state": "pending", "check_after_secs": 0 })
    );
    let refused = h.send_media(&id).await;
    assert_invalid(&refused, "still processing");
    assert!(
        refused.body.contains("still processing"),
        "{}",
        refused.body
    );

    let mut seen = Vec::new();
    for _ in 0..3 {
        let status = h.status(&id).await;
        assert_eq!(status.status, 200, "{}", status.body);
        assert_eq!(status.json()["data"]["id"], id.as_str());
        seen.push(status.json()["data"]["processing_info"].clone());
    }
    assert_eq!(
        seen,
        [
            json!({ "state": "in_progress", "check_after_secs": 0, "progress_percent": 33 }),
            json!({ "state": "in_progress", "check_after_secs": 0, "progress_percent": 66 }),
            json!({ "state": "succeeded", "progress_percent": 100 }),
        ]
    );
    assert_eq!(h.sim.uploads()[0].processing, ProcessingState::Succeeded);
    assert_eq!(h.send_media(&id).await.status, 201);
    let event = &h.sim.dm_events_for(h.user_id())[0];
    assert_eq!(
        event.attachment.as_ref().unwrap().media_type,
        MediaType::Video
    );
}

#[tokio::test]
async fn default_processing_is_one_poll_in_progress_with_a_one_second_hint() {
    let h = harness().await;
    let id = h.uploaded("image/gif", "dm_gif", b"GIF89a").await;
    assert_eq!(h.sim.uploads()[0].processing, ProcessingState::Pending);
    let first = h.status(&id).await.json();
    assert_eq!(first["data"]["media_key"], format!("16_{id}"));
    assert_eq!(first["data"]["processing_info"]["state"], "in_progress");
    assert_eq!(first["data"]["processing_info"]["check_after_secs"], 1);
    let second = h.status(&id).await.json();
    assert_eq!(second["data"]["processing_info"]["state"], "succeeded");
}

#[tokio::test]
async fn failed_processing_answers_xs_error_and_the_dm_is_refused() {
    let h = harness().await;
    h.sim.set_media_processing(
        h.user_id(),
        processing(
            0,
            ProcessingOutcome::Failed {
                message: "Unsupported video format".into(),
            },
        ),
    );
    let id = h.uploaded("video/mp4", "dm_video", b"not a video").await;
    let status = h.status(&id).await;
    let info = &status.json()["data"]["processing_info"];
    assert_eq!(info["state"], "failed");
    assert_eq!(
        info["error"],
        json!({ "code": 1, "name": "InvalidMedia", "message": "Unsupported video format" })
    );
    assert_eq!(
        h.sim.uploads()[0].processing,
        ProcessingState::Failed {
            message: "Unsupported video format".into()
        }
    );
    let refused = h.send_media(&id).await;
    assert_invalid(&refused, "failed media");
    assert!(refused.body.contains("Unsupported video format"));
    assert!(h.sim.sent_dms().is_empty());
}

#[tokio::test]
async fn initialize_refuses_what_x_refuses() {
    let h = harness().await;
    let cases = [
        init_body("image/jpeg", 10, "tweet_image"),
        init_body("image/jpeg", 10, "dm_video"),
        init_body("video/mp4", 10, "dm_image"),
        init_body("image/gif", 10, "dm_image"),
        init_body("image/jpeg", 0, "dm_image"),
        init_body("image/jpeg", 5 * MIB + 1, "dm_image"),
        init_body("image/gif", 15 * MIB + 1, "dm_gif"),
        init_body("video/mp4", 512 * MIB + 1, "dm_video"),
        r#"{"media_type":"image/jpeg","total_bytes":10}"#.into(),
        r#"{"media_type":"image/jpeg","total_bytes":"10","media_category":"dm_image"}"#.into(),
        r#"{"media_type":"image/jpeg","total_bytes":10,"media_category":"dm_image","x":1}"#.into(),
        "not json".into(),
    ];
    for body in cases {
        let answer = h.post("/2/media/upload/initialize", &body).await;
        assert_invalid(&answer, &body);
    }
    assert!(h.sim.uploads().is_empty());
    for (media_type, total, category) in [
        ("image/jpeg", 5 * MIB, "dm_image"),
        ("image/gif", 15 * MIB, "dm_gif"),
        ("video/mp4", 512 * MIB, "dm_video"),
    ] {
        let answer = h.initialize(media_type, total, category).await;
        assert_eq!(answer.status, 200, "{category} at its limit");
    }
}

#[tokio::test]
async fn append_refuses_unknown_foreign_finished_and_malformed_segments() {
    let h = harness().await;
    let other = Account::generate("other_support");
    h.sim.add_account(other.clone());

    assert_invalid(
        &h.append("1234567890123456789", 0, b"a").await,
        "unknown id",
    );

    let id = h.initialized("image/jpeg", 10, "dm_image").await;
    let foreign = Form::new()
        .text("segment_index", "0")
        .part("media", Part::bytes(b"a".to_vec()));
    assert_invalid(
        &h.append_as(&other, &id, foreign).await,
        "another user's id",
    );

    let no_index = Form::new().part("media", Part::bytes(b"a".to_vec()));
    assert_invalid(
        &h.append_as(&h.account.clone(), &id, no_index).await,
        "no segment_index",
    );
    let no_media = Form::new().text("segment_index", "0");
    assert_invalid(
        &h.append_as(&h.account.clone(), &id, no_media).await,
        "no media",
    );
    assert_invalid(&h.append(&id, 1000, b"a").await, "index over 999");
    let too_big = vec![0u8; MAX_SEGMENT_BYTES + 1];
    assert_invalid(&h.append(&id, 0, &too_big).await, "segment over 5 MiB");

    let url = h.url(&format!("/2/media/upload/{id}/append"));
    let authorization = h.authorization(&h.account, "POST", &url);
    let not_multipart = h
        .send(
            h.client
                .post(url)
                .header(AUTHORIZATION, authorization)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body("raw"),
        )
        .await;
    assert_invalid(&not_multipart, "not multipart");

    assert_eq!(h.append(&id, 0, &[7u8; 10]).await.status, 200);
    assert_eq!(h.finalize(&id).await.status, 200);
    assert_invalid(&h.append(&id, 1, b"a").await, "after finalize");
    assert_eq!(h.sim.uploads()[0].segments, [(0, 10)]);
}

#[tokio::test]
async fn finalize_refuses_gaps_wrong_sizes_and_foreign_ids() {
    let h = harness().await;
    let gap = h.initialized("image/jpeg", 2, "dm_image").await;
    assert_eq!(h.append(&gap, 0, b"a").await.status, 200);
    assert_eq!(h.append(&gap, 2, b"b").await.status, 200);
    assert_invalid(&h.finalize(&gap).await, "a gap");

    let short = h.initialized("image/jpeg", 5, "dm_image").await;
    assert_eq!(h.append(&short, 0, b"abcd").await.status, 200);
    assert_invalid(&h.finalize(&short).await, "4 of 5 bytes");
    let none = h.initialized("image/jpeg", 5, "dm_image").await;
    assert_invalid(&h.finalize(&none).await, "no segment");
    assert_invalid(&h.finalize("42").await, "unknown id");
    assert_invalid(&h.status(&short).await, "STATUS before finalize");
    assert!(h.sim.uploads().iter().all(|upload| !upload.finalized));

    // The upload is still open: the missing byte fixes it.
    assert_eq!(h.append(&short, 1, b"e").await.status, 200);
    assert_eq!(h.finalize(&short).await.status, 200);
    // A repeated FINALIZE (a retry after a lost answer) gets the same answer.
    let again = h.finalize(&short).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["data"]["size"], 5);
}

#[tokio::test]
async fn dm_sends_refuse_media_that_is_unknown_foreign_or_unfinished() {
    let h = harness().await;
    let other = Account::generate("other_support");
    h.sim.add_account(other.clone());

    assert_invalid(&h.send_media("1583157113245011970").await, "unknown media");

    let unfinished = h.initialized("image/jpeg", 3, "dm_image").await;
    assert_invalid(&h.send_media(&unfinished).await, "not finalized");

    let theirs_url = "/2/media/upload/initialize";
    let theirs = h
        .post_as(&other, theirs_url, &init_body("image/jpeg", 3, "dm_image"))
        .await;
    let theirs = theirs.json()["data"]["id"].as_str().unwrap().to_string();
    let refused = h.send_media(&theirs).await;
    assert_invalid(&refused, "another user's media");
    assert!(refused.body.contains("not uploaded by the sending user"));

    let two = json!({ "attachments": [{ "media_id": "1" }, { "media_id": "2" }] }).to_string();
    assert_invalid(
        &h.post(&with_participant(RECIPIENT), &two).await,
        "two attachments",
    );
    assert!(h.sim.sent_dms().is_empty());
}

#[tokio::test]
async fn account_faults_reach_the_upload_routes_as_they_reach_sends() {
    let h = harness().await;
    let cases = [
        (Fault::CreditsDepleted, 402, problems::CREDITS_DEPLETED),
        (Fault::PaymentRequired, 402, problems::PAYMENT_REQUIRED),
        (Fault::UsageCapped, 429, problems::USAGE_CAPPED),
        (Fault::NotEnrolled, 403, problems::CLIENT_NOT_ENROLLED),
        (Fault::Unauthorized, 401, problems::UNAUTHORIZED),
    ];
    for (fault, status, body) in cases {
        h.sim.set_fault(h.user_id(), fault.clone());
        let answer = h.initialize("image/jpeg", 3, "dm_image").await;
        assert_eq!(answer.status, status, "{fault:?}");
        assert_eq!(answer.body, body, "{fault:?}");
        h.sim.clear_faults(h.user_id());
    }
    assert!(h.sim.uploads().is_empty());

    // A counted outage hits whichever upload request comes next, and then clears.
    let id = h.initialized("image/jpeg", 3, "dm_image").await;
    h.sim.set_fault(
        h.user_id(),
        Fault::ServerError {
            status: 503,
            times: Some(1),
        },
    );
    assert_eq!(h.append(&id, 0, b"abc").await.status, 503);
    assert_eq!(h.append(&id, 0, b"abc").await.status, 200);

    h.sim.set_fault(h.user_id(), Fault::CreditsDepleted);
    assert_eq!(h.finalize(&id).await.status, 402);
    h.sim.clear_faults(h.user_id());

    // Uploading needs no DM permission, and read incidents stay with the reads.
    h.sim.set_fault(h.user_id(), Fault::MissingPermission);
    h.sim.set_fault(
        h.user_id(),
        Fault::ReadServerError {
            status: 500,
            times: None,
        },
    );
    let finalized = h.finalize(&id).await;
    assert_eq!(finalized.status, 200, "{}", finalized.body);
    assert_eq!(finalized.header("x-access-level"), "read-write");
}

#[tokio::test]
async fn a_timeout_fault_holds_an_upload_request() {
    let h = harness().await;
    h.sim
        .set_fault(h.user_id(), Fault::Timeout { times: Some(1) });
    h.post_expecting_timeout(
        "/2/media/upload/initialize",
        &init_body("image/jpeg", 3, "dm_image"),
    )
    .await;
    assert_eq!(h.initialize("image/jpeg", 3, "dm_image").await.status, 200);
}

#[tokio::test]
async fn uploads_have_their_own_rate_limit_window() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::UploadRateLimitWindow {
            limit: 2,
            window_secs: 60,
        },
    );
    let id = h.initialized("image/jpeg", 3, "dm_image").await;
    assert_eq!(h.append(&id, 0, b"abc").await.status, 200);
    let limited = h.finalize(&id).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.body, problems::RATE_LIMITED);
    assert_eq!(limited.header("x-rate-limit-limit"), "2");
    assert_eq!(limited.header("x-rate-limit-remaining"), "0");
    // The DM send window is untouched.
    let sent = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(sent.status, 201);
    assert_eq!(sent.header("x-rate-limit-remaining"), "999");

    h.clock.advance(Duration::from_secs(61));
    assert_eq!(h.finalize(&id).await.status, 200);
}

#[tokio::test]
async fn processing_can_be_steered_and_uploads_listed_over_http() {
    let h = harness().await;
    let set = h
        .send(h.client.post(h.url("/_sim/media_processing")).json(&json!({
            "user_id": h.user_id(),
            "processing": {
                "status_polls_before_done": 0,
                "outcome": { "kind": "failed", "message": "Video too long" },
                "check_after_secs": 0,
            },
        })))
        .await;
    assert_eq!(set.status, 204, "{}", set.body);
    let unknown = h
        .send(
            h.client
                .post(h.url("/_sim/media_processing"))
                .json(&json!({ "user_id": "1" })),
        )
        .await;
    assert_eq!(unknown.status, 404);

    let id = h.uploaded("video/mp4", "dm_video", b"clip").await;
    let info = h.status(&id).await.json()["data"]["processing_info"].clone();
    assert_eq!(info["error"]["message"], "Video too long");

    let mut url = h.url("/_sim/uploads");
    url.query_pairs_mut().append_pair("user_id", h.user_id());
    let listed = h.send(h.client.get(url)).await.json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["segments"], json!([[0, 4]]));
    assert_eq!(listed[0]["size"], 4);
    assert_eq!(listed[0]["processing"]["state"], "failed");
    assert!(listed[0].get("bytes").is_none());

    h.sim.reset();
    assert!(h.sim.uploads().is_empty());
}

#[tokio::test]
async fn media_only_dm_is_recorded_with_its_media_id() {
    let h = harness().await;
    let id = h.uploaded("image/webp", "dm_image", b"RIFF").await;
    let answer = h
        .post(
            &with_participant(RECIPIENT),
            &json!({ "attachments": [{ "media_id": id }] }).to_string(),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let dm = &h.sim.sent_dms()[0];
    assert_eq!(dm.text, "");
    assert_eq!(dm.media_ids, [id]);
}
