//! The default store: one redb file, crash-safe, no server.
//!
//! Every write must be durable before the bridge acts on it, and a durable redb commit
//! costs a disk flush; redb also takes one write transaction at a time. So writes go
//! through one writer thread that commits whatever is waiting together (group commit):
//! under load one flush serves every reply and event in flight, and each caller still
//! hears back only once its own write is on disk. Reads run on their own snapshots.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::{SentRecord, StateStore, StoreError};

/// Sent replies, keyed by `<channel>\0<message_id>`; values are JSON so the
/// record can grow fields without a migration.
const SENT: TableDefinition<&str, &[u8]> = TableDefinition::new("sent_replies");
/// The DMs of replies sent in parts, keyed by `<channel>\0<part>\0<message_id>`;
/// values as in [`SENT`].
const SENT_PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("sent_reply_parts");
/// When the last send of a reply's part started (Unix milliseconds), keyed
/// like [`SENT_PARTS`].
const SEND_INTENTS: TableDefinition<&str, i64> = TableDefinition::new("send_intents");
/// X DM event ids of the bridge's own sends, keyed by `<channel>\0<dm_event_id>`;
/// the value is the CRM's message id.
const OWN_SENDS: TableDefinition<&str, &str> = TableDefinition::new("own_dm_events");
/// Inbound DM events that reached the CRM, keyed by `<channel>\0<event_id>`;
/// the value is when (Unix milliseconds), for pruning later.
const DELIVERED: TableDefinition<&str, u64> = TableDefinition::new("delivered_events");
/// Each channel's poll cursor: the newest delivered DM event id.
const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("poll_cursors");

/// A [`StateStore`] in a single redb file. One process at a time may open it
/// (redb locks the file), which is what a single bridge process needs.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
}

/// The most writes one commit takes, so a flood of writes still reaches disk, and
/// its callers hear back, in steady steps.
const MAX_BATCH: usize = 512;

/// One write, applied inside a transaction it may share with others. `Fn`, not
/// `FnOnce`: when a shared transaction fails, each of its writes is tried again
/// alone, so a bad write fails only its own caller.
type Write = Box<dyn Fn(&WriteTransaction) -> Result<(), StoreError> + Send>;

/// A write waiting for the writer thread, and where to say how it went.
struct PendingWrite {
    write: Write,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The writer thread and its queue. Dropping the last store handle closes the
/// queue and waits for the thread, so the file is released when the store is
/// gone (a restart in the same process can open it again at once).
struct Writer {
    queue: Option<mpsc::UnboundedSender<PendingWrite>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Commits what is waiting, in batches, until every store handle is gone.
fn write_loop(db: Arc<Database>, mut queue: mpsc::UnboundedReceiver<PendingWrite>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match commit(&db, batch.iter().map(|pending| &pending.write)) {
            Ok(()) => {
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Ok(()));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(pending) = batch.pop() {
                    let _ = pending.done.send(Err(error));
                }
            }
            Err(error) => {
                tracing::debug!(%error, writes = batch.len(), "shared commit failed: committing each write alone");
                for pending in batch.drain(..) {
                    let result = commit(&db, std::iter::once(&pending.write));
                    let _ = pending.done.send(result);
                }
            }
        }
    }
}

/// Applies `writes` in one transaction and makes it durable; all or nothing.
fn commit<'a>(db: &Database, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(err)?;
    for write in writes {
        // Dropping the transaction on an error aborts it.
        write(&txn)?;
    }
    txn.commit().map_err(err)
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file and its parent folder if
    /// needed.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", parent.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SENT).map_err(err)?;
        txn.open_table(SENT_PARTS).map_err(err)?;
        txn.open_table(SEND_INTENTS).map_err(err)?;
        txn.open_table(OWN_SENDS).map_err(err)?;
        txn.open_table(DELIVERED).map_err(err)?;
        txn.open_table(CURSORS).map_err(err)?;
        txn.commit().map_err(err)?;
        let db = Arc::new(db);
        let (queue, pending) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("xbridge-store-writer".into())
            .spawn({
                let db = db.clone();
                move || write_loop(db, pending)
            })
            .map_err(|e| StoreError(format!("cannot start the store's writer: {e}")))?;
        let writer = Arc::new(Writer {
            queue: Some(queue),
            thread: Some(thread),
        });
        Ok(EmbeddedStore { db, writer })
    }

    /// Applies `write` durably, in a commit it may share with other writes
    /// waiting at the same time.
    async fn write(
        &self,
        write: impl Fn(&WriteTransaction) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        let stopped = || StoreError("the store's writer stopped".into());
        self.writer
            .queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(PendingWrite {
                write: Box::new(write),
                done,
            })
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Runs a read on the calling thread. A read transaction never waits for
    /// the writer (it sees the last commit), and a lookup of a few pages, mostly
    /// in redb's cache, costs less than handing it to a blocking thread and back
    /// (which, once per lookup, was a visible part of the bridge's CPU time).
    fn read_now<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        work(&self.db)
    }
}

impl EmbeddedStore {
    /// Inserts `record` at `key` in `table` unless a record is there (the
    /// first send wins), and indexes its DMs as own sends, in one write.
    async fn insert_first(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        let own_keys: Vec<String> = record
            .dm_event_ids()
            .iter()
            .map(|id| self::key(channel, id))
            .collect();
        let message_id = message_id.to_owned();
        let value = serde_json::to_vec(record).map_err(err)?;
        self.write(move |txn| {
            let mut table = txn.open_table(table).map_err(err)?;
            if table.get(key.as_str()).map_err(err)?.is_none() {
                table.insert(key.as_str(), value.as_slice()).map_err(err)?;
                let mut own = txn.open_table(OWN_SENDS).map_err(err)?;
                for own_key in &own_keys {
                    own.insert(own_key.as_str(), message_id.as_str())
                        .map_err(err)?;
                }
            }
            Ok(())
        })
        .await
    }
}

fn key(channel: &str, message_id: &str) -> String {
    format!("{channel}\0{message_id}")
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn part_key(channel: &str, message_id: &str, part: usize) -> String {
    format!("{channel}\0{part}\0{message_id}")
}

fn read(
    db: &Database,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<SentRecord>, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let table = txn.open_table(table).map_err(err)?;
    let Some(value) = table.get(key).map_err(err)? else {
        return Ok(None);
    };
    serde_json::from_slice(value.value()).map(Some).map_err(err)
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn sent(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        let key = key(channel, message_id);
        self.read_now(|db| read(db, SENT, &key))
    }

    async fn record_sent(
        &self,
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        let key = key(channel, message_id);
        self.insert_first(SENT, key, channel, message_id, record)
            .await
    }

    async fn sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<SentRecord>, StoreError> {
        let key = part_key(channel, message_id, part);
        self.read_now(|db| read(db, SENT_PARTS, &key))
    }

    async fn record_sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        let key = part_key(channel, message_id, part);
        self.insert_first(SENT_PARTS, key, channel, message_id, record)
            .await
    }

    async fn record_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        started_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = part_key(channel, message_id, part);
        let millis = started_at.timestamp_millis();
        self.write(move |txn| {
            let mut table = txn.open_table(SEND_INTENTS).map_err(err)?;
            table.insert(key.as_str(), millis).map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn clear_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<(), StoreError> {
        let key = part_key(channel, message_id, part);
        self.write(move |txn| {
            let mut table = txn.open_table(SEND_INTENTS).map_err(err)?;
            table.remove(key.as_str()).map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let key = part_key(channel, message_id, part);
        self.read_now(|db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(SEND_INTENTS).map_err(err)?;
            let millis = table.get(key.as_str()).map_err(err)?.map(|v| v.value());
            Ok(millis.and_then(DateTime::<Utc>::from_timestamp_millis))
        })
    }

    async fn mark_reported(&self, channel: &str, message_id: &str) -> Result<(), StoreError> {
        let key = key(channel, message_id);
        self.write(move |txn| {
            let mut table = txn.open_table(SENT).map_err(err)?;
            let existing = table
                .get(key.as_str())
                .map_err(err)?
                .map(|v| v.value().to_vec());
            if let Some(bytes) = existing {
                let mut record: SentRecord = serde_json::from_slice(&bytes).map_err(err)?;
                record.reported = true;
                let value = serde_json::to_vec(&record).map_err(err)?;
                table.insert(key.as_str(), value.as_slice()).map_err(err)?;
            }
            Ok(())
        })
        .await
    }

    async fn is_own_send(&self, channel: &str, dm_event_id: &str) -> Result<bool, StoreError> {
        let key = key(channel, dm_event_id);
        self.read_now(|db| contains(db, OWN_SENDS, &key))
    }

    async fn is_delivered(&self, channel: &str, event_id: &str) -> Result<bool, StoreError> {
        let key = key(channel, event_id);
        self.read_now(|db| contains(db, DELIVERED, &key))
    }

    async fn record_delivered(
        &self,
        channel: &str,
        event_ids: &[String],
    ) -> Result<(), StoreError> {
        let keys: Vec<String> = event_ids.iter().map(|id| key(channel, id)).collect();
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        self.write(move |txn| {
            let mut table = txn.open_table(DELIVERED).map_err(err)?;
            for key in &keys {
                table.insert(key.as_str(), now).map_err(err)?;
            }
            Ok(())
        })
        .await
    }

    async fn poll_cursor(&self, channel: &str) -> Result<Option<String>, StoreError> {
        let channel = channel.to_owned();
        self.read_now(|db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(CURSORS).map_err(err)?;
            Ok(table
                .get(channel.as_str())
                .map_err(err)?
                .map(|v| v.value().to_owned()))
        })
    }

    async fn set_poll_cursor(&self, channel: &str, event_id: &str) -> Result<(), StoreError> {
        let channel = channel.to_owned();
        let event_id = event_id.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(CURSORS).map_err(err)?;
            table
                .insert(channel.as_str(), event_id.as_str())
                .map_err(err)?;
            Ok(())
        })
        .await
    }
}

fn contains<V: redb::Value + 'static>(
    db: &Database,
    table: TableDefinition<&'static str, V>,
    key: &str,
) -> Result<bool, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let table = txn.open_table(table).map_err(err)?;
    Ok(table.get(key).map_err(err)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
        crate::contract::run_all(&store).await;
    }

    #[tokio::test]
    async fn a_bad_write_in_a_shared_commit_fails_only_its_own_caller() {
        use std::sync::{Condvar, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();

        // Holds the writer busy until the three writes below are queued, so
        // they share one commit.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let blocker = store.write({
            let gate = gate.clone();
            move |_| {
                let (open, opened) = &*gate;
                let _open = opened
                    .wait_while(open.lock().unwrap(), |open| !*open)
                    .unwrap();
                Ok(())
            }
        });
        let cursor = |channel: &'static str| {
            move |txn: &WriteTransaction| {
                let mut table = txn.open_table(CURSORS).map_err(err)?;
                table.insert(channel, "7").map_err(err)?;
                Ok(())
            }
        };
        let mut blocker = std::pin::pin!(blocker);
        let mut first = std::pin::pin!(store.write(cursor("first")));
        let mut bad = std::pin::pin!(store.write(|_| Err(StoreError("refused".into()))));
        let mut last = std::pin::pin!(store.write(cursor("last")));
        assert!(futures::poll!(blocker.as_mut()).is_pending());
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(bad.as_mut()).is_pending());
        assert!(futures::poll!(last.as_mut()).is_pending());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();

        blocker.await.unwrap();
        first.await.unwrap();
        assert_eq!(bad.await.unwrap_err().0, "refused");
        last.await.unwrap();
        assert_eq!(
            store.poll_cursor("first").await.unwrap().as_deref(),
            Some("7")
        );
        assert_eq!(
            store.poll_cursor("last").await.unwrap().as_deref(),
            Some("7")
        );
    }

    #[tokio::test]
    async fn concurrent_writes_each_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let writes = (0..200).map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .record_delivered("acme", &[n.to_string()])
                        .await
                        .unwrap()
                })
            });
            for write in futures::future::join_all(writes).await {
                write.unwrap();
            }
        }
        // Dropping the store released the file.
        let store = EmbeddedStore::open(&path).unwrap();
        for n in 0..200 {
            assert!(store.is_delivered("acme", &n.to_string()).await.unwrap());
        }
    }

    #[tokio::test]
    async fn records_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.redb");
        let record = crate::contract::sample_record();
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.record_sent("acme", "m1", &record).await.unwrap();
            store
                .record_delivered("acme", &["42".into()])
                .await
                .unwrap();
            store.set_poll_cursor("acme", "42").await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(store
            .is_own_send("acme", &record.dm_event_id)
            .await
            .unwrap());
        assert_eq!(store.sent("acme", "m1").await.unwrap(), Some(record));
        assert!(store.is_delivered("acme", "42").await.unwrap());
        assert_eq!(
            store.poll_cursor("acme").await.unwrap().as_deref(),
            Some("42")
        );
    }
}
