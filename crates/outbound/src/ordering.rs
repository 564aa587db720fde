//! Keeps replies of one conversation in order while one of them is parked in
//! a delay queue.
//!
//! A parked reply comes back at the tail of its channel's queue, behind
//! replies the CRM published after it. So while a conversation has a parked
//! reply, its later replies are parked too (in order, with the shortest
//! delay) and only the oldest parked reply may be sent; the others follow it
//! one by one. The list lives in memory: after a restart, replies still in
//! delay queues are sent in the order they come back.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::time::Instant;

#[derive(Debug)]
struct Parked {
    message_id: String,
    /// After this the reply is presumed gone (purged by an operator,
    /// dead-lettered elsewhere) and stops blocking its conversation.
    due_by: Instant,
}

/// The parked replies of every conversation of one channel, oldest first.
#[derive(Debug, Default)]
pub struct ParkedReplies {
    by_conversation: Mutex<HashMap<String, VecDeque<Parked>>>,
}

impl ParkedReplies {
    /// Whether `message_id` must wait behind an older parked reply of its
    /// conversation.
    pub fn must_wait(&self, conversation: &str, message_id: &str) -> bool {
        let mut map = self.lock();
        let Some(queue) = map.get_mut(conversation) else {
            return false;
        };
        let now = Instant::now();
        while queue.front().is_some_and(|p| p.due_by < now) {
            queue.pop_front();
        }
        let wait = queue.front().is_some_and(|p| p.message_id != message_id);
        if queue.is_empty() {
            map.remove(conversation);
        }
        wait
    }

    /// Records that `message_id` was parked and is expected back by `due_by`;
    /// keeps its place if it was parked before.
    pub fn park(&self, conversation: &str, message_id: &str, due_by: Instant) {
        let mut map = self.lock();
        let queue = map.entry(conversation.to_owned()).or_default();
        match queue.iter_mut().find(|p| p.message_id == message_id) {
            Some(parked) => parked.due_by = due_by,
            None => queue.push_back(Parked {
                message_id: message_id.to_owned(),
                due_by,
            }),
        }
    }

    /// The reply was sent or dead-lettered: the next one may go.
    pub fn settled(&self, conversation: &str, message_id: &str) {
        let mut map = self.lock();
        if let Some(queue) = map.get_mut(conversation) {
            queue.retain(|p| p.message_id != message_id);
            if queue.is_empty() {
                map.remove(conversation);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Parked>>> {
        self.by_conversation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn later_replies_wait_behind_the_oldest_parked_one() {
        let parked = ParkedReplies::default();
        let due = Instant::now() + Duration::from_secs(60);
        assert!(!parked.must_wait("c", "m1"));
        parked.park("c", "m1", due);
        assert!(parked.must_wait("c", "m2"));
        assert!(!parked.must_wait("c", "m1"));
        assert!(!parked.must_wait("other", "m9"));
        parked.park("c", "m2", due);
        parked.park("c", "m1", due); // parked again: keeps its place at the front
        assert!(parked.must_wait("c", "m2"));
        parked.settled("c", "m1");
        assert!(!parked.must_wait("c", "m2"));
        assert!(parked.must_wait("c", "m3"));
        parked.settled("c", "m2");
        assert!(!parked.must_wait("c", "m3"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_never_comes_back_stops_blocking() {
        let parked = ParkedReplies::default();
        parked.park("c", "lost", Instant::now() + Duration::from_secs(10));
        assert!(parked.must_wait("c", "m2"));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!parked.must_wait("c", "m2"));
    }
}
