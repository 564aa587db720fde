//! The shared store: PostgreSQL, for several bridge replicas on one RabbitMQ.
//!
//! Replicas that consume the same queues must agree on which replies were
//! sent and which DM events were delivered, so that a redelivery landing on
//! another replica is still recognised. The tables mirror the embedded
//! store's; "the first record wins" is `INSERT … ON CONFLICT DO NOTHING`, and
//! a record's own-send index rows are written in the same transaction only
//! when the record itself was.
//!
//! Connections are plain TCP unless `state.tls` asks for TLS
//! ([`PostgresTls`]): `verify-full` checks the server's certificate against
//! the operator's CA file and host name.
//!
//! Records older than the retention are pruned ([`StateStore::prune`]) in
//! bounded `DELETE`s of at most [`PRUNE_BATCH`] rows, each its own short
//! statement, so replies and webhook events recorded meanwhile wait for no
//! more than one batch's row locks.
//!
//! A database that refuses writes (read-only, out of disk, unreachable) makes
//! each write fail with [`StoreError::Unavailable`] and marks the store's
//! [`StoreHealth`] unwritable; a probe write then checks with backoff until the
//! database takes writes again, like the embedded store's reopening.

use std::error::Error as StdError;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::oauth2_grant::{GrantBase, GrantWrite, OAuth2GrantRow, SealedGrant};
use crate::postgres_tls::PostgresTls;
use crate::registry::{
    revision_as_i64, Applied, ChannelEntry, ChannelList, ChannelOrigin, ChannelRecord,
    ChannelTombstone,
};
use crate::sealed::SealedCredentials;
use crate::{Heartbeat, Pruned, SentRecord, StateStore, StoreError, StoreHealth};

/// Connections in the pool: every channel's outbound worker and inbound
/// poller touches the store once or twice per message, each for a few
/// milliseconds, so a handful of connections serve a replica; more would only
/// use up the database's connection limit when many replicas run.
const POOL_SIZE: usize = 8;

/// How long to wait for a TCP connection, a free pooled connection or a new
/// one, so a database outage turns into a [`StoreError`] (and a retry) rather
/// than a hung worker.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long the database may take over one statement (`statement_timeout`,
/// unless the URL's `options` set one): the store's statements touch a row or
/// two, so one still running after this is waiting for something that may
/// never come: a lock another session holds (a `VACUUM FULL`, an `ALTER
/// TABLE`), a synchronous standby that is gone. Ended, it is an error like any
/// refused write, so the store says it cannot write and probes until it can,
/// instead of hanging every reply and webhook behind it, with health still
/// saying all is well.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one operation of the store may take all told, waiting for a
/// connection included. Beyond the database's own statement timeout, this
/// bounds what the database cannot end: an answer lost on a network path that
/// went silent (no reset, so the connection looks open). Longer than
/// [`TIMEOUT`] and [`STATEMENT_TIMEOUT`], so those, which say more, come first.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// The first pause before probing a database that refused a write; it doubles
/// up to [`PROBE_MAX_DELAY`].
const PROBE_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between probes: a database that takes writes again is
/// noticed within this.
const PROBE_MAX_DELAY: Duration = Duration::from_secs(5);

/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "public";

/// Numbered migrations, applied in order, each once per schema. A released
/// migration is never edited; a change is a new entry.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
    CREATE TABLE sent_replies (
        channel     text    NOT NULL,
        message_id  text    NOT NULL,
        record      jsonb   NOT NULL,
        reported    boolean NOT NULL DEFAULT false,
        PRIMARY KEY (channel, message_id)
    );
    CREATE TABLE sent_reply_parts (
        channel     text    NOT NULL,
        message_id  text    NOT NULL,
        part        integer NOT NULL,
        record      jsonb   NOT NULL,
        PRIMARY KEY (channel, message_id, part)
    );
    CREATE TABLE send_intents (
        channel     text        NOT NULL,
        message_id  text        NOT NULL,
        part        integer     NOT NULL,
        started_at  timestamptz NOT NULL,
        PRIMARY KEY (channel, message_id, part)
    );
    CREATE TABLE own_sends (
        channel     text NOT NULL,
        dm_event_id text NOT NULL,
        message_id  text NOT NULL,
        PRIMARY KEY (channel, dm_event_id)
    );
    CREATE TABLE delivered_events (
        channel      text        NOT NULL,
        event_id     text        NOT NULL,
        delivered_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (channel, event_id)
    );
    CREATE TABLE poll_cursors (
        channel  text PRIMARY KEY,
        event_id text NOT NULL
    );
    ",
    ),
    (
        2,
        // The channel registry (`registry.rs`): a removed channel keeps its
        // row as a tombstone (`removed`, no settings or credentials), so its
        // revision still outranks older writes. Credentials are sealed. One
        // row of `registry_key_check` records the key they are sealed with
        // (`key_check.rs`).
        "
    CREATE TABLE channels (
        name        text        PRIMARY KEY,
        revision    bigint      NOT NULL,
        removed     boolean     NOT NULL,
        origin      text,
        settings    text,
        credentials bytea,
        paused      boolean     NOT NULL DEFAULT false,
        updated_at  timestamptz NOT NULL,
        CHECK (removed OR (origin IS NOT NULL AND settings IS NOT NULL AND credentials IS NOT NULL))
    );
    CREATE TABLE registry_key_check (
        id     boolean PRIMARY KEY DEFAULT true CHECK (id),
        sealed bytea   NOT NULL
    );
    ",
    ),
    (
        3,
        // Each channel's owner epoch (`StateStore::claim_channel`): a send
        // intent is written only by the consumer holding the current one.
        "
    CREATE TABLE channel_owners (
        channel text   PRIMARY KEY,
        epoch   bigint NOT NULL
    );
    ",
    ),
    (
        4,
        // The retention (`StateStore::prune`): when each sent record and own
        // send was made, so old ones can be found; rows there before this
        // migration count from it (kept a whole retention longer, never
        // pruned early). An index per pruned table's time, so each bounded
        // DELETE finds its rows without reading the whole table. (Version 3
        // is the fencing table's.)
        "
    ALTER TABLE sent_replies ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
    ALTER TABLE sent_reply_parts ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
    ALTER TABLE own_sends ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
    CREATE INDEX sent_replies_recorded_at ON sent_replies (recorded_at);
    CREATE INDEX sent_reply_parts_recorded_at ON sent_reply_parts (recorded_at);
    CREATE INDEX own_sends_recorded_at ON own_sends (recorded_at);
    CREATE INDEX send_intents_started_at ON send_intents (started_at);
    CREATE INDEX delivered_events_delivered_at ON delivered_events (delivered_at);
    ",
    ),
    (
        5,
        // Fair sharing (`StateStore::heartbeat`): each live replica's row,
        // kept alive by its heartbeat, and which replica holds each channel.
        // A hold whose replica is no longer live may be taken by another.
        "
    CREATE TABLE replicas (
        id         text        PRIMARY KEY,
        expires_at timestamptz NOT NULL
    );
    CREATE TABLE channel_holders (
        channel text        PRIMARY KEY,
        replica text        NOT NULL,
        since   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX channel_holders_replica ON channel_holders (replica);
    ",
    ),
    (
        6,
        // OAuth 2.0 channels (`StateStore::store_oauth2_grant`, docs/design-oauth2.md):
        // each channel's grant, sealed, the generation every write compares and moves
        // on, the refused mark and the refresh lease. A row may hold a lease before any
        // grant (a channel refreshing its configured refresh token the first time).
        "
    CREATE TABLE oauth2_grants (
        channel          text        PRIMARY KEY,
        generation       bigint      NOT NULL DEFAULT 0,
        sealed           bytea,
        expires_at       timestamptz,
        refused          boolean     NOT NULL DEFAULT false,
        refreshing_by    text,
        refreshing_until timestamptz
    );
    ",
    ),
];

/// The most rows one `DELETE` of a prune removes: each is a statement of its
/// own, so the row locks it takes (and the WAL it writes) stay small and
/// replies recorded meanwhile never wait long behind it.
pub const PRUNE_BATCH: i64 = 1000;

/// The tables a prune removes old rows from, each with the column saying when
/// a row was made, in the order of [`Pruned`]'s fields.
const PRUNED_TABLES: [(&str, &str); 5] = [
    ("sent_replies", "recorded_at"),
    ("sent_reply_parts", "recorded_at"),
    ("send_intents", "started_at"),
    ("own_sends", "recorded_at"),
    ("delivered_events", "delivered_at"),
];

/// A [`StateStore`] in a PostgreSQL schema, shared by every replica that
/// connects to it. Cloning shares the connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    schema: String,
    health: StoreHealth,
    /// Whether a probe is running (one at a time).
    probing: Arc<AtomicBool>,
    /// The next pause between probes, in milliseconds: short again only once
    /// a real write succeeds, so a database that takes the probe but not the
    /// writes is not probed in a tight loop.
    probe_delay_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's configuration holds the password: show only the schema.
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a libpq URL or key/value string),
    /// keeps the state in `schema` ([`DEFAULT_SCHEMA`] when `None`; created
    /// if missing) and applies any migration not applied yet, so a replica
    /// never runs against tables older than its code. Replicas starting at
    /// once are safe: migrations run under a transaction-scoped advisory
    /// lock. Errors never contain the URL's password. Plain TCP, no TLS:
    /// [`PostgresStore::connect_with`] takes a [`PostgresTls`].
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, schema, &PostgresTls::Disable).await
    }

    /// [`PostgresStore::connect`], its connections secured as `tls` says.
    /// The URL must not set `sslmode`: `tls` decides, so the two cannot
    /// disagree.
    pub async fn connect_with(
        url: &str,
        schema: Option<&str>,
        tls: &PostgresTls,
    ) -> Result<PostgresStore, StoreError> {
        let schema = schema.unwrap_or(DEFAULT_SCHEMA);
        if !is_valid_schema_name(schema) {
            return Err(StoreError::Failed(format!(
                "schema {schema:?} must be 1 to 63 of a-z, 0-9 and _, starting with a letter or _"
            )));
        }
        if url_sets_sslmode(url) {
            return Err(StoreError::Failed(
                "the PostgreSQL URL sets sslmode: remove it and set state.tls instead".into(),
            ));
        }
        let mut config = session_config(url, schema)?;
        config.ssl_mode(tls.ssl_mode());
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        // The URL as written (its password percent-encoded) and the password
        // as the driver decoded it.
        let redact = |message: String| {
            let message = message.replace(url, "<postgres url>");
            match password.as_deref() {
                Some(p) if !p.is_empty() => message.replace(p, "***"),
                _ => message,
            }
        };
        let store = PostgresStore {
            pool: pool(config, tls)?,
            schema: schema.to_owned(),
            health: StoreHealth::new(),
            probing: Arc::default(),
            probe_delay_ms: Arc::new(AtomicU64::new(first_probe_delay_ms())),
        };
        bounded("cannot migrate the schema", store.migrate())
            .await
            .map_err(|error| match error {
                StoreError::Unavailable(message) => StoreError::Unavailable(redact(message)),
                StoreError::Failed(message) => StoreError::Failed(redact(message)),
                fenced @ StoreError::Fenced { .. } => fenced,
            })?;
        Ok(store)
    }

    /// The schema the state lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Tells the store's health how a write went; after a write the database
    /// refused, probes it until it takes writes again.
    fn written(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        match &result {
            Ok(()) => {
                self.health.write_succeeded();
                self.probe_delay_ms
                    .store(first_probe_delay_ms(), Ordering::SeqCst);
            }
            Err(error) => {
                self.health.write_failed(error);
                if error.is_unavailable() && !self.probing.swap(true, Ordering::SeqCst) {
                    tokio::spawn(self.clone().probe_until_writable());
                }
            }
        }
        result
    }

    /// Tries a write with backoff until one commits (or another write did).
    /// The write changes nothing: it rewrites the first migration's row, which
    /// still needs what any write needs (a writable database, room for its
    /// WAL record).
    async fn probe_until_writable(self) {
        loop {
            while !self.health.is_writable() {
                let delay = Duration::from_millis(self.probe_delay_ms.load(Ordering::SeqCst));
                tokio::time::sleep(delay).await;
                let next = (delay * 2).min(PROBE_MAX_DELAY);
                self.probe_delay_ms
                    .store(next.as_millis() as u64, Ordering::SeqCst);
                let probe = async {
                    self.client()
                        .await?
                        .execute(
                            "UPDATE xbridge_schema_migrations SET applied_at = applied_at
                             WHERE version = 1",
                            &[],
                        )
                        .await
                        .map_err(|e| fail("the probe write failed", &e))
                };
                match bounded("the probe write failed", probe).await {
                    Ok(_) => self.health.write_succeeded(),
                    Err(error) => {
                        tracing::debug!(%error, retry_in_ms = next.as_millis() as u64, "the state database does not take writes yet");
                    }
                }
            }
            self.probing.store(false, Ordering::SeqCst);
            // A write that failed just before the flag was cleared started no
            // probe: carry on for it.
            if self.health.is_writable() || self.probing.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// The row `sql` finds, if any, within [`OPERATION_TIMEOUT`]; an error
    /// says `what` could not be done.
    async fn read_row(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        bounded(what, async {
            self.client()
                .await?
                .query_opt(sql, params)
                .await
                .map_err(|e| fail(what, &e))
        })
        .await
    }

    /// One write statement within [`OPERATION_TIMEOUT`], its outcome told
    /// to the store's health ([`PostgresStore::written`]).
    async fn write(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let result = bounded(what, async {
            self.client()
                .await?
                .execute(sql, params)
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(())
        })
        .await;
        self.written(result)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| fail("cannot get a PostgreSQL connection", &e))
    }

    /// Creates the schema and the migrations table if missing and applies
    /// every migration that is not recorded yet, all in one transaction
    /// under an advisory lock keyed by the schema, so a second replica
    /// waits and then finds the work done.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        if self.up_to_date(&client).await? {
            return Ok(());
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| fail("cannot start the migration", &e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('xbridge_schema_migrations:' || $1))",
            &[&self.schema],
        )
        .await
        .map_err(|e| fail("cannot take the migration lock", &e))?;
        self.create_schema(&tx).await?;
        self.apply_missing(&tx).await?;
        let committed = tx.commit().await;
        committed.map_err(|e| fail("cannot commit the migrations", &e))
    }

    /// Whether every migration is applied already, found by reading only:
    /// a schema whose migrations are all applied needs no write, so a
    /// replica (re)started while the database refuses writes (a standby,
    /// `default_transaction_read_only`, a full disk) still starts, reads
    /// what it can and reports the store unwritable, instead of failing its
    /// start on `CREATE TABLE IF NOT EXISTS`.
    async fn up_to_date(&self, client: &deadpool_postgres::Client) -> Result<bool, StoreError> {
        let applied = client
            .query("SELECT version FROM xbridge_schema_migrations", &[])
            .await;
        let Ok(rows) = applied else {
            return Ok(false);
        };
        let applied: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
        self.check_not_newer(&applied)?;
        Ok(MIGRATIONS.iter().all(|(v, _)| applied.contains(v)))
    }

    /// The schema, if missing, and its migrations table.
    async fn create_schema(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        // Checked rather than `CREATE SCHEMA IF NOT EXISTS`, which needs the
        // right to create schemas even when the schema exists.
        let exists = tx
            .query_opt(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                &[&self.schema],
            )
            .await
            .map_err(|e| fail("cannot look up the schema", &e))?
            .is_some();
        if !exists {
            // The name was checked to be a plain identifier.
            tx.batch_execute(&format!("CREATE SCHEMA \"{}\"", self.schema))
                .await
                .map_err(|e| fail(&format!("cannot create schema {}", self.schema), &e))?;
        }
        tx.batch_execute(&format!(
            "SET LOCAL search_path TO \"{}\";
             CREATE TABLE IF NOT EXISTS xbridge_schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
            self.schema
        ))
        .await
        .map_err(|e| fail("cannot create the migrations table", &e))
    }

    /// Each migration not recorded yet, applied and recorded, in order.
    async fn apply_missing(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let applied: Vec<i32> = tx
            .query("SELECT version FROM xbridge_schema_migrations", &[])
            .await
            .map_err(|e| fail("cannot read the applied migrations", &e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        self.check_not_newer(&applied)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql)
                .await
                .map_err(|e| fail(&format!("migration {version} failed"), &e))?;
            tx.execute(
                "INSERT INTO xbridge_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(|e| fail(&format!("cannot record migration {version}"), &e))?;
            tracing::info!(schema = %self.schema, version, "applied a state store migration");
        }
        Ok(())
    }

    /// Refuses a schema migrated by a newer xbridge.
    fn check_not_newer(&self, applied: &[i32]) -> Result<(), StoreError> {
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        match applied.iter().max() {
            Some(newest) if *newest > known => Err(StoreError::Failed(format!(
                "schema {} is at migration {newest}, newer than this xbridge knows ({known}): run a newer xbridge",
                self.schema
            ))),
            _ => Ok(()),
        }
    }

    /// Inserts `record` unless the row is there (the first send wins) and,
    /// only if it was inserted, indexes each of its DMs as an own send, in
    /// one transaction.
    async fn insert_first(
        &self,
        insert: &str,
        key: &[&(dyn ToSql + Sync)],
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        let result = bounded("cannot record the sent reply", async {
            let value = serde_json::to_value(record)
                .map_err(|e| StoreError::Failed(format!("cannot encode the sent record: {e}")))?;
            let mut params = key.to_vec();
            params.push(&value);
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| fail("cannot start a transaction", &e))?;
            let inserted = tx
                .execute(insert, &params)
                .await
                .map_err(|e| fail("cannot record the sent reply", &e))?;
            if inserted == 1 {
                tx.execute(
                    "INSERT INTO own_sends (channel, dm_event_id, message_id, recorded_at)
                     SELECT $1, id, $2, $4 FROM unnest($3::text[]) AS id
                     ON CONFLICT DO NOTHING",
                    &[
                        &channel,
                        &message_id,
                        &record.dm_event_ids(),
                        &record.sent_at,
                    ],
                )
                .await
                .map_err(|e| fail("cannot record the own sends", &e))?;
            }
            let committed = tx.commit().await;
            committed.map_err(|e| fail("cannot commit the sent reply", &e))
        })
        .await;
        self.written(result)
    }
}

impl PostgresStore {
    /// Runs `upsert` (an insert that updates only a lower revision) for
    /// channel `name`; when it changed nothing, reads which revision is there.
    async fn put_if_newer(
        &self,
        name: &str,
        revision: i64,
        upsert: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Applied, StoreError> {
        let result = bounded("cannot store a channel", async {
            let client = self.client().await?;
            let changed = client
                .execute(upsert, params)
                .await
                .map_err(|e| fail("cannot store a channel", &e))?;
            if changed == 1 {
                return Ok(Applied::Yes);
            }
            let current: i64 = client
                .query_one("SELECT revision FROM channels WHERE name = $1", &[&name])
                .await
                .map_err(|e| fail("cannot read a channel's revision", &e))?
                .get(0);
            debug_assert!(current >= revision);
            Ok(Applied::Stale {
                current: u64::try_from(current).unwrap_or(0),
            })
        })
        .await;
        let applied = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.written(applied)?;
        result
    }
}

/// The connection settings of `url`, with the schema as search path, the
/// statement timeout, and a connect timeout and application name unless the
/// URL sets them.
fn session_config(url: &str, schema: &str) -> Result<tokio_postgres::Config, StoreError> {
    // The parser's messages name the option that is wrong, never a value.
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Failed(format!("invalid PostgreSQL URL: {}", describe(&e))))?;
    // Unqualified table names in every query resolve to the schema.
    let options = session_options(config.get_options().unwrap_or_default(), schema);
    config.options(options);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("xbridge");
    }
    Ok(config)
}

/// A pool of at most [`POOL_SIZE`] connections, each waited for, created and
/// recycled within [`TIMEOUT`], secured as `tls` says.
fn pool(config: tokio_postgres::Config, tls: &PostgresTls) -> Result<Pool, StoreError> {
    let manager_config = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls.connector()? {
        Some(connector) => Manager::from_config(config, connector, manager_config()),
        None => Manager::from_config(config, NoTls, manager_config()),
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(TIMEOUT))
        .create_timeout(Some(TIMEOUT))
        .recycle_timeout(Some(TIMEOUT))
        .build()
        .map_err(|e| StoreError::Failed(format!("cannot create the PostgreSQL pool: {e}")))
}

/// The connection's `options`: the URL's own, the search path, and
/// [`STATEMENT_TIMEOUT`] unless the URL sets a statement timeout itself.
fn session_options(existing: &str, schema: &str) -> String {
    let mut options = existing.trim().to_owned();
    if !options.is_empty() {
        options.push(' ');
    }
    options.push_str(&format!("-c search_path={schema}"));
    if !existing.contains("statement_timeout") {
        options.push_str(&format!(
            " -c statement_timeout={}",
            STATEMENT_TIMEOUT.as_millis()
        ));
    }
    options
}

/// Whether the connection string sets `sslmode` (as a URL query parameter or
/// a key/value pair): the store's TLS comes from `state.tls` alone, and a URL
/// asking for another mode would be silently overridden.
/// Only the URL's query (after `?`, where a password cannot be: it would
/// have to be percent-encoded) or a key/value string's keys are looked at, so
/// a password that happens to hold the word is not mistaken for the option.
pub fn url_sets_sslmode(url: &str) -> bool {
    let is_sslmode = |key: &str| key.trim().eq_ignore_ascii_case("sslmode");
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let query = url.split_once('?').map_or("", |(_, query)| query);
        return query
            .split('&')
            .any(|pair| is_sslmode(pair.split('=').next().unwrap_or_default()));
    }
    url.split_whitespace()
        .any(|pair| pair.split_once('=').is_some_and(|(key, _)| is_sslmode(key)))
}

/// `operation`, or [`StoreError::Unavailable`] when it takes longer than
/// [`OPERATION_TIMEOUT`]. Dropping it mid-way is safe: a transaction not
/// committed is rolled back, and every write of the store may be made again.
async fn bounded<T>(
    what: &str,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "{what}: PostgreSQL did not answer within {} s",
                OPERATION_TIMEOUT.as_secs()
            )))
        })
}

fn first_probe_delay_ms() -> u64 {
    PROBE_FIRST_DELAY.as_millis() as u64
}

/// Whether `name` can be used unquoted-safe as a schema name: it is put in a
/// connection option and in DDL, so only plain lower-case identifiers, and
/// never a system schema (`pg_`). The configuration checks `state.schema`
/// with the same rule, so a bad name is refused before the bridge starts.
pub fn is_valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_")
}

/// `context` and the whole chain of causes: tokio-postgres shows only the
/// kind of error ("db error") and keeps the server's message in the source.
/// Unavailable when the database as a whole cannot take the operation.
fn fail(context: &str, e: &(dyn StdError + 'static)) -> StoreError {
    let message = format!("{context}: {}", describe(e));
    if is_unavailable(e) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Failed(message)
    }
}

/// Whether `e` says the database cannot take writes (or cannot be reached)
/// now, rather than that this one statement is wrong: no connection, a closed
/// or broken one, or SQLSTATE class 08 (connection), 53 (insufficient
/// resources: disk full, out of memory, too many connections), 57 (operator
/// intervention: shutdown, cannot connect now), 25006 (read-only
/// transaction: a standby, or `default_transaction_read_only`), 40001 and
/// 40P01 (serialization failure, deadlock: a retry succeeds).
fn is_unavailable(e: &(dyn StdError + 'static)) -> bool {
    if e.downcast_ref::<deadpool_postgres::PoolError>().is_some() {
        return true;
    }
    let Some(e) = e.downcast_ref::<tokio_postgres::Error>() else {
        return false;
    };
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57")
            || matches!(code, "25006" | "40001" | "40P01");
    }
    e.is_closed() || {
        let mut cause = e.source();
        while let Some(inner) = cause {
            if inner.is::<std::io::Error>() {
                return true;
            }
            cause = inner.source();
        }
        false
    }
}

fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

fn part_number(part: usize) -> Result<i32, StoreError> {
    i32::try_from(part).map_err(|_| StoreError::Failed(format!("part {part} is out of range")))
}

fn decode(value: serde_json::Value) -> Result<SentRecord, StoreError> {
    serde_json::from_value(value)
        .map_err(|e| StoreError::Failed(format!("cannot decode a sent record: {e}")))
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn sent(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        let row = self
            .read_row(
                "cannot read a sent reply",
                "SELECT record, reported FROM sent_replies WHERE channel = $1 AND message_id = $2",
                &[&channel, &message_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut record = decode(row.get(0))?;
        // The column is what `mark_reported` changes.
        record.reported = row.get(1);
        Ok(Some(record))
    }

    async fn record_sent(
        &self,
        channel: &str,
        message_id: &str,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        self.insert_first(
            "INSERT INTO sent_replies (channel, message_id, reported, recorded_at, record)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&channel, &message_id, &record.reported, &record.sent_at],
            channel,
            message_id,
            record,
        )
        .await
    }

    async fn sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<SentRecord>, StoreError> {
        let part = part_number(part)?;
        let row = self
            .read_row(
                "cannot read a sent part",
                "SELECT record FROM sent_reply_parts
                 WHERE channel = $1 AND message_id = $2 AND part = $3",
                &[&channel, &message_id, &part],
            )
            .await?;
        row.map(|row| decode(row.get(0))).transpose()
    }

    async fn record_sent_part(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        record: &SentRecord,
    ) -> Result<(), StoreError> {
        let part = part_number(part)?;
        self.insert_first(
            "INSERT INTO sent_reply_parts (channel, message_id, part, recorded_at, record)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&channel, &message_id, &part, &record.sent_at],
            channel,
            message_id,
            record,
        )
        .await
    }

    async fn claim_channel(&self, channel: &str) -> Result<u64, StoreError> {
        let what = "cannot claim a channel";
        let result = bounded(what, async {
            let row = self
                .client()
                .await?
                .query_one(
                    "INSERT INTO channel_owners (channel, epoch) VALUES ($1, 1)
                     ON CONFLICT (channel) DO UPDATE SET epoch = channel_owners.epoch + 1
                     RETURNING epoch",
                    &[&channel],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            let epoch: i64 = row.try_get(0).map_err(|e| fail(what, &e))?;
            u64::try_from(epoch)
                .map_err(|_| StoreError::Failed(format!("channel {channel} has epoch {epoch}")))
        })
        .await;
        self.written(result.as_ref().map(|_| ()).map_err(Clone::clone))?;
        result
    }

    async fn record_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        started_at: DateTime<Utc>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let part = match part_number(part) {
            Ok(part) => part,
            Err(error) => return self.written(Err(error)),
        };
        // An epoch beyond i64 was never handed out: it owns nothing.
        let held = i64::try_from(epoch).unwrap_or(-1);
        let what = "cannot record a send intent";
        // One statement: the owner row is read `FOR SHARE`, so a claim
        // running at the same time waits for this intent to commit (and then
        // sees it), or, committed first, leaves this statement reading its new
        // epoch (READ COMMITTED re-reads a row locked after the snapshot):
        // either way no intent of an earlier claim lands after a claim.
        let written = bounded(what, async {
            self.client()
                .await?
                .execute(
                    "INSERT INTO send_intents (channel, message_id, part, started_at)
                     SELECT $1, $2, $3, $4
                     FROM (SELECT epoch FROM channel_owners WHERE channel = $1 FOR SHARE) AS owner
                     WHERE owner.epoch = $5
                     ON CONFLICT (channel, message_id, part)
                     DO UPDATE SET started_at = EXCLUDED.started_at",
                    &[&channel, &message_id, &part, &started_at, &held],
                )
                .await
                .map_err(|e| fail(what, &e))
        })
        .await;
        let rows = written.as_ref().ok().copied();
        self.written(written.map(|_| ()))?;
        if rows == Some(0) {
            return Err(StoreError::Fenced {
                channel: channel.to_owned(),
                held: epoch,
            });
        }
        Ok(())
    }

    async fn clear_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<(), StoreError> {
        let part = match part_number(part) {
            Ok(part) => part,
            Err(error) => return self.written(Err(error)),
        };
        self.write(
            "cannot clear a send intent",
            "DELETE FROM send_intents
             WHERE channel = $1 AND message_id = $2 AND part = $3",
            &[&channel, &message_id, &part],
        )
        .await
    }

    async fn send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let part = part_number(part)?;
        let row = self
            .read_row(
                "cannot read a send intent",
                "SELECT started_at FROM send_intents
                 WHERE channel = $1 AND message_id = $2 AND part = $3",
                &[&channel, &message_id, &part],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn mark_reported(&self, channel: &str, message_id: &str) -> Result<(), StoreError> {
        self.write(
            "cannot mark a reply reported",
            "UPDATE sent_replies
                     SET reported = true, record = jsonb_set(record, '{reported}', 'true')
                     WHERE channel = $1 AND message_id = $2",
            &[&channel, &message_id],
        )
        .await
    }

    async fn is_own_send(&self, channel: &str, dm_event_id: &str) -> Result<bool, StoreError> {
        let row = self
            .read_row(
                "cannot look up an own send",
                "SELECT 1 FROM own_sends WHERE channel = $1 AND dm_event_id = $2",
                &[&channel, &dm_event_id],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn is_delivered(&self, channel: &str, event_id: &str) -> Result<bool, StoreError> {
        let row = self
            .read_row(
                "cannot look up a delivered event",
                "SELECT 1 FROM delivered_events WHERE channel = $1 AND event_id = $2",
                &[&channel, &event_id],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn record_delivered(
        &self,
        channel: &str,
        event_ids: &[String],
    ) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return self.written(Ok(()));
        }
        // One statement: all of the events are recorded or none.
        self.write(
            "cannot record delivered events",
            "INSERT INTO delivered_events (channel, event_id)
             SELECT $1, id FROM unnest($2::text[]) AS id
             ON CONFLICT DO NOTHING",
            &[&channel, &event_ids],
        )
        .await
    }

    async fn poll_cursor(&self, channel: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .read_row(
                "cannot read a poll cursor",
                "SELECT event_id FROM poll_cursors WHERE channel = $1",
                &[&channel],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn set_poll_cursor(&self, channel: &str, event_id: &str) -> Result<(), StoreError> {
        self.write(
            "cannot move a poll cursor",
            "INSERT INTO poll_cursors (channel, event_id) VALUES ($1, $2)
                     ON CONFLICT (channel) DO UPDATE SET event_id = EXCLUDED.event_id",
            &[&channel, &event_id],
        )
        .await
    }

    async fn put_channel(&self, record: &ChannelRecord) -> Result<Applied, StoreError> {
        let revision = revision_as_i64(record.revision)?;
        self.put_if_newer(
            &record.name,
            revision,
            "INSERT INTO channels
                 (name, revision, removed, origin, settings, credentials, paused, updated_at)
             VALUES ($1, $2, false, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET
                 revision = EXCLUDED.revision, removed = false, origin = EXCLUDED.origin,
                 settings = EXCLUDED.settings, credentials = EXCLUDED.credentials,
                 paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at
             WHERE channels.revision < EXCLUDED.revision",
            &[
                &record.name,
                &revision,
                &record.origin.as_str(),
                &record.settings,
                &record.credentials.as_bytes(),
                &record.paused,
                &record.updated_at,
            ],
        )
        .await
    }

    async fn channel(&self, name: &str) -> Result<Option<ChannelEntry>, StoreError> {
        let row = self
            .read_row(
                "cannot read a channel",
                &format!("{CHANNEL_COLUMNS} WHERE name = $1"),
                &[&name],
            )
            .await?;
        row.map(|row| channel_entry(&row)).transpose()
    }

    async fn channels(&self) -> Result<ChannelList, StoreError> {
        let sql = format!("{CHANNEL_COLUMNS} ORDER BY name");
        let rows = bounded("cannot list the channels", async {
            self.client()
                .await?
                .query(&sql, &[])
                .await
                .map_err(|e| fail("cannot list the channels", &e))
        })
        .await?;
        let mut list = ChannelList::default();
        for row in &rows {
            let name: String = row
                .try_get(0)
                .map_err(|e| fail("cannot list the channels", &e))?;
            list.push(&name, channel_entry(row));
        }
        Ok(list)
    }

    async fn keep_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.write(
            "cannot store the key-check record",
            "INSERT INTO registry_key_check (sealed) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&candidate],
        )
        .await?;
        let row = self
            .read_row(
                "cannot read the key-check record",
                "SELECT sealed FROM registry_key_check",
                &[],
            )
            .await?
            .ok_or_else(|| StoreError::Failed("the key-check record was not kept".into()))?;
        row.try_get(0)
            .map_err(|e| fail("cannot read the key-check record", &e))
    }

    async fn remove_channel(&self, tombstone: &ChannelTombstone) -> Result<Applied, StoreError> {
        let revision = revision_as_i64(tombstone.revision)?;
        self.put_if_newer(
            &tombstone.name,
            revision,
            "INSERT INTO channels (name, revision, removed, paused, updated_at)
             VALUES ($1, $2, true, false, $3)
             ON CONFLICT (name) DO UPDATE SET
                 revision = EXCLUDED.revision, removed = true, origin = NULL,
                 settings = NULL, credentials = NULL, paused = false,
                 updated_at = EXCLUDED.updated_at
             WHERE channels.revision < EXCLUDED.revision",
            &[&tombstone.name, &revision, &tombstone.removed_at],
        )
        .await
    }

    fn health(&self) -> StoreHealth {
        self.health.clone()
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<Pruned, StoreError> {
        let mut counts = [0u64; PRUNED_TABLES.len()];
        for ((table, column), count) in PRUNED_TABLES.iter().zip(&mut counts) {
            *count = self.prune_table(table, column, older_than).await?;
        }
        let [sent_replies, sent_reply_parts, send_intents, own_sends, delivered_events] = counts;
        Ok(Pruned {
            sent_replies,
            sent_reply_parts,
            send_intents,
            own_sends,
            delivered_events,
        })
    }

    // Membership is not told to the store's health, as a prune is not: the
    // hot path's own writes say whether the database takes writes.
    async fn heartbeat(
        &self,
        replica: &str,
        ttl: std::time::Duration,
    ) -> Result<Heartbeat, StoreError> {
        let what = "cannot renew this replica's heartbeat";
        bounded(what, async {
            let client = self.client().await?;
            // Rows of replicas gone for a day are dropped, with their holds,
            // so the tables stay as small as the replicas running.
            client
                .execute(
                    "INSERT INTO replicas (id, expires_at)
                     VALUES ($1, now() + make_interval(secs => $2))
                     ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                    &[&replica, &ttl.as_secs_f64()],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            client
                .execute(
                    "DELETE FROM replicas WHERE expires_at < now() - interval '1 day'",
                    &[],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            client
                .execute(
                    "DELETE FROM channel_holders h
                     WHERE NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = h.replica)",
                    &[],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            let replicas = client
                .query(
                    "SELECT id FROM replicas WHERE expires_at > now() ORDER BY id",
                    &[],
                )
                .await
                .map_err(|e| fail(what, &e))?
                .iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(what, &e))?;
            let held = client
                .query(
                    "SELECT channel FROM channel_holders WHERE replica = $1",
                    &[&replica],
                )
                .await
                .map_err(|e| fail(what, &e))?
                .iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<_, _>>()
                .map_err(|e| fail(what, &e))?;
            Ok(Heartbeat {
                replicas,
                held: Some(held),
            })
        })
        .await
    }

    async fn hold_channel(&self, channel: &str, replica: &str) -> Result<bool, StoreError> {
        let what = "cannot hold a channel";
        bounded(what, async {
            // One statement: taken when free, kept when already ours, taken
            // over only from a replica that is not live.
            let row = self
                .client()
                .await?
                .query_opt(
                    "INSERT INTO channel_holders (channel, replica) VALUES ($1, $2)
                     ON CONFLICT (channel) DO UPDATE
                        SET replica = EXCLUDED.replica, since = now()
                        WHERE channel_holders.replica = EXCLUDED.replica
                           OR NOT EXISTS (
                               SELECT 1 FROM replicas r
                               WHERE r.id = channel_holders.replica AND r.expires_at > now())
                     RETURNING replica",
                    &[&channel, &replica],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(row.is_some())
        })
        .await
    }

    async fn release_channel(&self, channel: &str, replica: &str) -> Result<(), StoreError> {
        let what = "cannot release a channel";
        bounded(what, async {
            self.client()
                .await?
                .execute(
                    "DELETE FROM channel_holders WHERE channel = $1 AND replica = $2",
                    &[&channel, &replica],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(())
        })
        .await
    }

    async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        let what = "cannot leave the replicas";
        bounded(what, async {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM channel_holders WHERE replica = $1",
                    &[&replica],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            client
                .execute("DELETE FROM replicas WHERE id = $1", &[&replica])
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(())
        })
        .await
    }

    async fn oauth2_grant(&self, channel: &str) -> Result<Option<OAuth2GrantRow>, StoreError> {
        let what = "cannot read an OAuth 2.0 grant";
        bounded(what, async {
            let row = self
                .client()
                .await?
                .query_opt(
                    "SELECT generation, sealed, expires_at, refused FROM oauth2_grants
                     WHERE channel = $1 AND sealed IS NOT NULL",
                    &[&channel],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let column = |e: tokio_postgres::Error| fail(what, &e);
            let generation: i64 = row.try_get(0).map_err(column)?;
            Ok(Some(OAuth2GrantRow {
                generation: u64::try_from(generation).unwrap_or(0),
                sealed: SealedGrant::from_stored(row.try_get(1).map_err(column)?),
                expires_at: row.try_get(2).map_err(column)?,
                refused: row.try_get(3).map_err(column)?,
            }))
        })
        .await
    }

    async fn store_oauth2_grant(
        &self,
        channel: &str,
        base: GrantBase,
        sealed: &SealedGrant,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<GrantWrite, StoreError> {
        let what = "cannot store an OAuth 2.0 grant";
        bounded(what, async {
            let client = self.client().await?;
            let blob = sealed.as_bytes();
            // One statement each, so the comparison and the write are atomic. A row
            // with only a lease, or whose grant was deleted, counts as no grant
            // (`GrantBase::admits`); its generation moves on from where it is.
            let stored = match base {
                GrantBase::Generation(0) => {
                    client
                        .query_opt(
                            "INSERT INTO oauth2_grants (channel, generation, sealed, expires_at, refused)
                             VALUES ($1, 1, $2, $3, false)
                             ON CONFLICT (channel) DO UPDATE
                                SET generation = oauth2_grants.generation + 1,
                                    sealed = EXCLUDED.sealed,
                                    expires_at = EXCLUDED.expires_at, refused = false
                                WHERE oauth2_grants.sealed IS NULL
                             RETURNING generation",
                            &[&channel, &blob, &expires_at],
                        )
                        .await
                }
                GrantBase::Generation(expected) => {
                    let expected = i64::try_from(expected)
                        .map_err(|_| StoreError::Failed("grant generation out of range".into()))?;
                    client
                        .query_opt(
                            "UPDATE oauth2_grants
                             SET generation = generation + 1, sealed = $3, expires_at = $4,
                                 refused = false
                             WHERE channel = $1 AND generation = $2 AND sealed IS NOT NULL
                             RETURNING generation",
                            &[&channel, &expected, &blob, &expires_at],
                        )
                        .await
                }
                GrantBase::Any => {
                    client
                        .query_opt(
                            "INSERT INTO oauth2_grants (channel, generation, sealed, expires_at, refused)
                             VALUES ($1, 1, $2, $3, false)
                             ON CONFLICT (channel) DO UPDATE
                                SET generation = oauth2_grants.generation + 1,
                                    sealed = EXCLUDED.sealed, expires_at = EXCLUDED.expires_at,
                                    refused = false
                             RETURNING generation",
                            &[&channel, &blob, &expires_at],
                        )
                        .await
                }
            }
            .map_err(|e| fail(what, &e))?;
            if let Some(row) = stored {
                let generation: i64 = row.try_get(0).map_err(|e| fail(what, &e))?;
                return Ok(GrantWrite::Stored(u64::try_from(generation).unwrap_or(0)));
            }
            let now = client
                .query_opt(
                    "SELECT generation FROM oauth2_grants WHERE channel = $1",
                    &[&channel],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            let generation: i64 = match now {
                Some(row) => row.try_get(0).map_err(|e| fail(what, &e))?,
                None => 0,
            };
            Ok(GrantWrite::Stale(u64::try_from(generation).unwrap_or(0)))
        })
        .await
    }

    async fn delete_oauth2_grant(&self, channel: &str) -> Result<bool, StoreError> {
        let what = "cannot delete an OAuth 2.0 grant";
        bounded(what, async {
            // The row (its generation, a lease) stays: see `StateStore::delete_oauth2_grant`.
            let deleted = self
                .client()
                .await?
                .execute(
                    "UPDATE oauth2_grants SET sealed = NULL, expires_at = NULL, refused = false
                     WHERE channel = $1 AND sealed IS NOT NULL",
                    &[&channel],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn lease_oauth2_refresh(
        &self,
        channel: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let what = "cannot lease an OAuth 2.0 refresh";
        bounded(what, async {
            // Taken when free, renewed when ours, taken over when expired (store clock).
            let row = self
                .client()
                .await?
                .query_opt(
                    "INSERT INTO oauth2_grants (channel, refreshing_by, refreshing_until)
                     VALUES ($1, $2, now() + make_interval(secs => $3))
                     ON CONFLICT (channel) DO UPDATE
                        SET refreshing_by = EXCLUDED.refreshing_by,
                            refreshing_until = EXCLUDED.refreshing_until
                        WHERE oauth2_grants.refreshing_by IS NULL
                           OR oauth2_grants.refreshing_by = EXCLUDED.refreshing_by
                           OR oauth2_grants.refreshing_until <= now()
                     RETURNING channel",
                    &[&channel, &replica, &ttl.as_secs_f64()],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(row.is_some())
        })
        .await
    }

    async fn release_oauth2_refresh(&self, channel: &str, replica: &str) -> Result<(), StoreError> {
        let what = "cannot release an OAuth 2.0 refresh lease";
        bounded(what, async {
            self.client()
                .await?
                .execute(
                    "UPDATE oauth2_grants SET refreshing_by = NULL, refreshing_until = NULL
                     WHERE channel = $1 AND refreshing_by = $2",
                    &[&channel, &replica],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(())
        })
        .await
    }

    async fn mark_oauth2_refused(
        &self,
        channel: &str,
        generation: u64,
    ) -> Result<bool, StoreError> {
        let what = "cannot mark an OAuth 2.0 grant refused";
        bounded(what, async {
            let generation = i64::try_from(generation)
                .map_err(|_| StoreError::Failed("grant generation out of range".into()))?;
            let marked = self
                .client()
                .await?
                .execute(
                    "UPDATE oauth2_grants SET refused = true
                     WHERE channel = $1 AND generation = $2 AND sealed IS NOT NULL",
                    &[&channel, &generation],
                )
                .await
                .map_err(|e| fail(what, &e))?;
            Ok(marked == 1)
        })
        .await
    }
}

impl PostgresStore {
    /// Removes the rows of `table` whose `column` is before `older_than`, at
    /// most [`PRUNE_BATCH`] per statement, until none is left. Not told to
    /// the store's health: a prune that fails is tried again later, and the
    /// hot path's own writes say whether the database takes writes.
    async fn prune_table(
        &self,
        table: &str,
        column: &str,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let what = format!("cannot prune {table}");
        // Names from `PRUNED_TABLES`, never from input.
        let sql = format!(
            "DELETE FROM {table} WHERE ctid IN (
                 SELECT ctid FROM {table} WHERE {column} < $1 LIMIT {PRUNE_BATCH}
             )"
        );
        let mut pruned = 0;
        loop {
            let deleted = bounded(&what, async {
                self.client()
                    .await?
                    .execute(&sql, &[&older_than])
                    .await
                    .map_err(|e| fail(&what, &e))
            })
            .await?;
            pruned += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// The registry's columns, in the order [`channel_entry`] reads them.
const CHANNEL_COLUMNS: &str =
    "SELECT name, revision, removed, origin, settings, credentials, paused, updated_at FROM channels";

/// A row of `channels` as an entry of the registry, or why it is not one
/// (never a panic: a row a newer version wrote may hold what this one does
/// not expect).
fn channel_entry(row: &Row) -> Result<ChannelEntry, StoreError> {
    let column = |e: tokio_postgres::Error| StoreError::Failed(format!("a channel's row: {e}"));
    let name: String = row.try_get(0).map_err(column)?;
    let revision = u64::try_from(row.try_get::<_, i64>(1).map_err(column)?)
        .map_err(|_| StoreError::Failed(format!("channel {name} has a negative revision")))?;
    let updated_at: DateTime<Utc> = row.try_get(7).map_err(column)?;
    if row.try_get::<_, bool>(2).map_err(column)? {
        return Ok(ChannelEntry::Removed(ChannelTombstone {
            name,
            revision,
            removed_at: updated_at,
        }));
    }
    let origin: String = row.try_get(3).map_err(column)?;
    let origin = ChannelOrigin::parse(&origin).ok_or_else(|| {
        StoreError::Failed(format!("channel {name} has an unknown origin {origin:?}"))
    })?;
    Ok(ChannelEntry::Live(ChannelRecord {
        origin,
        settings: row.try_get(4).map_err(column)?,
        credentials: SealedCredentials::from_stored(row.try_get(5).map_err(column)?),
        revision,
        paused: row.try_get(6).map_err(column)?,
        updated_at,
        name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_get_a_statement_timeout_unless_the_url_sets_one() {
        assert_eq!(
            session_options("", "xb"),
            "-c search_path=xb -c statement_timeout=10000"
        );
        assert_eq!(
            session_options("-c statement_timeout=500", "xb"),
            "-c statement_timeout=500 -c search_path=xb"
        );
        assert_eq!(
            session_options(" -c work_mem=4MB ", "xb"),
            "-c work_mem=4MB -c search_path=xb -c statement_timeout=10000"
        );
    }

    #[test]
    fn sslmode_is_found_in_the_query_or_the_keys_never_in_a_password() {
        for set in [
            "postgres://u:p@db/x?sslmode=require",
            "postgresql://db/x?connect_timeout=2&SSLMODE=disable",
            "host=db user=u sslmode=verify-full",
        ] {
            assert!(url_sets_sslmode(set), "{set}");
        }
        for unset in [
            "postgres://u:my-sslmode-pw@db/x",
            "postgres://u:p@db/x?connect_timeout=2",
            "host=db password=sslmode",
        ] {
            assert!(!url_sets_sslmode(unset), "{unset}");
        }
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["public", "xbridge", "t_0f3a", "_x"] {
            assert!(is_valid_schema_name(ok), "{ok}");
        }
        for bad in ["", "Public", "a-b", "a;drop", "1a", "pg_catalog", "a\"b"] {
            assert!(!is_valid_schema_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn errors_never_show_the_password() {
        // Nothing listens on port 1: the connection is refused.
        let err = PostgresStore::connect(
            "postgres://xbridge:s3cret-pw@127.0.0.1:1/state?connect_timeout=2",
            None,
        )
        .await
        .unwrap_err();
        assert!(!err.to_string().contains("s3cret-pw"), "{err}");
        assert!(err.to_string().contains("connection"), "{err}");

        let err = PostgresStore::connect("postgres://xbridge:s3cret-pw@127.0.0.1:99999/x", None)
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_schema_name_is_refused_before_connecting() {
        let err = PostgresStore::connect("postgres://127.0.0.1:1/x", Some("a;b"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("schema"), "{err}");
    }
}
