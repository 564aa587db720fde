//! The contract's events for the CRM, made from X's recorded bodies the way the inbound
//! side makes them, are what `docs/schemas/` describes: their JSON, routing keys and
//! AMQP message ids. (The types are `xbridge_core::contract`'s; these tests need the
//! inbound side's readers of X's bodies and its media links.)

use chrono::DateTime;
use serde_json::{json, Value};
use xbridge_core::contract::{
    ConversationTyping, DirectMessage, EventToCrm, MessageEcho, MessageRead, ReadReceipt,
    ReceivedMessage, Typing,
};

use crate::test_support::{assert_valid, fixture, is_valid};
use crate::x::dm_events::parse_dm_events;
use crate::x::item::InboundItem;
use crate::x::webhook_body::parse_webhook;

fn items(body: &[u8]) -> Vec<InboundItem> {
    parse_webhook(body).unwrap().items
}

fn message(body: &[u8]) -> DirectMessage {
    match items(body).remove(0) {
        InboundItem::Message(message) => message,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_received_message_serializes_to_the_contract() {
    let event = ReceivedMessage::new("acme", message(fixture!("webhook_aaa_dm.json")));
    assert_eq!(event.routing_key(), "acme.message.received");
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({
            "type": "message.received",
            "channel": "acme",
            "event_id": "954491830116155396",
            "conversation_id": "3001969357-4337869213",
            "sender": {
                "id": "3001969357",
                "username": "furiouscamper",
                "name": "Jordan Brinks",
                "avatar_url": "https://pbs.twimg.com/profile_images/851526626785480705/cW4WTi7C_normal.jpg"
            },
            "recipient_id": "4337869213",
            "text": "Hello World!",
            "attachments": [],
            "created_at": "2018-01-19T23:12:40.557Z",
            "received_via": "webhook"
        })
    );
}

#[test]
fn unknown_profile_fields_serialize_as_null() {
    let mut dm = message(fixture!("webhook_aaa_dm_media.json"));
    dm.sender.username = None;
    dm.sender.name = None;
    dm.sender.avatar_url = None;
    let value = serde_json::to_value(ReceivedMessage::new("acme", dm)).unwrap();
    assert_eq!(
        value["sender"],
        json!({"id":"3001969357","username":null,"name":null,"avatar_url":null})
    );
    // X's URL is never published; without the media links there is no URL at all.
    assert_eq!(
        value["attachments"],
        json!([{"kind":"photo","media_id":"1221092866912550912","media_key":null,
            "url":null,"preview_url":null,"width":1280,"height":720,"duration_ms":null}])
    );
    assert!(!value.to_string().contains("ton.twitter.com"));
    assert_valid("message-received", &value);
}

fn media_links() -> crate::media::links::MediaLinks {
    crate::media::links::MediaLinks::new(
        secrecy::SecretString::from("k".repeat(32)),
        Some(url::Url::parse("https://xbridge.example.com/").unwrap()),
        std::time::Duration::from_secs(3600),
        vec![
            "https://ton.twitter.com".into(),
            "https://video.twimg.com".into(),
            "https://pbs.twimg.com".into(),
        ],
    )
}

#[test]
fn attachments_carry_signed_bridge_urls_once_linked() {
    let links = media_links();
    let mut dm = message(fixture!("webhook_aaa_dm_media.json"));
    links.complete("acme", &mut dm);
    let value = serde_json::to_value(ReceivedMessage::new("acme", dm)).unwrap();
    let attachment = &value["attachments"][0];
    let url = attachment["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://xbridge.example.com/media/acme/v1."),
        "{url}"
    );
    assert_eq!(
        attachment["preview_url"],
        Value::Null,
        "a photo is its own preview"
    );
    let token = url.rsplit('/').next().unwrap();
    let media = links
        .verify("acme", token, None, std::time::SystemTime::now())
        .unwrap();
    assert_eq!(media.dm_event_id, "1221092871941558276");
    assert_eq!(
        media.x_url.as_str(),
        "https://ton.twitter.com/1.1/ton/data/dm/1221092871941558276/1221092866912550912/OwIPMAFC.png"
    );
    assert_valid("message-received", &value);
}

#[test]
fn a_polled_video_is_linked_with_its_preview_and_sizes() {
    let mut body: Value = serde_json::from_slice(fixture!("dm_events_expanded_200.json")).unwrap();
    body["data"][0]["attachments"]["media_keys"] = json!(["7_1583157113245011970"]);
    body["includes"]["media"] = json!([{"media_key":"7_1583157113245011970","type":"video",
        "preview_image_url":"https://pbs.twimg.com/dm_video_thumb/1/img/x.jpg",
        "width":1280,"height":720,"duration_ms":5000,
        "variants":[{"bit_rate":632000,"content_type":"video/mp4","url":"https://video.twimg.com/dm_video/1/vid/low.mp4"},
                    {"bit_rate":2176000,"content_type":"video/mp4","url":"https://video.twimg.com/dm_video/1/vid/high.mp4"}]}]);
    let page = parse_dm_events(body.to_string().as_bytes(), "906948460078698496").unwrap();
    let InboundItem::Message(mut dm) = page.items[0].clone() else {
        panic!("{:?}", page.items[0])
    };
    let links = media_links();
    links.complete("acme", &mut dm);
    let value = serde_json::to_value(MessageEcho::new("acme", dm)).unwrap();
    let attachment = &value["attachments"][0];
    assert_eq!(attachment["kind"], "video");
    assert_eq!(attachment["media_key"], "7_1583157113245011970");
    assert_eq!(attachment["media_id"], "1583157113245011970");
    assert_eq!(
        (
            &attachment["width"],
            &attachment["height"],
            &attachment["duration_ms"]
        ),
        (&json!(1280), &json!(720), &json!(5000))
    );
    let verify = |field: &str| {
        let url = attachment[field].as_str().unwrap();
        let token = url.rsplit('/').next().unwrap();
        links
            .verify("acme", token, None, std::time::SystemTime::now())
            .unwrap()
            .x_url
            .to_string()
    };
    assert_eq!(
        verify("url"),
        "https://video.twimg.com/dm_video/1/vid/high.mp4"
    );
    assert_eq!(
        verify("preview_url"),
        "https://pbs.twimg.com/dm_video_thumb/1/img/x.jpg"
    );
    assert_valid("message-echo", &value);
}

#[test]
fn every_received_message_is_valid_against_its_schema() {
    let mut dms = vec![
        message(fixture!("webhook_aaa_dm.json")),
        message(fixture!("webhook_aaa_dm_media.json")),
    ];
    let page = parse_dm_events(
        fixture!("dm_events_expanded_200.json"),
        "906948460078698496",
    )
    .unwrap();
    for item in page.items {
        let InboundItem::Message(dm) = item else {
            panic!("{item:?}")
        };
        dms.push(dm);
    }
    assert_eq!(dms.len(), 3);
    for dm in dms {
        let received = serde_json::to_value(ReceivedMessage::new("acme", dm.clone())).unwrap();
        assert_valid("message-received", &received);
        let echo = serde_json::to_value(MessageEcho::new("acme", dm)).unwrap();
        assert_eq!(echo["type"], "message.echo");
        assert_valid("message-echo", &echo);
        // Same fields, different type: neither schema takes the other's event.
        assert!(!is_valid("message-received", &echo));
        assert!(!is_valid("message-echo", &received));
    }
}

#[test]
fn a_polled_message_says_so() {
    let page = parse_dm_events(
        fixture!("dm_events_expanded_200.json"),
        "906948460078698496",
    )
    .unwrap();
    let InboundItem::Message(dm) = page.items[0].clone() else {
        panic!("{:?}", page.items[0])
    };
    let value = serde_json::to_value(ReceivedMessage::new("acme", dm)).unwrap();
    assert_eq!(value["received_via"], "poll");
    assert_eq!(value["created_at"], "2022-10-25T23:16:15.000Z");
    assert_eq!(
        value["attachments"][0]["media_key"],
        "3_1583157113245011970"
    );
    assert_eq!(value["attachments"][0]["media_id"], "1583157113245011970");
}

#[test]
fn an_echo_has_its_own_type_and_routing_key() {
    let echo = MessageEcho::new("acme", message(fixture!("webhook_aaa_dm.json")));
    assert_eq!(echo.routing_key(), "acme.message.echo");
    assert_eq!(MessageEcho::EVENT_TYPE, "message.echo");
    assert_eq!(ReceivedMessage::EVENT_TYPE, "message.received");
}

#[test]
fn typing_serializes_to_the_contract() {
    let InboundItem::Typing(typing) = items(fixture!("webhook_aaa_typing.json")).remove(0) else {
        panic!()
    };
    let event = ConversationTyping::new("acme", typing);
    assert_eq!(event.routing_key(), "acme.conversation.typing");
    let value = serde_json::to_value(&event).unwrap();
    assert_eq!(
        value,
        json!({"type":"conversation.typing","channel":"acme","sender_id":"3284025577",
            "recipient_id":"3001969357","created_at":"2018-02-08T21:59:43.443Z"})
    );
    assert_valid("conversation-typing", &value);
}

#[test]
fn a_read_receipt_serializes_to_the_contract() {
    let body = br#"{"for_user_id":"4337869213","direct_message_mark_read_events":[
        {"created_timestamp":"1518452444662","sender_id":"3001969357",
         "target":{"recipient_id":"4337869213"},"last_read_event_id":"963085315333238788"}]}"#;
    let InboundItem::Read(read) = items(body).remove(0) else {
        panic!()
    };
    let event = MessageRead::new("acme", read);
    assert_eq!(event.routing_key(), "acme.message.read");
    let value = serde_json::to_value(&event).unwrap();
    assert_eq!(
        value,
        json!({"type":"message.read","channel":"acme","reader_id":"3001969357",
            "last_read_event_id":"963085315333238788","created_at":"2018-02-12T16:20:44.662Z"})
    );
    assert_valid("message-read", &value);
}

#[test]
fn the_schemas_examples_are_valid() {
    for schema in [
        "message-received",
        "message-echo",
        "conversation-typing",
        "message-read",
    ] {
        let path = format!(
            "{}/../../docs/schemas/{schema}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let document: Value = serde_json::from_str(&text).unwrap();
        let examples = document["examples"].as_array().unwrap();
        assert!(!examples.is_empty(), "{schema}");
        for example in examples {
            assert_valid(schema, example);
        }
    }
}

#[test]
fn the_message_schema_refuses_what_the_contract_forbids() {
    let good = serde_json::to_value(ReceivedMessage::new(
        "acme",
        message(fixture!("webhook_aaa_dm_media.json")),
    ))
    .unwrap();
    assert!(is_valid("message-received", &good));
    let changes: Vec<(&str, Value)> = vec![
        ("/event_id", json!(954491830116155396u64)),
        ("/event_id", json!("12345678901234567890")),
        ("/sender/id", json!(3.001969357e9)),
        ("/recipient_id", json!("")),
        ("/conversation_id", json!("12345")),
        ("/channel", json!("Acme.Support")),
        ("/created_at", json!("2020-01-26 21:28:20")),
        ("/created_at", json!("2020-01-26T22:28:20+01:00")),
        ("/received_via", json!("email")),
        ("/attachments/0/kind", json!("sticker")),
        ("/attachments/0/url", json!(42)),
        ("/attachments/0/media_key", json!("1221092866912550912")),
        ("/attachments/0/media_id", json!("3_1221092866912550912")),
        ("/attachments/0/width", json!(0)),
        ("/attachments/0/duration_ms", json!(-1)),
        ("/sender/username", json!("")),
    ];
    for (pointer, value) in changes {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = value.clone();
        assert!(
            !is_valid("message-received", &bad),
            "{pointer} = {value} was accepted"
        );
    }
    let mut extra = good.clone();
    extra["mood"] = json!("happy");
    assert!(!is_valid("message-received", &extra));
    let mut missing = good.clone();
    missing["sender"].as_object_mut().unwrap().remove("name");
    assert!(!is_valid("message-received", &missing));
}

fn dm() -> DirectMessage {
    message(fixture!("webhook_aaa_dm.json"))
}

#[test]
fn message_ids_differ_by_channel_and_kind() {
    let received = EventToCrm::received(&ReceivedMessage::new("acme", dm()));
    assert_eq!(received.message_id, "acme:954491830116155396:received");
    assert_eq!(received.routing_key, "acme.message.received");
    assert_eq!(received.event_type, "message.received");
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body["type"], "message.received");

    let echo = EventToCrm::echo(&MessageEcho::new("other", dm()));
    assert_eq!(echo.message_id, "other:954491830116155396:echo");
    assert_eq!(echo.routing_key, "other.message.echo");
}

#[test]
fn activity_ids_are_built_from_sender_and_time() {
    let at = DateTime::from_timestamp_millis(1518127183443).unwrap();
    let typing = EventToCrm::typing(&ConversationTyping::new(
        "acme",
        Typing {
            sender_id: "3284025577".into(),
            recipient_id: "3001969357".into(),
            created_at: at,
        },
    ));
    assert_eq!(typing.message_id, "acme:typing:3284025577:1518127183443");
    assert_eq!(typing.event_type, "conversation.typing");
    let read = EventToCrm::read(&MessageRead::new(
        "acme",
        ReadReceipt {
            reader_id: "3001969357".into(),
            last_read_event_id: "963085315333238788".into(),
            created_at: at,
        },
    ));
    assert_eq!(read.message_id, "acme:read:3001969357:1518127183443");
    assert_eq!(read.routing_key, "acme.message.read");
}
