//! The channels this process serves right now: the config file's merged with
//! the CRM's, as one value that changes while the bridge runs (a command of
//! the CRM, a reload of the file). Both directions watch it and bring what
//! they run in line with it, channel by channel, so a change to one channel
//! is never a restart of the others.
//!
//! It is a [`tokio::sync::watch`] of the whole map rather than a stream of
//! changes: a side that falls behind, or reconnects, compares what it runs
//! with the latest map ([`Delta::between`]) and cannot miss or replay a step.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::ExposeSecret as _;
use tokio::sync::watch;

use crate::config::ChannelSettings;

/// Where a channel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A `[[channels]]` entry of the config file: changed by editing the file
    /// and reloading it, never by a command.
    File,
    /// Created by the CRM's `channel.upsert`, kept in the state store.
    Crm,
}

impl Origin {
    /// As `xbridge channels list` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Crm => "crm",
        }
    }
}

/// One channel as served.
#[derive(Debug, Clone)]
pub struct LiveChannel {
    /// Its settings and credentials. A new `Arc` is a new version: sides
    /// compare versions by pointer, and [`same_settings`] decides whether a
    /// reload changed anything.
    pub settings: Arc<ChannelSettings>,
    /// Who made it.
    pub origin: Origin,
    /// Replies held (`channel.pause`); inbound keeps flowing.
    pub paused: bool,
    /// The registry revision it was read from (0 for the file's).
    pub revision: u64,
}

impl LiveChannel {
    /// A channel of the config file.
    pub fn from_file(settings: ChannelSettings) -> LiveChannel {
        LiveChannel {
            settings: Arc::new(settings),
            origin: Origin::File,
            paused: false,
            revision: 0,
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }
}

/// What [`LiveChannels::upsert_crm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmUpsert {
    /// The channel is served at that revision now.
    Served,
    /// The map already held that revision or a newer one: unchanged.
    Kept,
    /// A channel of the config file has that name: it stays, the CRM's is not served.
    FileHolds,
}

/// Every channel served, by name.
pub type ChannelMap = Arc<BTreeMap<String, LiveChannel>>;

/// What changed for one channel between two maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Served now, not before.
    Added(String),
    /// Served before, not now.
    Removed(String),
    /// Served in both, with other settings or credentials.
    Changed(String),
    /// Only its pause changed.
    Paused(String, bool),
}

impl Delta {
    /// Every channel's change from `old` to `new`, by name.
    pub fn between(
        old: &BTreeMap<String, LiveChannel>,
        new: &BTreeMap<String, LiveChannel>,
    ) -> Vec<Delta> {
        let mut deltas = Vec::new();
        for (name, before) in old {
            match new.get(name) {
                None => deltas.push(Delta::Removed(name.clone())),
                Some(after) if !Arc::ptr_eq(&before.settings, &after.settings) => {
                    deltas.push(Delta::Changed(name.clone()));
                }
                Some(after) if before.paused != after.paused => {
                    deltas.push(Delta::Paused(name.clone(), after.paused));
                }
                Some(_) => {}
            }
        }
        for name in new.keys().filter(|name| !old.contains_key(*name)) {
            deltas.push(Delta::Added(name.clone()));
        }
        deltas
    }
}

/// The registry of the running process: one per bridge, shared by both
/// directions, the control consumer and the reload.
#[derive(Debug)]
pub struct LiveChannels {
    map: watch::Sender<ChannelMap>,
}

impl LiveChannels {
    /// The channels of the config file, before the CRM's are read from the store.
    pub fn new(file: &[ChannelSettings]) -> LiveChannels {
        let map = file
            .iter()
            .map(|c| (c.name.clone(), LiveChannel::from_file(c.clone())))
            .collect();
        LiveChannels {
            map: watch::Sender::new(Arc::new(map)),
        }
    }

    /// The channels served now.
    pub fn current(&self) -> ChannelMap {
        self.map.borrow().clone()
    }

    /// `name`'s channel, if served.
    pub fn get(&self, name: &str) -> Option<LiveChannel> {
        self.map.borrow().get(name).cloned()
    }

    /// Each change from now on (the receiver starts with the current map seen).
    pub fn subscribe(&self) -> watch::Receiver<ChannelMap> {
        self.map.subscribe()
    }

    /// Changes the map with `edit`, and tells the watchers when it changed
    /// anything. Returns `edit`'s own result.
    pub fn edit<R>(&self, edit: impl FnOnce(&mut BTreeMap<String, LiveChannel>) -> R) -> R {
        let mut result = None;
        self.map.send_if_modified(|map| {
            let mut next = (**map).clone();
            result = Some(edit(&mut next));
            let changed = !Delta::between(map, &next).is_empty();
            if changed {
                *map = Arc::new(next);
            }
            changed
        });
        result.expect("send_if_modified runs the closure")
    }

    /// Adds or replaces `channel`.
    pub fn upsert(&self, channel: LiveChannel) {
        self.edit(|map| map.insert(channel.name().to_owned(), channel));
    }

    /// Stops serving `name`; the channel it was, if any.
    pub fn remove(&self, name: &str) -> Option<LiveChannel> {
        self.edit(|map| map.remove(name))
    }

    /// Serves a CRM channel read from the store, checked and applied as one
    /// step: never over a channel of the file (a reload may add one between a
    /// command's look at the map and its store write), and never over the same
    /// or a newer revision of it.
    pub fn upsert_crm(&self, channel: LiveChannel) -> CrmUpsert {
        self.edit(|map| match map.get(channel.name()) {
            Some(served) if served.origin == Origin::File => CrmUpsert::FileHolds,
            Some(served) if served.revision >= channel.revision => CrmUpsert::Kept,
            _ => {
                map.insert(channel.name().to_owned(), channel);
                CrmUpsert::Served
            }
        })
    }

    /// Stops serving the CRM channel `name` when it is older than `revision`
    /// (its tombstone's), as one step: a file channel of that name stays.
    /// `true` when it was removed.
    pub fn remove_crm(&self, name: &str, revision: u64) -> bool {
        self.edit(|map| {
            let older = map
                .get(name)
                .is_some_and(|c| c.origin == Origin::Crm && c.revision < revision);
            older && map.remove(name).is_some()
        })
    }

    /// Holds or releases `name`'s replies; `false` when no such channel.
    pub fn set_paused(&self, name: &str, paused: bool) -> bool {
        self.edit(|map| match map.get_mut(name) {
            Some(channel) => {
                channel.paused = paused;
                true
            }
            None => false,
        })
    }

    /// Replaces the file's channels with `file` (a reload): a channel whose
    /// settings are the same keeps its version, so nothing restarts for it;
    /// the CRM's channels are left alone. Returns what changed.
    pub fn replace_file_channels(&self, file: &[ChannelSettings]) -> Vec<Delta> {
        self.edit(|map| replace_file_channels(map, file))
    }

    /// [`LiveChannels::replace_file_channels`], unless a channel of `file` has
    /// the name of a CRM channel: then nothing changes and those names are the
    /// error. Checked and applied as one step, so a CRM channel created
    /// meanwhile cannot be overwritten by a reload that did not see it.
    pub fn try_replace_file_channels(
        &self,
        file: &[ChannelSettings],
    ) -> Result<Vec<Delta>, Vec<String>> {
        self.try_replace_file_channels_if(file, |map| {
            let taken: Vec<String> = file
                .iter()
                .filter(|c| map.get(&c.name).is_some_and(|c| c.origin == Origin::Crm))
                .map(|c| c.name.clone())
                .collect();
            if taken.is_empty() {
                Ok(())
            } else {
                Err(taken)
            }
        })
    }

    /// [`LiveChannels::replace_file_channels`] when `check` of the map served
    /// now passes, else nothing changes and `check`'s error is returned:
    /// checked and applied as one step, so no command changes the map between.
    pub fn try_replace_file_channels_if<E>(
        &self,
        file: &[ChannelSettings],
        check: impl FnOnce(&BTreeMap<String, LiveChannel>) -> Result<(), E>,
    ) -> Result<Vec<Delta>, E> {
        self.edit(|map| {
            check(map)?;
            Ok(replace_file_channels(map, file))
        })
    }
}

/// The file's channels in `map` become `file`'s: see
/// [`LiveChannels::replace_file_channels`].
fn replace_file_channels(
    map: &mut BTreeMap<String, LiveChannel>,
    file: &[ChannelSettings],
) -> Vec<Delta> {
    let before = map.clone();
    map.retain(|_, c| c.origin != Origin::File);
    for settings in file {
        let kept = before
            .get(&settings.name)
            .filter(|old| old.origin == Origin::File && same_settings(&old.settings, settings));
        let channel = match kept {
            Some(old) => old.clone(),
            None => LiveChannel::from_file(settings.clone()),
        };
        map.insert(settings.name.clone(), channel);
    }
    Delta::between(&before, map)
}

/// Whether two channel settings are the same, credentials included (compared
/// without leaving a copy anywhere).
pub fn same_settings(a: &ChannelSettings, b: &ChannelSettings) -> bool {
    let secrets = |c: &ChannelSettings| {
        [
            &c.consumer_key,
            &c.consumer_secret,
            &c.access_token,
            &c.access_token_secret,
            &c.bearer_token,
        ]
        .map(|s| s.expose_secret().to_owned())
    };
    a.name == b.name
        && a.weight == b.weight
        && a.url == b.url
        && a.inbound == b.inbound
        && a.user_id == b.user_id
        && a.webhook_api == b.webhook_api
        && a.xaa_events == b.xaa_events
        && secrets(a) == secrets(b)
        && oauth2(a) == oauth2(b)
}

/// A channel's OAuth 2.0 client and initial refresh token, comparable.
fn oauth2(c: &ChannelSettings) -> Option<(String, Option<String>, Option<String>)> {
    let text = |s: &Option<secrecy::SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
    c.oauth2.as_ref().map(|o| {
        (
            o.client_id.clone(),
            text(&o.client_secret),
            text(&o.refresh_token),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InboundMode;
    use secrecy::SecretString;

    fn channel(name: &str, token: &str) -> ChannelSettings {
        let secret = |s: &str| SecretString::from(s.to_owned());
        ChannelSettings {
            name: name.into(),
            consumer_key: secret("ck"),
            consumer_secret: secret("cs"),
            access_token: secret(token),
            access_token_secret: secret("ats"),
            bearer_token: secret("bt"),
            weight: None,
            url: None,
            inbound: InboundMode::Webhook,
            user_id: None,
            webhook_api: crate::config::WebhookApi::Aaa,
            xaa_events: None,
            oauth2: None,
        }
    }

    #[test]
    fn a_reload_changes_only_what_the_file_changed() {
        let live = LiveChannels::new(&[channel("a", "t1"), channel("b", "t1")]);
        live.upsert(LiveChannel {
            origin: Origin::Crm,
            revision: 3,
            ..LiveChannel::from_file(channel("crm", "t1"))
        });
        let mut watcher = live.subscribe();
        watcher.mark_unchanged();
        let deltas = live.replace_file_channels(&[
            channel("a", "t1"),
            channel("b", "t2"),
            channel("c", "t1"),
        ]);
        assert_eq!(
            deltas,
            vec![Delta::Changed("b".into()), Delta::Added("c".into())]
        );
        assert!(watcher.has_changed().unwrap());
        assert!(live.get("crm").is_some(), "the CRM's channels stay");
        let deltas = live.replace_file_channels(&[
            channel("a", "t1"),
            channel("b", "t2"),
            channel("c", "t1"),
        ]);
        assert!(deltas.is_empty());
        let deltas = live.replace_file_channels(&[channel("b", "t2")]);
        assert_eq!(
            deltas,
            vec![Delta::Removed("a".into()), Delta::Removed("c".into())]
        );
    }

    #[test]
    fn a_reload_naming_a_crm_channel_changes_nothing() {
        let live = LiveChannels::new(&[channel("a", "t1")]);
        live.upsert(LiveChannel {
            origin: Origin::Crm,
            revision: 1,
            ..LiveChannel::from_file(channel("crm", "t1"))
        });
        let before = live.current();
        let refused = live.try_replace_file_channels(&[channel("b", "t1"), channel("crm", "t2")]);
        assert_eq!(refused, Err(vec!["crm".to_owned()]));
        assert!(Arc::ptr_eq(&before, &live.current()), "nothing changed");
        let applied = live.try_replace_file_channels(&[channel("b", "t1")]);
        assert_eq!(
            applied,
            Ok(vec![Delta::Removed("a".into()), Delta::Added("b".into())])
        );
    }

    #[test]
    fn a_crm_channel_never_replaces_a_file_channel_or_a_newer_revision() {
        let live = LiveChannels::new(&[channel("a", "t1")]);
        let crm = |name: &str, revision| LiveChannel {
            origin: Origin::Crm,
            revision,
            ..LiveChannel::from_file(channel(name, "crm"))
        };
        assert_eq!(live.upsert_crm(crm("a", 1)), CrmUpsert::FileHolds);
        assert_eq!(live.get("a").unwrap().origin, Origin::File);
        assert_eq!(live.upsert_crm(crm("b", 2)), CrmUpsert::Served);
        assert_eq!(live.upsert_crm(crm("b", 2)), CrmUpsert::Kept);
        assert_eq!(live.upsert_crm(crm("b", 1)), CrmUpsert::Kept);
        assert!(!live.remove_crm("a", 5), "the file's channel stays");
        assert!(!live.remove_crm("b", 2), "an older tombstone");
        assert!(live.remove_crm("b", 3));
        assert!(live.get("b").is_none());
    }

    #[test]
    fn pause_is_a_delta_of_its_own_and_a_repeat_is_none() {
        let live = LiveChannels::new(&[channel("a", "t1")]);
        let before = live.current();
        assert!(live.set_paused("a", true));
        assert_eq!(
            Delta::between(&before, &live.current()),
            vec![Delta::Paused("a".into(), true)]
        );
        let mut watcher = live.subscribe();
        watcher.mark_unchanged();
        live.set_paused("a", true);
        assert!(!watcher.has_changed().unwrap(), "a repeat changes nothing");
        assert!(!live.set_paused("missing", true));
    }
}
