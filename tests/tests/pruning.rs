//! The pruning task the bridge runs beside its sides: it removes the records
//! older than the retention and keeps the others, and a prune that fails (a
//! store that cannot write) is tried again at the next interval instead of
//! ending the task.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use xbridge_store::{spawn_pruner, EmbeddedStore, SentRecord, StateStore};
use xbridge_test_support::{FailingStore, Refuse};

const RETENTION: Duration = Duration::from_secs(45 * 24 * 3600);

fn sent(id: &str, days_ago: i64) -> SentRecord {
    SentRecord {
        dm_event_id: format!("dm-{id}"),
        conversation_id: "1-2".into(),
        sent_at: Utc::now() - chrono::Duration::days(days_ago),
        reported: true,
        parts: Vec::new(),
    }
}

#[tokio::test]
async fn the_pruner_outlives_a_failed_prune_and_then_removes_only_what_the_retention_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
    let store = FailingStore::new(Arc::new(embedded));
    store
        .record_sent("acme", "old", &sent("old", 46))
        .await
        .unwrap();
    store
        .record_sent("acme", "recent", &sent("recent", 44))
        .await
        .unwrap();

    store.refuse(Refuse::Writes);
    let mut pruner = spawn_pruner(store.clone(), RETENTION, Duration::from_millis(5));
    // Refused twice: the first failure did not end the task.
    tokio::select! {
        () = store.wait_for_refused_prunes(2) => {}
        ended = &mut pruner => panic!("the pruner ended after a failed prune: {ended:?}"),
    }
    assert!(store.sent("acme", "old").await.unwrap().is_some());

    store.heal();
    store.wait_for_prunes(1).await;
    pruner.abort();
    assert_eq!(store.sent("acme", "old").await.unwrap(), None);
    assert!(!store.is_own_send("acme", "dm-old").await.unwrap());
    assert!(store.sent("acme", "recent").await.unwrap().is_some());
    assert!(store.is_own_send("acme", "dm-recent").await.unwrap());
}
