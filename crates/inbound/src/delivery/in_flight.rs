//! The deliveries in flight in this process, shared by the webhook and the
//! pollers: one event is delivered by one of them at a time.
//!
//! **While the state store cannot write.** A DM whose publish was confirmed
//! counts as delivered even if its record then fails: answering X with an
//! error would only make it deliver the DM again, to be published again. The
//! event stays known as delivered in memory ([`PendingRecords`], bounded), so
//! X's retries and the polls skip it, until [`write_pending`] gets it into the
//! store. A DM the store cannot judge is not published at all (and X retries
//! it, or the next poll finds it): one the store cannot say it delivered
//! before, or one of the account's own whose record as the bridge's reply may
//! still be waiting to be written.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use xbridge_store::{StateStore, StoreError};

/// The (channel, event id) pairs being delivered right now in this process, so
/// two concurrent deliveries of one event (X's retry racing the original, or
/// the webhook racing a poll) cannot both pass the "already delivered" check
/// and publish twice: the second waits, then finds it delivered.
#[derive(Default)]
pub struct InFlightDeliveries {
    keys: Mutex<HashSet<String>>,
    released: Notify,
    /// What the store could not take yet, shared like the keys.
    pending: PendingRecords,
}

/// The most delivered events kept in memory while the store cannot write:
/// about 5 MB. Past it an event's record is dropped with a warning (it may
/// then be published again by a poll).
const MAX_PENDING_EVENTS: usize = 50_000;

/// Records the store did not take yet (see the [module documentation](self)):
/// events delivered (published and confirmed) and poll cursors, per channel.
#[derive(Default)]
pub struct PendingRecords {
    state: Mutex<Pending>,
    /// Signalled when something is added, for [`write_pending`].
    added: Notify,
}

#[derive(Default)]
struct Pending {
    delivered: HashMap<String, HashSet<String>>,
    events: usize,
    cursors: HashMap<String, String>,
}

impl PendingRecords {
    fn state(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `event_id` was delivered and waits to be recorded.
    pub fn is_delivered(&self, channel: &str, event_id: &str) -> bool {
        self.state()
            .delivered
            .get(channel)
            .is_some_and(|ids| ids.contains(event_id))
    }

    /// Keeps `event_id` as delivered until it is recorded; `false` when the
    /// memory is full.
    pub fn keep_delivered(&self, channel: &str, event_id: &str) -> bool {
        let mut state = self.state();
        if state.events >= MAX_PENDING_EVENTS {
            return false;
        }
        if state
            .delivered
            .entry(channel.to_owned())
            .or_default()
            .insert(event_id.to_owned())
        {
            state.events += 1;
        }
        drop(state);
        self.added.notify_one();
        true
    }

    /// The channel's poll cursor, when it moved but was not recorded.
    pub fn cursor(&self, channel: &str) -> Option<String> {
        self.state().cursors.get(channel).cloned()
    }

    /// Keeps `event_id` as the channel's poll cursor until it is recorded.
    pub fn keep_cursor(&self, channel: &str, event_id: &str) {
        self.state()
            .cursors
            .insert(channel.to_owned(), event_id.to_owned());
        self.added.notify_one();
    }

    /// A newer cursor was recorded: the pending one is of no use.
    pub fn forget_cursor(&self, channel: &str) {
        self.state().cursors.remove(channel);
    }

    /// The cursor was recorded: forget the pending one, unless it moved on.
    pub fn cursor_recorded(&self, channel: &str, event_id: &str) {
        let mut state = self.state();
        if state.cursors.get(channel).map(String::as_str) == Some(event_id) {
            state.cursors.remove(channel);
        }
    }

    /// How many records wait.
    pub fn len(&self) -> usize {
        let state = self.state();
        state.events + state.cursors.len()
    }

    /// Whether no record waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what waits; what the store refuses stays for the next try.
    pub async fn write_to(&self, store: &dyn StateStore) -> Result<(), StoreError> {
        let (delivered, cursors) = {
            let state = self.state();
            (state.delivered.clone(), state.cursors.clone())
        };
        for (channel, ids) in delivered {
            let ids: Vec<String> = ids.into_iter().collect();
            store.record_delivered(&channel, &ids).await?;
            let mut state = self.state();
            if let Some(pending) = state.delivered.get_mut(&channel) {
                let before = pending.len();
                for id in &ids {
                    pending.remove(id);
                }
                let written = before - pending.len();
                if pending.is_empty() {
                    state.delivered.remove(&channel);
                }
                state.events -= written;
            }
            tracing::info!(
                channel,
                events = ids.len(),
                "delivered events kept in memory are recorded"
            );
        }
        for (channel, cursor) in cursors {
            store.set_poll_cursor(&channel, &cursor).await?;
            self.cursor_recorded(&channel, &cursor);
        }
        Ok(())
    }
}

/// The first pause after a failed write of the pending records; it doubles
/// up to [`PENDING_MAX_PAUSE`].
const PENDING_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest such pause.
const PENDING_MAX_PAUSE: Duration = Duration::from_secs(10);

/// Writes the records [`InFlightDeliveries`] keeps in memory whenever there
/// are some and the store can write, until `stop`. One per process.
pub async fn write_pending(
    in_flight: &InFlightDeliveries,
    store: &dyn StateStore,
    stop: CancellationToken,
) {
    let pending = &in_flight.pending;
    let health = store.health();
    let mut pause = PENDING_FIRST_PAUSE;
    loop {
        let added = pending.added.notified();
        if pending.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = added => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = health.wait_writable() => {}
        }
        match pending.write_to(store).await {
            Ok(()) => pause = PENDING_FIRST_PAUSE,
            Err(error) => {
                tracing::warn!(%error, waiting = pending.len(), retry_in_ms = pause.as_millis() as u64, "records kept in memory are not written yet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(PENDING_MAX_PAUSE);
            }
        }
    }
}

/// Holds one (channel, event id); releasing it wakes the waiters.
pub(crate) struct InFlightGuard<'a> {
    in_flight: &'a InFlightDeliveries,
    key: String,
}

impl InFlightDeliveries {
    /// What the store could not take yet.
    pub fn pending(&self) -> &PendingRecords {
        &self.pending
    }

    fn keys(&self) -> MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding the lock; recover rather than propagate.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) async fn acquire(&self, channel: &str, event_id: &str) -> InFlightGuard<'_> {
        let key = format!("{channel}\0{event_id}");
        loop {
            // Register for the wake-up before checking, so a release in between is
            // not missed.
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            let taken = self.keys().insert(key.clone());
            if taken {
                return InFlightGuard {
                    in_flight: self,
                    key,
                };
            }
            released.await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.in_flight.keys().remove(&self.key);
        self.in_flight.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_delivery_of_the_same_event_waits_for_the_first() {
        let in_flight = std::sync::Arc::new(InFlightDeliveries::default());
        let first = in_flight.acquire("acme", "1").await;
        // Another event, or the same event on another channel, does not wait.
        drop(in_flight.acquire("acme", "2").await);
        drop(in_flight.acquire("other", "1").await);

        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let _second = in_flight.acquire("acme", "1").await;
                let _ = tx.send(());
            })
        };
        // Still held: the waiter cannot have got it.
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err());
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter gets the event once released")
            .unwrap();
        assert!(in_flight.keys().is_empty());
    }
}
