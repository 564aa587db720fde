//! A state store that refuses writes on demand, the way a full disk or a
//! read-only database does, in front of a real store: for tests of what the
//! bridge does while its store cannot write.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use xbridge_store::{
    Applied, ChannelEntry, ChannelList, ChannelRecord, ChannelTombstone, Pruned, SentRecord,
    StateStore, StoreError, StoreHealth,
};

/// What the store refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// Nothing: every call reaches the real store.
    Nothing,
    /// Every write; reads still answer (a database gone read-only).
    Writes,
    /// Only the records of sent replies (`record_sent`): X accepts a reply,
    /// then its record fails.
    SentRecords,
    /// Every call (a store closed while it opens its file again).
    Everything,
    /// Only the writes of OAuth 2.0 grants (`store_oauth2_grant`): X rotated the
    /// grant, then the store would not take the new one.
    Grants,
    /// Only the marks of OAuth 2.0 grants X refused (`mark_oauth2_refused`).
    RefusedMarks,
}

/// The double. Its health is its own: unwritable from the first refused
/// write until [`FailingStore::heal`].
pub struct FailingStore {
    inner: Arc<dyn StateStore>,
    health: StoreHealth,
    refuse: Mutex<Refuse>,
    refused: watch::Sender<usize>,
    /// Prunes the real store answered, for tests of the pruning task.
    pruned: watch::Sender<usize>,
    /// Prunes refused, apart from [`FailingStore::refusals`]: a bridge's
    /// pruning task runs at start, and must not count as the reply or event
    /// write a test waits to see refused.
    prunes_refused: watch::Sender<usize>,
    /// While `true`, OAuth 2.0 grant writes wait (a slow store).
    grant_writes_held: watch::Sender<bool>,
    /// Grant writes that waited so far.
    grant_writes_waited: watch::Sender<usize>,
    /// OAuth 2.0 refresh leases granted (taken or renewed) and turned away so far.
    leases: watch::Sender<(usize, usize)>,
    /// OAuth 2.0 grant writes the real store answered so far.
    grants_written: watch::Sender<usize>,
}

impl FailingStore {
    /// In front of `inner`, refusing nothing yet.
    pub fn new(inner: Arc<dyn StateStore>) -> Arc<FailingStore> {
        Arc::new(FailingStore {
            inner,
            health: StoreHealth::new(),
            refuse: Mutex::new(Refuse::Nothing),
            refused: watch::Sender::new(0),
            pruned: watch::Sender::new(0),
            prunes_refused: watch::Sender::new(0),
            grant_writes_held: watch::Sender::new(false),
            grant_writes_waited: watch::Sender::new(0),
            leases: watch::Sender::new((0, 0)),
            grants_written: watch::Sender::new(0),
        })
    }

    /// Makes OAuth 2.0 grant writes wait until [`FailingStore::release_grant_writes`].
    pub fn hold_grant_writes(&self) {
        self.grant_writes_held.send_replace(true);
    }

    /// Lets held and later grant writes through.
    pub fn release_grant_writes(&self) {
        self.grant_writes_held.send_replace(false);
    }

    /// Waits until `count` grant writes were held since the start.
    pub async fn wait_for_held_grant_writes(&self, count: usize) {
        let mut waited = self.grant_writes_waited.subscribe();
        let _ = waited.wait_for(|waited| *waited >= count).await;
    }

    /// OAuth 2.0 refresh leases granted (taken or renewed) since the start.
    pub fn leases_granted(&self) -> usize {
        self.leases.borrow().0
    }

    /// Waits until `count` refresh leases were granted since the start.
    pub async fn wait_for_leases_granted(&self, count: usize) {
        let mut leases = self.leases.subscribe();
        let _ = leases.wait_for(|(granted, _)| *granted >= count).await;
    }

    /// Waits until `count` refresh leases were turned away (another held it) since the start.
    pub async fn wait_for_leases_turned_away(&self, count: usize) {
        let mut leases = self.leases.subscribe();
        let _ = leases
            .wait_for(|(_, turned_away)| *turned_away >= count)
            .await;
    }

    /// Waits until the real store answered `count` OAuth 2.0 grant writes since the start
    /// (stored or stale): a test's proof that a write reached the store without a sleep.
    pub async fn wait_for_grant_writes(&self, count: usize) {
        let mut written = self.grants_written.subscribe();
        let _ = written.wait_for(|written| *written >= count).await;
    }

    /// Starts refusing `what`.
    pub fn refuse(&self, what: Refuse) {
        *self.refuse.lock().unwrap_or_else(PoisonError::into_inner) = what;
    }

    /// Refuses nothing any more, and says so the way a store's probe does.
    pub fn heal(&self) {
        self.refuse(Refuse::Nothing);
        self.health.write_succeeded();
    }

    /// Waits until `count` calls were refused since the start.
    pub async fn wait_for_refusals(&self, count: usize) {
        let mut refused = self.refused.subscribe();
        let _ = refused.wait_for(|refused| *refused >= count).await;
    }

    /// Waits until `count` prunes were refused since the start.
    pub async fn wait_for_refused_prunes(&self, count: usize) {
        let mut refused = self.prunes_refused.subscribe();
        let _ = refused.wait_for(|refused| *refused >= count).await;
    }

    /// Waits until the real store answered `count` prunes since the start.
    pub async fn wait_for_prunes(&self, count: usize) {
        let mut pruned = self.pruned.subscribe();
        let _ = pruned.wait_for(|pruned| *pruned >= count).await;
    }

    /// Calls refused since the start.
    pub fn refusals(&self) -> usize {
        *self.refused.borrow()
    }

    fn mode(&self) -> Refuse {
        *self.refuse.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refused(&self, write: bool) -> StoreError {
        let error = StoreError::Unavailable("No space left on device (injected)".into());
        if write {
            self.health.write_failed(&error);
        }
        self.refused.send_modify(|refused| *refused += 1);
        error
    }

    fn read(&self) -> Result<(), StoreError> {
        match self.mode() {
            Refuse::Everything => Err(self.refused(false)),
            _ => Ok(()),
        }
    }

    fn write(&self, sent_record: bool) -> Result<(), StoreError> {
        match self.mode() {
            Refuse::Writes | Refuse::Everything => Err(self.refused(true)),
            Refuse::SentRecords if sent_record => Err(self.refused(true)),
            _ => Ok(()),
        }
    }

    fn wrote(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        match &result {
            Ok(()) => self.health.write_succeeded(),
            Err(error) => self.health.write_failed(error),
        }
        result
    }
}

#[async_trait]
impl StateStore for FailingStore {
    async fn sent(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        self.read()?;
        self.inner.sent(channel, message_id).await
    }

    async fn record_sent(
        &self,
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        self.write(true)?;
        self.wrote(self.inner.record_sent(channel, message_id, record).await)
    }

    async fn sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<SentRecord>, StoreError> {
        self.read()?;
        self.inner.sent_part(channel, message_id, part).await
    }

    async fn record_sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        self.write(false)?;
        self.wrote(
            self.inner
                .record_sent_part(channel, message_id, part, record)
                .await,
        )
    }

    async fn claim_channel(&self, channel: &str) -> Result<u64, StoreError> {
        self.write(false)?;
        let claimed = self.inner.claim_channel(channel).await;
        self.wrote(claimed.as_ref().map(|_| ()).map_err(Clone::clone))?;
        claimed
    }

    async fn record_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        started_at: DateTime<Utc>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.write(false)?;
        let written = self
            .inner
            .record_send_intent(channel, message_id, part, started_at, epoch)
            .await;
        // A refusal is the store's answer, not a failed write.
        let health = match &written {
            Err(StoreError::Fenced { .. }) => Ok(()),
            other => other.clone(),
        };
        self.wrote(health)?;
        written
    }

    async fn clear_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<(), StoreError> {
        self.write(false)?;
        self.wrote(
            self.inner
                .clear_send_intent(channel, message_id, part)
                .await,
        )
    }

    async fn send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read()?;
        self.inner.send_intent(channel, message_id, part).await
    }

    async fn mark_reported(&self, channel: &str, message_id: &str) -> Result<(), StoreError> {
        self.write(false)?;
        self.wrote(self.inner.mark_reported(channel, message_id).await)
    }

    async fn is_own_send(&self, channel: &str, dm_event_id: &str) -> Result<bool, StoreError> {
        self.read()?;
        self.inner.is_own_send(channel, dm_event_id).await
    }

    async fn is_delivered(&self, channel: &str, event_id: &str) -> Result<bool, StoreError> {
        self.read()?;
        self.inner.is_delivered(channel, event_id).await
    }

    async fn record_delivered(
        &self,
        channel: &str,
        event_ids: &[String],
    ) -> Result<(), StoreError> {
        self.write(false)?;
        self.wrote(self.inner.record_delivered(channel, event_ids).await)
    }

    async fn poll_cursor(&self, channel: &str) -> Result<Option<String>, StoreError> {
        self.read()?;
        self.inner.poll_cursor(channel).await
    }

    async fn set_poll_cursor(&self, channel: &str, event_id: &str) -> Result<(), StoreError> {
        self.write(false)?;
        self.wrote(self.inner.set_poll_cursor(channel, event_id).await)
    }

    async fn put_channel(&self, record: &ChannelRecord) -> Result<Applied, StoreError> {
        self.write(false)?;
        let result = self.inner.put_channel(record).await;
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.wrote(outcome)?;
        result
    }

    async fn channel(&self, name: &str) -> Result<Option<ChannelEntry>, StoreError> {
        self.read()?;
        self.inner.channel(name).await
    }

    async fn channels(&self) -> Result<ChannelList, StoreError> {
        self.read()?;
        self.inner.channels().await
    }

    async fn keep_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.write(false)?;
        let result = self.inner.keep_key_check(candidate).await;
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.wrote(outcome)?;
        result
    }

    async fn remove_channel(&self, tombstone: &ChannelTombstone) -> Result<Applied, StoreError> {
        self.write(false)?;
        let result = self.inner.remove_channel(tombstone).await;
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.wrote(outcome)?;
        result
    }

    fn health(&self) -> StoreHealth {
        self.health.clone()
    }

    /// Refused like any write, but not told to the health: the real stores'
    /// prunes are background work that says nothing about the hot path.
    async fn prune(&self, older_than: DateTime<Utc>) -> Result<Pruned, StoreError> {
        match self.mode() {
            Refuse::Writes | Refuse::Everything => {
                self.prunes_refused.send_modify(|refused| *refused += 1);
                Err(StoreError::Unavailable(
                    "No space left on device (injected)".into(),
                ))
            }
            _ => {
                let result = self.inner.prune(older_than).await;
                self.pruned.send_modify(|pruned| *pruned += 1);
                result
            }
        }
    }

    async fn oauth2_grant(
        &self,
        channel: &str,
    ) -> Result<Option<xbridge_store::OAuth2GrantRow>, StoreError> {
        self.read()?;
        self.inner.oauth2_grant(channel).await
    }

    async fn store_oauth2_grant(
        &self,
        channel: &str,
        base: xbridge_store::GrantBase,
        sealed: &xbridge_store::SealedGrant,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<xbridge_store::GrantWrite, StoreError> {
        self.write(false)?;
        if matches!(self.mode(), Refuse::Grants) {
            // Not told to the health: the replies' own writes still succeed.
            return Err(self.refused(false));
        }
        let mut held = self.grant_writes_held.subscribe();
        if *held.borrow_and_update() {
            self.grant_writes_waited.send_modify(|waited| *waited += 1);
            let _ = held.wait_for(|held| !*held).await;
        }
        let written = self
            .inner
            .store_oauth2_grant(channel, base, sealed, expires_at)
            .await;
        if written.is_ok() {
            self.grants_written.send_modify(|written| *written += 1);
        }
        written
    }

    async fn delete_oauth2_grant(&self, channel: &str) -> Result<bool, StoreError> {
        self.write(false)?;
        self.inner.delete_oauth2_grant(channel).await
    }

    async fn lease_oauth2_refresh(
        &self,
        channel: &str,
        replica: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.write(false)?;
        let leased = self.inner.lease_oauth2_refresh(channel, replica, ttl).await;
        if let Ok(leased) = leased {
            self.leases.send_modify(|(granted, turned_away)| {
                if leased {
                    *granted += 1;
                } else {
                    *turned_away += 1;
                }
            });
        }
        leased
    }

    async fn release_oauth2_refresh(&self, channel: &str, replica: &str) -> Result<(), StoreError> {
        self.write(false)?;
        self.inner.release_oauth2_refresh(channel, replica).await
    }

    async fn mark_oauth2_refused(
        &self,
        channel: &str,
        generation: u64,
    ) -> Result<bool, StoreError> {
        self.write(false)?;
        if matches!(self.mode(), Refuse::RefusedMarks) {
            return Err(self.refused(false));
        }
        self.inner.mark_oauth2_refused(channel, generation).await
    }
}
