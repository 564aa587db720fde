//! Keeps the CRM's view of the channel states in step with the bridge's.
//!
//! A change is published as it happens; one that happens while the broker is
//! unreachable (or whose publish fails) would be lost, so every new session
//! first publishes each channel whose current status the CRM has not been
//! told. The first session therefore tells the CRM every channel's state at
//! startup, which also corrects what a previous process left behind (it may
//! have died while a channel was `credits_exhausted`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::Utc;
use xbridge_core::contract::{ChannelState, ChannelStateEvent, ChannelStatus};

/// How long a channel's `removed` is remembered once told: long enough that a
/// change of it still queued behind the removal (older) is known to be stale,
/// not for the process's life, which would keep every name the CRM ever
/// removed. A channel gone from the states is not told again either way, and
/// one added back starts with a newer status.
const REMOVED_REMEMBERED: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// What the CRM was last told of each channel, kept across sessions.
#[derive(Debug, Default)]
pub struct PublishedStates {
    told: Mutex<BTreeMap<String, ChannelStatus>>,
}

impl PublishedStates {
    /// The statuses of `snapshot` the CRM has not been told, as events.
    pub fn untold(&self, snapshot: &BTreeMap<String, ChannelStatus>) -> Vec<ChannelStateEvent> {
        let told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        snapshot
            .iter()
            .filter(|(channel, status)| told.get(*channel) != Some(*status))
            .map(|(channel, status)| ChannelStateEvent {
                event_type: "channel.state",
                channel: channel.clone(),
                status: status.clone(),
            })
            .collect()
    }

    /// Whether the CRM was already told this or something newer: a change
    /// seen both in a session's first snapshot and on the change feed is
    /// published once, and an older one never follows a newer one.
    pub fn already_told(&self, event: &ChannelStateEvent) -> bool {
        let told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        told.get(&event.channel)
            .is_some_and(|told| *told == event.status || told.since >= event.status.since)
    }

    /// Records that the CRM's broker confirmed `event`, and forgets channels
    /// told `removed` more than [`REMOVED_REMEMBERED`] ago.
    pub fn record(&self, event: &ChannelStateEvent) {
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        told.insert(event.channel.clone(), event.status.clone());
        let cutoff = Utc::now() - REMOVED_REMEMBERED;
        told.retain(|_, status| status.state != ChannelState::Removed || status.since > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use xbridge_core::channel_state::ChannelStates;

    use super::*;

    fn names(events: &[ChannelStateEvent]) -> Vec<(&str, ChannelState)> {
        events
            .iter()
            .map(|e| (e.channel.as_str(), e.status.state))
            .collect()
    }

    #[test]
    fn the_first_session_tells_every_channel_then_only_what_changed() {
        let states = ChannelStates::new(["acme", "beta"]);
        let published = PublishedStates::default();
        let first = published.untold(&states.snapshot());
        assert_eq!(
            names(&first),
            [("acme", ChannelState::Ok), ("beta", ChannelState::Ok)]
        );
        first.iter().for_each(|e| published.record(e));
        assert!(published.untold(&states.snapshot()).is_empty());

        // A change while disconnected: the next session tells just that one.
        states.set("beta", ChannelState::CreditsExhausted, None, None);
        let next = published.untold(&states.snapshot());
        assert_eq!(names(&next), [("beta", ChannelState::CreditsExhausted)]);
    }

    #[test]
    fn a_channel_told_removed_long_ago_is_forgotten() {
        let states = ChannelStates::new(["acme", "gone"]);
        let published = PublishedStates::default();
        let mut removed = published.untold(&states.snapshot()).remove(1);
        removed.status.state = ChannelState::Removed;
        published.record(&removed);
        assert!(published.already_told(&removed), "remembered at first");

        removed.status.since -= REMOVED_REMEMBERED + chrono::TimeDelta::seconds(1);
        published.record(&removed);
        let told = published.told.lock().unwrap();
        assert_eq!(told.keys().collect::<Vec<_>>(), Vec::<&String>::new());
    }

    #[test]
    fn an_unconfirmed_publish_is_told_again() {
        let states = ChannelStates::new(["acme"]);
        let published = PublishedStates::default();
        let first = published.untold(&states.snapshot());
        // Not recorded: the publish was not confirmed.
        assert!(!published.already_told(&first[0]));
        assert_eq!(published.untold(&states.snapshot()).len(), 1);
        published.record(&first[0]);
        assert!(published.already_told(&first[0]));
    }

    #[test]
    fn an_older_change_never_follows_a_newer_one() {
        let states = ChannelStates::new(["acme"]);
        let published = PublishedStates::default();
        let mut feed = states.subscribe();
        states.set("acme", ChannelState::CreditsExhausted, None, None);
        states.set("acme", ChannelState::Ok, None, None);
        // The session's snapshot already told the newest status...
        published
            .untold(&states.snapshot())
            .iter()
            .for_each(|e| published.record(e));
        // ...so both queued changes are stale.
        assert!(published.already_told(&feed.try_recv().unwrap()));
        assert!(published.already_told(&feed.try_recv().unwrap()));
    }
}
