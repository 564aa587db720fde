//! Property tests of the core's parser of outside input: the CRM's reply bodies. Whatever
//! the CRM (or anyone who can publish to the outgoing exchange) sends, the parser answers
//! with a classified outcome, never a panic, and a refusal's text stays small enough for a
//! dead letter's header and a status event.
//!
//! The generic hostile values come from `xbridge-arbitrary`; this module adds the shapes of
//! this crate's input (valid replies to mutate). The AMQP headers a reply arrives with
//! have their properties in `xbridge-amqp`.

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Value};
use xbridge_arbitrary as arbitrary;

use crate::contract::{
    AttachmentSource, OutgoingReply, ReplyTarget, MAX_ATTACHMENTS, MAX_INLINE_DATA_BYTES,
    MAX_MESSAGE_ID_BYTES, MAX_TEXT_CHARS,
};

/// The longest refusal text a reply may get: it becomes the `x-xbridge-detail` header of
/// the dead letter and the `detail` of `message.failed`, so it must not grow with the
/// body (a 130 KB id quoted back would make the dead letter too large to publish).
const MAX_DETAIL_BYTES: usize = 600;

/// Valid replies of every shape the contract allows, for the mutations to start from.
fn replies() -> Vec<Value> {
    let gif = base64::engine::general_purpose::STANDARD
        .encode(b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!");
    vec![
        json!({"message_id": "m-1", "recipient_id": "2244994945", "text": "Hello!"}),
        json!({"message_id": "m-2", "channel": "acme", "conversation_id": "2244994945-1000000000000000001", "text": "Hi"}),
        json!({"message_id": "m-3", "recipient_id": 2244994945u64, "text": "é🙂",
               "attachments": [{"data": gif, "mime_type": "image/gif", "filename": "dot.gif"}]}),
        json!({"message_id": "m-4", "conversation_id": "1585047616894574596",
               "attachments": [{"url": "https://cdn.example.com/a.png?sig=1", "mime_type": "image/png"},
                               {"url": "http://cdn.example.com:8080/v.mp4", "mime_type": "video/mp4"}]}),
    ]
}

fn is_digits(id: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// What every accepted reply guarantees the sending side.
fn assert_valid(reply: &OutgoingReply) -> Result<(), TestCaseError> {
    prop_assert!(!reply.message_id.trim().is_empty());
    prop_assert!(reply.message_id.len() <= MAX_MESSAGE_ID_BYTES);
    match &reply.target {
        ReplyTarget::Recipient(id) => prop_assert!(is_digits(id.as_str(), 1..=19), "{id:?}"),
        ReplyTarget::Conversation(id) => prop_assert!(
            match id.as_str().split_once('-') {
                Some((a, b)) => is_digits(a, 1..=19) && is_digits(b, 1..=19),
                None => is_digits(id.as_str(), 15..=19),
            },
            "{id:?}"
        ),
    }
    prop_assert!(reply.text.chars().count() <= MAX_TEXT_CHARS);
    prop_assert!(reply.attachments.len() <= MAX_ATTACHMENTS);
    if reply.attachments.is_empty() {
        prop_assert!(!reply.text.trim().is_empty());
    }
    for attachment in &reply.attachments {
        if let AttachmentSource::Data(data) = &attachment.source {
            prop_assert!(!data.is_empty());
            prop_assert!(data.len() as u64 <= MAX_INLINE_DATA_BYTES);
            prop_assert!(data.len() as u64 <= attachment.category.max_bytes());
        }
    }
    Ok(())
}

/// A refusal as the property wants it: some text, of bounded size, naming only a
/// well-formed id.
fn assert_bounded(refusal: &crate::contract::InvalidReply) -> Result<(), TestCaseError> {
    prop_assert!(!refusal.detail.is_empty());
    prop_assert!(
        refusal.detail.len() <= MAX_DETAIL_BYTES,
        "{} bytes: {}…",
        refusal.detail.len(),
        refusal.detail.chars().take(200).collect::<String>()
    );
    if let Some(id) = &refusal.message_id {
        prop_assert!(!id.trim().is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES);
    }
    Ok(())
}

/// Every field of every template replaced by each hostile sample (a 20,000-character
/// string among them), and each left out: what a random run may take long to draw.
#[test]
fn every_field_of_a_reply_may_be_wrong() {
    for template in replies() {
        for body in arbitrary::each_field(&template, &arbitrary::samples()) {
            let bytes = arbitrary::to_bytes(&body);
            let outcome = match OutgoingReply::parse(&bytes, "acme") {
                Ok(reply) => assert_valid(&reply),
                Err(refusal) => assert_bounded(&refusal),
            };
            if let Err(failure) = outcome {
                let shown: String = body.to_string().chars().take(300).collect();
                panic!("{failure} for {shown}");
            }
        }
    }
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Any body, valid or not: an accepted reply keeps every promise of the contract, a
    /// refused one says why in a bounded text and names only an id it could read.
    #[test]
    fn a_reply_body_is_accepted_valid_or_refused_with_a_bounded_reason(
        body in arbitrary::body(replies()),
        channel in prop_oneof![Just("acme".to_owned()), "[a-z]{1,8}"],
    ) {
        match OutgoingReply::parse(&body, &channel) {
            Ok(reply) => assert_valid(&reply)?,
            Err(refusal) => assert_bounded(&refusal)?,
        }
    }
}
