//! The channels this replica serves now, as the two directions read it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

/// Which channels this replica serves (consumes the reply queue of, polls),
/// and which reply consumers still run here: [`crate::Membership`] writes the
/// first and lets a channel go in the store only once the second no longer
/// lists it, as of a served set that no longer lists it either.
#[derive(Debug)]
pub struct Shares {
    replica: String,
    /// `None`: every channel (a side run alone, without membership).
    served: watch::Sender<Option<Arc<BTreeSet<String>>>>,
    /// Counts the changes of `served`.
    version: std::sync::atomic::AtomicU64,
    consuming: watch::Sender<Consuming>,
}

/// What the outbound side consumes, as of which served set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Consuming {
    /// The channels whose reply consumers run or stop here, or are starting.
    pub(crate) names: BTreeSet<String>,
    /// The version of `served` every consumer running agrees with: one not
    /// served since then is stopping, and no consumer of it will start.
    /// [`IDLE`] while the outbound side has no session.
    pub(crate) applied: u64,
}

/// [`Consuming::applied`] of an outbound side without a session: it
/// consumes nothing and starts nothing until its next session, which reads
/// the served set afresh.
pub(crate) const IDLE: u64 = u64::MAX;

impl Shares {
    /// Serves nothing until [`crate::Membership`] says what: the bridge's own.
    pub fn new(replica: impl Into<String>) -> Arc<Shares> {
        Arc::new(Shares {
            replica: replica.into(),
            served: watch::Sender::new(Some(Arc::new(BTreeSet::new()))),
            version: 0.into(),
            consuming: watch::Sender::new(Consuming {
                names: BTreeSet::new(),
                applied: IDLE,
            }),
        })
    }

    /// Serves every channel, always: a side built alone (its tests), with no
    /// other replica to share with.
    pub fn everything() -> Arc<Shares> {
        Arc::new(Shares {
            replica: "alone".into(),
            served: watch::Sender::new(None),
            version: 0.into(),
            consuming: watch::Sender::new(Consuming {
                names: BTreeSet::new(),
                applied: IDLE,
            }),
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

    /// The version of what this replica serves: read it before deciding
    /// which consumers run, and give it to [`Shares::set_consuming`].
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The outbound side: the channels whose reply consumers run (or are
    /// still stopping) here now, decided from the served set of `version`.
    pub fn set_consuming(&self, channels: BTreeSet<String>, version: u64) {
        metrics::gauge!("xbridge_reply_consumers").set(channels.len() as f64);
        self.consuming.send_if_modified(|now| {
            let next = Consuming {
                names: channels,
                applied: version,
            };
            let changed = *now != next;
            *now = next;
            changed
        });
    }

    /// The outbound side is about to start `channel`'s consumer: a release
    /// of the channel decided meanwhile must wait for its end.
    pub fn starting(&self, channel: &str) {
        self.consuming
            .send_if_modified(|now| now.names.insert(channel.to_owned()));
    }

    /// The outbound side has no session: nothing is consumed here until the
    /// next one ([`Shares::begin`]).
    pub fn idle(&self) {
        self.set_consuming(BTreeSet::new(), IDLE);
    }

    /// A session starts: it consumes nothing yet, and whatever it starts is
    /// decided from the served set of now or later.
    pub fn begin(&self) {
        self.set_consuming(BTreeSet::new(), self.version());
    }

    pub(crate) fn set_served(&self, channels: BTreeSet<String>) {
        self.served.send_if_modified(|now| {
            let changed = now.as_deref() != Some(&channels);
            if changed {
                self.version
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            *now = Some(Arc::new(channels));
            changed
        });
    }

    /// Whether `channel`'s consumer here is gone, and stays gone: not
    /// listed, and the outbound side has applied every change of the served
    /// set so far (or has no session).
    pub(crate) fn released(&self, channel: &str) -> bool {
        let consuming = self.consuming.borrow();
        !consuming.names.contains(channel) && consuming.applied >= self.version()
    }

    pub(crate) fn consuming_changes(&self) -> watch::Receiver<Consuming> {
        self.consuming.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handover's rule: a channel is released only once no consumer of
    /// it runs or starts here, as of a served set without it.
    #[test]
    fn a_channel_is_released_only_once_the_outbound_side_caught_up() {
        let shares = Shares::new("r");
        shares.set_served(["a".to_owned()].into());
        // A session starts and is about to start a's consumer.
        shares.begin();
        shares.starting("a");
        // The membership takes a away meanwhile.
        shares.set_served(BTreeSet::new());
        assert!(!shares.released("a"), "its consumer is starting");
        // The session's pass ends, decided from the served set before.
        let before = shares.version() - 1;
        shares.set_consuming(["a".to_owned()].into(), before);
        assert!(!shares.released("a"), "its consumer runs");
        // The next pass stopped it, but from the old served set: not yet.
        shares.set_consuming(BTreeSet::new(), before);
        assert!(!shares.released("a"), "a pass of an older served set");
        shares.set_consuming(BTreeSet::new(), shares.version());
        assert!(shares.released("a"));
        // A side with no session consumes nothing and starts nothing.
        shares.starting("a");
        shares.idle();
        assert!(shares.released("a"));
    }
}
