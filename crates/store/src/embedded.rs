//! The default store: one redb file, crash-safe, no server.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{SentRecord, StateStore, StoreError};

/// Sent replies, keyed by `<channel>\0<message_id>`; values are JSON so the
/// record can grow fields without a migration.
const SENT: TableDefinition<&str, &[u8]> = TableDefinition::new("sent_replies");

/// A [`StateStore`] in a single redb file. One process at a time may open it
/// (redb locks the file), which is what a single bridge process needs.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
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
        txn.commit().map_err(err)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError(format!("store task failed: {e}")))?
    }
}

fn key(channel: &str, message_id: &str) -> String {
    format!("{channel}\0{message_id}")
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn read(db: &Database, key: &str) -> Result<Option<SentRecord>, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let table = txn.open_table(SENT).map_err(err)?;
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
        self.blocking(move |db| read(db, &key)).await
    }

    async fn record_sent(
        &self,
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        let key = key(channel, message_id);
        let value = serde_json::to_vec(record).map_err(err)?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(SENT).map_err(err)?;
                if table.get(key.as_str()).map_err(err)?.is_none() {
                    table.insert(key.as_str(), value.as_slice()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
        .await
    }

    async fn mark_reported(&self, channel: &str, message_id: &str) -> Result<(), StoreError> {
        let key = key(channel, message_id);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
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
            }
            txn.commit().map_err(err)
        })
        .await
    }
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
    async fn records_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.redb");
        let record = crate::contract::sample_record();
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.record_sent("acme", "m1", &record).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.sent("acme", "m1").await.unwrap(), Some(record));
    }
}
