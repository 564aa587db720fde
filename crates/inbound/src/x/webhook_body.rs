//! Webhook bodies: X's Account Activity API (AAA) and its successor, the X Activity API
//! (XAA), which wraps the same DM events in an envelope.
//!
//! AAA posts `{"for_user_id", "direct_message_events": [...], "users": {...}}` and
//! likewise `direct_message_indicate_typing_events` and
//! `direct_message_mark_read_events`. XAA posts `{"data": {"event_type": "dm.received",
//! "filter": {"user_id"}, "payload": {"direct_message_events": [...], "users":
//! {"<id>": {"data": {...}}}}}}`. Both deliver the account's own DMs too (see
//! [`classify`](crate::classify)).
//!
//! The caller has already checked the body's signature; this module only reads it.

use serde_json::Value;
use xbridge_core::contract::{Attachment, DirectMessage, ReadReceipt, ReceivedVia, Typing};
use xbridge_core::excerpt::quoted;
use xbridge_x_api::{DmEventId, UserId};

use crate::x::attachment;
use crate::x::error::PayloadError;
use crate::x::item::{message_item, skipped, unreadable, InboundItem};
use crate::x::json::{self, Object};
use crate::x::sender::Profiles;
use crate::x::text;

/// The arrays of a body (or of an XAA payload) that carry DM activity.
const DM_EVENTS: &str = "direct_message_events";
const TYPING_EVENTS: &str = "direct_message_indicate_typing_events";
const READ_EVENTS: &str = "direct_message_mark_read_events";

/// What one webhook POST brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The subscribed X account the events are for (`for_user_id`, or `filter.user_id`
    /// in XAA): it tells which channel they belong to, and which DMs are the account's
    /// own. Present whenever `items` holds anything but `Ignored`.
    pub for_user_id: Option<String>,
    /// The events, in the body's order.
    pub items: Vec<InboundItem>,
}

/// Reads a webhook body (raw bytes, signature already verified).
///
/// A body that is not JSON or not shaped like an AAA or XAA body is a
/// [`PayloadError`]. A body of a kind the bridge does not handle (tweets, follows, an
/// app revoke, a replay report, XAA events other than `dm.*`) gives one
/// [`InboundItem::Ignored`]; so does each single event that cannot be read. Unknown
/// extra fields are ignored.
pub fn parse_webhook(body: &[u8]) -> Result<WebhookDelivery, PayloadError> {
    let root = json::parse_object(body)?;
    match root.get("data") {
        None | Some(Value::Null) => account_activity(&root),
        Some(Value::Object(data)) => x_activity(data),
        Some(other) => Err(PayloadError::WrongType {
            field: "data".into(),
            expected: "an object (the X Activity API envelope)",
            found: json::kind(other),
        }),
    }
}

fn account_activity(root: &Object) -> Result<WebhookDelivery, PayloadError> {
    let for_user_id = account_id(root, "for_user_id", "")?;
    let users = Profiles::from_map(root.get("users"));
    let items = match dm_activity(root, "", &users)? {
        Some(items) => items,
        None => {
            let kinds: Vec<&str> = root
                .keys()
                .map(String::as_str)
                .filter(|key| !matches!(*key, "for_user_id" | "users" | "apps"))
                .collect();
            let reason = if kinds.is_empty() {
                "the body carries no events".to_owned()
            } else {
                not_dm_activity(&kinds)
            };
            vec![skipped(None, reason)]
        }
    };
    delivery(for_user_id, items, "for_user_id")
}

/// An X Activity body: events other than `dm.*` are skipped with the reason; a DM event
/// must carry its payload, and an account to match it to (the filter's, else the payload's).
fn x_activity(data: &Object) -> Result<WebhookDelivery, PayloadError> {
    let event_type = event_type(data)?;
    let for_user_id = match data.get("filter") {
        Some(Value::Object(filter)) => account_id(filter, "user_id", "data.filter.")?,
        _ => None,
    };
    if !event_type.starts_with("dm.") {
        let reason = format!("X Activity event {} is not DM activity", quoted(event_type));
        return Ok(WebhookDelivery {
            for_user_id,
            items: vec![skipped(None, reason)],
        });
    }
    let payload = activity_payload(data, event_type)?;
    let for_user_id = match for_user_id {
        Some(id) => Some(id),
        None => account_id(payload, "for_user_id", "data.payload.")?,
    };
    let users = Profiles::from_map(payload.get("users"));
    let items = match dm_activity(payload, "data.payload.", &users)? {
        Some(items) => items,
        None => vec![skipped(
            None,
            format!(
                "X Activity event {} carries no DM events the bridge knows",
                quoted(event_type)
            ),
        )],
    };
    delivery(for_user_id, items, "data.filter.user_id")
}

/// `data.event_type`, which says what the body is, so it must be a string.
fn event_type(data: &Object) -> Result<&str, PayloadError> {
    match data.get("event_type") {
        Some(Value::String(event_type)) => Ok(event_type.as_str()),
        None | Some(Value::Null) => Err(PayloadError::Invalid {
            field: "data.event_type".into(),
            detail: "is missing".into(),
        }),
        Some(other) => Err(PayloadError::WrongType {
            field: "data.event_type".into(),
            expected: "a string",
            found: json::kind(other),
        }),
    }
}

/// `data.payload` of a DM event, which holds the events themselves.
fn activity_payload<'a>(data: &'a Object, event_type: &str) -> Result<&'a Object, PayloadError> {
    json::optional_object(data, "payload", "data.")?.ok_or_else(|| PayloadError::Invalid {
        field: "data.payload".into(),
        detail: format!("is missing from a {event_type} event"),
    })
}

/// The subscribed account's id in `object[field]`; it must be readable, since every
/// event of the body depends on it.
fn account_id(object: &Object, field: &str, path: &str) -> Result<Option<String>, PayloadError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => json::id(value)
            .map(Some)
            .map_err(|detail| PayloadError::Invalid {
                field: format!("{path}{field}"),
                detail,
            }),
    }
}

/// The reason a body of other kinds is ignored: its first few keys, each cut short, since
/// a body may have any number of keys of any length.
fn not_dm_activity(kinds: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut reason = kinds
        .iter()
        .take(SHOWN)
        .map(|kind| match quoted(kind) {
            // Plain names read better without quotes.
            q if q.len() == kind.len() + 2 && !kind.contains([',', ' ']) => kind.to_string(),
            q => q,
        })
        .collect::<Vec<_>>()
        .join(", ");
    if kinds.len() > SHOWN {
        reason.push_str(&format!(" and {} more", kinds.len() - SHOWN));
    }
    format!("not DM activity: {reason}")
}

/// Refuses events that cannot be matched to an account.
fn delivery(
    for_user_id: Option<String>,
    items: Vec<InboundItem>,
    field: &str,
) -> Result<WebhookDelivery, PayloadError> {
    let has_events = items
        .iter()
        .any(|item| !matches!(item, InboundItem::Ignored { .. }));
    if has_events && for_user_id.is_none() {
        return Err(PayloadError::Invalid {
            field: field.into(),
            detail: "is missing, so the events cannot be matched to a channel".into(),
        });
    }
    Ok(WebhookDelivery { for_user_id, items })
}

/// The items of the DM arrays of `container`, or `None` when it has none of them.
fn dm_activity(
    container: &Object,
    path: &str,
    users: &Profiles,
) -> Result<Option<Vec<InboundItem>>, PayloadError> {
    let mut found = false;
    let mut items = Vec::new();
    for key in [DM_EVENTS, TYPING_EVENTS, READ_EVENTS] {
        let Some(events) = json::optional_array(container, key, path)? else {
            continue;
        };
        found = true;
        for (i, event) in events.iter().enumerate() {
            let at = format!("{path}{key}[{i}].");
            items.push(match key {
                DM_EVENTS => message_event(event, &at, users),
                TYPING_EVENTS => typing_event(event, &at),
                _ => read_event(event, &at),
            });
        }
    }
    Ok(found.then_some(items))
}

fn message_event(event: &Value, path: &str, users: &Profiles) -> InboundItem {
    let Some(event) = event.as_object() else {
        return unreadable(None, not_an_object(path, event));
    };
    message_item(event, path, "type", "message_create", |event_id| {
        message_create(event, event_id, path, users)
    })
}

fn message_create(
    event: &Object,
    event_id: &DmEventId,
    path: &str,
    users: &Profiles,
) -> Result<DirectMessage, String> {
    let created_at = json::epoch_millis(event, "created_timestamp", path)?;
    let create = json::required_object(event, "message_create", path)?;
    let path = format!("{path}message_create.");
    let sender_id: UserId = json::required_id(create, "sender_id", &path)?;
    let target = json::required_object(create, "target", &path)?;
    let recipient_id: UserId =
        json::required_id(target, "recipient_id", &format!("{path}target."))?;
    let data_path = format!("{path}message_data.");
    let data = json::required_object(create, "message_data", &path)?;
    let mut text = json::text(data, "text", &data_path)?;

    let mut attachments = Vec::new();
    match data.get("attachment") {
        None | Some(Value::Null) => {}
        Some(attachment) => match media(attachment, &data_path) {
            Ok((media, attachment)) => {
                text = without_media_link(&text, data, media);
                attachments.push(attachment);
            }
            Err(reason) => tracing::warn!(
                %event_id,
                %reason,
                "DM attachment cannot be read; the DM goes on without it, its link left in the text"
            ),
        },
    }

    Ok(DirectMessage {
        event_id: event_id.clone(),
        conversation_id: json::one_to_one_conversation_id(
            sender_id.as_str(),
            recipient_id.as_str(),
        ),
        sender: users.sender(sender_id),
        recipient_id,
        text,
        attachments,
        created_at,
        received_via: ReceivedVia::Webhook,
        source_app_id: json::optional_id(create, "source_app_id"),
    })
}

/// `message_data.attachment` (`{"type":"media","media":{...}}`).
fn media<'a>(attachment: &'a Value, path: &str) -> Result<(&'a Object, Attachment), String> {
    let path = format!("{path}attachment.");
    let attachment = attachment
        .as_object()
        .ok_or_else(|| not_an_object(&path, attachment))?;
    if let Some(Value::String(kind)) = attachment.get("type") {
        if kind != "media" {
            return Err(format!("{path}type {} is not media", quoted(kind)));
        }
    }
    let media = json::required_object(attachment, "media", &path)?;
    let read = attachment::from_v1_media(media, &format!("{path}media."))?;
    Ok((media, read))
}

/// The text without the `t.co` link standing for `media`, found by the `entities.urls`
/// entry for that link (or the media's own `indices`).
fn without_media_link(text: &str, data: &Object, media: &Object) -> String {
    let link = json::optional_str(media, "url");
    let urls: &[Value] = data
        .get("entities")
        .and_then(|entities| entities.get("urls"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let entity = urls
        .iter()
        .filter_map(Value::as_object)
        .find(|url| match &link {
            Some(link) => json::optional_str(url, "url").as_ref() == Some(link),
            None => json::optional_str(url, "expanded_url")
                .is_some_and(|expanded| expanded.contains("/messages/media/")),
        });
    let link = link.or_else(|| entity.and_then(|url| json::optional_str(url, "url")));
    let indices = entity
        .and_then(|url| indices(url.get("indices")))
        .or_else(|| indices(media.get("indices")));
    match link {
        Some(link) => text::strip_indexed_link(text, &link, indices),
        None => text::strip_trailing_tco(text),
    }
}

fn indices(value: Option<&Value>) -> Option<(usize, usize)> {
    match value?.as_array()?.as_slice() {
        [start, end] => Some((
            usize::try_from(start.as_u64()?).ok()?,
            usize::try_from(end.as_u64()?).ok()?,
        )),
        _ => None,
    }
}

fn typing_event(event: &Value, path: &str) -> InboundItem {
    let read = |event: &Object| -> Result<Typing, String> {
        Ok(Typing {
            sender_id: json::required_id(event, "sender_id", path)?,
            recipient_id: target_recipient(event, path)?,
            created_at: json::epoch_millis(event, "created_timestamp", path)?,
        })
    };
    match event.as_object().map(read) {
        Some(Ok(typing)) => InboundItem::Typing(typing),
        Some(Err(reason)) => unreadable(None, reason),
        None => unreadable(None, not_an_object(path, event)),
    }
}

fn read_event(event: &Value, path: &str) -> InboundItem {
    let read = |event: &Object| -> Result<ReadReceipt, String> {
        Ok(ReadReceipt {
            reader_id: json::required_id(event, "sender_id", path)?,
            last_read_event_id: json::required_id(event, "last_read_event_id", path)?,
            created_at: json::epoch_millis(event, "created_timestamp", path)?,
        })
    };
    match event.as_object().map(read) {
        Some(Ok(receipt)) => InboundItem::Read(receipt),
        Some(Err(reason)) => unreadable(None, reason),
        None => unreadable(None, not_an_object(path, event)),
    }
}

fn not_an_object(path: &str, event: &Value) -> String {
    format!(
        "{} is {}, not an object",
        path.trim_end_matches('.'),
        json::kind(event)
    )
}

fn target_recipient(event: &Object, path: &str) -> Result<UserId, String> {
    let target = json::required_object(event, "target", path)?;
    json::required_id(target, "recipient_id", &format!("{path}target."))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::{json, Value};

    use super::*;
    use crate::test_support::fixture;
    use xbridge_core::contract::{AttachmentKind, Sender};

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    fn parse(body: &Value) -> Result<WebhookDelivery, PayloadError> {
        parse_webhook(body.to_string().as_bytes())
    }

    fn only_message(delivery: &WebhookDelivery) -> &DirectMessage {
        match delivery.items.as_slice() {
            [InboundItem::Message(message)] => message,
            other => panic!("expected one message, got {other:?}"),
        }
    }

    fn ignored_reasons(items: &[InboundItem]) -> Vec<(Option<&str>, &str)> {
        items
            .iter()
            .filter_map(|item| match item {
                InboundItem::Ignored { event_id, reason } => {
                    Some((event_id.as_ref().map(|id| id.as_str()), reason.as_str()))
                }
                _ => None,
            })
            .collect()
    }

    fn jordan() -> Sender {
        Sender {
            id: "3001969357".into(),
            username: Some("furiouscamper".into()),
            name: Some("Jordan Brinks".into()),
            avatar_url: Some(
                "https://pbs.twimg.com/profile_images/851526626785480705/cW4WTi7C_normal.jpg"
                    .into(),
            ),
        }
    }

    #[test]
    fn a_text_dm_is_normalized() {
        let delivery = parse_webhook(fixture!("webhook_aaa_dm.json")).unwrap();
        assert_eq!(delivery.for_user_id.as_deref(), Some("4337869213"));
        assert_eq!(
            only_message(&delivery),
            &DirectMessage {
                event_id: "954491830116155396".into(),
                conversation_id: "3001969357-4337869213".into(),
                sender: jordan(),
                recipient_id: "4337869213".into(),
                text: "Hello World!".into(),
                attachments: vec![],
                created_at: at("2018-01-19T23:12:40.557Z"),
                received_via: ReceivedVia::Webhook,
                source_app_id: Some("13090192".into()),
            }
        );
    }

    #[test]
    fn a_media_dm_loses_its_tco_link_and_gains_an_attachment() {
        let delivery = parse_webhook(fixture!("webhook_aaa_dm_media.json")).unwrap();
        let message = only_message(&delivery);
        assert_eq!(message.event_id, "1221092871941558276");
        assert_eq!(message.text, "Here is the photo");
        assert_eq!(message.sender, jordan());
        assert_eq!(message.created_at, at("2020-01-26T21:28:20.000Z"));
        assert_eq!(message.source_app_id, None);
        assert_eq!(
            message.attachments,
            vec![Attachment {
                kind: AttachmentKind::Photo,
                media_id: Some("1221092866912550912".into()),
                media_key: None,
                url: None,
                preview_url: None,
                width: Some(1280),
                height: Some(720),
                duration_ms: None,
                x_url: "https://ton.twitter.com/1.1/ton/data/dm/1221092871941558276/1221092866912550912/OwIPMAFC.png".into(),
                x_preview_url: None,
            }]
        );
    }

    #[test]
    fn a_typing_indicator_is_a_typing_item() {
        let delivery = parse_webhook(fixture!("webhook_aaa_typing.json")).unwrap();
        assert_eq!(delivery.for_user_id.as_deref(), Some("4337869213"));
        assert_eq!(
            delivery.items,
            vec![InboundItem::Typing(Typing {
                sender_id: "3284025577".into(),
                recipient_id: "3001969357".into(),
                created_at: at("2018-02-08T21:59:43.443Z"),
            })]
        );
    }

    #[test]
    fn a_read_receipt_is_a_read_item() {
        let body = json!({"for_user_id":"4337869213","direct_message_mark_read_events":[
            {"created_timestamp":"1518452444662","sender_id":"3001969357",
             "target":{"recipient_id":"4337869213"},"last_read_event_id":"963085315333238788"}]});
        assert_eq!(
            parse(&body).unwrap().items,
            vec![InboundItem::Read(ReadReceipt {
                reader_id: "3001969357".into(),
                last_read_event_id: "963085315333238788".into(),
                created_at: DateTime::from_timestamp_millis(1518452444662).unwrap(),
            })]
        );
    }

    /// The AAA fixture's DM, as the X Activity API would wrap it.
    fn xaa_envelope(event_type: &str) -> Value {
        let aaa: Value = serde_json::from_slice(fixture!("webhook_aaa_dm.json")).unwrap();
        let users: serde_json::Map<String, Value> = aaa["users"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, user)| {
                let data = json!({"id": user["id"], "username": user["screen_name"],
                    "name": user["name"], "profile_image_url": user["profile_image_url_https"]});
                (id.clone(), json!({ "data": data }))
            })
            .collect();
        json!({"data":{
            "event_uuid":"c8c3a2a5-0a4b-4d5a-9d8e-6a1d9b2c3e4f",
            "event_type": event_type,
            "filter":{"user_id": aaa["for_user_id"]},
            "tag":"acme",
            "payload":{"direct_message_events": aaa["direct_message_events"], "users": users}}})
    }

    #[test]
    fn the_x_activity_envelope_parses_like_the_aaa_body() {
        let aaa = parse_webhook(fixture!("webhook_aaa_dm.json")).unwrap();
        let xaa = parse(&xaa_envelope("dm.received")).unwrap();
        assert_eq!(xaa, aaa);
        // dm.sent carries the account's own DMs in the same shape; classify sorts them.
        assert_eq!(parse(&xaa_envelope("dm.sent")).unwrap(), aaa);
    }

    #[test]
    fn the_x_activity_account_may_come_from_the_payload() {
        let mut body = xaa_envelope("dm.received");
        body["data"].as_object_mut().unwrap().remove("filter");
        body["data"]["payload"]["for_user_id"] = json!("4337869213");
        assert_eq!(
            parse(&body).unwrap().for_user_id.as_deref(),
            Some("4337869213")
        );
    }

    #[test]
    fn bodies_of_other_kinds_are_ignored_not_refused() {
        let bodies = [
            json!({"for_user_id":"4337869213","tweet_create_events":[{"id_str":"1"}]}),
            json!({"user_event":{"revoke":{"date_time":"2018-05-24T09:48:12+00:00",
                "target":{"app_id":"13090192"},"source":{"user_id":"63046977"}}}}),
            json!({"replay_job_status":{"webhook_id":"1","job_state":"Complete"}}),
            json!({"for_user_id":"4337869213","favorite_events":[],"users":{}}),
            json!({}),
            json!({"data":{"event_type":"profile.update.bio","filter":{"user_id":"1"},"payload":{}}}),
            json!({"data":{"event_type":"chat.received","filter":{"user_id":"1"},"payload":{"x":1}}}),
            json!({"data":{"event_type":"dm.indicate_typing","filter":{"user_id":"1"},"payload":{"unknown":1}}}),
        ];
        for body in bodies {
            let delivery = parse(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
            let reasons = ignored_reasons(&delivery.items);
            assert_eq!(reasons.len(), 1, "{body}: {:?}", delivery.items);
            assert_eq!(delivery.items.len(), 1);
        }
        let tweets = json!({"for_user_id":"1","tweet_create_events":[]});
        let delivery = parse(&tweets).unwrap();
        assert!(ignored_reasons(&delivery.items)[0]
            .1
            .contains("tweet_create_events"));
    }

    #[test]
    fn an_empty_event_list_gives_no_items() {
        let body = json!({"for_user_id":"4337869213","direct_message_events":[]});
        assert!(parse(&body).unwrap().items.is_empty());
    }

    #[test]
    fn bodies_that_cannot_be_read_are_payload_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not valid JSON"),
            (b"".to_vec(), "not valid JSON"),
            (vec![b'{', 0xff, b'}'], "not valid JSON"),
            (b"[1,2]".to_vec(), "JSON object, not an array"),
            (
                br#"{"for_user_id":"1","direct_message_events":{"id":"1"}}"#.to_vec(),
                "direct_message_events must be an array, not an object",
            ),
            (
                br#"{"for_user_id":"1","direct_message_indicate_typing_events":"x"}"#.to_vec(),
                "direct_message_indicate_typing_events must be an array",
            ),
            (
                br#"{"for_user_id":1.5,"direct_message_events":[]}"#.to_vec(),
                "for_user_id must be a string of digits or a whole number",
            ),
            (
                br#"{"direct_message_events":[{"type":"message_create","id":"1","created_timestamp":"1","message_create":{"sender_id":"2","target":{"recipient_id":"3"},"message_data":{"text":"hi"}}}]}"#.to_vec(),
                "for_user_id is missing",
            ),
            (br#"{"data":"x"}"#.to_vec(), "data must be an object"),
            (
                br#"{"data":{"filter":{"user_id":"1"},"payload":{}}}"#.to_vec(),
                "data.event_type is missing",
            ),
            (
                br#"{"data":{"event_type":"dm.received","filter":{"user_id":"1"}}}"#.to_vec(),
                "data.payload is missing",
            ),
            (
                br#"{"data":{"event_type":"dm.received","filter":{"user_id":"1"},"payload":[]}}"#
                    .to_vec(),
                "data.payload must be an object, not an array",
            ),
            (
                br#"{"data":{"event_type":"dm.received","filter":{"user_id":"1"},"payload":{"direct_message_events":5}}}"#
                    .to_vec(),
                "data.payload.direct_message_events must be an array, not a number",
            ),
        ];
        for (body, expected) in cases {
            let error = parse_webhook(&body).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{}: {error}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// The media fixture's event with one change, next to an intact copy of it.
    fn with_broken_event(change: impl FnOnce(&mut Value)) -> WebhookDelivery {
        let mut body: Value =
            serde_json::from_slice(fixture!("webhook_aaa_dm_media.json")).unwrap();
        let good = body["direct_message_events"][0].clone();
        let mut bad = good.clone();
        change(&mut bad);
        body["direct_message_events"] = json!([bad, good]);
        let delivery = parse(&body).unwrap();
        assert_eq!(delivery.items.len(), 2);
        assert!(matches!(delivery.items[1], InboundItem::Message(_)));
        delivery
    }

    #[test]
    fn an_unreadable_event_is_ignored_and_the_rest_delivered() {
        type Change = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(Change, Option<&str>, &str)> = vec![
            (
                Box::new(|e| {
                    e.as_object_mut().unwrap().remove("id");
                }),
                None,
                "direct_message_events[0].id is missing",
            ),
            (
                Box::new(|e| e["id"] = serde_json::from_str("1.2210928719415583e18").unwrap()),
                None,
                "direct_message_events[0].id must be a string of digits or a whole number, not 1.2210928719415583e+18 (a float)",
            ),
            (
                Box::new(|e| e["id"] = json!("12ab")),
                None,
                "\"12ab\" is not an X id",
            ),
            (
                Box::new(|e| e["message_create"]["sender_id"] = json!(3.5)),
                Some("1221092871941558276"),
                "message_create.sender_id must be a string of digits or a whole number, not 3.5",
            ),
            (
                Box::new(|e| {
                    e["message_create"].as_object_mut().unwrap().remove("target");
                }),
                Some("1221092871941558276"),
                "message_create.target is missing",
            ),
            (
                Box::new(|e| e["created_timestamp"] = json!("yesterday")),
                Some("1221092871941558276"),
                "created_timestamp must be milliseconds since the epoch",
            ),
            (
                Box::new(|e| e["message_create"]["message_data"]["text"] = json!(["hi"])),
                Some("1221092871941558276"),
                "message_data.text must be a string, not an array",
            ),
            (
                Box::new(|e| e["message_create"] = json!("x")),
                Some("1221092871941558276"),
                "message_create must be an object, not a string",
            ),
            (
                Box::new(|e| *e = json!("x")),
                None,
                "direct_message_events[0] is a string, not an object",
            ),
        ];
        for (change, event_id, expected) in cases {
            let delivery = with_broken_event(change);
            let reasons = ignored_reasons(&delivery.items);
            assert_eq!(reasons.len(), 1, "{expected}: {:?}", delivery.items);
            assert_eq!(reasons[0].0, event_id, "{expected}");
            assert!(reasons[0].1.contains(expected), "{}", reasons[0].1);
        }
    }

    /// Found by the property tests: reasons and errors quoted whole values of the body, so
    /// one 20,000-character field made a 20 KB log line (and 400 answer).
    #[test]
    fn reasons_and_errors_quote_only_the_start_of_a_long_value() {
        let long = "x".repeat(20_000);
        let delivery = with_broken_event(|e| e["created_timestamp"] = json!(long));
        let reasons = ignored_reasons(&delivery.items);
        assert!(reasons[0].1.len() < 300, "{}", reasons[0].1);
        assert!(reasons[0].1.contains("(20000 bytes)"), "{}", reasons[0].1);

        let body = json!({"for_user_id": long, "direct_message_events": []});
        let error = parse(&body).unwrap_err().to_string();
        assert!(error.len() < 300, "{error}");

        let mut many = serde_json::Map::new();
        for i in 0..1000 {
            many.insert(format!("{i}{long}"), json!(1));
        }
        let delivery = parse(&Value::Object(many)).unwrap();
        let reasons = ignored_reasons(&delivery.items);
        assert!(reasons[0].1.len() < 600, "{}", reasons[0].1);
        assert!(reasons[0].1.ends_with("and 995 more"), "{}", reasons[0].1);
    }

    #[test]
    fn other_dm_event_types_are_ignored_with_their_id() {
        let delivery = with_broken_event(|e| e["type"] = json!("message_delete"));
        assert_eq!(
            ignored_reasons(&delivery.items),
            vec![(
                Some("1221092871941558276"),
                "direct_message_events[0].type is \"message_delete\", not a message"
            )]
        );
    }

    #[test]
    fn an_unreadable_attachment_leaves_the_dm_with_its_link() {
        let delivery = with_broken_event(|e| {
            e["message_create"]["message_data"]["attachment"]["media"]["type"] = json!("poll")
        });
        let InboundItem::Message(message) = &delivery.items[0] else {
            panic!("{:?}", delivery.items[0]);
        };
        assert!(message.attachments.is_empty());
        assert_eq!(message.text, "Here is the photo https://t.co/Mq6pVXPx1M");
    }

    #[test]
    fn the_link_is_found_without_entities_by_the_media_indices() {
        let delivery = with_broken_event(|e| {
            e["message_create"]["message_data"]
                .as_object_mut()
                .unwrap()
                .remove("entities");
        });
        let InboundItem::Message(message) = &delivery.items[0] else {
            panic!("{:?}", delivery.items[0]);
        };
        assert_eq!(message.text, "Here is the photo");
    }

    #[test]
    fn a_numeric_id_keeps_every_digit() {
        let delivery = with_broken_event(|e| {
            e["id"] = serde_json::from_str("1221092871941558277").unwrap();
        });
        let InboundItem::Message(message) = &delivery.items[0] else {
            panic!("{:?}", delivery.items[0]);
        };
        assert_eq!(message.event_id, "1221092871941558277");
    }

    #[test]
    fn the_conversation_id_orders_the_two_ids_as_numbers() {
        // The account (9 digits) is numerically smaller than the customer (18 digits)
        // though it sorts after it as text.
        let body = json!({"for_user_id":"944480690","direct_message_events":[{
            "type":"message_create","id":"1585047616894574596","created_timestamp":"1666739775000",
            "message_create":{"target":{"recipient_id":"944480690"},"sender_id":"106948460078698496",
            "message_data":{"text":"hi"}}}]});
        let delivery = parse(&body).unwrap();
        let message = only_message(&delivery);
        assert_eq!(message.conversation_id, "944480690-106948460078698496");
        assert_eq!(message.sender.username, None);
    }

    /// Every field of every fixture replaced by values of each JSON type, and every
    /// prefix of every fixture: the parser answers, never panics.
    #[test]
    fn no_body_makes_the_parser_panic() {
        let fixtures = [
            fixture!("webhook_aaa_dm.json"),
            fixture!("webhook_aaa_dm_media.json"),
            fixture!("webhook_aaa_typing.json"),
        ];
        let mut bodies: Vec<Value> = fixtures
            .iter()
            .map(|f| serde_json::from_slice(f).unwrap())
            .collect();
        bodies.push(xaa_envelope("dm.received"));
        let replacements = [
            json!(null),
            json!(1.5),
            json!(-1),
            json!(""),
            json!("x"),
            json!([]),
            json!([1, 2]),
            json!({}),
            json!(true),
        ];
        for body in &bodies {
            for path in crate::test_support::paths(body) {
                for replacement in &replacements {
                    let mut mutated = body.clone();
                    *mutated.pointer_mut(&path).unwrap() = replacement.clone();
                    let _ = parse(&mutated);
                }
            }
        }
        for fixture in fixtures {
            for end in 0..fixture.len() {
                let _ = parse_webhook(&fixture[..end]);
            }
        }
    }
}
