//! What a DM send addresses and what X answers.

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::Problem;
use crate::{ConversationId, DmEventId, UserId, XError};

/// X's documented maximum length of a DM text (README §1); longer texts get a 400.
pub(crate) const MAX_TEXT_CHARS: usize = 10_000;

/// Where a DM goes. A CRM reply usually knows the customer's user id; the conversation id
/// serves replies into an existing (possibly group) conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DmTarget {
    /// A user id: X creates the 1:1 conversation if needed.
    Participant(UserId),
    /// A `dm_conversation_id`, e.g. `123-456` for a 1:1 conversation.
    Conversation(ConversationId),
}

impl DmTarget {
    /// The send endpoint for this target under `base_url`, or why the id cannot be one.
    pub(crate) fn messages_url(&self, base_url: &Url) -> Result<Url, XError> {
        let segments: &[&str] = match self {
            DmTarget::Participant(id) if is_user_id(id.as_str()) => {
                &["2", "dm_conversations", "with", id.as_str(), "messages"]
            }
            DmTarget::Conversation(id) if is_conversation_id(id.as_str()) => {
                &["2", "dm_conversations", id.as_str(), "messages"]
            }
            DmTarget::Participant(id) => {
                return Err(local_invalid(format!(
                    "{:?} is not an X user id",
                    id.as_str()
                )))
            }
            DmTarget::Conversation(id) => {
                return Err(local_invalid(format!(
                    "{:?} is not an X DM conversation id",
                    id.as_str()
                )))
            }
        };
        let mut url = base_url.clone();
        url.path_segments_mut()
            .map_err(|()| local_invalid(format!("{base_url} cannot be a base URL")))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

/// X user ids are decimal numbers.
pub(crate) fn is_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// `{id}-{id}` for 1:1 conversations, a bare number for groups.
fn is_conversation_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let valid = parts.next().is_some_and(is_user_id) && parts.next().is_none_or(is_user_id);
    valid && parts.next().is_none()
}

/// A request refused before it was sent; X would refuse it the same way, so it is reported
/// as the 400 X would have given, without spending a request.
pub(crate) fn local_invalid(detail: String) -> XError {
    XError::InvalidRequest {
        status: 400,
        problem: Some(Problem {
            problem_type: "about:blank".to_owned(),
            title: "Invalid Request".to_owned(),
            detail: Some(detail),
            status: None,
            reason: None,
        }),
    }
}

/// The JSON body of a DM send: `text` and/or one attachment. An empty text is left out, as
/// X takes a DM with only media but no empty `text`.
#[derive(Serialize)]
pub(crate) struct SendDmBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attachments: Option<[Attachment<'a>; 1]>,
}

/// One `attachments` item: X takes exactly one per DM.
#[derive(Serialize)]
pub(crate) struct Attachment<'a> {
    pub(crate) media_id: &'a str,
}

/// A DM X accepted: enough to find it again and to recognise its echo in the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentDm {
    /// The new DM event's id; the webhook delivers our own DM back with this id.
    #[serde(deserialize_with = "crate::id::deserialize")]
    pub dm_event_id: DmEventId,
    /// The conversation it landed in; for a send by participant, the id for later replies.
    #[serde(deserialize_with = "crate::id::deserialize_conversation")]
    pub dm_conversation_id: ConversationId,
}

/// X's 201 body: `{"data":{"dm_conversation_id":"…","dm_event_id":"…"}}`.
#[derive(Deserialize)]
pub(crate) struct SendDmResponse {
    pub(crate) data: SentDm,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(target: DmTarget, base: &str) -> Result<String, XError> {
        target
            .messages_url(&Url::parse(base).unwrap())
            .map(String::from)
    }

    #[test]
    fn participant_and_conversation_paths() {
        assert_eq!(
            url(
                DmTarget::Participant("944480690".into()),
                "https://api.x.com"
            )
            .unwrap(),
            "https://api.x.com/2/dm_conversations/with/944480690/messages"
        );
        assert_eq!(
            url(
                DmTarget::Conversation("944480690-906948460078698496".into()),
                "http://127.0.0.1:8080/"
            )
            .unwrap(),
            "http://127.0.0.1:8080/2/dm_conversations/944480690-906948460078698496/messages"
        );
        assert_eq!(
            url(
                DmTarget::Conversation("1585047616894574596".into()),
                "http://sim/x/"
            )
            .unwrap(),
            "http://sim/x/2/dm_conversations/1585047616894574596/messages"
        );
    }

    #[test]
    fn ids_that_could_change_the_path_are_refused() {
        for bad in ["", "../1", "1/2", "12a", "1-2-3", "-1", "1-"] {
            let error = url(DmTarget::Conversation(bad.into()), "https://api.x.com").unwrap_err();
            assert!(
                matches!(error, XError::InvalidRequest { status: 400, .. }),
                "{bad}"
            );
        }
        assert!(url(DmTarget::Participant("1-2".into()), "https://api.x.com").is_err());
    }

    #[test]
    fn the_recorded_201_body_parses() {
        let body = include_str!("../../../tests/fixtures/x-api/send_dm_201.json");
        let sent = serde_json::from_str::<SendDmResponse>(body).unwrap().data;
        assert_eq!(
            sent,
            SentDm {
                dm_event_id: "1585800613253812228".into(),
                dm_conversation_id: "750362064426721281-1072250532645998596".into(),
            }
        );
    }
}
