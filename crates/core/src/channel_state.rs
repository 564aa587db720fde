//! Each channel's state, as operators and the CRM see it: whether replies on
//! it are going out, and if not why. Every change is published to the CRM as
//! a `channel.state` event (so it can warn agents; its wire form is
//! [`crate::contract::channel_state`]), shown on `/readyz` and exported as the
//! `xbridge_channel_state` gauge.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::contract::{ChannelState, ChannelStateEvent, ChannelStatus};

/// Every channel's state, shared by both directions of one bridge.
pub struct ChannelStates {
    current: Mutex<BTreeMap<String, ChannelStatus>>,
    changes: broadcast::Sender<ChannelStateEvent>,
}

impl ChannelStates {
    /// All `channels` start `ok`.
    pub fn new<'a>(channels: impl IntoIterator<Item = &'a str>) -> ChannelStates {
        let now = Utc::now();
        let current = channels
            .into_iter()
            .map(|name| {
                set_gauge(name, ChannelState::Ok);
                (
                    name.to_owned(),
                    ChannelStatus {
                        state: ChannelState::Ok,
                        since: now,
                        until: None,
                        detail: None,
                    },
                )
            })
            .collect();
        ChannelStates {
            current: Mutex::new(current),
            changes: broadcast::channel(256).0,
        }
    }

    /// Adds a channel created at run time, `ok` (or `paused`, or why it is not
    /// served, in `detail`), and broadcasts it so the CRM hears of the new
    /// channel; a channel already known keeps its state.
    pub fn add(&self, channel: &str, state: ChannelState, detail: Option<String>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.contains_key(channel) {
            return;
        }
        let status = ChannelStatus {
            state,
            since: Utc::now(),
            until: None,
            detail,
        };
        current.insert(channel.to_owned(), status.clone());
        set_gauge(channel, state);
        let _ = self.changes.send(ChannelStateEvent {
            event_type: "channel.state",
            channel: channel.to_owned(),
            status,
        });
    }

    /// Forgets a removed channel: it leaves `/readyz` and its gauge reads
    /// `removed`, so a dashboard does not show it stuck in its last state.
    pub fn remove(&self, channel: &str) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.remove(channel).is_some() {
            set_gauge(channel, ChannelState::Removed);
        }
    }

    /// Records `state` for `channel`; a change (not a repeat) is broadcast.
    pub fn set(
        &self,
        channel: &str,
        state: ChannelState,
        until: Option<DateTime<Utc>>,
        detail: Option<String>,
    ) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(status) = current.get_mut(channel) else {
            return;
        };
        if status.state == state {
            return;
        }
        *status = ChannelStatus {
            state,
            since: Utc::now(),
            until,
            detail,
        };
        set_gauge(channel, state);
        tracing::info!(channel, state = state.as_str(), "channel state changed");
        let _ = self.changes.send(ChannelStateEvent {
            event_type: "channel.state",
            channel: channel.to_owned(),
            status: status.clone(),
        });
    }

    /// Records that `channel` is in `state` because of `detail`: a change of
    /// state is set ([`ChannelStates::set`]), a state that holds already takes
    /// the new cause ([`ChannelStates::explain`]). Either way the CRM hears it once.
    pub fn report(&self, channel: &str, state: ChannelState, detail: String) {
        self.set(channel, state, None, Some(detail.clone()));
        self.explain(channel, state, detail);
    }

    /// Replaces the detail of `channel`'s state when it is still `state` and the
    /// detail differs, and broadcasts the change: a state that lasts can change
    /// its cause (X marked the webhook invalid, then refused to revalidate it), and
    /// the CRM should hear the new one. `since` moves to now, because the CRM's
    /// copy is told by it: the event's `message_id` is `<channel>:state:<since>`
    /// (a CRM deduplicating by it would drop a repeat) and the outbound side
    /// publishes only statuses newer than the last it told.
    pub fn explain(&self, channel: &str, state: ChannelState, detail: String) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(status) = current.get_mut(channel) else {
            return;
        };
        if status.state != state || status.detail.as_deref() == Some(detail.as_str()) {
            return;
        }
        status.detail = Some(detail);
        status.since = Utc::now().max(status.since + chrono::Duration::milliseconds(1));
        let _ = self.changes.send(ChannelStateEvent {
            event_type: "channel.state",
            channel: channel.to_owned(),
            status: status.clone(),
        });
    }

    /// The state of `channel`.
    pub fn get(&self, channel: &str) -> Option<ChannelStatus> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned()
    }

    /// Every channel's status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, ChannelStatus> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChannelStateEvent> {
        self.changes.subscribe()
    }
}

fn set_gauge(channel: &str, state: ChannelState) {
    for candidate in ChannelState::ALL {
        metrics::gauge!(
            "xbridge_channel_state",
            "channel" => channel.to_owned(),
            "state" => candidate.as_str()
        )
        .set(if candidate == state { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_are_broadcast() {
        let states = ChannelStates::new(["acme"]);
        let mut changes = states.subscribe();
        states.set("acme", ChannelState::Ok, None, None);
        states.set(
            "acme",
            ChannelState::CreditsExhausted,
            None,
            Some("no credits".into()),
        );
        states.set("acme", ChannelState::CreditsExhausted, None, None);
        states.set("nope", ChannelState::Unauthorized, None, None);
        let event = changes.try_recv().unwrap();
        assert_eq!(event.status.state, ChannelState::CreditsExhausted);
        assert!(changes.try_recv().is_err());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "channel.state");
        assert_eq!(json["state"], "credits_exhausted");
        assert_eq!(json["detail"], "no credits");
        assert_eq!(event.routing_key(), "acme.channel.state");
        assert!(json.get("until").is_none());
    }

    #[test]
    fn a_new_cause_of_the_same_state_is_broadcast_once() {
        let states = ChannelStates::new(["acme"]);
        states.set(
            "acme",
            ChannelState::WebhookInvalid,
            None,
            Some("invalid".into()),
        );
        let since = states.get("acme").unwrap().since;
        let mut changes = states.subscribe();
        states.explain("acme", ChannelState::WebhookInvalid, "refused".into());
        states.explain("acme", ChannelState::WebhookInvalid, "refused".into());
        states.explain("acme", ChannelState::Ok, "not the state".into());
        let event = changes.try_recv().unwrap();
        assert_eq!(event.status.state, ChannelState::WebhookInvalid);
        assert_eq!(event.status.detail.as_deref(), Some("refused"));
        assert!(
            event.status.since > since,
            "a new status for the CRM, with its own message_id"
        );
        assert!(changes.try_recv().is_err());
        assert_eq!(
            states.get("acme").unwrap().detail.as_deref(),
            Some("refused")
        );
    }
}
