//! Sending Direct Messages: X's two 1:1 send endpoints, from validation (after the shared
//! gate: credentials, rate limit, faults) to the recorded [`SentDm`].

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use url::Url;

use crate::accounts::Account;
use crate::authorized::{Authorized, DmSend};
use crate::events::one_to_one_conversation_id;
use crate::reply::Reply;
use crate::state::{DmEvent, Inner, MediaType, SentDm};
use crate::{delivery, problems, request_body, uploads};

/// X's limit on a DM's text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;

/// Which send endpoint was called, and with what id.
enum Target {
    /// `POST /2/dm_conversations/with/:participant_id/messages`.
    Participant(String),
    /// `POST /2/dm_conversations/:dm_conversation_id/messages`.
    Conversation(String),
    /// A path segment that could not even be decoded.
    Undecodable { parameter: &'static str },
}

/// `POST /2/dm_conversations/with/:participant_id/messages`.
pub(crate) async fn send_to_participant(
    participant_id: Result<Path<String>, PathRejection>,
    caller: Authorized<DmSend>,
) -> Reply {
    let target = match participant_id {
        Ok(Path(id)) => Target::Participant(id),
        Err(_) => Target::Undecodable {
            parameter: "participant_id",
        },
    };
    send(caller, target).await
}

/// `POST /2/dm_conversations/:dm_conversation_id/messages`.
pub(crate) async fn send_in_conversation(
    conversation_id: Result<Path<String>, PathRejection>,
    caller: Authorized<DmSend>,
) -> Reply {
    let target = match conversation_id {
        Ok(Path(id)) => Target::Conversation(id),
        Err(_) => Target::Undecodable {
            parameter: "dm_conversation_id",
        },
    };
    send(caller, target).await
}

/// Records an admitted send and schedules its webhook deliveries, or says why X refuses it.
/// A slow send ([`crate::Fault::SlowSend`]) goes on in a task of its own, so the DM is created
/// even if the client gives up (and the connection, with this handler, goes) meanwhile.
async fn send(mut caller: Authorized<DmSend>, target: Target) -> Reply {
    let (slow, epoch) = {
        let mut inner = caller.state.lock();
        let slow = inner.faults.take_slow_send(&caller.account.user_id);
        inner.slow_sends += usize::from(slow.is_some());
        (slow, inner.epoch)
    };
    let Some(delay) = slow else {
        return send_now(caller, target);
    };
    let finish = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        caller.now = caller.state.now();
        let state = Arc::clone(&caller.state);
        // A reset meanwhile: the send belongs to the scenario that was cleared.
        let reset = state.lock().epoch != epoch;
        let reply = if reset {
            Reply::new(StatusCode::SERVICE_UNAVAILABLE, "")
        } else {
            send_now(caller, target)
        };
        let mut inner = state.lock();
        inner.slow_sends = inner.slow_sends.saturating_sub(1);
        drop(inner);
        state.dm_recorded.notify_waiters();
        reply
    });
    finish
        .await
        .unwrap_or_else(|_| Reply::new(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

fn send_now(caller: Authorized<DmSend>, target: Target) -> Reply {
    let state = Arc::clone(&caller.state);
    match decide(caller, target) {
        Ok((reply, event)) => {
            delivery::schedule(&state, &event);
            reply
        }
        Err(refused) => refused,
    }
}

/// What X checks after the gate, in X's order: what (400), to whom (403); then the DM is
/// recorded, also as a DM event (returned, for webhook delivery). Runs under the state lock.
fn decide(caller: Authorized<DmSend>, target: Target) -> Result<(Reply, DmEvent), Reply> {
    let Authorized {
        state,
        account,
        now,
        reply,
        headers,
        body,
        ..
    } = caller;
    let mut guard = state.lock();
    let inner = &mut *guard;
    let user_id = account.user_id.as_str();
    let (message, media) = match admit(inner, &headers, &body, target, user_id, now) {
        Ok(admitted) => admitted,
        Err((status, problem)) => return Err(reply.answer(status, problem)),
    };
    let dm = SentDm {
        dm_event_id: inner.next_event_id(now),
        dm_conversation_id: message.conversation_id,
        sender_id: user_id.to_string(),
        participant_id: message.participant_id,
        text: message.text,
        media_ids: message.media_ids,
        created_at: now,
    };
    let event = record(inner, &state.base_url, &account, &dm, media);
    let reply = created(reply, &headers, &dm);
    inner.dms.push(dm);
    drop(guard);
    state.dm_recorded.notify_waiters();
    Ok((reply, event))
}

/// X's 201 for an accepted send: the conversation and event ids, and a `location`.
fn created(reply: Reply, headers: &HeaderMap, dm: &SentDm) -> Reply {
    // X's own quirk: the event id appears quoted in the recorded `location` header.
    let location = format!(
        "http://{}/2/dm_events/\"{}\"",
        host(headers).unwrap_or("localhost"),
        dm.dm_event_id
    );
    let body = json!({ "data": {
        "dm_conversation_id": dm.dm_conversation_id,
        "dm_event_id": dm.dm_event_id,
    }})
    .to_string();
    reply
        .answer(StatusCode::CREATED, body)
        .header(header::LOCATION, location)
}

/// The media a send carries: the upload's id and its kind.
type Attached = (String, MediaType);

/// The checks after the gate: the message (400), its media — only what this account uploaded,
/// finalized and saw processed, within 24 h (400) — and a refusing recipient (403).
fn admit(
    inner: &mut Inner,
    headers: &HeaderMap,
    body: &[u8],
    target: Target,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<(ValidMessage, Option<Attached>), (StatusCode, String)> {
    let message = match validate(headers, body, target, user_id) {
        Ok(message) => message,
        Err(Refusal::Invalid(body)) => return Err((StatusCode::BAD_REQUEST, body)),
        Err(Refusal::NotAMember) => {
            return Err((StatusCode::FORBIDDEN, problems::FORBIDDEN.to_string()))
        }
    };
    let media = match message.media_ids.first() {
        Some(media_id) => match uploads::check_attachment(inner, user_id, media_id, now) {
            Ok(kind) => Some((media_id.clone(), kind)),
            Err(problem) => return Err((StatusCode::BAD_REQUEST, problem)),
        },
        None => None,
    };
    if let Some(participant) = &message.participant_id {
        if inner.faults.recipient_refuses(user_id, participant) {
            inner.counters.faults_injected += 1;
            return Err((StatusCode::FORBIDDEN, problems::FORBIDDEN.to_string()));
        }
    }
    Ok((message, media))
}

/// Logs the accepted `dm`, counts it and records its DM event.
fn record(
    inner: &mut Inner,
    base_url: &Url,
    account: &Account,
    dm: &SentDm,
    media: Option<Attached>,
) -> DmEvent {
    tracing::info!(
        sender_id = %dm.sender_id,
        dm_conversation_id = %dm.dm_conversation_id,
        dm_event_id = %dm.dm_event_id,
        "DM sent"
    );
    let event = inner.record_send_event(
        base_url,
        account,
        &dm.dm_event_id,
        &dm.dm_conversation_id,
        dm.participant_id.as_deref(),
        &dm.text,
        media.as_ref().map(|(id, kind)| (id.as_str(), *kind)),
        dm.created_at,
    );
    inner.counters.dms_sent += 1;
    event
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

/// A send X would accept.
#[derive(Debug, PartialEq, Eq)]
struct ValidMessage {
    conversation_id: String,
    participant_id: Option<String>,
    text: String,
    media_ids: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// 400 with this `invalid-request` body.
    Invalid(String),
    /// 403: the sender is not one of the conversation's two members.
    NotAMember,
}

fn invalid(message: &str, parameter: Option<(&str, &str)>) -> Refusal {
    Refusal::Invalid(problems::invalid_request(message, parameter))
}

fn validate(
    headers: &HeaderMap,
    body: &[u8],
    target: Target,
    own_id: &str,
) -> Result<ValidMessage, Refusal> {
    let (conversation_id, participant_id) = conversation(target, own_id)?;
    let (text, media_ids) = parse_body(headers, body)?;
    Ok(ValidMessage {
        conversation_id,
        participant_id,
        text,
        media_ids,
    })
}

/// The conversation the path names and the other member of it (`None` in a group).
fn conversation(target: Target, own_id: &str) -> Result<(String, Option<String>), Refusal> {
    match target {
        Target::Undecodable { parameter } => Err(invalid(
            &format!("The `{parameter}` path parameter could not be decoded"),
            None,
        )),
        Target::Participant(participant) => {
            if !is_user_id(&participant) {
                return Err(invalid(
                    &format!(
                        "The `participant_id` path parameter value [{participant}] is not valid"
                    ),
                    Some(("participant_id", &participant)),
                ));
            }
            Ok((
                one_to_one_conversation_id(own_id, &participant),
                Some(participant),
            ))
        }
        Target::Conversation(conversation) => {
            if !is_conversation_id(&conversation) {
                return Err(invalid(
                    &format!(
                        "The `dm_conversation_id` path parameter value [{conversation}] does not match ^([0-9]{{1,19}}-[0-9]{{1,19}}|[0-9]{{15,19}})$"
                    ),
                    Some(("dm_conversation_id", &conversation)),
                ));
            }
            let participant = match conversation.split_once('-') {
                Some((a, b)) if a == own_id => Some(b.to_string()),
                Some((a, b)) if b == own_id => Some(a.to_string()),
                Some(_) => return Err(Refusal::NotAMember),
                None => None,
            };
            Ok((conversation, participant))
        }
    }
}

/// Checks the JSON body against X's schema: `text` and/or one attachment, nothing else.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<(String, Vec<String>), Refusal> {
    request_body::require_json(headers).map_err(Refusal::Invalid)?;
    let fields =
        request_body::json_object(body, &["text", "attachments"]).map_err(Refusal::Invalid)?;
    let text = match fields.get("text") {
        None => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(_) => return Err(invalid("$.text: expected a string", None)),
    };
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(
            &format!("$.text: must be at most {MAX_TEXT_CHARS} characters long"),
            None,
        ));
    }
    let media_ids = match fields.get("attachments") {
        None => Vec::new(),
        Some(attachments) => parse_attachments(attachments)?,
    };
    if text.is_empty() && media_ids.is_empty() {
        return Err(invalid(
            "$: one of `text` or `attachments` is required",
            None,
        ));
    }
    Ok((text, media_ids))
}

fn parse_attachments(attachments: &Value) -> Result<Vec<String>, Refusal> {
    let Some(items) = attachments.as_array() else {
        return Err(invalid("$.attachments: expected an array", None));
    };
    if items.len() != 1 {
        return Err(invalid(
            "$.attachments: a DM carries exactly one attachment",
            None,
        ));
    }
    items
        .iter()
        .map(|item| {
            match item
                .as_object()
                .map(Map::iter)
                .map(Iterator::collect::<Vec<_>>)
            {
                Some(pairs) if pairs.len() == 1 && pairs[0].0 == "media_id" => match pairs[0].1 {
                    Value::String(id) if is_user_id(id) => Ok(id.clone()),
                    _ => Err(invalid(
                        "$.attachments[0].media_id: expected a numeric string",
                        None,
                    )),
                },
                _ => Err(invalid(
                    "$.attachments[0]: expected an object with only `media_id`",
                    None,
                )),
            }
        })
        .collect()
}

/// X's numeric id pattern for users and media: 1 to 19 digits.
fn is_user_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// `^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$`, X's pattern for conversation ids.
fn is_conversation_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((a, b)) => is_user_id(a) && is_user_id(b),
        None => (15..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_follow_x_pattern() {
        assert!(is_conversation_id("1-2"));
        assert!(is_conversation_id("1234567890123456789-1"));
        assert!(is_conversation_id("123456789012345"));
        assert!(!is_conversation_id("12345678901234"));
        assert!(!is_conversation_id("12345678901234567890"));
        assert!(!is_conversation_id("1-"));
        assert!(!is_conversation_id("-1"));
        assert!(!is_conversation_id("1-2-3"));
        assert!(!is_conversation_id("a-b"));
        assert!(!is_conversation_id(""));
    }

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers
    }

    #[test]
    fn bodies_are_checked_against_the_schema() {
        let headers = json_headers();
        let ok = |body: &str| parse_body(&headers, body.as_bytes());
        assert_eq!(ok(r#"{"text":"hi"}"#), Ok(("hi".into(), vec![])));
        assert_eq!(
            ok(r#"{"attachments":[{"media_id":"1583157113245011970"}]}"#),
            Ok((String::new(), vec!["1583157113245011970".into()]))
        );
        let long = "é".repeat(MAX_TEXT_CHARS);
        assert!(ok(&json!({ "text": long }).to_string()).is_ok());
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"text":""}"#,
            r#"{"text":5}"#,
            r#"{"text":"hi","extra":1}"#,
            r#"{"attachments":[]}"#,
            r#"{"attachments":[{"media_id":"1"},{"media_id":"2"}]}"#,
            r#"{"attachments":[{"media_id":1}]}"#,
            r#"{"attachments":[{"media_id":"1","x":2}]}"#,
            r#"{"attachments":"1"}"#,
        ] {
            assert!(
                matches!(ok(bad), Err(Refusal::Invalid(_))),
                "accepted {bad:?}"
            );
        }
        let too_long = "a".repeat(MAX_TEXT_CHARS + 1);
        assert!(ok(&json!({ "text": too_long }).to_string()).is_err());
        assert!(parse_body(&HeaderMap::new(), br#"{"text":"hi"}"#).is_err());
    }
}
