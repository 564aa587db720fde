//! xbridge's durable state behind one interface.
//!
//! It remembers which replies were sent, so a reply is never sent twice: not
//! when RabbitMQ redelivers it after a crash, not when the CRM publishes it
//! twice. For the inbound side it remembers which X DM events reached the CRM
//! (so a webhook retry or a poll does not deliver one again), which DM events
//! were the bridge's own sends (so their echoes are dropped), and where each
//! channel's poller stopped. It also keeps the channels the CRM creates at
//! run time ([`registry`]), their credentials only sealed ([`sealed`]). The
//! [`EmbeddedStore`] keeps it in a single file
//! (no server) for a single process, the default; the [`PostgresStore`] keeps
//! it in PostgreSQL, shared by several replicas. Both pass the same
//! [`contract`] tests.
//!
//! A store that cannot write (a full disk, a database that refuses writes)
//! says so: its operations fail fast with [`StoreError::Unavailable`], and its
//! [`StoreHealth`] tells the health endpoints and the metrics. It heals by
//! itself once it can write again; callers wait for that rather than give up.

// A redb value guard holds a page, not its read transaction: one left as a temporary in
// a tail expression outlives the transaction under edition 2021 (a concurrent commit may
// then free its page; redb's debug build stops the writer on that). This lint names
// every such tail, so each is bound to a local instead.
#![deny(tail_expr_drop_order)]
#![warn(missing_docs)]

pub mod contract;
mod embedded;
mod health;
mod key_check;
pub mod membership;
pub mod oauth2_grant;
pub mod postgres;
pub mod postgres_tls;
pub mod prune;
pub mod registry;
pub mod sealed;

pub use embedded::EmbeddedStore;
pub use health::StoreHealth;
pub use key_check::{check_credentials_key, KeyCheckError};
pub use membership::Heartbeat;
pub use oauth2_grant::{GrantBase, GrantWrite, OAuth2GrantRow, SealedGrant};
pub use postgres::PostgresStore;
pub use postgres_tls::PostgresTls;
pub use prune::{spawn_pruner, Pruned};
pub use registry::{
    Applied, BrokenChannel, ChannelEntry, ChannelList, ChannelOrigin, ChannelRecord,
    ChannelTombstone, MAX_REVISION,
};
pub use sealed::{CredentialsKey, SealError, SealedCredentials};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What X answered when a reply went out: enough to tell the CRM again
/// without a second DM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    /// X's id of the DM event.
    pub dm_event_id: String,
    /// X's conversation id.
    pub conversation_id: String,
    /// When X accepted it.
    pub sent_at: DateTime<Utc>,
    /// Whether the `message.sent` event was confirmed by the broker; if not,
    /// a redelivery publishes it (and only it) again.
    pub reported: bool,
    /// Every DM of a reply that went out as several (X takes one attachment
    /// per DM), in order, so `message.sent` can list them all; empty when the
    /// reply was one DM (`dm_event_id`). Records written before replies had
    /// parts lack it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

impl SentRecord {
    /// The ids of every DM the reply became, in order.
    pub fn dm_event_ids(&self) -> Vec<String> {
        if self.parts.is_empty() {
            vec![self.dm_event_id.clone()]
        } else {
            self.parts.clone()
        }
    }
}

/// Why the store could not answer. The caller must not guess: a reply whose
/// state is unknown is left unacknowledged and retried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take writes now (its file hit an I/O error such as a
    /// full disk and is being reopened, or the database refuses writes or
    /// cannot be reached). It heals by itself: wait for
    /// [`StoreHealth::wait_writable`] and try again.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a record that does not decode, a value out of range.
    #[error("state store: {0}")]
    Failed(String),
    /// A send intent refused because the channel was claimed since the
    /// caller's claim ([`StateStore::claim_channel`]): another consumer owns
    /// the channel's replies now, so the caller must send nothing. Not a
    /// failure of the store: waiting does not heal it.
    #[error(
        "channel {channel} was claimed by another consumer since this one's claim (epoch {held})"
    )]
    Fenced {
        /// The channel.
        channel: String,
        /// The epoch the refused caller held.
        held: u64,
    },
}

impl StoreError {
    /// Whether the store as a whole cannot write, as opposed to this one
    /// operation failing.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The durable state of the bridge. Implementations must make a write durable
/// before returning, since the bridge acts on it right after.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The record of a sent reply, if it was sent.
    async fn sent(&self, channel: &str, message_id: &str)
        -> Result<Option<SentRecord>, StoreError>;

    /// Remembers that a reply was sent. Keeps an existing record (the first
    /// send wins), so a late duplicate cannot overwrite X's real event id.
    async fn record_sent(
        &self,
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError>;

    /// The record of part `part` (0-based) of a reply that goes out as
    /// several DMs (one per attachment), if that part was sent. A crash
    /// between parts must not send a part twice.
    async fn sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<SentRecord>, StoreError>;

    /// Remembers that one part of a reply was sent; the first record wins,
    /// and its DM is an own send ([`StateStore::is_own_send`]). The reply as
    /// a whole is recorded with [`StateStore::record_sent`] once every part
    /// went out.
    async fn record_sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        record: &SentRecord,
    ) -> Result<(), StoreError>;

    /// Makes the caller the owner of `channel`'s replies: increments the
    /// channel's owner epoch and returns it (1 for a channel never claimed).
    /// Every consumer of a reply queue claims the channel once, at its first
    /// delivery; from then on a send intent of an earlier claim is refused
    /// ([`StateStore::record_send_intent`]), so an old owner that lives on
    /// (a lost connection, a node loss) cannot start a send of a reply the
    /// new owner took over.
    async fn claim_channel(&self, channel: &str) -> Result<u64, StoreError>;

    /// Remembers that part `part` (0 for a one-DM reply) is about to be sent,
    /// and since when, before the request goes to X, by the owner of
    /// `epoch` ([`StateStore::claim_channel`]). After a crash, a part with an
    /// intent and no sent record may or may not have reached X; the bridge
    /// then looks for it on X before sending again. A later intent for the
    /// same part replaces the earlier one.
    ///
    /// Fails with [`StoreError::Fenced`], writing nothing, when `epoch` is
    /// not the channel's epoch (it was claimed since), checked atomically with
    /// the write: once a claim returned, no intent of an earlier claim is
    /// written, and every intent written before it is visible to the new
    /// owner.
    async fn record_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        started_at: DateTime<Utc>,
        epoch: u64,
    ) -> Result<(), StoreError>;

    /// Forgets the intent of part `part`: X answered (with an error), so that
    /// send certainly did not create a DM and needs no lookup.
    async fn clear_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<(), StoreError>;

    /// When the last send of part `part` of a reply started, if one did.
    async fn send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Remembers that the CRM was told (the `message.sent` was confirmed).
    async fn mark_reported(&self, channel: &str, message_id: &str) -> Result<(), StoreError>;

    /// [`StateStore::mark_reported`] without waiting for it to be durable: a
    /// store may make it durable with a later write. The mark only spares a
    /// redelivered copy of the reply a second `message.sent`, so losing it in a
    /// crash costs little, while waiting for a commit of its own cost a third
    /// of a reply's store work (issue 16, docs/benchmarks.md). Reads in this
    /// process see the mark at once. Errors seen later are the store's to
    /// log; one seen at once is returned.
    async fn mark_reported_soon(&self, channel: &str, message_id: &str) -> Result<(), StoreError> {
        self.mark_reported(channel, message_id).await
    }

    /// Whether X's DM event `dm_event_id` is one the bridge sent (recorded by
    /// [`StateStore::record_sent`]): its echo from X must not reach the CRM as
    /// a customer's message.
    async fn is_own_send(&self, channel: &str, dm_event_id: &str) -> Result<bool, StoreError>;

    /// Whether the inbound DM event `event_id` already reached the CRM.
    async fn is_delivered(&self, channel: &str, event_id: &str) -> Result<bool, StoreError>;

    /// Remembers that these inbound events reached the CRM (their publishes
    /// were confirmed), in one durable write.
    async fn record_delivered(&self, channel: &str, event_ids: &[String])
        -> Result<(), StoreError>;

    /// The newest DM event id the channel's poller has delivered up to.
    async fn poll_cursor(&self, channel: &str) -> Result<Option<String>, StoreError>;

    /// Moves the poller's cursor; only after the events up to it were
    /// delivered and confirmed.
    async fn set_poll_cursor(&self, channel: &str, event_id: &str) -> Result<(), StoreError>;

    /// Stores a channel of the registry (created or replaced) if its
    /// revision is higher than what the store holds for that name, a
    /// removal's included; otherwise changes nothing and says which revision
    /// is there. A revision above [`MAX_REVISION`] is refused. Its credentials are sealed ([`SealedCredentials`]): nothing
    /// else can be stored.
    async fn put_channel(&self, record: &ChannelRecord) -> Result<Applied, StoreError>;

    /// What the store holds for channel `name`: the channel, its tombstone,
    /// or nothing.
    async fn channel(&self, name: &str) -> Result<Option<ChannelEntry>, StoreError>;

    /// Every channel of the registry and every tombstone, by name, and the
    /// names of stored entries that do not decode (the rest still load).
    async fn channels(&self) -> Result<ChannelList, StoreError>;

    /// The store's key-check record ([`check_credentials_key`]): stores
    /// `candidate` if the store holds none yet, in one write so that racing
    /// replicas keep one, and returns the one it holds.
    async fn keep_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Removes channel `name` by leaving a tombstone with `revision`, under
    /// the same rule as [`StateStore::put_channel`]: only over a lower
    /// revision (or nothing).
    async fn remove_channel(&self, tombstone: &ChannelTombstone) -> Result<Applied, StoreError>;

    /// Whether the store can write now, and a way to wait until it can.
    fn health(&self) -> StoreHealth;

    /// Removes the records older than `older_than`: sent replies and their
    /// parts (by when X accepted them), send intents (by when the send
    /// started), own DM event ids (with their reply) and delivered event ids
    /// (by when they were recorded). Channels, the registry and poll cursors
    /// stay. Works in small batches, each a short write of its own, so the
    /// writes of replies and DMs go on between them ([`prune`]).
    async fn prune(&self, older_than: DateTime<Utc>) -> Result<Pruned, StoreError>;

    /// Keeps `replica` among the live replicas until `ttl` from now (by the
    /// store's clock, so the replicas' clocks need not agree), and says which
    /// replicas are live and which channels `replica` holds. By default the
    /// store has no other replica ([`Heartbeat::alone`]).
    async fn heartbeat(
        &self,
        replica: &str,
        ttl: std::time::Duration,
    ) -> Result<Heartbeat, StoreError> {
        let _ = ttl;
        Ok(Heartbeat::alone(replica))
    }

    /// Makes `replica` the holder of `channel` (it serves the channel's
    /// replies and polls) when no live replica holds it; `false` while
    /// another live one does. Holding it already is `true`. By default always
    /// `true`: no other replica can hold it.
    async fn hold_channel(&self, channel: &str, replica: &str) -> Result<bool, StoreError> {
        let _ = (channel, replica);
        Ok(true)
    }

    /// Lets `channel` go, if `replica` holds it: another replica may take it.
    async fn release_channel(&self, channel: &str, replica: &str) -> Result<(), StoreError> {
        let _ = (channel, replica);
        Ok(())
    }

    /// Channel `channel`'s OAuth 2.0 grant ([`oauth2_grant`]), if one was stored.
    async fn oauth2_grant(&self, channel: &str) -> Result<Option<OAuth2GrantRow>, StoreError>;

    /// Stores `sealed` as `channel`'s grant if the row is at the generation `base`
    /// expects (0 when no grant was stored), durably, at the next generation; otherwise
    /// writes nothing and says the row's generation ([`GrantWrite::Stale`]). A stored
    /// grant is not refused ([`GrantBase::Any`] is how an operator's new authorisation
    /// clears the mark); the refresh lease stays as it is.
    async fn store_oauth2_grant(
        &self,
        channel: &str,
        base: GrantBase,
        sealed: &SealedGrant,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<GrantWrite, StoreError>;

    /// Deletes `channel`'s grant (its channel is gone): no token of it is left in the
    /// store. The row's generation stays, so a refresh in flight cannot store over a
    /// later grant ([`GrantBase::admits`]); a later grant is stored as on a channel
    /// that never had one. `true` if there was a grant.
    async fn delete_oauth2_grant(&self, channel: &str) -> Result<bool, StoreError>;

    /// Makes `replica` the one replica refreshing `channel`'s grant for `ttl` (by the
    /// store's clock): `true` if it holds the lease now (taken, renewed, or taken over
    /// from a holder whose lease expired), `false` while another holds it. Works before
    /// any grant is stored (a channel starting from its configured refresh token).
    async fn lease_oauth2_refresh(
        &self,
        channel: &str,
        replica: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Ends `replica`'s refresh lease on `channel`, if it holds it.
    async fn release_oauth2_refresh(&self, channel: &str, replica: &str) -> Result<(), StoreError>;

    /// Marks `channel`'s grant refused by X, if the row is still at `generation` (the
    /// grant the caller's refresh used): a loser of a refresh race, whose refresh token
    /// the winner had already spent, must not mark the winner's new grant. `true` if
    /// marked.
    async fn mark_oauth2_refused(&self, channel: &str, generation: u64)
        -> Result<bool, StoreError>;

    /// `replica` stops: it is no longer live and holds nothing, so the others
    /// take its channels at once instead of after its heartbeat expires.
    async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        let _ = replica;
        Ok(())
    }
}
