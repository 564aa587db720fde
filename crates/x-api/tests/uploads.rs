//! Media uploads against the project's X simulator, which checks OAuth 1.0a signatures,
//! parses the multipart APPENDs with a parser of its own and records every segment.

use std::time::Duration;

use x_simulator::{
    Account, Fault, MediaProcessing, MediaType, ProcessingOutcome, ProcessingState, Simulator,
    SimulatorConfig,
};
use xbridge_x_api::{
    DmTarget, MediaCategory, MediaUpload, MediaUploadConfig, UserCredentials, XClient,
    XClientConfig, XError,
};

const CUSTOMER: &str = "1072250532645998596";

async fn simulator(account: &Account) -> Simulator {
    Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("the simulator starts")
}

/// A client cutting media into `segment_bytes` APPENDs.
fn client(sim: &Simulator, account: &Account, segment_bytes: usize) -> XClient {
    XClient::new(
        XClientConfig {
            base_url: sim.base_url(),
            request_timeout: Duration::from_secs(10),
            media: MediaUploadConfig {
                segment_bytes,
                processing_timeout: Duration::from_secs(30),
                ..MediaUploadConfig::default()
            },
        },
        UserCredentials {
            consumer_key: account.consumer_key.clone().into(),
            consumer_secret: account.consumer_secret.clone().into(),
            access_token: account.access_token.clone().into(),
            access_token_secret: account.access_token_secret.clone().into(),
        },
    )
    .unwrap()
}

/// Processing that answers at once: `polls` polls in progress, then `outcome`.
fn quick(polls: u32, outcome: ProcessingOutcome) -> MediaProcessing {
    MediaProcessing {
        status_polls_before_done: polls,
        outcome,
        check_after_secs: 0,
    }
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn upload(
    client: &XClient,
    media_type: &str,
    category: MediaCategory,
    bytes: &[u8],
) -> Result<xbridge_x_api::UploadedMedia, XError> {
    let mut reader = bytes;
    client
        .upload_media(MediaUpload {
            media_type,
            category,
            total_bytes: bytes.len() as u64,
            reader: &mut reader,
        })
        .await
}

/// The paths the account's requests went to, in order.
fn paths(sim: &Simulator, account: &Account) -> Vec<String> {
    sim.requests_for(&account.user_id)
        .into_iter()
        .map(|request| request.path)
        .collect()
}

#[tokio::test]
async fn an_image_goes_up_in_segments_in_order_and_arrives_byte_for_byte() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let client = client(&sim, &account, 4);
    let bytes = sample(10);

    let media = upload(&client, "image/jpeg", MediaCategory::DmImage, &bytes)
        .await
        .unwrap();

    assert_eq!(media.media_key, format!("3_{}", media.media_id));
    let id = &media.media_id;
    assert_eq!(
        paths(&sim, &account),
        [
            "/2/media/upload/initialize".to_owned(),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/finalize"),
        ]
    );
    let uploads = sim.uploads_for(&account.user_id);
    assert_eq!(uploads.len(), 1);
    let recorded = &uploads[0];
    assert_eq!(&recorded.id, id);
    assert_eq!(recorded.media_type, "image/jpeg");
    assert_eq!(recorded.category, "dm_image");
    assert_eq!(recorded.segments, [(0, 4), (1, 4), (2, 2)]);
    assert!(recorded.finalized);
    assert_eq!(recorded.processing, ProcessingState::Succeeded);
    assert_eq!(recorded.bytes, bytes);
    // The send window was not touched: uploads are paced apart.
    assert_eq!(client.pacer().blocked_until(), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_video_from_a_spooled_file_waits_for_processing() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_media_processing(&account.user_id, quick(2, ProcessingOutcome::Succeeded));
    let client = client(&sim, &account, 1024);
    let bytes = sample(3000);
    let spool = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(spool.path(), &bytes).unwrap();
    let mut file = tokio::fs::File::open(spool.path()).await.unwrap();

    let media = client
        .upload_media(MediaUpload {
            media_type: "video/mp4",
            category: MediaCategory::DmVideo,
            total_bytes: bytes.len() as u64,
            reader: &mut file,
        })
        .await
        .unwrap();

    assert!(media.media_key.starts_with("7_"), "{media:?}");
    let id = &media.media_id;
    let status = "/2/media/upload".to_owned();
    assert_eq!(
        paths(&sim, &account),
        [
            "/2/media/upload/initialize".to_owned(),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/append"),
            format!("/2/media/upload/{id}/finalize"),
            status.clone(),
            status.clone(),
            status,
        ]
    );
    let recorded = &sim.uploads_for(&account.user_id)[0];
    assert_eq!(recorded.segments, [(0, 1024), (1, 1024), (2, 952)]);
    assert_eq!(recorded.processing, ProcessingState::Succeeded);
    assert_eq!(recorded.bytes, bytes);
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_processing_is_a_permanent_error_with_xs_message() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_media_processing(
        &account.user_id,
        quick(
            1,
            ProcessingOutcome::Failed {
                message: "Unsupported video format".into(),
            },
        ),
    );
    let client = client(&sim, &account, 4096);

    let error = upload(&client, "image/gif", MediaCategory::DmGif, b"GIF89a")
        .await
        .unwrap_err();

    let XError::MediaProcessingFailed { media_id, detail } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(detail, "Unsupported video format");
    assert_eq!(&sim.uploads()[0].id, media_id);
    assert_eq!(error.detail(), "Unsupported video format");
    assert_eq!(error.http_status(), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn out_of_credits_at_initialize_is_credits_exhausted() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_fault(&account.user_id, Fault::CreditsDepleted);
    let client = client(&sim, &account, 4096);

    let error = upload(&client, "image/png", MediaCategory::DmImage, b"png")
        .await
        .unwrap_err();

    assert!(
        matches!(error, XError::CreditsExhausted { status: 402, .. }),
        "{error:?}"
    );
    assert_eq!(paths(&sim, &account), ["/2/media/upload/initialize"]);
    assert!(sim.uploads().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn an_outage_during_an_upload_is_transient() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let client = client(&sim, &account, 2);
    sim.set_fault(
        &account.user_id,
        Fault::ServerError {
            status: 503,
            times: None,
        },
    );
    let error = upload(&client, "image/png", MediaCategory::DmImage, b"abcd")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            XError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{error:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_used_up_upload_window_holds_uploads_but_not_sends() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_fault(
        &account.user_id,
        Fault::UploadRateLimitWindow {
            limit: 3,
            window_secs: 900,
        },
    );
    // INITIALIZE, one APPEND and FINALIZE use the window up; the client learns from the
    // headers that none is left, so its next upload request waits for the reset.
    let learner = client(&sim, &account, 4096);
    upload(&learner, "image/png", MediaCategory::DmImage, b"abcd")
        .await
        .unwrap();
    assert!(learner.upload_pacer().blocked_until().is_some());
    assert!(
        tokio::time::timeout(Duration::ZERO, learner.upload_pacer().ready())
            .await
            .is_err(),
        "no upload request before the reset"
    );

    // A client that did not know gets X's 429, and its upload pacer learns the reset.
    let other = client(&sim, &account, 4096);
    let error = upload(&other, "image/png", MediaCategory::DmImage, b"abcd")
        .await
        .unwrap_err();
    let XError::RateLimited { reset_at, .. } = error else {
        panic!("{error:?}")
    };
    assert!(reset_at.expect("X said when") > chrono::Utc::now());
    assert!(other.upload_pacer().blocked_until().is_some());

    // Sends draw from their own window.
    for client in [&learner, &other] {
        assert_eq!(client.pacer().blocked_until(), None);
        client
            .send_dm(&DmTarget::Participant(CUSTOMER.into()), "text still goes")
            .await
            .expect("sends are unaffected by the upload window");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_reader_shorter_than_declared_fails_before_finalize() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let client = client(&sim, &account, 4096);
    let mut reader: &[u8] = b"abc";
    let error = client
        .upload_media(MediaUpload {
            media_type: "image/png",
            category: MediaCategory::DmImage,
            total_bytes: 5,
            reader: &mut reader,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, XError::InvalidRequest { status: 400, .. }),
        "{error:?}"
    );
    assert!(!sim.uploads()[0].finalized);
    let too_big = client
        .upload_media(MediaUpload {
            media_type: "image/png",
            category: MediaCategory::DmImage,
            total_bytes: MediaCategory::DmImage.max_bytes() + 1,
            reader: &mut reader,
        })
        .await
        .unwrap_err();
    assert!(matches!(too_big, XError::InvalidRequest { .. }));
    assert_eq!(sim.uploads().len(), 1, "refused locally, no request");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dm_carries_the_uploaded_media() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_media_processing(&account.user_id, quick(0, ProcessingOutcome::Succeeded));
    let client = client(&sim, &account, 4096);
    let target = DmTarget::Participant(CUSTOMER.into());

    let photo = upload(&client, "image/jpeg", MediaCategory::DmImage, b"jpeg")
        .await
        .unwrap();
    let sent = client
        .send_dm_with_media(&target, "Your invoice", Some(&photo.media_id))
        .await
        .unwrap();
    let video = upload(&client, "video/mp4", MediaCategory::DmVideo, b"mp4")
        .await
        .unwrap();
    client
        .send_dm_with_media(&target, "", Some(&video.media_id))
        .await
        .expect("a DM of only media");

    let dms = sim.sent_dms_for(&account.user_id);
    assert_eq!(dms[0].dm_event_id, sent.dm_event_id);
    assert_eq!(dms[0].text, "Your invoice");
    assert_eq!(dms[0].media_ids, [photo.media_id]);
    assert_eq!(dms[1].text, "");
    assert_eq!(dms[1].media_ids, [video.media_id]);
    let events = sim.dm_events_for(&account.user_id);
    assert_eq!(
        events[1].attachment.as_ref().unwrap().media_type,
        MediaType::Video
    );

    // Media X does not know is refused by X, and a non-id locally.
    let error = client
        .send_dm_with_media(&target, "hi", Some("1583157113245011970"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, XError::InvalidRequest { status: 400, .. }),
        "{error:?}"
    );
    assert!(error.detail().contains("does not exist"), "{error}");
    assert!(client
        .send_dm_with_media(&target, "", Some("../x"))
        .await
        .is_err());
    assert_eq!(sim.sent_dms().len(), 2);
    sim.shutdown().await;
}
