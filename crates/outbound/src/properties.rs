//! Property tests of the outbound side's parsers of outside input that are not the
//! reply itself (that is `xbridge-core`'s): the page of the reconcile lookup, X's answer
//! read to find an earlier send, and the body and routing key of a reply for no channel.

use lapin::types::ShortString;
use proptest::prelude::*;
use serde_json::json;
use xbridge_arbitrary as arbitrary;
use xbridge_core::contract::{FailureReason, StatusEvent};
use xbridge_x_api::{DmTarget, XError};

use crate::recent_events::{matches, read_page, Sought};
use crate::unrouted::reportable_id;

/// A page as X answers the lookup, with an own DM that has media and one of the customer.
fn pages() -> Vec<serde_json::Value> {
    vec![
        json!({"data": [
            {"id": "1900000000000000001", "sender_id": "100", "text": "Your order shipped https://t.co/abc",
             "dm_conversation_id": "42-100", "created_at": "2026-11-25T10:00:01.000Z",
             "attachments": {"media_keys": ["3_1"]}, "event_type": "MessageCreate"},
            {"id": "1900000000000000000", "sender_id": "42", "text": "Where is my order?",
             "dm_conversation_id": "42-100", "created_at": "2026-11-25T09:59:00.000Z"}],
            "meta": {"result_count": 2, "next_token": "7140dibdnow9c7btw4b0zmpfdlmg5e6dohbthdfqbwcp2"}}),
        json!({"meta": {"result_count": 0}}),
    ]
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Any answer to the lookup: a page whose events have X's ids and whose next token
    /// the client can send, or a transient failure with a bounded detail; matching its
    /// events against a send never panics.
    #[test]
    fn a_lookup_page_is_read_or_transient(body in arbitrary::body(pages())) {
        match read_page(&body) {
            Ok(page) => {
                let target = DmTarget::Participant("42".into());
                let since = chrono::DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                    .expect("a time")
                    .into();
                for event in &page.data {
                    prop_assert!(
                        (1..=19).contains(&event.id.as_str().len())
                            && event.id.as_str().bytes().all(|b| b.is_ascii_digit())
                    );
                    for has_media in [false, true] {
                        let sought = Sought {
                            own_user_id: "100".into(),
                            target: &target,
                            text: "Your order shipped",
                            has_media,
                            since,
                        };
                        let _ = matches(event, &sought);
                    }
                }
                if let Some(token) = &page.meta.next_token {
                    prop_assert!(xbridge_x_api::is_pagination_token(token));
                }
            }
            Err(XError::Transient { status: Some(200), detail }) => {
                prop_assert!(detail.len() <= 600, "{} bytes", detail.len());
            }
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    /// A reply for no channel, under any routing key AMQP allows and with any body: when
    /// its id is reported, the status event's ids fit AMQP's short strings.
    #[test]
    fn a_reported_id_makes_a_publishable_status_event(
        routing_key in prop_oneof!["[a-z0-9_.-]{1,255}", any::<String>()],
        body in arbitrary::body(vec![json!({"message_id": "m-1", "recipient_id": "1", "text": "hi"})]),
    ) {
        prop_assume!(routing_key.len() <= 255);
        if let Some(id) = reportable_id(&routing_key, &body) {
            let event = StatusEvent::Failed {
                message_id: id,
                channel: routing_key,
                reason: FailureReason::UnknownChannel,
                detail: String::new(),
                attempts: 0,
            };
            prop_assert!(ShortString::try_new(event.amqp_message_id()).is_ok());
            prop_assert!(ShortString::try_new(event.routing_key()).is_ok());
            prop_assert!(ShortString::try_new(event.message_id().to_owned()).is_ok());
        }
    }
}
