//! The channels this replica serves now, as the two directions read it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

/// Which channels this replica serves (consumes the reply queue of, polls),
/// and which reply consumers still run here: [`crate::Membership`] writes the
/// first and lets a channel go in the store only once the second no longer
/// lists it.
#[derive(Debug)]
pub struct Shares {
    replica: String,
    /// `None`: every channel (a side run alone, without membership).
    served: watch::Sender<Option<Arc<BTreeSet<String>>>>,
    consuming: watch::Sender<BTreeSet<String>>,
}

impl Shares {
    /// Serves nothing until [`crate::Membership`] says what: the bridge's own.
    pub fn new(replica: impl Into<String>) -> Arc<Shares> {
        Arc::new(Shares {
            replica: replica.into(),
            served: watch::Sender::new(Some(Arc::new(BTreeSet::new()))),
            consuming: watch::Sender::new(BTreeSet::new()),
        })
    }

    /// Serves every channel, always: a side built alone (its tests), with no
    /// other replica to share with.
    pub fn everything() -> Arc<Shares> {
        Arc::new(Shares {
            replica: "alone".into(),
            served: watch::Sender::new(None),
            consuming: watch::Sender::new(BTreeSet::new()),
        })
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether this replica serves `channel` now.
    pub fn serves(&self, channel: &str) -> bool {
        self.served
            .borrow()
            .as_ref()
            .is_none_or(|served| served.contains(channel))
    }

    /// How many channels this replica serves now; `None` for every channel.
    pub fn count(&self) -> Option<usize> {
        self.served.borrow().as_ref().map(|s| s.len())
    }

    /// Each change of what this replica serves.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<BTreeSet<String>>>> {
        self.served.subscribe()
    }

    /// Waits until this replica serves `channel`.
    pub async fn until_served(&self, channel: &str) {
        let mut served = self.served.subscribe();
        let _ = served
            .wait_for(|s| s.as_ref().is_none_or(|s| s.contains(channel)))
            .await;
    }

    /// Waits until this replica serves `channel` no more.
    pub async fn until_unserved(&self, channel: &str) {
        let mut served = self.served.subscribe();
        let _ = served
            .wait_for(|s| s.as_ref().is_some_and(|s| !s.contains(channel)))
            .await;
    }

    /// The outbound side: the channels whose reply consumers run (or are
    /// still stopping) here now.
    pub fn set_consuming(&self, channels: BTreeSet<String>) {
        metrics::gauge!("xbridge_reply_consumers").set(channels.len() as f64);
        self.consuming.send_if_modified(|now| {
            let changed = *now != channels;
            *now = channels;
            changed
        });
    }

    pub(crate) fn set_served(&self, channels: BTreeSet<String>) {
        self.served.send_if_modified(|now| {
            let changed = now.as_deref() != Some(&channels);
            *now = Some(Arc::new(channels));
            changed
        });
    }

    pub(crate) fn consuming(&self) -> BTreeSet<String> {
        self.consuming.borrow().clone()
    }

    pub(crate) fn consuming_changes(&self) -> watch::Receiver<BTreeSet<String>> {
        self.consuming.subscribe()
    }
}
