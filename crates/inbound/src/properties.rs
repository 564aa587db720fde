//! Property tests of the inbound side's parsers of outside input: webhook bodies (Account
//! Activity and X Activity shapes), `GET /2/dm_events` pages, the webhook's signature
//! header and CRC query, and the media proxy's signed tokens.
//!
//! Each property feeds arbitrary bytes and valid bodies with wrong fields (from
//! `xbridge-arbitrary`) and checks the outcome is classified: a body is read or refused
//! with a [`PayloadError`], an event that cannot be read is an `Ignored` item with a
//! reason, and nothing panics. What the CRM receives is checked to be well-formed, and
//! every reason and error text to be bounded, since they are logged and answered.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{json, Value};
use url::Url;
use xbridge_arbitrary as arbitrary;
use xbridge_core::contract::DirectMessage;

use crate::media::links::{LinkError, MediaLinks};
use crate::test_support::fixture;
use crate::webhook::auth::{crc_response_token, is_crc_token, verify_signature, SignatureError};
use crate::x::dm_events::parse_dm_events;
use crate::x::error::PayloadError;
use crate::x::item::InboundItem;
use crate::x::webhook_body::parse_webhook;

/// The longest reason or error text a body may earn: they are logged for every event
/// and a webhook error is answered to the caller, so they must not grow with the body.
const MAX_TEXT_BYTES: usize = 600;

/// The account the pages are read for.
const ACCOUNT: &str = "906948460078698496";

fn fixture_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("fixtures are JSON")
}

/// Valid webhook bodies: the recorded AAA bodies, and an X Activity envelope around them.
fn webhook_bodies() -> Vec<Value> {
    let dm = fixture_value(fixture!("webhook_aaa_dm.json"));
    let media = fixture_value(fixture!("webhook_aaa_dm_media.json"));
    let typing = fixture_value(fixture!("webhook_aaa_typing.json"));
    let read = json!({"for_user_id":"4337869213","direct_message_mark_read_events":[
        {"created_timestamp":"1518452444662","sender_id":"3001969357",
         "target":{"recipient_id":"4337869213"},"last_read_event_id":"963085315333238788"}]});
    let xaa = json!({"data": {
        "event_uuid": "c8c3a2a5-0a4b-4d5a-9d8e-6a1d9b2c3e4f",
        "event_type": "dm.received",
        "filter": {"user_id": media["for_user_id"]},
        "payload": {
            "direct_message_events": media["direct_message_events"],
            "users": {"3001969357": {"data": {"id": "3001969357", "username": "jo", "name": "Jo"}}}
        }
    }});
    vec![dm, media, typing, read, xaa]
}

/// Valid `GET /2/dm_events` pages.
fn pages() -> Vec<Value> {
    vec![
        fixture_value(fixture!("dm_events_expanded_200.json")),
        fixture_value(fixture!("conversation_dm_events_200.json")),
        fixture_value(fixture!("dm_events_empty_200.json")),
    ]
}

fn is_id(id: &(impl AsRef<str> + ?Sized)) -> bool {
    let id = id.as_ref();
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

fn is_conversation_id(id: &(impl AsRef<str> + ?Sized)) -> bool {
    let id = id.as_ref();
    match id.split_once('-') {
        Some((a, b)) => is_id(a) && is_id(b),
        None => (15..=19).contains(&id.len()) && is_id(id),
    }
}

/// What the contract promises of a DM the CRM receives.
fn assert_well_formed(message: &DirectMessage) -> Result<(), TestCaseError> {
    prop_assert!(is_id(&message.event_id), "{:?}", message.event_id);
    prop_assert!(is_id(&message.sender.id), "{:?}", message.sender.id);
    prop_assert!(is_id(&message.recipient_id), "{:?}", message.recipient_id);
    prop_assert!(
        is_conversation_id(&message.conversation_id),
        "{:?}",
        message.conversation_id
    );
    for attachment in &message.attachments {
        if let Some(id) = &attachment.media_id {
            prop_assert!(is_id(id), "{id:?}");
        }
    }
    Ok(())
}

fn assert_bounded(what: &str, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!text.is_empty(), "{what} is empty");
    prop_assert!(
        text.len() <= MAX_TEXT_BYTES,
        "{what} is {} bytes: {}…",
        text.len(),
        text.chars().take(200).collect::<String>()
    );
    Ok(())
}

fn assert_items(items: &[InboundItem]) -> Result<(), TestCaseError> {
    for item in items {
        match item {
            InboundItem::Message(message) => assert_well_formed(message)?,
            InboundItem::Typing(typing) => {
                prop_assert!(is_id(&typing.sender_id) && is_id(&typing.recipient_id));
            }
            InboundItem::Read(read) => {
                prop_assert!(is_id(&read.reader_id) && is_id(&read.last_read_event_id));
            }
            InboundItem::Ignored { event_id, reason } => {
                if let Some(id) = event_id {
                    prop_assert!(is_id(id), "{id:?}");
                }
                assert_bounded("an ignored event's reason", reason)?;
            }
        }
    }
    Ok(())
}

fn check_webhook(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_webhook(body) {
        Ok(delivery) => {
            if let Some(account) = &delivery.for_user_id {
                prop_assert!(is_id(account), "{account:?}");
            }
            let has_events = delivery
                .items
                .iter()
                .any(|item| !matches!(item, InboundItem::Ignored { .. }));
            // Events the bridge would publish always name the account they are for.
            prop_assert!(!has_events || delivery.for_user_id.is_some());
            assert_items(&delivery.items)
        }
        Err(error) => assert_payload_error(&error),
    }
}

fn assert_payload_error(error: &PayloadError) -> Result<(), TestCaseError> {
    assert_bounded("a payload error", &error.to_string())
}

fn check_page(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_dm_events(body, ACCOUNT) {
        Ok(page) => {
            if let Some(token) = &page.next_token {
                // The poller sends it back as `pagination_token`, where the X client
                // refuses anything else.
                prop_assert!(
                    !token.is_empty()
                        && token.len() <= 256
                        && token.bytes().all(|b| b.is_ascii_alphanumeric()),
                    "{token:?}"
                );
            }
            for error in &page.partial_errors {
                assert_bounded("a partial error", error)?;
            }
            assert_items(&page.items)
        }
        Err(error) => assert_payload_error(&error),
    }
}

/// Runs `check` on `body`, naming the body when it fails.
fn sweep(bodies: Vec<Value>, check: fn(&[u8]) -> Result<(), TestCaseError>) {
    for template in bodies {
        for body in arbitrary::each_field(&template, &arbitrary::samples()) {
            if let Err(failure) = check(&arbitrary::to_bytes(&body)) {
                let shown: String = body.to_string().chars().take(400).collect();
                panic!("{failure} for {shown}");
            }
        }
    }
}

/// Every field of every recorded webhook body replaced by each hostile sample, and each
/// left out.
#[test]
fn every_field_of_a_webhook_body_may_be_wrong() {
    sweep(webhook_bodies(), check_webhook);
}

/// Every field of every recorded page replaced by each hostile sample, and each left out.
#[test]
fn every_field_of_a_dm_events_page_may_be_wrong() {
    sweep(pages(), check_page);
}

const SECRET: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";

fn links() -> MediaLinks {
    MediaLinks::new(
        SecretString::from("k".repeat(32)),
        Some(Url::parse("https://bridge.example.com/xb/").expect("a URL")),
        Duration::from_secs(3600),
        vec!["https://ton.twitter.com".into()],
    )
}

const TON: &str =
    "https://ton.twitter.com/1.1/ton/data/dm/1221092871941558276/1221092866912550912/a.png";

/// A genuine token of [`links`] for channel `acme`, issued at second 1,000,000.
fn genuine_token() -> String {
    let url = links()
        .link_at(
            "acme",
            "1221092871941558276",
            TON,
            UNIX_EPOCH + Duration::from_secs(1_000_000),
        )
        .expect("a link");
    url.rsplit('/').next().expect("a token").to_owned()
}

/// Tokens: anything, things shaped like tokens, and the genuine one with a change.
fn token() -> impl Strategy<Value = String> {
    let genuine = genuine_token();
    prop_oneof![
        any::<String>(),
        "v1\\.[0-9]{1,25}\\.[0-9a-z]{0,25}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_=-]{0,50}",
        (any::<prop::sample::Index>(), any::<char>()).prop_map(move |(at, c)| {
            let mut chars: Vec<char> = genuine.chars().collect();
            let i = at.index(chars.len());
            chars[i] = c;
            chars.into_iter().collect()
        }),
        arbitrary::string(),
    ]
}

/// The webhook's HTTP server, started once for every case of the CRC property: its
/// runtime (which serves it between cases), its base URL and its state folder.
struct Server {
    runtime: tokio::runtime::Runtime,
    base: String,
    _dir: tempfile::TempDir,
}

fn webhook_server() -> &'static Server {
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a folder");
        let base = runtime.block_on(serve_webhook(dir.path()));
        Server {
            runtime,
            base,
            _dir: dir,
        }
    })
}

/// A sink that takes everything: the CRC never publishes.
struct NoSink;

#[async_trait::async_trait]
impl crate::delivery::sink::EventSink for NoSink {
    async fn publish(
        &self,
        _event: &xbridge_core::contract::EventToCrm,
    ) -> Result<(), crate::delivery::sink::SinkError> {
        Ok(())
    }
}

/// The webhook router for one channel `acme` signed with [`SECRET`], served on a free
/// port; its base URL.
async fn serve_webhook(dir: &std::path::Path) -> String {
    use crate::webhook::server::{router, WebhookChannel, WebhookConfig, WebhookState};
    let store = Arc::new(
        xbridge_store::EmbeddedStore::open(&dir.join("state.redb")).expect("a state file"),
    );
    let state = WebhookState::new(
        vec![WebhookChannel {
            name: "acme".into(),
            consumer_key: SecretString::from("acme-consumer-key"),
            consumer_secret: SecretString::from(SECRET),
            own_user_id: Some("4337869213".into()),
        }],
        Arc::new(NoSink),
        store,
        WebhookConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let app = router(Arc::new(state));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Query strings for the CRC: with and without a token, encoded or not, repeated,
/// invalid percent-escapes and UTF-8, and anything else.
fn crc_query() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[A-Za-z0-9_.~-]{0,64}",
        any::<String>().prop_map(|s| { percent_encode(&s) }),
        Just("%FF%FE".to_owned()),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just("a+b%20c".to_owned()),
        // A webhook body: its answer would be the body's signature.
        Just(percent_encode(
            r#"{"for_user_id":"1","direct_message_events":[]}"#
        )),
    ];
    prop_oneof![
        token.clone().prop_map(|t| format!("crc_token={t}")),
        (token.clone(), token.clone()).prop_map(|(a, b)| format!("crc_token={a}&crc_token={b}")),
        (token.clone(), "[a-z_]{1,10}").prop_map(|(t, k)| format!("{k}={t}&crc_token={t}")),
        token.prop_map(|t| format!("other={t}")),
        "[ -~]{0,80}".prop_map(|q| q.replace(['#', ' '], "")),
        Just(String::new()),
    ]
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Any webhook body, signature already checked: read or refused, never a panic;
    /// every DM well-formed and addressed to an account; every text bounded.
    #[test]
    fn a_webhook_body_is_read_or_refused(body in arbitrary::body(webhook_bodies())) {
        check_webhook(&body)?;
    }

    /// Any `GET /2/dm_events` answer: a page or a refusal, never a panic; every DM
    /// well-formed, the next page's token one the client can send back.
    #[test]
    fn a_dm_events_page_is_read_or_refused(body in arbitrary::body(pages())) {
        check_page(&body)?;
    }

    /// Any signature header and body: accepted only when the header is exactly X's
    /// signature of the body (give or take surrounding blanks); otherwise malformed, a
    /// mismatch or missing.
    #[test]
    fn only_the_bodys_own_signature_is_accepted(
        body in prop::collection::vec(any::<u8>(), 0..512),
        header in prop::option::of(prop_oneof![
            any::<String>(),
            "sha256=[A-Za-z0-9+/]{43}=",
            "sha256=[A-Za-z0-9+/=]{0,60}",
            Just("sha256=".to_owned()),
        ]),
        use_own in any::<bool>(),
    ) {
        let secret = SecretString::from(SECRET);
        let expected = {
            use base64::Engine as _;
            use hmac::Mac as _;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())
                .expect("any key length");
            mac.update(&body);
            format!(
                "sha256={}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        };
        let header = if use_own { Some(expected.clone()) } else { header };
        match verify_signature(&secret, &body, header.as_deref()) {
            Ok(()) => prop_assert_eq!(header.as_deref().map(str::trim), Some(expected.as_str())),
            Err(SignatureError::Missing) => prop_assert!(header.is_none()),
            Err(SignatureError::Malformed | SignatureError::Mismatch) => {
                prop_assert!(header.is_some());
                prop_assert_ne!(header.as_deref().map(str::trim), Some(expected.as_str()));
            }
        }
    }

    /// A CRC answer is always X's format, whatever the token.
    #[test]
    fn any_crc_token_gets_an_answer_in_xs_format(token in any::<String>()) {
        let answer = crc_response_token(&SecretString::from(SECRET), &token);
        prop_assert!(answer.starts_with("sha256="));
        prop_assert_eq!(answer.len(), "sha256=".len() + 44);
    }

    /// Any media token, channel and query: only the genuine token for its own channel
    /// and without a query is accepted; everything else is refused as invalid (expiry and
    /// origin are only judged for genuine tokens).
    #[test]
    fn only_genuine_media_tokens_verify(
        channel in prop_oneof![Just("acme".to_owned()), any::<String>()],
        token in token(),
        query in prop::option::of(any::<String>()),
        now in 0u64..2_000_000,
    ) {
        let genuine = genuine_token();
        let now = UNIX_EPOCH + Duration::from_secs(now);
        let is_genuine = channel == "acme" && token == genuine && query.is_none();
        match links().verify(&channel, &token, query.as_deref(), now) {
            Ok(media) => {
                prop_assert!(is_genuine);
                prop_assert_eq!(media.x_url.as_str(), TON);
                prop_assert!(now < UNIX_EPOCH + Duration::from_secs(media.expires));
            }
            Err(LinkError::Expired) => prop_assert!(is_genuine),
            Err(LinkError::OriginNotAllowed) => prop_assert!(false, "TON is allowed"),
            Err(LinkError::NotDmMedia) => prop_assert!(false, "TON is DM media"),
            Err(LinkError::Invalid) => prop_assert!(!is_genuine),
        }
    }
}

proptest! {
    // Each case is an HTTP request on loopback.
    #![proptest_config(arbitrary::config(64))]

    /// Any query on the webhook's CRC route: answered 200 with the token's CRC answer
    /// (only for a token shaped like X's, which no webhook body is), or 400; never a
    /// server error.
    #[test]
    fn any_crc_query_is_answered_or_refused(queries in prop::collection::vec(crc_query(), 1..8)) {
        let server = webhook_server();
        let base = &server.base;
        server.runtime.block_on(async {
            let http = reqwest::Client::new();
            for query in queries {
                let url = format!("{base}/webhooks/acme?{query}");
                let answer = http.get(&url).send().await.expect("the webhook answers");
                let status = answer.status().as_u16();
                prop_assert!(status == 200 || status == 400, "{status} for {query:?}");
                if status == 200 {
                    let body: Value = answer.json().await.expect("a JSON answer");
                    let token = Url::parse(&url)
                        .expect("a URL")
                        .query_pairs()
                        .find(|(key, _)| key == "crc_token")
                        .map(|(_, value)| value.into_owned())
                        .expect("a 200 only with a token");
                    // An answer is a signature of the token as a body: never one of a
                    // body the webhook would take.
                    prop_assert!(is_crc_token(&token), "answered {token:?}");
                    prop_assert!(parse_webhook(token.as_bytes()).is_err(), "{token:?}");
                    prop_assert_eq!(
                        &body["response_token"],
                        &json!(crc_response_token(&SecretString::from(SECRET), &token))
                    );
                }
            }
            Ok(())
        })?;
    }
}
