//! Which X account each channel is, and which X App it belongs to.
//!
//! X allows one webhook per App, so the events of every account subscribed to an
//! App's webhook arrive at the one URL registered for it, each body naming its
//! account. The webhook therefore routes a body to the channel of that App which
//! *is* that account, and both sides need a channel's account id to tell the
//! account's own DMs from its customers'. The id comes from the configuration
//! (`user_id`) or is learnt from X (`GET /2/users/me`) once and kept here, so the
//! inbound and the outbound side never ask X twice for it.
//!
//! Apps are told apart by their consumer key; what is kept is a number per App,
//! never the key, so nothing here can print a credential.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};
use xbridge_x_api::UserId;

use secrecy::{ExposeSecret, SecretString};

use crate::config::ChannelSettings;

/// An X App, as told by its consumer key: channels with equal keys share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppId(usize);

/// What is known of a channel's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Not known yet: the configuration does not give it and X has not answered yet
    /// (unreachable, or rate-limited). Bodies that may be this account's wait.
    Pending,
    /// The account's X user id: configured, or learnt from X.
    Known(UserId),
    /// X will not say, for a reason that does not pass by itself (the channel's
    /// credentials refused, the App not enrolled): the reason, for logs and dead
    /// letters. Still retried, but bodies no longer wait for it.
    Unavailable(String),
}

/// One channel as [`ChannelIdentities`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelIdentity {
    /// The channel's name.
    pub name: String,
    /// Its X App.
    pub app: AppId,
    /// What is known of its account.
    pub identity: Identity,
}

/// The account X names for a channel is not the one its configuration names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "channel {channel}: user_id is {configured} in the configuration, but X says the channel's access token belongs to account {actual} (fix: set user_id to {actual}, or give the channel the access token of account {configured})"
)]
pub struct IdentityMismatch {
    /// The channel.
    pub channel: String,
    /// Its configured `user_id`.
    pub configured: String,
    /// The account X named for its access token.
    pub actual: String,
}

/// One channel to know: its name, its App's consumer key and its configured id.
pub struct ChannelAccount<'a> {
    /// The channel's name.
    pub name: &'a str,
    /// Its App's consumer key (compared, never kept).
    pub consumer_key: &'a SecretString,
    /// Its `user_id` from the configuration.
    pub user_id: Option<&'a str>,
}

struct Entry {
    configured: Option<UserId>,
    channel: ChannelIdentity,
}

/// Every channel's account and App, shared by the inbound and outbound sides.
pub struct ChannelIdentities {
    /// In configuration order, which breaks ties when routing.
    entries: RwLock<Vec<Entry>>,
    /// Each App (by consumer key) and its id, kept so a channel added at run time
    /// joins the App of the channels it shares a consumer key with. Locked after
    /// `entries`, never before.
    apps: RwLock<Apps>,
}

/// The Apps of the channels served now. An App no channel uses any more is
/// forgotten (its consumer key is a credential, and a thousand channels added
/// and removed would leave a thousand keys); ids are never reused, so an id held
/// elsewhere cannot come to name another App.
#[derive(Default)]
struct Apps {
    ids: HashMap<String, AppId>,
    next: usize,
}

impl Apps {
    /// The id of the App of `consumer_key`, a new one for a key not seen.
    fn id(&mut self, consumer_key: &str) -> AppId {
        if let Some(id) = self.ids.get(consumer_key) {
            return *id;
        }
        let id = AppId(self.next);
        self.next += 1;
        self.ids.insert(consumer_key.to_owned(), id);
        id
    }

    /// Forgets the Apps none of `entries` belongs to. Linear: with one App
    /// per channel, looking each App up among the entries made it quadratic,
    /// and called once per channel at start, 10,000 channels took minutes
    /// (issue 16).
    fn keep_used(&mut self, entries: &[Entry]) {
        let used: HashSet<AppId> = entries.iter().map(|e| e.channel.app).collect();
        self.ids.retain(|_, id| used.contains(id));
    }
}

impl ChannelIdentities {
    /// The channels of `accounts`: a configured id is known from the start, others
    /// are pending until [`ChannelIdentities::learn`].
    pub fn new<'a>(accounts: impl IntoIterator<Item = ChannelAccount<'a>>) -> ChannelIdentities {
        let mut apps = Apps::default();
        let entries = accounts
            .into_iter()
            .map(|account| {
                let app = apps.id(account.consumer_key.expose_secret());
                // Taken as configured: the configuration checks its form when loaded.
                let configured = account.user_id.map(UserId::from);
                Entry {
                    channel: ChannelIdentity {
                        name: account.name.to_owned(),
                        app,
                        identity: configured
                            .clone()
                            .map_or(Identity::Pending, Identity::Known),
                    },
                    configured,
                }
            })
            .collect();
        ChannelIdentities {
            entries: RwLock::new(entries),
            apps: RwLock::new(apps),
        }
    }

    /// Adds a channel at run time, or replaces its entry when the channel's
    /// account or App may have changed (new credentials): what was learnt of the
    /// old account is dropped, since the new token may belong to another one.
    /// An entry whose App and configured id are the same is kept as it is.
    pub fn upsert(&self, account: ChannelAccount<'_>) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        let app = apps.id(account.consumer_key.expose_secret());
        let configured = account.user_id.map(UserId::from);
        let entry = Entry {
            channel: ChannelIdentity {
                name: account.name.to_owned(),
                app,
                identity: configured
                    .clone()
                    .map_or(Identity::Pending, Identity::Known),
            },
            configured,
        };
        match entries.iter_mut().find(|e| e.channel.name == account.name) {
            Some(old) if old.channel.app == app && old.configured == entry.configured => {}
            Some(old) => {
                *old = entry;
                // The channel may have left an App (new credentials of another
                // App). A channel added leaves none: every App known belongs
                // to some channel, so there is nothing to look for then.
                apps.keep_used(&entries);
            }
            None => entries.push(entry),
        }
    }

    /// Forgets `channel` (removed at run time): its DMs are no longer routed,
    /// and its App is forgotten when no other channel belongs to it.
    pub fn remove(&self, channel: &str) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|e| e.channel.name != channel);
        self.apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .keep_used(&entries);
    }

    /// The channels of a configuration.
    pub fn from_channels(channels: &[ChannelSettings]) -> ChannelIdentities {
        ChannelIdentities::new(channels.iter().map(|c| ChannelAccount {
            name: &c.name,
            consumer_key: &c.consumer_key,
            user_id: c.user_id.as_deref(),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        // Nothing panics while holding the lock; recover rather than propagate.
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every channel, in configuration order.
    pub fn snapshot(&self) -> Vec<ChannelIdentity> {
        self.read().iter().map(|e| e.channel.clone()).collect()
    }

    /// What is known of `channel`'s account; `None` for a channel not configured.
    pub fn identity(&self, channel: &str) -> Option<Identity> {
        self.read()
            .iter()
            .find(|e| e.channel.name == channel)
            .map(|e| e.channel.identity.clone())
    }

    /// `channel`'s account id, once known.
    pub fn user_id(&self, channel: &str) -> Option<UserId> {
        match self.identity(channel)? {
            Identity::Known(id) => Some(id),
            Identity::Pending | Identity::Unavailable(_) => None,
        }
    }

    /// Records the account X named for `channel`'s access token. An id that
    /// differs from the configured one is refused: routing by it would publish one
    /// account's DMs as another's.
    pub fn learn(&self, channel: &str, actual: &str) -> Result<(), IdentityMismatch> {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = entries.iter_mut().find(|e| e.channel.name == channel) else {
            return Ok(());
        };
        if let Some(configured) = &entry.configured {
            if *configured != actual {
                return Err(IdentityMismatch {
                    channel: channel.to_owned(),
                    configured: configured.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        entry.channel.identity = Identity::Known(UserId::from(actual));
        Ok(())
    }

    /// Records that X will not say who `channel` is, for `reason`. A known id
    /// (configured, or learnt before) is kept.
    pub fn unavailable(&self, channel: &str, reason: &str) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.iter_mut().find(|e| e.channel.name == channel) {
            if !matches!(entry.channel.identity, Identity::Known(_)) {
                entry.channel.identity = Identity::Unavailable(reason.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SecretString {
        SecretString::from(text)
    }

    fn identities() -> ChannelIdentities {
        let (k1, k2) = (key("app-one"), key("app-two"));
        ChannelIdentities::new([
            ChannelAccount {
                name: "alpha",
                consumer_key: &k1,
                user_id: Some("1"),
            },
            ChannelAccount {
                name: "beta",
                consumer_key: &k1,
                user_id: None,
            },
            ChannelAccount {
                name: "other",
                consumer_key: &k2,
                user_id: None,
            },
        ])
    }

    fn app_of(identities: &ChannelIdentities, channel: &str) -> AppId {
        let all = identities.snapshot();
        all.iter().find(|c| c.name == channel).expect("served").app
    }

    #[test]
    fn an_app_no_channel_uses_is_forgotten_and_its_id_never_reused() {
        let identities = identities();
        let k3 = key("app-three");
        let gamma = || ChannelAccount {
            name: "gamma",
            consumer_key: &k3,
            user_id: None,
        };
        identities.upsert(gamma());
        let first = app_of(&identities, "gamma");
        let known = |ids: &ChannelIdentities| ids.apps.read().unwrap().ids.len();
        assert_eq!(known(&identities), 3);

        identities.remove("gamma");
        identities.remove("other");
        assert_eq!(
            known(&identities),
            1,
            "only the App of alpha and beta is left"
        );
        identities.upsert(gamma());
        assert_ne!(app_of(&identities, "gamma"), first);
        assert_ne!(app_of(&identities, "gamma"), app_of(&identities, "alpha"));
        assert_eq!(app_of(&identities, "alpha"), app_of(&identities, "beta"));
    }

    #[test]
    fn channels_with_one_consumer_key_share_an_app() {
        let all = identities().snapshot();
        assert_eq!(all[0].app, all[1].app);
        assert_ne!(all[0].app, all[2].app);
        assert_eq!(all[0].identity, Identity::Known("1".into()));
        assert_eq!(all[1].identity, Identity::Pending);
    }

    #[test]
    fn a_learnt_id_is_shared_and_a_configured_one_is_checked() {
        let ids = identities();
        assert_eq!(ids.user_id("beta"), None);
        ids.learn("beta", "2").unwrap();
        assert_eq!(
            ids.user_id("beta").as_ref().map(|id| id.as_str()),
            Some("2")
        );
        ids.learn("alpha", "1").unwrap();
        let mismatch = ids.learn("alpha", "9").unwrap_err();
        assert_eq!(
            mismatch,
            IdentityMismatch {
                channel: "alpha".into(),
                configured: "1".into(),
                actual: "9".into()
            }
        );
        let message = mismatch.to_string();
        assert!(message.contains("alpha") && message.contains(" 1 ") && message.contains('9'));
        assert_eq!(
            ids.user_id("alpha").as_ref().map(|id| id.as_str()),
            Some("1")
        );
    }

    #[test]
    fn unavailable_never_hides_a_known_id() {
        let ids = identities();
        ids.unavailable("alpha", "401");
        ids.unavailable("other", "401");
        assert_eq!(ids.identity("alpha"), Some(Identity::Known("1".into())));
        assert_eq!(
            ids.identity("other"),
            Some(Identity::Unavailable("401".into()))
        );
        ids.learn("other", "3").unwrap();
        assert_eq!(
            ids.user_id("other").as_ref().map(|id| id.as_str()),
            Some("3")
        );
        assert_eq!(ids.identity("nobody"), None);
    }
}
