//! Inbound media end to end at library level: the simulator delivers a media DM to the
//! webhook (or the poller finds it), the published event carries a signed URL of the
//! bridge, and the media proxy on the same server fetches the media from the simulator
//! with the channel's OAuth signature and streams it through. Real RabbitMQ.
//!
//! Failures are driven by the simulator's `media_*` faults; the timeout case relies on the
//! proxy's own (short) timeout, never on a sleep.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod common;
use common::Broker;

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use secrecy::SecretString;
use serde_json::Value;
use url::Url;
use x_simulator::{Customer, Fault, MediaSpec};
use xbridge_inbound::delivery::sink::AmqpSink;
use xbridge_inbound::media::links::MediaLinks;
use xbridge_inbound::media::proxy::{self as media_proxy, MediaProxy};
use xbridge_inbound::polling::poller::{poll_once, PollBudget, PollContext};
use xbridge_inbound::webhook::server::{router, WebhookChannel, WebhookConfig, WebhookState};
use xbridge_store::EmbeddedStore;
use xbridge_test_support::{assert_valid, spawn_app, TestApp, TestOptions};
use xbridge_x_api::{UserCredentials, XClient, XClientConfig};

const PATIENCE: Duration = Duration::from_secs(30);
/// The proxy's timeout in these tests: short, since the timeout test waits for it.
const MEDIA_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_BYTES: u64 = 64 * 1024;
/// The media URLs' key in these tests.
const SIGNING_KEY: &str = "a-test-signing-key-of-32-characters!";

struct World {
    app: TestApp,
    base: String,
    http: reqwest::Client,
    links: Arc<MediaLinks>,
    poll: PollContext,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl World {
    /// The bridge's inbound HTTP server (webhook + media proxy) for channel "acme", its
    /// account subscribed to the webhook when `subscribe`.
    async fn start(subscribe: bool) -> World {
        let app = spawn_app(TestOptions::default()).await;
        let account = app.account("acme").clone();
        let client = XClient::new(
            XClientConfig {
                base_url: app.simulator.base_url(),
                request_timeout: Duration::from_secs(10),
                ..XClientConfig::default()
            },
            UserCredentials {
                consumer_key: account.consumer_key.clone().into(),
                consumer_secret: account.consumer_secret.clone().into(),
                access_token: account.access_token.clone().into(),
                access_token_secret: account.access_token_secret.clone().into(),
            },
        )
        .unwrap();
        let broker = Broker::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let sink = Arc::new(AmqpSink::new(
            broker.publisher.clone(),
            broker.names.incoming_exchange.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let links = Arc::new(MediaLinks::new(
            SecretString::from(SIGNING_KEY),
            Some(Url::parse(&base).unwrap()),
            Duration::from_secs(3600),
            vec![app.simulator.base_url().origin().ascii_serialization()],
        ));
        let state = WebhookState::new(
            vec![WebhookChannel {
                name: "acme".into(),
                consumer_key: SecretString::from(account.consumer_key.clone()),
                consumer_secret: SecretString::from(account.consumer_secret.clone()),
                own_user_id: Some(account.user_id.clone()),
            }],
            sink.clone(),
            store.clone(),
            WebhookConfig::default(),
        )
        .with_media(links.clone());
        let proxy = Arc::new(MediaProxy::new(
            links.clone(),
            HashMap::from([("acme".to_owned(), client.clone())]),
            MAX_BYTES,
            MEDIA_TIMEOUT,
        ));
        let server = router(Arc::new(state)).merge(media_proxy::router(proxy));
        tokio::spawn(async move { axum::serve(listener, server).await });
        if subscribe {
            app.subscribe_webhook("acme", &format!("{base}/webhooks/acme"))
                .await;
        }
        let poll = PollContext {
            channel: "acme".into(),
            own_user_id: account.user_id.clone(),
            client,
            store,
            sink,
            publish_echoes: true,
            backfill: Some(Duration::from_secs(3600)),
            profiles: None,
            media: Some(links.clone()),
            in_flight: Default::default(),
        };
        World {
            app,
            base,
            http: reqwest::Client::new(),
            links,
            poll,
            broker,
            _dir: dir,
        }
    }

    fn customer_sends(&self, media: MediaSpec) -> x_simulator::DmEvent {
        self.app.simulator.customer_dm(
            &self.app.user_id("acme"),
            &Customer::generate("jane_doe"),
            "look",
            Some(media),
        )
    }

    async fn next_event(&mut self) -> Value {
        let delivery = tokio::time::timeout(PATIENCE, self.broker.events.next())
            .await
            .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for an event"))
            .expect("the consumer is open")
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        serde_json::from_slice(&delivery.data).expect("events are JSON")
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .timeout(PATIENCE)
            .send()
            .await
            .expect("the proxy answers")
    }

    /// GETs `url` and returns the status and the problem's `error` field.
    async fn refused(&self, url: &str) -> (u16, String) {
        let response = self.get(url).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON problem");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// A photo of recognisable bytes.
fn photo(bytes: &[u8]) -> MediaSpec {
    MediaSpec {
        content: Some(bytes.to_vec()),
        ..MediaSpec::photo()
    }
}

#[tokio::test]
async fn a_webhook_photo_is_served_through_a_signed_url_and_altered_urls_are_refused() {
    let mut world = World::start(true).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let dm = world.customer_sends(photo(&bytes));
    let event = world.next_event().await;
    assert_valid("message-received", &event);
    assert_eq!(event["event_id"], dm.id.as_str());
    let attachment = &event["attachments"][0];
    let x_media = dm.attachment.clone().unwrap();
    assert_eq!(attachment["kind"], "photo");
    assert_eq!(attachment["media_id"], x_media.media_id.as_str());
    assert_eq!(attachment["media_key"], Value::Null, "webhooks give no key");
    assert_eq!(attachment["width"], 1280);
    assert_eq!(attachment["height"], 720);
    assert_eq!(attachment["preview_url"], Value::Null);
    assert!(
        !event.to_string().contains(&x_media.url),
        "X's URL is never published"
    );
    let url = attachment["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/media/acme/v1.", world.base)),
        "{url}"
    );

    let response = world.get(&url).await;
    assert_eq!(response.status(), 200);
    let (content_type, expected) = world.app.simulator.media_content(&x_media.url).unwrap();
    assert_eq!(response.headers()["content-type"], content_type.as_str());
    assert_eq!(response.content_length(), Some(expected.len() as u64));
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        expected.as_slice()
    );
    assert_eq!(expected, bytes);

    // Altered: a signature character, the expiry, the event id, the channel, a query.
    let (prefix, signature) = url.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let altered = [
        format!("{prefix}.{flipped}{}", &signature[1..]),
        url.replacen("/v1.", "/v1.9", 1),
        url.replacen(&format!(".{}.", dm.id), &format!(".{}1.", dm.id), 1),
        url.replacen("/media/acme/", "/media/acmf/", 1),
        format!("{url}?x=1"),
    ];
    for url in &altered {
        let (status, _) = world.refused(url).await;
        assert!(status == 403 || status == 404, "{url}: {status}");
    }
    assert_eq!(
        world.refused(&altered[0]).await,
        (403, "invalid_url".into())
    );
    assert_eq!(
        world.refused(&altered[1]).await,
        (403, "invalid_url".into())
    );
    assert_eq!(
        world.refused(&altered[4]).await,
        (403, "invalid_url".into())
    );
    assert_eq!(
        world.refused(&altered[3]).await,
        (404, "unknown_channel".into())
    );

    // Genuine but expired.
    let expired = world
        .links
        .link_at(
            "acme",
            &dm.id,
            &x_media.url,
            SystemTime::now() - Duration::from_secs(7200),
        )
        .unwrap();
    assert_eq!(world.refused(&expired).await, (403, "expired".into()));
}

#[tokio::test]
async fn a_video_is_its_best_mp4_and_its_preview_is_proxied_too() {
    let mut world = World::start(true).await;
    let video = MediaSpec {
        content: Some(b"\x00\x00\x00\x18ftypmp42 not a real video".to_vec()),
        ..MediaSpec::video()
    };
    let dm = world.customer_sends(video);
    let event = world.next_event().await;
    assert_valid("message-received", &event);
    let attachment = &event["attachments"][0];
    assert_eq!(attachment["kind"], "video");
    assert_eq!(attachment["duration_ms"], 5000);

    let x_media = dm.attachment.unwrap();
    let best = x_media
        .variants
        .iter()
        .max_by_key(|variant| variant.bit_rate)
        .unwrap();
    let response = world.get(attachment["url"].as_str().unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    let (_, expected) = world.app.simulator.media_content(&best.url).unwrap();
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        expected.as_slice()
    );

    let preview = world.get(attachment["preview_url"].as_str().unwrap()).await;
    assert_eq!(preview.status(), 200);
    assert_eq!(preview.headers()["content-type"], "image/jpeg");
}

#[tokio::test]
async fn x_failures_become_502_504_and_oversized_media_is_refused_or_cut() {
    let mut world = World::start(true).await;
    let user = world.app.user_id("acme");
    world.customer_sends(photo(b"small"));
    let event = world.next_event().await;
    let url = event["attachments"][0]["url"].as_str().unwrap().to_owned();

    world.app.simulator.set_fault(
        &user,
        Fault::MediaServerError {
            status: 503,
            times: Some(1),
        },
    );
    assert_eq!(world.refused(&url).await, (502, "x_error".into()));

    // X holds the download: the proxy's own timeout answers.
    world
        .app
        .simulator
        .set_fault(&user, Fault::MediaTimeout { times: Some(1) });
    assert_eq!(world.refused(&url).await, (504, "x_timeout".into()));

    // X announces more than allowed: refused before anything is streamed.
    world.app.simulator.set_fault(
        &user,
        Fault::MediaLargeBody {
            bytes: MAX_BYTES + 1,
            content_length: true,
        },
    );
    assert_eq!(world.refused(&url).await, (502, "too_large".into()));

    // X streams more than allowed without saying so: the stream is cut, so the client
    // never takes a truncated body for the whole media.
    world.app.simulator.set_fault(
        &user,
        Fault::MediaLargeBody {
            bytes: 4 * MAX_BYTES,
            content_length: false,
        },
    );
    let response = world.get(&url).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the body must break off");

    // A body exactly at the bound passes.
    world.app.simulator.set_fault(
        &user,
        Fault::MediaLargeBody {
            bytes: MAX_BYTES,
            content_length: false,
        },
    );
    let response = world.get(&url).await;
    assert_eq!(response.bytes().await.unwrap().len() as u64, MAX_BYTES);

    world.app.simulator.clear_faults(&user);
    assert_eq!(
        world.get(&url).await.bytes().await.unwrap().as_ref(),
        b"small"
    );
}

#[tokio::test]
async fn a_polled_photo_carries_its_key_and_a_working_url() {
    let mut world = World::start(false).await;
    let dm = world.customer_sends(photo(b"polled bytes"));
    let mut budget = PollBudget::default();
    let outcome = poll_once(&world.poll, &mut budget).await.unwrap();
    assert!(outcome.delivered >= 1, "{outcome:?}");
    let event = world.next_event().await;
    assert_valid("message-received", &event);
    assert_eq!(event["received_via"], "poll");
    let attachment = &event["attachments"][0];
    let x_media = dm.attachment.unwrap();
    assert_eq!(attachment["media_key"], x_media.media_key.as_str());
    assert_eq!(attachment["media_id"], x_media.media_id.as_str());
    let response = world.get(attachment["url"].as_str().unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"polled bytes");
}

/// A media URL of the proxy for `x_url`, signed with the test's key the way the bridge
/// signs (`v1.<expires>.<event id>.<X's URL, base64url>.<HMAC-SHA256>`), but without the
/// bridge's own checks: what someone holding a leaked key can make.
fn signed_with_the_key(base: &str, channel: &str, x_url: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let expires = (SystemTime::now() + Duration::from_secs(3600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let event_id = "1585047616894574596";
    let url = URL_SAFE_NO_PAD.encode(x_url);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SIGNING_KEY.as_bytes()).unwrap();
    for part in [
        "xbridge media url v1",
        channel,
        expires.as_str(),
        event_id,
        url.as_str(),
    ] {
        mac.update(part.as_bytes());
        mac.update(b"\0");
    }
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{base}/media/{channel}/v1.{expires}.{event_id}.{url}.{signature}")
}

#[tokio::test]
async fn a_signed_url_for_another_x_api_endpoint_is_refused_without_a_request_to_x() {
    let world = World::start(false).await;
    let x = world.app.simulator.base_url();
    // The key is right: a DM's media on the same origin is served...
    let dm = world.customer_sends(photo(b"genuine"));
    let genuine = signed_with_the_key(&world.base, "acme", &dm.attachment.unwrap().url);
    let response = world.get(&genuine).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"genuine");
    let requests = world.app.simulator.requests().len();

    // ...but no other endpoint of X's API, with the channel's credentials or at all.
    for endpoint in [
        "2/users/me",
        "2/dm_events",
        "2/dm_events?dm_event.fields=text,sender_id",
        "2/dm_conversations/with/944480690/messages",
        "1.1/ton/data/dm/1/2/../../../../../2/users/me",
    ] {
        let url = signed_with_the_key(&world.base, "acme", x.join(endpoint).unwrap().as_str());
        assert_eq!(
            world.refused(&url).await,
            (403, "not_dm_media".into()),
            "{endpoint}"
        );
    }
    assert_eq!(
        world.app.simulator.requests().len(),
        requests,
        "no request reached X: {:?}",
        &world.app.simulator.requests()[requests..]
    );
}
