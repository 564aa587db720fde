//! A DM the send endpoints accepted, as the bridge's tests read it back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A DM the simulator accepted (answered 201), as the bridge's tests assert on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentDm {
    /// The 19-digit id answered as `dm_event_id`; later DMs have larger ids.
    pub dm_event_id: String,
    /// The answered `dm_conversation_id`: `smaller-larger` user id for a 1:1 conversation.
    pub dm_conversation_id: String,
    /// The user id of the account that signed the request.
    pub sender_id: String,
    /// The recipient: the path's participant, or the other member of a 1:1 conversation id;
    /// `None` for a group conversation id.
    pub participant_id: Option<String>,
    /// The message text, empty if the DM carried only an attachment.
    pub text: String,
    /// The `media_id`s of `attachments` (X allows one), so media sends can be asserted too.
    pub media_ids: Vec<String>,
    /// When the simulator accepted it, by its clock.
    pub created_at: DateTime<Utc>,
}
