//! The PostgreSQL store against a real server: the same contract as the
//! embedded store, and migrations that hold when replicas start together.
//!
//! Needs PostgreSQL at `postgres://postgres@127.0.0.1:5432/test` (trust
//! auth; `.ci/run` starts it), or the URL in `XBRIDGE_TEST_POSTGRES_URL`.
//! Each test works in a fresh schema of its own, dropped at the end.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

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
        assert_eq!(applied_migrations(&schema).await, [1, 2, 3, 4, 5, 6]);
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

/// Makes every table of `schema` refuse writes the way a database out of disk
/// does (SQLSTATE 53100), or takes that back.
async fn refuse_writes(schema: &str, refuse: bool) {
    let tables = [
        "sent_replies",
        "sent_reply_parts",
        "send_intents",
        "channel_owners",
        "own_sends",
        "delivered_events",
        "poll_cursors",
        "channels",
        "xbridge_schema_migrations",
    ];
    let mut sql = format!(
        "CREATE OR REPLACE FUNCTION \"{schema}\".refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION USING ERRCODE = '53100', MESSAGE = 'could not extend file: No space left on device'; END $$;"
    );
    for table in tables {
        sql.push_str(&if refuse {
            format!(
                "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON \"{schema}\".{table}
                 FOR EACH STATEMENT EXECUTE FUNCTION \"{schema}\".refuse();"
            )
        } else {
            format!("DROP TRIGGER refuse ON \"{schema}\".{table};")
        });
    }
    admin()
        .await
        .batch_execute(&sql)
        .await
        .expect("triggers changed");
}

#[tokio::test]
async fn a_database_that_refuses_writes_is_reported_until_it_takes_them_again() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        let health = store.health();
        assert!(health.is_writable());

        refuse_writes(&schema, true).await;
        let error = store
            .record_delivered("acme", &["1".into()])
            .await
            .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(!health.is_writable());
        // Reads still work, and nothing was written.
        assert!(!store.is_delivered("acme", "1").await.unwrap());

        refuse_writes(&schema, false).await;
        // Nobody writes: the store's own probe notices.
        tokio::time::timeout(std::time::Duration::from_secs(30), health.wait_writable())
            .await
            .expect("the store notices the database takes writes again");
        store.record_delivered("acme", &["1".into()]).await.unwrap();
        assert!(store.is_delivered("acme", "1").await.unwrap());
    })
    .await;
}

/// A statement that waits for a lock another session holds (a `VACUUM FULL`,
/// an `ALTER TABLE`, a stuck migration) used to hang the store call forever,
/// with health still saying the store could write: every reply behind it
/// waited, silently.
#[tokio::test]
async fn a_write_stuck_behind_a_lock_fails_and_is_reported_instead_of_hanging() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        let health = store.health();
        let epoch = store.claim_channel("acme").await.unwrap();
        let (locker, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        locker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE \"{schema}\".send_intents IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();

        let error = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            store.record_send_intent("acme", "m-1", 0, chrono::Utc::now(), epoch),
        )
        .await
        .expect("the store call ends")
        .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(error.to_string().contains("statement timeout"), "{error}");
        assert!(!health.is_writable(), "the store says it cannot write");

        locker.batch_execute("ROLLBACK").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), health.wait_writable())
            .await
            .expect("the store notices it can write again");
        store
            .record_send_intent("acme", "m-1", 0, chrono::Utc::now(), epoch)
            .await
            .unwrap();
        assert!(store.send_intent("acme", "m-1", 0).await.unwrap().is_some());
    })
    .await;
}

/// A replica started (or restarted) while the database refuses writes (a
/// standby, `default_transaction_read_only`) used to fail its start: the
/// migration step writes even when every migration is applied.
#[tokio::test]
async fn a_store_starts_on_a_database_that_refuses_writes_once_migrated() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        store.record_delivered("acme", &["1".into()]).await.unwrap();
        drop(store);

        let read_only = format!(
            "{}{}options=-c%20default_transaction_read_only%3Don",
            url(),
            if url().contains('?') { "&" } else { "?" }
        );
        let store = PostgresStore::connect(&read_only, Some(&schema))
            .await
            .expect("starts on a read-only database");
        assert!(store.is_delivered("acme", "1").await.unwrap());
        let error = store
            .record_delivered("acme", &["2".into()])
            .await
            .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(!store.health().is_writable());

        // A schema never migrated cannot be used read-only: that start fails.
        let fresh = format!("{schema}_new");
        let refused = PostgresStore::connect(&read_only, Some(&fresh)).await;
        assert!(refused.is_err(), "tables are needed");
    })
    .await;
}

/// What `pg_dump` would show: every column of every table of the schema, as
/// text, holds none of the credentials of the channels stored.
#[tokio::test]
async fn the_database_holds_no_credential_in_the_clear() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        for (n, name) in ["acme", "globex"].iter().enumerate() {
            store
                .put_channel(&contract::sample_channel(name, n as u64 + 1))
                .await
                .unwrap();
        }
        let admin = admin().await;
        let tables: Vec<String> = admin
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(tables.iter().any(|t| t == "channels"), "{tables:?}");
        let mut dump = String::new();
        for table in tables {
            // A row as text shows every column (bytea as hex); the raw
            // bytes of the sealed blobs are searched below.
            for row in admin
                .query(
                    &format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"),
                    &[],
                )
                .await
                .unwrap()
            {
                dump.push_str(row.get(0));
                dump.push('\n');
            }
        }
        let credentials: Vec<Vec<u8>> = admin
            .query(
                &format!("SELECT credentials FROM \"{schema}\".channels"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(dump.contains("acme"), "{dump}");
        for credential in contract::SAMPLE_CREDENTIALS {
            assert!(!dump.contains(credential), "{credential} in:\n{dump}");
            for blob in &credentials {
                assert!(!blob
                    .windows(credential.len())
                    .any(|w| w == credential.as_bytes()));
            }
        }
    })
    .await;
}

/// A row this version cannot read (an origin a newer version wrote) is named
/// as broken; the other channels still load.
#[tokio::test]
async fn a_channel_that_does_not_decode_does_not_hide_the_others() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        for name in ["good", "odd"] {
            store
                .put_channel(&contract::sample_channel(name, 1))
                .await
                .unwrap();
        }
        admin()
            .await
            .batch_execute(&format!(
                "UPDATE \"{schema}\".channels SET origin = 'from-a-newer-version' WHERE name = 'odd'"
            ))
            .await
            .unwrap();
        let list = store.channels().await.unwrap();
        let names: Vec<&str> = list.entries.iter().map(|e| e.name()).collect();
        assert_eq!(names, ["good"]);
        assert_eq!(list.broken.len(), 1, "{list:?}");
        assert_eq!(list.broken[0].name, "odd");
        assert!(list.broken[0].reason.contains("unknown origin"), "{list:?}");
    })
    .await;
}

/// A store from before the retention (migrations 1 to 3 only) upgrades in
/// place: its records stay, count from the upgrade (so a prune right after it
/// removes none of them, however old), and are pruned once the retention
/// has passed since.
#[tokio::test]
async fn records_from_before_the_retention_migration_count_from_the_upgrade() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        drop(store);
        // Back to what migration 3 left, with a reply recorded then.
        admin()
            .await
            .batch_execute(&format!(
                "SET search_path TO \"{schema}\";
                 DELETE FROM xbridge_schema_migrations WHERE version >= 4;
                 DROP TABLE replicas, channel_holders, oauth2_grants;
                 ALTER TABLE sent_replies DROP COLUMN recorded_at;
                 ALTER TABLE sent_reply_parts DROP COLUMN recorded_at;
                 ALTER TABLE own_sends DROP COLUMN recorded_at;
                 DROP INDEX send_intents_started_at, delivered_events_delivered_at;
                 INSERT INTO sent_replies (channel, message_id, record) VALUES
                     ('acme', 'before', '{{\"dm_event_id\":\"dm-before\",\"conversation_id\":\"1-2\",\"sent_at\":\"2025-01-01T00:00:00Z\",\"reported\":true}}');
                 INSERT INTO own_sends (channel, dm_event_id, message_id)
                     VALUES ('acme', 'dm-before', 'before');"
            ))
            .await
            .unwrap();
        assert_eq!(applied_migrations(&schema).await, [1, 2, 3]);

        let store = PostgresStore::connect(&url(), Some(&schema)).await.unwrap();
        assert_eq!(applied_migrations(&schema).await, [1, 2, 3, 4, 5, 6]);
        let kept = store.sent("acme", "before").await.unwrap().expect("kept");
        assert_eq!(kept.dm_event_id, "dm-before");
        let before_upgrade = chrono::Utc::now() - chrono::Duration::days(1);
        let pruned = store.prune(before_upgrade).await.unwrap();
        assert_eq!(pruned, xbridge_store::Pruned::default());
        assert!(store.is_own_send("acme", "dm-before").await.unwrap());

        let after_upgrade = chrono::Utc::now() + chrono::Duration::seconds(1);
        let pruned = store.prune(after_upgrade).await.unwrap();
        assert_eq!((pruned.sent_replies, pruned.own_sends), (1, 1));
        assert_eq!(store.sent("acme", "before").await.unwrap(), None);
        assert!(!store.is_own_send("acme", "dm-before").await.unwrap());
    })
    .await;
}

/// Fair sharing's rows: a channel held by a live replica is not taken by
/// another; it is once the holder lets it go, leaves, or its heartbeat
/// expires; and the expired holder's next heartbeat no longer lists it.
#[tokio::test]
async fn a_channel_is_held_by_one_live_replica_at_a_time() {
    in_fresh_schema(|schema| async move {
        let store = PostgresStore::connect(&url(), Some(&schema))
            .await
            .expect("connects and migrates");
        let long = Duration::from_secs(60);
        let a = store.heartbeat("a", long).await.unwrap();
        assert_eq!(a.replicas, ["a"]);
        assert!(store.hold_channel("acme", "a").await.unwrap());
        assert!(store.hold_channel("acme", "a").await.unwrap(), "kept");
        let b = store.heartbeat("b", long).await.unwrap();
        assert_eq!(b.replicas, ["a", "b"]);
        assert!(
            !store.hold_channel("acme", "b").await.unwrap(),
            "a holds it"
        );
        store.release_channel("acme", "a").await.unwrap();
        assert!(store.hold_channel("acme", "b").await.unwrap(), "let go");
        assert!(!store.hold_channel("acme", "a").await.unwrap(), "b's now");
        let listed = store.heartbeat("b", long).await.unwrap();
        assert_eq!(listed.held, Some(["acme".to_owned()].into()));

        // b's heartbeat expires: a takes the channel, and b learns it.
        store.heartbeat("b", Duration::ZERO).await.unwrap();
        assert!(store.hold_channel("acme", "a").await.unwrap(), "b expired");
        let b = store.heartbeat("b", long).await.unwrap();
        assert_eq!(b.held, Some(Default::default()));

        // a leaves: b takes it at once, and a is no longer live.
        store.leave("a").await.unwrap();
        assert!(store.hold_channel("acme", "b").await.unwrap(), "a left");
        assert_eq!(store.heartbeat("b", long).await.unwrap().replicas, ["b"]);
    })
    .await;
}
