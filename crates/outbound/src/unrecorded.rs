//! Sends X accepted whose records the state store has not taken yet, held in
//! memory per channel across RabbitMQ sessions (see `store_outage`
//! for when they are written).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use xbridge_store::SentRecord;

/// One channel's sends X accepted whose records the store has not taken yet,
/// by message id. Kept across RabbitMQ sessions.
#[derive(Debug, Default)]
pub struct UnrecordedSends {
    replies: Mutex<HashMap<String, Unrecorded>>,
}

/// What is held of one reply.
#[derive(Debug, Default, Clone)]
pub(crate) struct Unrecorded {
    /// The DMs of a reply in parts, by part.
    pub(crate) parts: BTreeMap<usize, SentRecord>,
    /// The reply as a whole, once every part went out.
    pub(crate) reply: Option<SentRecord>,
}

impl UnrecordedSends {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unrecorded>> {
        self.replies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether anything of `message_id` is held.
    pub fn holds(&self, message_id: &str) -> bool {
        self.lock().contains_key(message_id)
    }

    /// A copy of what is held of `message_id`.
    pub(crate) fn held(&self, message_id: &str) -> Option<Unrecorded> {
        self.lock().get(message_id).cloned()
    }

    /// Changes what is held of `message_id`; forgets it once nothing is left.
    pub(crate) fn update(&self, message_id: &str, change: impl FnOnce(&mut Unrecorded)) {
        let mut replies = self.lock();
        let held = replies.entry(message_id.to_owned()).or_default();
        change(held);
        if held.parts.is_empty() && held.reply.is_none() {
            replies.remove(message_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_held_until_nothing_of_it_is_left() {
        let held = UnrecordedSends::default();
        let record = xbridge_store::contract::sample_record();
        held.update("m1", |h| {
            h.parts.insert(0, record.clone());
        });
        assert!(held.holds("m1"));
        held.update("m1", |h| h.reply = Some(record.clone()));
        held.update("m1", |h| {
            h.parts.remove(&0);
        });
        assert!(held.holds("m1"), "the reply's record is still held");
        held.update("m1", |h| *h = Unrecorded::default());
        assert!(!held.holds("m1"));
        assert!(held.lock().is_empty());
    }
}
