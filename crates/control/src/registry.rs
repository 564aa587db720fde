//! The CRM's channels between the state store and [`LiveChannels`]: reading them in
//! (at start, on a change notice, on every session start) and writing a command's
//! change (store first, then what this process serves).

use std::sync::Arc;

use xbridge_core::config::ChannelSettings;
use xbridge_core::live_channels::{CrmUpsert, LiveChannels, Origin};
use xbridge_store::{
    Applied, ChannelEntry, ChannelRecord, ChannelTombstone, CredentialsKey, StateStore, StoreError,
};

use crate::record::{self, RecordError};

/// The store's CRM channels and the live map this process serves.
pub struct Registry {
    store: Arc<dyn StateStore>,
    key: Arc<CredentialsKey>,
    live: Arc<LiveChannels>,
}

/// Why a write did not take effect: the store is out of reach (the command waits
/// and comes again), or another writer raced it twice.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The credentials could not be sealed.
    #[error(transparent)]
    Seal(#[from] xbridge_store::SealError),
    /// Another writer made a newer revision, twice in a row.
    #[error("another replica changed channel {0} at the same time")]
    Raced(String),
}

impl Registry {
    /// The store, for what keeps a channel's state beside its record (an OAuth 2.0
    /// channel's grant).
    pub fn store(&self) -> Arc<dyn StateStore> {
        self.store.clone()
    }

    /// The key records (and OAuth 2.0 grants) are sealed with.
    pub fn key(&self) -> Arc<CredentialsKey> {
        self.key.clone()
    }

    /// A registry over `store`, sealing with `key`, serving through `live`.
    pub fn new(
        store: Arc<dyn StateStore>,
        key: Arc<CredentialsKey>,
        live: Arc<LiveChannels>,
    ) -> Registry {
        Registry { store, key, live }
    }

    /// The channels served now.
    pub fn live(&self) -> &LiveChannels {
        &self.live
    }

    /// What the store holds for `name`.
    pub async fn entry(&self, name: &str) -> Result<Option<ChannelEntry>, StoreError> {
        self.store.channel(name).await
    }

    /// Reads every CRM channel of the store into the live map: what a replica that
    /// starts, or reconnects after missing notices, does, and what it does every
    /// minute to heal a notice it could not read. A channel of the file wins over a
    /// CRM channel of the same name (warned); one that does not open is skipped
    /// (warned), the others are served.
    pub async fn load_all(&self) -> Result<(), StoreError> {
        let list = self.store.channels().await?;
        for entry in &list.entries {
            self.merge(entry);
        }
        Ok(())
    }

    /// Reads `name` again from the store (a change notice, or a file channel of
    /// that name gone by a reload: the CRM's record it hid is served again).
    pub async fn refresh(&self, name: &str) -> Result<(), StoreError> {
        if let Some(entry) = self.store.channel(name).await? {
            self.merge(&entry);
        }
        Ok(())
    }

    /// Brings the live map in line with one stored entry, unless the map already
    /// holds that revision or a newer one, or the file has a channel of its name.
    fn merge(&self, entry: &ChannelEntry) -> CrmUpsert {
        let name = entry.name();
        match entry {
            ChannelEntry::Removed(tombstone) => {
                if self.live.remove_crm(name, tombstone.revision) {
                    tracing::info!(
                        channel = name,
                        revision = tombstone.revision,
                        "CRM channel removed"
                    );
                }
                CrmUpsert::Kept
            }
            ChannelEntry::Live(record) => self.serve(record),
        }
    }

    /// Serves `record`'s channel (see [`LiveChannels::upsert_crm`]).
    pub fn serve(&self, record: &ChannelRecord) -> CrmUpsert {
        // Opening the credentials costs; a record already served needs none.
        let served = self.live.get(&record.name);
        if served.is_some_and(|c| c.origin == Origin::Crm && c.revision >= record.revision) {
            return CrmUpsert::Kept;
        }
        let channel = match record::to_live(&self.key, record) {
            Ok(channel) => channel,
            Err(error @ (RecordError::Seal(_) | RecordError::Decode { .. })) => {
                tracing::warn!(channel = %record.name, %error, "a stored CRM channel cannot be served; skipped");
                return CrmUpsert::Kept;
            }
        };
        let outcome = self.live.upsert_crm(channel);
        match outcome {
            CrmUpsert::Served => {
                tracing::info!(channel = %record.name, revision = record.revision, paused = record.paused, "CRM channel served")
            }
            CrmUpsert::FileHolds => {
                tracing::warn!(channel = %record.name, "the config file has a channel of the same name as a CRM channel in the store; the file's is served")
            }
            CrmUpsert::Kept => {}
        }
        outcome
    }

    /// Stores `settings` as the channel's next revision (keeping its pause), made by
    /// `command_id`, and serves it. A redelivered command (the record already names
    /// it) writes nothing.
    pub async fn upsert(
        &self,
        settings: &ChannelSettings,
        command_id: &str,
    ) -> Result<Written, WriteError> {
        let name = settings.name.as_str();
        self.write(name, |entry| {
            let (current, paused) = match entry {
                Some(ChannelEntry::Live(record)) => {
                    if record::command_id(record).as_deref() == Some(command_id) {
                        return Ok(Step::Done(record.clone()));
                    }
                    (record.revision, record.paused)
                }
                Some(ChannelEntry::Removed(tombstone)) => (tombstone.revision, false),
                None => (0, false),
            };
            let next =
                record::to_record(&self.key, settings, paused, current + 1, Some(command_id))?;
            Ok(Step::Put(next))
        })
        .await
    }

    /// Stores the channel's pause as its next revision (nothing when it is already so).
    pub async fn set_paused(
        &self,
        record: &ChannelRecord,
        paused: bool,
    ) -> Result<Written, WriteError> {
        self.write(&record.name, |entry| match entry {
            Some(ChannelEntry::Live(record)) if record.paused == paused => {
                Ok(Step::Done(record.clone()))
            }
            Some(ChannelEntry::Live(record)) => Ok(Step::Put(record::with_pause(
                record,
                paused,
                record.revision + 1,
            ))),
            _ => Err(WriteError::Raced(record.name.clone())),
        })
        .await
    }

    /// Stores the channel's removal as its next revision, and stops serving it.
    pub async fn remove(&self, name: &str) -> Result<u64, WriteError> {
        for _ in 0..2 {
            let current = match self.store.channel(name).await? {
                Some(ChannelEntry::Live(record)) => record.revision,
                Some(ChannelEntry::Removed(tombstone)) => {
                    self.merge(&ChannelEntry::Removed(tombstone.clone()));
                    return Ok(tombstone.revision);
                }
                None => 0,
            };
            let tombstone = ChannelTombstone {
                name: name.to_owned(),
                revision: current + 1,
                removed_at: chrono::Utc::now(),
            };
            if self.store.remove_channel(&tombstone).await? == Applied::Yes {
                self.merge(&ChannelEntry::Removed(tombstone));
                return Ok(current + 1);
            }
        }
        Err(WriteError::Raced(name.to_owned()))
    }

    /// Reads the channel's entry, lets `decide` make the next record, and puts it;
    /// when another writer got there first (`Stale`), reads and decides once more.
    async fn write(
        &self,
        name: &str,
        decide: impl Fn(Option<&ChannelEntry>) -> Result<Step, WriteError>,
    ) -> Result<Written, WriteError> {
        for _ in 0..2 {
            let entry = self.store.channel(name).await?;
            let (record, replayed) = match decide(entry.as_ref())? {
                Step::Done(record) => (record, true),
                Step::Put(record) => match self.store.put_channel(&record).await? {
                    Applied::Yes => (record, false),
                    Applied::Stale { .. } => continue,
                },
            };
            let file_holds = self.serve(&record) == CrmUpsert::FileHolds;
            return Ok(Written {
                revision: record.revision,
                paused: record.paused,
                replayed,
                file_holds,
            });
        }
        Err(WriteError::Raced(name.to_owned()))
    }
}

/// What a write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The revision stored.
    pub revision: u64,
    /// Whether the stored channel is paused.
    pub paused: bool,
    /// The store already held it (a redelivered command): nothing was written.
    pub replayed: bool,
    /// A channel of the config file has its name, so it is not served: a reload
    /// added it after the command looked.
    pub file_holds: bool,
}

/// What a write decided.
enum Step {
    /// The store already holds it (a redelivered command): serve it, write nothing.
    Done(ChannelRecord),
    /// Put this record.
    Put(ChannelRecord),
}

#[cfg(test)]
mod tests {
    use secrecy::{ExposeSecret as _, SecretString};
    use xbridge_core::config::InboundMode;
    use xbridge_store::EmbeddedStore;

    use super::*;

    fn channel(name: &str, token: &str) -> ChannelSettings {
        ChannelSettings {
            name: name.into(),
            consumer_key: "ck".into(),
            consumer_secret: "cs".into(),
            access_token: token.into(),
            access_token_secret: "ats".into(),
            bearer_token: "bt".into(),
            weight: None,
            url: None,
            inbound: InboundMode::Webhook,
            user_id: None,
            webhook_api: xbridge_core::config::WebhookApi::Aaa,
            xaa_events: None,
            oauth2: None,
        }
    }

    fn registry(dir: &tempfile::TempDir, file: &[ChannelSettings]) -> Registry {
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let key = CredentialsKey::derive(&SecretString::from("ab".repeat(32))).unwrap();
        Registry::new(store, Arc::new(key), Arc::new(LiveChannels::new(file)))
    }

    #[tokio::test]
    async fn the_same_upsert_twice_makes_one_revision_and_a_new_one_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir, &[]);
        assert_eq!(
            registry
                .upsert(&channel("newco", "t1"), "c1")
                .await
                .unwrap()
                .revision,
            1
        );
        assert_eq!(
            registry
                .upsert(&channel("newco", "t1"), "c1")
                .await
                .unwrap()
                .revision,
            1
        );
        assert_eq!(
            registry
                .upsert(&channel("newco", "t2"), "c2")
                .await
                .unwrap()
                .revision,
            2
        );
        assert_eq!(registry.live().get("newco").unwrap().revision, 2);
    }

    #[tokio::test]
    async fn a_removed_channel_comes_back_only_with_a_higher_revision() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir, &[]);
        registry
            .upsert(&channel("newco", "t1"), "c1")
            .await
            .unwrap();
        assert_eq!(registry.remove("newco").await.unwrap(), 2);
        assert!(registry.live().get("newco").is_none());
        assert_eq!(registry.remove("newco").await.unwrap(), 2, "a redelivery");
        assert_eq!(
            registry
                .upsert(&channel("newco", "t1"), "c3")
                .await
                .unwrap()
                .revision,
            3
        );
        assert!(registry.live().get("newco").is_some());
    }

    #[tokio::test]
    async fn an_upsert_of_a_name_a_reload_gave_the_file_meanwhile_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir, &[channel("acme", "file-token")]);
        let written = registry
            .upsert(&channel("acme", "crm-token"), "c1")
            .await
            .unwrap();
        assert!(written.file_holds);
        let served = registry.live().get("acme").unwrap();
        assert_eq!(served.origin, Origin::File);
        assert_eq!(served.settings.access_token.expose_secret(), "file-token");
    }

    #[tokio::test]
    async fn a_file_channel_wins_over_a_stored_crm_channel_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        registry(&dir, &[])
            .upsert(&channel("acme", "crm-token"), "c1")
            .await
            .unwrap();
        let restarted = registry(&dir, &[channel("acme", "file-token")]);
        restarted.load_all().await.unwrap();
        let served = restarted.live().get("acme").unwrap();
        assert_eq!(served.origin, Origin::File);
        assert_eq!(served.settings.access_token.expose_secret(), "file-token");
    }
}
