//! Pages of `GET /2/dm_events` (and of the per-conversation lookups, which answer in the
//! same shape), for the poller that catches up on DMs the webhook missed.
//!
//! The poller is expected to ask for everything a message needs:
//! `dm_event.fields=id,event_type,text,sender_id,created_at,dm_conversation_id,attachments`,
//! `expansions=sender_id,attachments.media_keys`, `user.fields=username,name,profile_image_url`
//! and `media.fields=media_key,type,url,preview_image_url,variants,width,height,duration_ms`. An event without
//! its sender, time or conversation cannot become a message and is ignored with the
//! reason; a page whose `includes` lack a user or a media still gives its messages,
//! without the profile or the attachment.

use std::collections::HashMap;

use serde_json::Value;
use xbridge_core::contract::{Attachment, DirectMessage, ReceivedVia};
use xbridge_core::excerpt::{cut, quoted};
use xbridge_x_api::{ConversationId, DmEventId, UserId};

use crate::x::attachment;
use crate::x::error::PayloadError;
use crate::x::item::{message_item, unreadable, InboundItem};
use crate::x::json::{self, Object};
use crate::x::sender::Profiles;
use crate::x::text;

/// One page of DM events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmEventsPage {
    /// The events, newest first as X returns them.
    pub items: Vec<InboundItem>,
    /// `meta.result_count`: how many events X says the page holds.
    pub result_count: u64,
    /// `meta.next_token`: the `pagination_token` of the next (older) page; `None` on the
    /// last page.
    pub next_token: Option<String>,
    /// The page's `errors[]` (X may answer 200 with partial errors), one line each.
    pub partial_errors: Vec<String>,
}

/// Reads a `GET /2/dm_events` answer for the account `account_id` (the X user id of
/// the channel being polled).
///
/// Only `MessageCreate` events become messages (`received_via: poll`); the others are
/// [`InboundItem::Ignored`]. `account_id` is the recipient of DMs in group
/// conversations, whose ids do not name the participants.
pub fn parse_dm_events(body: &[u8], account_id: &str) -> Result<DmEventsPage, PayloadError> {
    let root = json::parse_object(body)?;
    let events = json::optional_array(&root, "data", "")?.map_or(&[][..], Vec::as_slice);
    let includes = json::optional_object(&root, "includes", "")?;
    let users = Profiles::from_list(includes.and_then(|i| i.get("users")));
    let media = media_by_key(includes);
    let meta = json::optional_object(&root, "meta", "")?;
    let result_count = meta
        .and_then(|m| m.get("result_count"))
        .and_then(Value::as_u64)
        .unwrap_or(events.len() as u64);
    let next_token = next_token(meta)?;
    let partial_errors = partial_errors(&root)?;
    let account_id = UserId::from(account_id);
    let items = events
        .iter()
        .enumerate()
        .map(|(i, event)| dm_event(event, &format!("data[{i}]."), &account_id, &users, &media))
        .collect();
    Ok(DmEventsPage {
        items,
        result_count,
        next_token,
        partial_errors,
    })
}

/// The page's `includes.media` by `media_key`, for the events' attachments to find theirs.
fn media_by_key(includes: Option<&Object>) -> HashMap<&str, &Object> {
    includes
        .and_then(|i| i.get("media"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter_map(|m| Some((m.get("media_key")?.as_str()?, m)))
        .collect()
}

/// `meta.next_token`, refused unless it is an X pagination token: the poller sends it
/// back, and anything else would make its next request invalid.
fn next_token(meta: Option<&Object>) -> Result<Option<String>, PayloadError> {
    let next_token = meta.and_then(|m| json::optional_str(m, "next_token"));
    if let Some(token) = next_token.as_deref() {
        if !xbridge_x_api::is_pagination_token(token) {
            return Err(PayloadError::Invalid {
                field: "meta.next_token".into(),
                detail: format!("{} is not an X pagination token", quoted(token)),
            });
        }
    }
    Ok(next_token)
}

/// The page's `errors[]` as lines, at most [`MAX_PARTIAL_ERRORS`] and a count of the rest,
/// each logged: X may answer 200 with some events missing.
fn partial_errors(root: &Object) -> Result<Vec<String>, PayloadError> {
    let errors = json::optional_array(root, "errors", "")?.map_or(&[][..], Vec::as_slice);
    let mut partial_errors: Vec<String> = errors
        .iter()
        .take(MAX_PARTIAL_ERRORS)
        .map(describe_error)
        .collect();
    if errors.len() > MAX_PARTIAL_ERRORS {
        partial_errors.push(format!(
            "and {} more errors",
            errors.len() - MAX_PARTIAL_ERRORS
        ));
    }
    for error in &partial_errors {
        tracing::warn!(%error, "X reported a partial error in a DM events page");
    }
    Ok(partial_errors)
}

/// How many of a page's partial errors are kept (and logged) one by one.
const MAX_PARTIAL_ERRORS: usize = 10;
/// How much of each of X's texts in a partial error is kept.
const MAX_ERROR_TEXT_BYTES: usize = 200;

/// One partial error as a line: X's title and detail, each cut short, since the page
/// comes from outside and each line is logged.
fn describe_error(error: &Value) -> String {
    let text = |field| {
        error
            .get(field)
            .and_then(Value::as_str)
            .map(|text| cut(text, MAX_ERROR_TEXT_BYTES))
    };
    match (text("title"), text("detail").or_else(|| text("message"))) {
        (Some(title), Some(detail)) => format!("{title}: {detail}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => cut(&error.to_string(), MAX_ERROR_TEXT_BYTES),
    }
}

fn dm_event(
    event: &Value,
    path: &str,
    account_id: &UserId,
    users: &Profiles,
    media: &HashMap<&str, &Object>,
) -> InboundItem {
    let Some(event) = event.as_object() else {
        let at = path.trim_end_matches('.');
        return unreadable(
            None,
            format!("{at} is {}, not an object", json::kind(event)),
        );
    };
    message_item(event, path, "event_type", "MessageCreate", |event_id| {
        message_create(event, event_id, path, account_id, users, media)
    })
}

/// A `MessageCreate` event as a polled DM: its sender, time and conversation must be
/// readable; attachments that cannot be read are left out (their link stays in the text).
fn message_create(
    event: &Object,
    event_id: &DmEventId,
    path: &str,
    account_id: &UserId,
    users: &Profiles,
    media: &HashMap<&str, &Object>,
) -> Result<DirectMessage, String> {
    let sender_id: UserId = json::required_id(event, "sender_id", path)?;
    let created_at = json::rfc3339(event, "created_at", path)?;
    let conversation_id = conversation_id(event, path)?;
    let recipient_id = recipient_id(&conversation_id, &sender_id, account_id, path)?;
    let mut text = json::text(event, "text", path)?;
    let attachments = attachments(event, event_id, path, media);
    if !attachments.is_empty() {
        text = text::strip_trailing_tco(&text);
    }
    Ok(DirectMessage {
        event_id: event_id.clone(),
        conversation_id,
        sender: users.sender(sender_id),
        recipient_id,
        text,
        attachments,
        created_at,
        received_via: ReceivedVia::Poll,
        source_app_id: None,
    })
}

/// The event's `dm_conversation_id`, which must be an X conversation id: replies go back
/// into it.
fn conversation_id(event: &Object, path: &str) -> Result<ConversationId, String> {
    match event.get("dm_conversation_id") {
        Some(Value::String(id)) if json::is_conversation_id(id) => Ok(id.clone().into()),
        Some(other) => Err(format!(
            "{path}dm_conversation_id {} is not an X conversation id",
            json::shown(other)
        )),
        None => Err(format!("{path}dm_conversation_id is missing")),
    }
}

/// Who received the DM: the other participant of a one-to-one conversation (whose id
/// names both, one of them the sender), or the polled account in a group conversation.
fn recipient_id(
    conversation_id: &ConversationId,
    sender_id: &UserId,
    account_id: &UserId,
    path: &str,
) -> Result<UserId, String> {
    match conversation_id.as_str().split_once('-') {
        Some((a, b)) if a == sender_id.as_str() => Ok(UserId::from(b)),
        Some((a, b)) if b == sender_id.as_str() => Ok(UserId::from(a)),
        Some(_) => Err(format!(
            "{path}sender_id {sender_id} is not a participant of conversation {conversation_id}"
        )),
        None => Ok(account_id.clone()),
    }
}

/// The event's attachments found in the page's `includes.media`; one that is missing or
/// unreadable is logged and left out, so the DM still goes on.
fn attachments(
    event: &Object,
    event_id: &DmEventId,
    path: &str,
    media: &HashMap<&str, &Object>,
) -> Vec<Attachment> {
    let keys = event
        .get("attachments")
        .and_then(|a| a.get("media_keys"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut attachments = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let read = match key.as_str().and_then(|key| media.get(key)) {
            Some(found) => attachment::from_v2_media(
                found,
                &format!("includes.media[{}].", json::shown(key)),
            ),
            None => Err(format!(
                "{path}attachments.media_keys[{i}] {} is not in includes.media (request expansions=attachments.media_keys)",
                json::shown(key)
            )),
        };
        match read {
            Ok(attachment) => attachments.push(attachment),
            Err(reason) => tracing::warn!(
                %event_id,
                %reason,
                "DM attachment cannot be read; the DM goes on without it, its link left in the text"
            ),
        }
    }
    attachments
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::{json, Value};

    use super::*;
    use crate::test_support::fixture;
    use xbridge_core::contract::{Attachment, AttachmentKind, Sender};

    const ACCOUNT: &str = "906948460078698496";

    fn parse(body: &Value) -> DmEventsPage {
        parse_dm_events(body.to_string().as_bytes(), ACCOUNT).unwrap()
    }

    fn messages(page: &DmEventsPage) -> Vec<&DirectMessage> {
        page.items
            .iter()
            .filter_map(|item| match item {
                InboundItem::Message(message) => Some(message),
                _ => None,
            })
            .collect()
    }

    fn expanded() -> Value {
        serde_json::from_slice(fixture!("dm_events_expanded_200.json")).unwrap()
    }

    #[test]
    fn an_expanded_page_gives_a_polled_message_with_its_media() {
        let page = parse_dm_events(fixture!("dm_events_expanded_200.json"), ACCOUNT).unwrap();
        assert_eq!(page.result_count, 1);
        assert_eq!(page.next_token.as_deref(), Some("18LAA581J5II7LA00C00ZZZZ"));
        assert!(page.partial_errors.is_empty());
        assert_eq!(
            page.items,
            vec![InboundItem::Message(DirectMessage {
                event_id: "1585047616894574596".into(),
                conversation_id: "944480690-906948460078698496".into(),
                sender: Sender {
                    id: "944480690".into(),
                    username: Some("FloodSocial".into()),
                    name: Some("API Demos".into()),
                    avatar_url: None,
                },
                recipient_id: "906948460078698496".into(),
                text: "Hello, just you!".into(),
                attachments: vec![Attachment {
                    kind: AttachmentKind::Photo,
                    media_id: Some("1583157113245011970".into()),
                    media_key: Some("3_1583157113245011970".into()),
                    url: None,
                    preview_url: None,
                    width: None,
                    height: None,
                    duration_ms: None,
                    x_url: "https://ton.twitter.com/1.1/ton/data/dm/1585047616894574596/1583157113245011970/abcdEFGH.jpg".into(),
                    x_preview_url: None,
                }],
                created_at: DateTime::parse_from_rfc3339("2022-10-25T23:16:15.000Z")
                    .unwrap()
                    .into(),
                received_via: ReceivedVia::Poll,
                source_app_id: None,
            })]
        );
    }

    #[test]
    fn the_attachments_trailing_tco_link_is_stripped() {
        let mut body = expanded();
        body["data"][0]["text"] = json!("Hello, just you! https://t.co/Mq6pVXPx1M");
        assert_eq!(messages(&parse(&body))[0].text, "Hello, just you!");
        // Without an attachment, a trailing link is the customer's and stays.
        body["data"][0]
            .as_object_mut()
            .unwrap()
            .remove("attachments");
        let page = parse(&body);
        let message = messages(&page)[0];
        assert_eq!(message.text, "Hello, just you! https://t.co/Mq6pVXPx1M");
        assert!(message.attachments.is_empty());
    }

    #[test]
    fn media_missing_from_includes_leaves_the_dm_with_its_link() {
        let mut body = expanded();
        body["data"][0]["text"] = json!("look https://t.co/Mq6pVXPx1M");
        body["includes"].as_object_mut().unwrap().remove("media");
        let page = parse(&body);
        let message = messages(&page)[0];
        assert!(message.attachments.is_empty());
        assert_eq!(message.text, "look https://t.co/Mq6pVXPx1M");
    }

    #[test]
    fn a_video_takes_its_best_mp4_and_preview() {
        let mut body = expanded();
        body["data"][0]["attachments"]["media_keys"] = json!(["7_1583157113245011970"]);
        body["includes"]["media"] = json!([{"media_key":"7_1583157113245011970","type":"video",
            "preview_image_url":"https://pbs.twimg.com/dm_video_thumb/1/img/x.jpg",
            "variants":[{"bit_rate":632000,"content_type":"video/mp4","url":"https://video.twimg.com/dm_video/1/vid/low.mp4"},
                        {"bit_rate":2176000,"content_type":"video/mp4","url":"https://video.twimg.com/dm_video/1/vid/high.mp4"},
                        {"content_type":"application/x-mpegURL","url":"https://video.twimg.com/dm_video/1/pl.m3u8"}]}]);
        let page = parse(&body);
        let attachment = &messages(&page)[0].attachments[0];
        assert_eq!(attachment.kind, AttachmentKind::Video);
        assert_eq!(
            attachment.x_url,
            "https://video.twimg.com/dm_video/1/vid/high.mp4"
        );
        assert_eq!(
            attachment.x_preview_url.as_deref(),
            Some("https://pbs.twimg.com/dm_video_thumb/1/img/x.jpg")
        );
    }

    #[test]
    fn an_empty_page_has_no_items() {
        let page = parse_dm_events(fixture!("dm_events_empty_200.json"), ACCOUNT).unwrap();
        assert_eq!(
            page,
            DmEventsPage {
                items: vec![],
                result_count: 0,
                next_token: None,
                partial_errors: vec![],
            }
        );
    }

    #[test]
    fn events_without_sender_or_time_are_ignored_with_their_ids() {
        // The conversation lookup without dm_event.fields/expansions: id, type and text only.
        let page = parse_dm_events(fixture!("conversation_dm_events_200.json"), ACCOUNT).unwrap();
        assert_eq!(page.result_count, 2);
        assert_eq!(page.next_token.as_deref(), Some("18LAA5G1SL0NR5OG0G00ZZZZ"));
        let ignored: Vec<(Option<&str>, &str)> = page
            .items
            .iter()
            .map(|item| match item {
                InboundItem::Ignored { event_id, reason } => {
                    (event_id.as_ref().map(|id| id.as_str()), reason.as_str())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ignored,
            vec![
                (Some("1585800613752881156"), "data[0].sender_id is missing"),
                (Some("1585800613253812228"), "data[1].sender_id is missing"),
            ]
        );
    }

    #[test]
    fn only_message_create_events_become_messages() {
        let mut body = expanded();
        let message = body["data"][0].clone();
        body["data"] = json!([
            {"id":"1585047616894574597","event_type":"ParticipantsJoin","participant_ids":["1"],
             "dm_conversation_id":"1585047616894574500","created_at":"2022-10-25T23:16:16.000Z"},
            message,
            {"id":"1585047616894574595","event_type":"ParticipantsLeave"},
        ]);
        let page = parse(&body);
        assert_eq!(messages(&page).len(), 1);
        assert!(matches!(
            &page.items[0],
            InboundItem::Ignored { event_id: Some(id), reason } if id == "1585047616894574597" && reason.contains("ParticipantsJoin")
        ));
        assert!(matches!(&page.items[2], InboundItem::Ignored { .. }));
    }

    #[test]
    fn a_group_dm_is_addressed_to_the_polled_account() {
        let mut body = expanded();
        body["data"][0]["dm_conversation_id"] = json!("1585047616894574500");
        let page = parse(&body);
        let message = messages(&page)[0];
        assert_eq!(message.conversation_id, "1585047616894574500");
        assert_eq!(message.recipient_id, ACCOUNT);
    }

    #[test]
    fn the_account_own_dm_is_addressed_to_the_customer() {
        let mut body = expanded();
        body["data"][0]["sender_id"] = json!(ACCOUNT);
        let page = parse(&body);
        let message = messages(&page)[0];
        assert_eq!(message.sender.id, ACCOUNT);
        assert_eq!(message.recipient_id, "944480690");
        assert_eq!(message.sender.username, None);
    }

    #[test]
    fn unreadable_events_are_ignored_and_the_rest_delivered() {
        let cases: Vec<(Value, Value, &str)> = vec![
            (json!("id"), json!(null), "data[0].id is missing"),
            (
                json!("id"),
                serde_json::from_str("1.5850476168945746e18").unwrap(),
                "(a float)",
            ),
            (
                json!("sender_id"),
                json!("x"),
                "data[0].sender_id \"x\" is not an X id",
            ),
            (
                json!("created_at"),
                json!("yesterday"),
                "data[0].created_at \"yesterday\" is not an RFC 3339 time",
            ),
            (
                json!("created_at"),
                json!(null),
                "data[0].created_at is missing",
            ),
            (
                json!("dm_conversation_id"),
                json!("1-2-3"),
                "is not an X conversation id",
            ),
            (
                json!("dm_conversation_id"),
                json!("1-2"),
                "sender_id 944480690 is not a participant of conversation 1-2",
            ),
            (
                json!("text"),
                json!(7),
                "data[0].text must be a string, not a number",
            ),
            (
                json!("event_type"),
                json!(null),
                "data[0].event_type is missing",
            ),
        ];
        for (field, value, expected) in cases {
            let mut body = expanded();
            let good = body["data"][0].clone();
            let mut bad = good.clone();
            match value {
                Value::Null => {
                    bad.as_object_mut().unwrap().remove(field.as_str().unwrap());
                }
                value => bad[field.as_str().unwrap()] = value,
            }
            body["data"] = json!([bad, good]);
            let page = parse(&body);
            assert_eq!(messages(&page).len(), 1, "{expected}");
            let InboundItem::Ignored { reason, .. } = &page.items[0] else {
                panic!("{expected}: {:?}", page.items[0]);
            };
            assert!(reason.contains(expected), "{reason}");
        }
    }

    #[test]
    fn pages_that_cannot_be_read_are_payload_errors() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"<html>", "not valid JSON"),
            (b"\"data\"", "JSON object, not a string"),
            (
                br#"{"data":{"id":"1"}}"#,
                "data must be an array, not an object",
            ),
            (
                br#"{"data":[],"includes":[]}"#,
                "includes must be an object",
            ),
            (br#"{"data":[],"meta":"x"}"#, "meta must be an object"),
            (br#"{"data":[],"errors":{}}"#, "errors must be an array"),
        ];
        for (body, expected) in cases {
            let error = parse_dm_events(body, ACCOUNT).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    /// Found by the property tests: a page's `next_token` was taken whatever it held, and
    /// the poller's next request then failed locally as one X would refuse.
    #[test]
    fn a_page_whose_next_token_cannot_be_sent_back_is_unreadable() {
        for token in [" \t\r\n ", "a/b", "x".repeat(20_000).as_str()] {
            let mut body = expanded();
            body["meta"]["next_token"] = json!(token);
            let error = parse_dm_events(body.to_string().as_bytes(), ACCOUNT).unwrap_err();
            assert!(error.to_string().starts_with("meta.next_token "), "{error}");
            assert!(error.to_string().len() < 300, "{error}");
        }
    }

    /// Partial errors are logged one line each: their number and length are bounded.
    #[test]
    fn partial_errors_are_bounded() {
        let mut body = expanded();
        body["errors"] = json!(vec![
            json!({"title": "t".repeat(5_000), "detail": "d"});
            1_000
        ]);
        let page = parse(&body);
        assert_eq!(page.partial_errors.len(), 11);
        assert!(page.partial_errors[0].chars().count() < 420);
        assert_eq!(page.partial_errors[10], "and 990 more errors");
    }

    #[test]
    fn partial_errors_are_reported_with_the_page() {
        let mut body = expanded();
        body["errors"] = json!([{"title":"Not Found Error","detail":"Could not find media","type":"https://api.twitter.com/2/problems/resource-not-found"}, {"x":1}]);
        let page = parse(&body);
        assert_eq!(messages(&page).len(), 1);
        assert_eq!(
            page.partial_errors,
            vec![
                "Not Found Error: Could not find media".to_owned(),
                r#"{"x":1}"#.to_owned()
            ]
        );
    }

    #[test]
    fn no_page_makes_the_parser_panic() {
        let body = expanded();
        let replacements = [
            json!(null),
            json!(1.5),
            json!(-1),
            json!("x"),
            json!([]),
            json!({}),
            json!(true),
        ];
        for path in crate::test_support::paths(&body) {
            for replacement in &replacements {
                let mut mutated = body.clone();
                *mutated.pointer_mut(&path).unwrap() = replacement.clone();
                let _ = parse_dm_events(mutated.to_string().as_bytes(), ACCOUNT);
            }
        }
        let raw = fixture!("dm_events_expanded_200.json");
        for end in 0..raw.len() {
            let _ = parse_dm_events(&raw[..end], ACCOUNT);
        }
    }
}
