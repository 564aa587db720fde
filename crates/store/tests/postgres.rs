//! The PostgreSQL store against a real server: the same contract as the
//! embedded store, and migrations that hold when replicas start together.
//!
//! Needs PostgreSQL at `postgres://postgres@127.0.0.1:5432/test` (trust
//! auth; `.ci/run` starts it), or the URL in `XBRIDGE_TEST_POSTGRES_URL`.
//! Each test works in a fresh schema of its own, dropped at the end.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio_postgres::NoTls;
use xbridge_store::contract;
use xbridge_store::{PostgresStore, StateStore};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url() -> String {
    std::env::var("XBRIDGE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A direct connection for what the store does not expose: counting
/// migrations, dropping the test's schema.
async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable (set XBRIDGE_TEST_POSTGRES_URL?): {e}")
        });
    tokio::spawn(connection);
    client
}

/// Runs `test` with a fresh schema name and drops that schema afterwards,
/// also when the test panics.
async fn in_fresh_schema<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let outcome = AssertUnwindSafe(test(schema.clone())).catch_unwind().await;
    admin()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("the test schema is dropped");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn applied_migrations(schema: &str) -> Vec<i32> {
    admin()
        .await
        .query(
            &format!("SELECT version FROM \"{schema}\".xbridge_schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .expect("the migrations table exists")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn the_postgres_store_keeps_the_contract() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema))
            .await
            .expect("connects and migrates");
        assert_eq!(store.schema(), schema);
        contract::run_all(&store).await;
    })
    .await;
}

#[tokio::test]
async fn reconnecting_applies_no_migration_twice_and_keeps_the_data() {
    in_fresh_schema(|schema| async move {
        let first = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        let record = contract::sample_record();
        first.record_sent("acme", "m1", &record).await.unwrap();
        first.set_poll_cursor("acme", "42").await.unwrap();
        drop(first);
        let migrations = applied_migrations(&schema).await;
        assert!(!migrations.is_empty());

        let second = PostgresStore::connect(&url(), Some(&schema))
            .await
            .expect("a second start finds the schema migrated");
        assert_eq!(applied_migrations(&schema).await, migrations);
        assert_eq!(
            second.sent("acme", "m1").await.unwrap(),
            Some(record.clone())
        );
        assert!(second
            .is_own_send("acme", &record.dm_event_id)
            .await
            .unwrap());
        assert_eq!(
            second.poll_cursor("acme").await.unwrap().as_deref(),
            Some("42")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_safely() {
    in_fresh_schema(|schema| async move {
        let url = url();
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                let schema = schema.clone();
                tokio::spawn(async move { PostgresStore::connect(&url, Some(&schema)).await })
            })
            .collect();
        let mut stores = Vec::new();
        for start in starts {
            stores.push(start.await.unwrap().expect("every replica starts"));
        }
        assert_eq!(applied_migrations(&schema).await, [1]);
        // They share the state: one replica's send is the other's own send.
        let record = contract::sample_record();
        stores[0].record_sent("acme", "m1", &record).await.unwrap();
        assert!(stores[3]
            .is_own_send("acme", &record.dm_event_id)
            .await
            .unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_records_keep_exactly_one() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        let sends: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let record = xbridge_store::SentRecord {
                        dm_event_id: format!("17000000000000000{i:02}"),
                        ..contract::sample_record()
                    };
                    store.record_sent("race", "m", &record).await.unwrap();
                })
            })
            .collect();
        for send in sends {
            send.await.unwrap();
        }
        let winner = store.sent("race", "m").await.unwrap().unwrap();
        let mut own = 0;
        for i in 0..8 {
            if store
                .is_own_send("race", &format!("17000000000000000{i:02}"))
                .await
                .unwrap()
            {
                own += 1;
            }
        }
        assert_eq!(own, 1, "only the winning record's DM is an own send");
        assert!(store
            .is_own_send("race", &winner.dm_event_id)
            .await
            .unwrap());
    })
    .await;
}
