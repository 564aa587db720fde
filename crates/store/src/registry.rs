//! The channel registry's records: the channels the CRM created at run time,
//! kept in the state store so they survive restarts and reach replicas that
//! start later.
//!
//! Every change carries a revision that only grows. A store applies a record
//! only when its revision is higher than the one it holds for that channel,
//! so replicas applying the same command twice, or an old command arriving
//! late, change nothing. A removal is a tombstone with its own revision, not
//! a delete: a replica that starts later, or that still holds an older
//! record, must learn the channel is gone rather than write it back; a later
//! add needs a higher revision still.

use chrono::{DateTime, Utc};

use crate::sealed::SealedCredentials;

/// Who made a channel. Only the CRM's channels are stored: the config file's
/// are read from the file at each start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrigin {
    /// Created by a command of the CRM.
    Crm,
}

impl ChannelOrigin {
    /// The name stored with the record.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelOrigin::Crm => "crm",
        }
    }

    /// The origin a stored name stands for.
    pub fn parse(text: &str) -> Option<ChannelOrigin> {
        (text == "crm").then_some(ChannelOrigin::Crm)
    }
}

/// One channel as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The channel's name, its key.
    pub name: String,
    /// Who made it.
    pub origin: ChannelOrigin,
    /// The channel's settings that are not secret (weight, URL, inbound
    /// mode…), as JSON text: the registry's own type, which can grow fields
    /// without a store migration.
    pub settings: String,
    /// The five X credentials, sealed for this channel.
    pub credentials: SealedCredentials,
    /// Higher than every earlier revision of this channel, removals included.
    pub revision: u64,
    /// Outbound held (inbound still flowing).
    pub paused: bool,
    /// When this revision was made.
    pub updated_at: DateTime<Utc>,
}

/// A removed channel: kept so a replica that still knows an older revision
/// does not bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTombstone {
    /// The removed channel's name.
    pub name: String,
    /// The removal's revision.
    pub revision: u64,
    /// When it was removed.
    pub removed_at: DateTime<Utc>,
}

/// What the store holds for one channel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEntry {
    /// A channel in use.
    Live(ChannelRecord),
    /// A channel that was removed.
    Removed(ChannelTombstone),
}

impl ChannelEntry {
    /// The channel's name.
    pub fn name(&self) -> &str {
        match self {
            ChannelEntry::Live(record) => &record.name,
            ChannelEntry::Removed(tombstone) => &tombstone.name,
        }
    }

    /// The entry's revision.
    pub fn revision(&self) -> u64 {
        match self {
            ChannelEntry::Live(record) => record.revision,
            ChannelEntry::Removed(tombstone) => tombstone.revision,
        }
    }

    /// The record, unless the channel was removed.
    pub fn live(&self) -> Option<&ChannelRecord> {
        match self {
            ChannelEntry::Live(record) => Some(record),
            ChannelEntry::Removed(_) => None,
        }
    }
}

/// Whether a write of the registry took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The store now holds this revision.
    Yes,
    /// The store already held this revision or a newer one: nothing changed.
    Stale {
        /// The revision the store holds.
        current: u64,
    },
}

/// The highest revision the registry takes: PostgreSQL's `bigint` holds no
/// more, and both stores refuse the same, so no store can hold a record
/// the other could not replace.
pub const MAX_REVISION: u64 = i64::MAX as u64;

/// A revision as PostgreSQL's `bigint`, or an error for one above
/// [`MAX_REVISION`]: every store checks its writes with it.
pub(crate) fn revision_as_i64(revision: u64) -> Result<i64, crate::StoreError> {
    i64::try_from(revision).map_err(|_| {
        crate::StoreError::Failed(format!(
            "channel revision {revision} is out of range (at most {MAX_REVISION})"
        ))
    })
}

/// What [`crate::StateStore::channels`] found: every entry that decodes,
/// and the names of those that do not. One bad row (an origin a newer
/// version wrote, a damaged value) must not hide every other channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelList {
    /// The entries that decode, by name.
    pub entries: Vec<ChannelEntry>,
    /// The entries that do not, by name.
    pub broken: Vec<BrokenChannel>,
}

/// A stored entry that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenChannel {
    /// The channel's name (the store's key).
    pub name: String,
    /// Why it does not decode; never a credential.
    pub reason: String,
}

impl ChannelList {
    /// Adds what one stored entry decoded to, and logs one that did not.
    pub(crate) fn push(&mut self, name: &str, decoded: Result<ChannelEntry, crate::StoreError>) {
        match decoded {
            Ok(entry) => self.entries.push(entry),
            Err(error) => {
                tracing::warn!(channel = name, %error, "a stored channel does not decode; skipped");
                self.broken.push(BrokenChannel {
                    name: name.to_owned(),
                    reason: error.to_string(),
                });
            }
        }
    }
}
