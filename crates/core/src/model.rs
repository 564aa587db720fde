//! The message contract with the CRM: replies in, status events out, and the
//! closed set of reasons a reply can fail for.
//!
//! Parsing is strict where a mistake would send the wrong DM (ids, text
//! length, channel) and lenient where it costs nothing (unknown extra fields
//! are ignored, so the CRM can add fields without breaking the bridge).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// X's limit on a DM's text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Upper bound on the CRM's message id in bytes: it travels in AMQP short
/// strings (at most 255 bytes) together with the channel name.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// A reply the CRM asked the bridge to send, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingReply {
    /// The CRM's id: the idempotency key, echoed in every status event.
    pub message_id: String,
    /// Who or where to send to.
    pub target: ReplyTarget,
    /// The DM's text, 1 to 10,000 characters.
    pub text: String,
}

/// Where a reply goes: X has one endpoint for each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplyTarget {
    /// A 1:1 conversation with this X user id.
    Recipient(String),
    /// An existing DM conversation.
    Conversation(String),
}

impl ReplyTarget {
    /// The key replies are ordered by: replies with the same key are sent in
    /// the order the CRM published them.
    pub fn ordering_key(&self) -> String {
        match self {
            ReplyTarget::Recipient(id) => format!("user:{id}"),
            ReplyTarget::Conversation(id) => format!("conversation:{id}"),
        }
    }
}

/// Why a reply body was refused; the text is the `detail` of the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidReply {
    /// What is wrong, naming the field.
    pub detail: String,
    /// The message id, when it could be read, so the CRM can still be told.
    pub message_id: Option<String>,
}

impl OutgoingReply {
    /// Parses and validates a reply body. `channel` is the channel named by the
    /// routing key; a `channel` field in the body must agree with it.
    pub fn parse(body: &[u8], channel: &str) -> Result<OutgoingReply, InvalidReply> {
        let text = std::str::from_utf8(body).map_err(|e| InvalidReply {
            detail: format!("body is not valid UTF-8 (at byte {})", e.valid_up_to()),
            message_id: None,
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| InvalidReply {
            detail: format!("body is not valid JSON: {e}"),
            message_id: None,
        })?;
        let Value::Object(object) = value else {
            return Err(InvalidReply {
                detail: "body must be a JSON object".into(),
                message_id: None,
            });
        };

        let message_id = match object.get("message_id") {
            Some(Value::String(id)) if !id.trim().is_empty() => {
                if id.len() > MAX_MESSAGE_ID_BYTES {
                    return Err(InvalidReply {
                        detail: format!("message_id must be at most {MAX_MESSAGE_ID_BYTES} bytes"),
                        message_id: None,
                    });
                }
                id.clone()
            }
            Some(Value::String(_)) => return Err(invalid(None, "message_id must not be empty")),
            Some(other) => {
                return Err(invalid(
                    None,
                    &format!("message_id must be a string, not {}", kind(other)),
                ))
            }
            None => return Err(invalid(None, "message_id is missing")),
        };
        let fail = |detail: String| InvalidReply {
            detail,
            message_id: Some(message_id.clone()),
        };

        match object.get("channel") {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if c == channel => {}
            Some(Value::String(c)) => {
                return Err(fail(format!(
                    "channel {c:?} does not match the routing key {channel:?}"
                )))
            }
            Some(other) => {
                return Err(fail(format!(
                    "channel must be a string, not {}",
                    kind(other)
                )))
            }
        }

        let recipient = id_field(&object, "recipient_id").map_err(&fail)?;
        let conversation = match object.get("conversation_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if is_conversation_id(id) => Some(id.clone()),
            Some(Value::String(id)) => {
                return Err(fail(format!(
                    "conversation_id {id:?} is not an X conversation id (digits, or two ids joined by -)"
                )))
            }
            Some(other) => {
                return Err(fail(format!(
                    "conversation_id must be a string, not {}",
                    kind(other)
                )))
            }
        };
        let target = match (recipient, conversation) {
            (Some(id), None) => ReplyTarget::Recipient(id),
            (None, Some(id)) => ReplyTarget::Conversation(id),
            (Some(_), Some(_)) => {
                return Err(fail(
                    "give either recipient_id or conversation_id, not both".into(),
                ))
            }
            (None, None) => return Err(fail("recipient_id or conversation_id is required".into())),
        };

        let text = match object.get("text") {
            Some(Value::String(text)) => text,
            Some(other) => return Err(fail(format!("text must be a string, not {}", kind(other)))),
            None => return Err(fail("text is missing".into())),
        };
        let chars = text.chars().count();
        if text.trim().is_empty() {
            return Err(fail("text must not be empty".into()));
        }
        if chars > MAX_TEXT_CHARS {
            return Err(fail(format!(
                "text is {chars} characters; X allows at most {MAX_TEXT_CHARS}"
            )));
        }

        Ok(OutgoingReply {
            message_id,
            target,
            text: text.clone(),
        })
    }
}

fn invalid(message_id: Option<String>, detail: &str) -> InvalidReply {
    InvalidReply {
        detail: detail.into(),
        message_id,
    }
}

/// An X user id: a string of digits, or a JSON integer (never a float, which
/// would lose digits of a 19-digit id).
fn id_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if is_user_id(id) => Ok(Some(id.clone())),
        Some(Value::String(id)) => Err(format!(
            "{field} {id:?} is not an X user id (1 to 19 digits)"
        )),
        Some(Value::Number(n)) => match n.as_u64().map(|id| id.to_string()) {
            Some(id) if is_user_id(&id) => Ok(Some(id)),
            _ => Err(format!(
                "{field} must be a whole number or a string of digits, not {n}"
            )),
        },
        Some(other) => Err(format!(
            "{field} must be a string of digits, not {}",
            kind(other)
        )),
    }
}

fn is_user_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// X's dm_conversation_id: `^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$`.
fn is_conversation_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((a, b)) => is_user_id(a) && is_user_id(b),
        None => (15..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a reply ended in the dead-letter queue. A closed set: these are
/// documented for operators and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The reply body broke the contract.
    InvalidMessage,
    /// The routing key names no configured channel.
    UnknownChannel,
    /// Transient X failures outlasted the retry budget.
    RetriesExhausted,
    /// The account had no credits (or hit a cap) for longer than allowed.
    CreditsExhausted,
    /// X refused the request as invalid (400 and other 4xx).
    InvalidRequest,
    /// The recipient does not accept DMs from this account (403).
    RecipientRefuses,
    /// X refused the credentials (401).
    Unauthorized,
    /// The access token lacks DM permission (403 oauth1-permissions).
    MissingPermission,
    /// The X App is not enrolled / attached to a Project (403 client-forbidden).
    NotEnrolled,
}

impl FailureReason {
    /// The wire name (`credits_exhausted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidMessage => "invalid_message",
            FailureReason::UnknownChannel => "unknown_channel",
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::CreditsExhausted => "credits_exhausted",
            FailureReason::InvalidRequest => "invalid_request",
            FailureReason::RecipientRefuses => "recipient_refuses",
            FailureReason::Unauthorized => "unauthorized",
            FailureReason::MissingPermission => "missing_permission",
            FailureReason::NotEnrolled => "not_enrolled",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event the bridge publishes to the CRM about one of its replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum StatusEvent {
    /// The reply went out as a DM.
    #[serde(rename = "message.sent")]
    Sent {
        /// The CRM's id of the reply.
        message_id: String,
        /// The channel it went out on.
        channel: String,
        /// X's id of the DM event (the first, when the reply became several
        /// DMs): lets the CRM match the echo X sends back.
        dm_event_id: String,
        /// Every DM the reply became, in order: one, or one per attachment
        /// (X takes one attachment per DM; the text goes with the first).
        dm_event_ids: Vec<String>,
        /// X's conversation id, for replies addressed by recipient.
        conversation_id: String,
        /// When X accepted it.
        #[serde(serialize_with = "rfc3339")]
        sent_at: DateTime<Utc>,
    },
    /// The reply will not go out; it is in the dead-letter queue.
    #[serde(rename = "message.failed")]
    Failed {
        /// The CRM's id of the reply.
        message_id: String,
        /// The channel it was for.
        channel: String,
        /// Machine-readable reason.
        reason: FailureReason,
        /// Human-readable explanation for the agent.
        detail: String,
        /// Requests made to X for this reply.
        attempts: u32,
    },
}

impl StatusEvent {
    /// `message.sent` / `message.failed`: the AMQP `type` and the last words
    /// of the routing key.
    pub fn event_type(&self) -> &'static str {
        match self {
            StatusEvent::Sent { .. } => "message.sent",
            StatusEvent::Failed { .. } => "message.failed",
        }
    }

    /// The reply's CRM id.
    pub fn message_id(&self) -> &str {
        match self {
            StatusEvent::Sent { message_id, .. } | StatusEvent::Failed { message_id, .. } => {
                message_id
            }
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        match self {
            StatusEvent::Sent { channel, .. } | StatusEvent::Failed { channel, .. } => channel,
        }
    }

    /// Routing key on the incoming exchange: `<channel>.<type>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.channel(), self.event_type())
    }

    /// Deterministic AMQP message id (`<channel>:<message_id>:sent`), so the
    /// CRM can drop the rare duplicate a crash can cause.
    pub fn amqp_message_id(&self) -> String {
        let suffix = match self {
            StatusEvent::Sent { .. } => "sent",
            StatusEvent::Failed { .. } => "failed",
        };
        format!("{}:{}:{suffix}", self.channel(), self.message_id())
    }
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<OutgoingReply, InvalidReply> {
        OutgoingReply::parse(body.as_bytes(), "acme")
    }

    #[test]
    fn a_reply_to_a_recipient() {
        let reply =
            parse(r#"{"message_id":"m1","recipient_id":"944480690","text":"Hi","extra":1}"#)
                .unwrap();
        assert_eq!(reply.target, ReplyTarget::Recipient("944480690".into()));
        assert_eq!(reply.text, "Hi");
    }

    #[test]
    fn a_numeric_recipient_keeps_all_19_digits() {
        let reply =
            parse(r#"{"message_id":"m1","recipient_id":1553086854915936256,"text":"Hi"}"#).unwrap();
        assert_eq!(
            reply.target,
            ReplyTarget::Recipient("1553086854915936256".into())
        );
    }

    #[test]
    fn a_reply_to_a_conversation_with_matching_channel() {
        let reply = parse(r#"{"message_id":"m1","conversation_id":"944480690-906948460078698496","text":"Hi","channel":"acme"}"#).unwrap();
        assert_eq!(
            reply.target,
            ReplyTarget::Conversation("944480690-906948460078698496".into())
        );
    }

    #[test]
    fn each_invalid_class_names_its_problem() {
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        let cases: Vec<(Vec<u8>, &str, bool)> = vec![
            (b"not json".to_vec(), "not valid JSON", false),
            (vec![0xff, 0xfe, b'{'], "not valid UTF-8", false),
            (b"[1,2]".to_vec(), "JSON object", false),
            (
                br#"{"recipient_id":"1","text":"a"}"#.to_vec(),
                "message_id is missing",
                false,
            ),
            (
                br#"{"message_id":7,"recipient_id":"1","text":"a"}"#.to_vec(),
                "message_id must be a string",
                false,
            ),
            (
                br#"{"message_id":"m","text":"a"}"#.to_vec(),
                "recipient_id or conversation_id is required",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"12a","text":"a"}"#.to_vec(),
                "not an X user id",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":1.5,"text":"a"}"#.to_vec(),
                "whole number",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","conversation_id":"1-2","text":"a"}"#
                    .to_vec(),
                "not both",
                true,
            ),
            (
                br#"{"message_id":"m","conversation_id":"abc","text":"a"}"#.to_vec(),
                "not an X conversation id",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1"}"#.to_vec(),
                "text is missing",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","text":5}"#.to_vec(),
                "text must be a string",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","text":"  "}"#.to_vec(),
                "text must not be empty",
                true,
            ),
            (
                format!(r#"{{"message_id":"m","recipient_id":"1","text":"{long}"}}"#).into_bytes(),
                "at most 10000",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","text":"a","channel":"other"}"#.to_vec(),
                "does not match the routing key",
                true,
            ),
        ];
        for (body, expected, has_id) in cases {
            let err = OutgoingReply::parse(&body, "acme").unwrap_err();
            assert!(
                err.detail.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(&body),
                err.detail
            );
            assert_eq!(err.message_id.is_some(), has_id, "{}", err.detail);
        }
    }

    #[test]
    fn text_length_counts_characters_not_bytes() {
        let text = "é".repeat(MAX_TEXT_CHARS);
        let body = format!(r#"{{"message_id":"m","recipient_id":"1","text":"{text}"}}"#);
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn status_events_serialize_to_the_contract() {
        let sent = StatusEvent::Sent {
            message_id: "m1".into(),
            channel: "acme".into(),
            dm_event_id: "1585800613253812228".into(),
            dm_event_ids: vec!["1585800613253812228".into()],
            conversation_id: "1-2".into(),
            sent_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                .unwrap()
                .into(),
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            serde_json::json!({"type":"message.sent","message_id":"m1","channel":"acme","dm_event_id":"1585800613253812228","dm_event_ids":["1585800613253812228"],"conversation_id":"1-2","sent_at":"2026-11-25T10:00:00.000Z"})
        );
        assert_eq!(sent.routing_key(), "acme.message.sent");
        assert_eq!(sent.amqp_message_id(), "acme:m1:sent");
        let failed = StatusEvent::Failed {
            message_id: "m1".into(),
            channel: "acme".into(),
            reason: FailureReason::CreditsExhausted,
            detail: "no credits".into(),
            attempts: 2,
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap()["reason"],
            "credits_exhausted"
        );
    }
}
