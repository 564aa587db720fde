//! The default store: one redb file, crash-safe, no server.
//!
//! Every write must be durable before the bridge acts on it, and a durable redb commit
//! costs a disk flush; redb also takes one write transaction at a time. So writes go
//! through one writer thread that commits whatever is waiting together (group commit):
//! under load one flush serves every reply and event in flight, and each caller still
//! hears back only once its own write is on disk. Reads run on their own snapshots.
//!
//! **A full disk.** After an I/O error redb refuses every later operation of that
//! `Database` ("Previous I/O error occurred. Please close and re-open the database"),
//! even once the disk has room again. The writer thread then closes the database and
//! opens the file again, with backoff, until a probe write commits; meanwhile every read
//! and write fails at once with [`StoreError::Unavailable`] and the store's
//! [`StoreHealth`] says it cannot write. The store reopens itself rather than the process
//! exiting for a supervisor to restart it: a restart frees no disk either, it would throw
//! away what the process holds in memory (replies X accepted whose records wait to be
//! written, webhook events known as delivered), and it would drop every connection for
//! nothing. redb locks the file, also against a second open in the same process, so the
//! old `Database` is dropped (the writer's handle and every reader's) before the file is
//! opened again.
//!
//! **Pruning.** Records older than the retention are found by reading a
//! snapshot [`PRUNE_BATCH`] entries at a time (never waiting for the writer),
//! and removed by one write per batch through the same writer queue, checked
//! again inside it; so a prune is many short writes the hot path's writes go
//! between, never one long transaction holding redb's single writer. Sent
//! records go by their `sent_at`, and take their DMs' own-send entries with
//! them (those hold no time of their own); send intents and delivered events
//! by the time they hold. The file's format is unchanged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use crate::oauth2_grant::{GrantBase, GrantWrite, OAuth2GrantRow, SealedGrant};
use crate::registry::{
    revision_as_i64, Applied, ChannelEntry, ChannelList, ChannelOrigin, ChannelRecord,
    ChannelTombstone,
};
use crate::sealed::SealedCredentials;
use crate::{Pruned, SentRecord, StateStore, StoreError, StoreHealth};

/// Sent replies, keyed by `<channel>\0<message_id>`; values are JSON so the
/// record can grow fields without a migration.
const SENT: TableDefinition<&str, &[u8]> = TableDefinition::new("sent_replies");
/// The DMs of replies sent in parts, keyed by `<channel>\0<part>\0<message_id>`;
/// values as in [`SENT`].
const SENT_PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("sent_reply_parts");
/// When the last send of a reply's part started (Unix milliseconds), keyed
/// like [`SENT_PARTS`].
const SEND_INTENTS: TableDefinition<&str, i64> = TableDefinition::new("send_intents");
/// Each channel's owner epoch ([`StateStore::claim_channel`]), keyed by
/// channel name; a send intent is written only by the owner of the current one.
const CHANNEL_OWNERS: TableDefinition<&str, u64> = TableDefinition::new("channel_owners");
/// X DM event ids of the bridge's own sends, keyed by `<channel>\0<dm_event_id>`;
/// the value is the CRM's message id.
const OWN_SENDS: TableDefinition<&str, &str> = TableDefinition::new("own_dm_events");
/// Inbound DM events that reached the CRM, keyed by `<channel>\0<event_id>`;
/// the value is when (Unix milliseconds), what pruning goes by.
const DELIVERED: TableDefinition<&str, u64> = TableDefinition::new("delivered_events");
/// Each channel's poll cursor: the newest delivered DM event id.
const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("poll_cursors");
/// The channel registry, keyed by channel name; values are [`StoredChannel`]
/// as JSON, the credentials in it sealed.
const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");
/// The key-check record of `state.credentials_key` (`key_check.rs`), at
/// [`KEY_CHECK`].
const REGISTRY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("registry_meta");
const KEY_CHECK: &str = "credentials_key_check";
/// The writer's probe after reopening the file: one key, the time of the probe
/// (Unix milliseconds). Writing it proves the file takes writes again.
/// Each channel's OAuth 2.0 grant, sealed, with its generation, refused mark and
/// refresh lease ([`StoredGrant`], JSON), by channel.
const OAUTH2_GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth2_grants");
const PROBE: TableDefinition<&str, i64> = TableDefinition::new("store_probe");

/// A [`StateStore`] in a single redb file. One process at a time may open it
/// (redb locks the file), which is what a single bridge process needs.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// The most writes one commit takes, so a flood of writes still reaches disk, and
/// its callers hear back, in steady steps.
const MAX_BATCH: usize = 512;

/// The first pause before the file is opened again after an I/O error; it
/// doubles up to [`REOPEN_MAX_DELAY`] while the disk stays full.
const REOPEN_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between two tries to open the file again: a freed disk
/// is noticed within this.
const REOPEN_MAX_DELAY: Duration = Duration::from_secs(5);

/// One write, applied inside a transaction it may share with others. `Fn`, not
/// `FnOnce`: when a shared transaction fails, each of its writes is tried again
/// alone, so a bad write fails only its own caller.
type Write = Box<dyn Fn(&WriteTransaction) -> Result<(), StoreError> + Send>;

/// Opens (or creates) the database; called again after an I/O error.
type Opener = Box<dyn Fn() -> Result<Database, Opening> + Send + Sync>;

/// Why opening the file failed: the two cases differ at startup.
#[derive(Debug)]
enum Opening {
    /// The file could not be opened as a database at all (a folder that is
    /// missing or not ours, another process holding it, not a redb file).
    Open(StoreError),
    /// The file opened, but the write that readies it failed.
    Write(StoreError),
}

impl From<Opening> for StoreError {
    fn from(opening: Opening) -> StoreError {
        match opening {
            Opening::Open(error) | Opening::Write(error) => error,
        }
    }
}

/// How long a write nobody waits for (the "reported" mark) waits for a write
/// somebody does wait for, to share its commit instead of paying a commit and
/// its flush of its own. Losing it in a crash within this window costs only a
/// repeated `message.sent`; a clean stop commits it (the queue is drained).
const LONE_DEFERRED_WAIT: Duration = Duration::from_millis(50);

/// A write waiting for the writer thread, and where to say how it went.
struct PendingWrite {
    write: Write,
    done: Done,
}

/// Who hears how a write went.
enum Done {
    /// A caller waiting for it.
    Caller(oneshot::Sender<Result<(), StoreError>>),
    /// Nobody: a deferred "reported" mark, under its key in
    /// [`Shared::marks_in_flight`]; the writer logs its failure.
    Mark(String),
}

impl PendingWrite {
    fn deferred(&self) -> bool {
        matches!(self.done, Done::Mark(_))
    }

    /// Tells the caller how the write went, or ends a deferred mark's time in
    /// flight (reads see what was committed from then on).
    fn answer(self, shared: &Shared, outcome: Result<(), StoreError>) {
        match self.done {
            Done::Caller(done) => {
                let _ = done.send(outcome);
            }
            Done::Mark(key) => {
                shared.marks_in_flight().remove(&key);
                if let Err(error) = outcome {
                    tracing::warn!(%error, "a reply's deferred reported mark failed; a copy of that reply would be reported again");
                }
            }
        }
    }
}

/// What the store handles and the writer thread share.
struct Shared {
    /// The open database; `None` while the writer is opening the file again.
    db: RwLock<Option<Arc<Database>>>,
    opener: Opener,
    health: StoreHealth,
    /// The keys of "reported" marks handed to the writer and not committed
    /// (or failed) yet: reads count them, so a copy of a reply that arrives
    /// in that window is not reported a second time.
    marks_in_flight: Mutex<HashSet<String>>,
}

impl Shared {
    fn marks_in_flight(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever a panicking holder did.
        self.marks_in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The open database, or why there is none.
    fn current(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(reopening)
    }

    fn install(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, db)
    }

    /// Takes the database out of use and waits until the last reader is done
    /// with it, so dropping it releases the file's lock.
    fn close(&self, writer_handle: Arc<Database>) {
        drop(writer_handle);
        let Some(mut db) = self.install(None) else {
            return;
        };
        // Readers hold it only for a synchronous lookup.
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    return;
                }
                Err(shared) => {
                    db = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

fn reopening() -> StoreError {
    StoreError::Unavailable(
        "the state file hit an I/O error (a full disk?) and is being opened again".into(),
    )
}

/// The store's shared state and its writer thread. Dropping the last store
/// handle closes the queue and waits for the thread, which closes the database,
/// so the file is released when the store is gone (a restart in the same
/// process can open it again at once).
struct Inner {
    shared: Arc<Shared>,
    queue: Option<mpsc::Sender<PendingWrite>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Commits what is waiting, in batches, until every store handle is gone;
/// after an I/O error, opens the file again (see the module documentation).
fn write_loop(shared: Arc<Shared>, queue: mpsc::Receiver<PendingWrite>) {
    let open = shared.current().ok();
    let mut writer = Writer {
        shared,
        queue,
        open,
        delay: REOPEN_FIRST_DELAY,
        next_try: Instant::now(),
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(db) = writer.open.clone() else {
            if writer.while_closed() {
                continue;
            }
            return;
        };
        if !writer.next_batch(&mut batch) {
            writer.close(db);
            return;
        }
        writer.commit_batch(db, &mut batch);
    }
}

/// The writer thread's state: the open database, if any, and when to try a
/// closed one again.
struct Writer {
    shared: Arc<Shared>,
    queue: mpsc::Receiver<PendingWrite>,
    open: Option<Arc<Database>>,
    delay: Duration,
    next_try: Instant,
}

impl Writer {
    /// Closed after an I/O error: fails what comes at once, tries the file
    /// again when the pause is over. False once every store handle is gone.
    fn while_closed(&mut self) -> bool {
        let wait = self.next_try.saturating_duration_since(Instant::now());
        match self.queue.recv_timeout(wait) {
            Ok(pending) => {
                let error = reopening();
                self.shared.health.write_failed(&error);
                pending.answer(&self.shared, Err(error));
            }
            Err(RecvTimeoutError::Timeout) => self.try_reopen(),
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        true
    }

    fn try_reopen(&mut self) {
        match reopen(&self.shared) {
            Ok(db) => {
                tracing::info!("the state file is open again after an I/O error");
                self.shared.install(Some(db.clone()));
                self.shared.health.write_succeeded();
                self.open = Some(db);
                // The pause starts short again only once a real write
                // commits: a disk with room for the probe alone would
                // otherwise have the file closed and opened in a tight loop.
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = self.delay.as_millis() as u64, "the state file cannot be opened again yet");
                self.pause();
            }
        }
    }

    /// Waits for a write, then takes what else is waiting, up to
    /// [`MAX_BATCH`]. A batch of deferred writes alone waits up to
    /// [`LONE_DEFERRED_WAIT`] for company. False once every store handle is
    /// gone and the queue is drained.
    fn next_batch(&self, batch: &mut Vec<PendingWrite>) -> bool {
        let Ok(first) = self.queue.recv() else {
            return false;
        };
        batch.push(first);
        self.take_waiting(batch);
        if batch.iter().all(PendingWrite::deferred) {
            if let Ok(company) = self.queue.recv_timeout(LONE_DEFERRED_WAIT) {
                batch.push(company);
                self.take_waiting(batch);
            }
        }
        true
    }

    fn take_waiting(&self, batch: &mut Vec<PendingWrite>) {
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
    }

    /// Commits the batch in one transaction and answers each write; when the
    /// shared commit fails for another reason than I/O, commits each write
    /// alone so one bad write fails only its own caller.
    fn commit_batch(&mut self, db: Arc<Database>, batch: &mut Vec<PendingWrite>) {
        let health = &self.shared.health;
        match commit(&db, batch.iter().map(|pending| &pending.write)) {
            Ok(()) => {
                health.write_succeeded();
                self.delay = REOPEN_FIRST_DELAY;
                for pending in batch.drain(..) {
                    pending.answer(&self.shared, Ok(()));
                }
            }
            Err(error) if error.is_unavailable() => {
                // The database refuses everything from now on: fail the batch
                // and open the file again.
                tracing::warn!(%error, writes = batch.len(), "the state file hit an I/O error; closing it to open it again");
                for pending in batch.drain(..) {
                    health.write_failed(&error);
                    pending.answer(&self.shared, Err(error.clone()));
                }
                self.close(db);
                self.pause();
            }
            Err(error) if batch.len() == 1 => {
                if let Some(pending) = batch.pop() {
                    health.write_failed(&error);
                    pending.answer(&self.shared, Err(error));
                }
            }
            Err(error) => {
                tracing::debug!(%error, writes = batch.len(), "shared commit failed: committing each write alone");
                for pending in batch.drain(..) {
                    let result = commit(&db, std::iter::once(&pending.write));
                    match &result {
                        Ok(()) => health.write_succeeded(),
                        Err(error) => health.write_failed(error),
                    }
                    pending.answer(&self.shared, result);
                }
            }
        }
    }

    /// Takes the database out of use (the writer's own handle `db` first).
    fn close(&mut self, db: Arc<Database>) {
        drop(db);
        if let Some(db) = self.open.take() {
            self.shared.close(db);
        }
    }

    /// Tries the file again after `delay`, twice as long the time after.
    fn pause(&mut self) {
        self.next_try = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(REOPEN_MAX_DELAY);
    }
}

/// Opens the file again and proves it takes a write.
fn reopen(shared: &Shared) -> Result<Arc<Database>, StoreError> {
    let db = (shared.opener)().map_err(StoreError::from)?;
    let txn = db.begin_write().map_err(err)?;
    {
        let mut probe = txn.open_table(PROBE).map_err(err)?;
        probe
            .insert("last", Utc::now().timestamp_millis())
            .map_err(err)?;
    }
    txn.commit().map_err(err)?;
    Ok(Arc::new(db))
}

/// Applies `writes` in one transaction and makes it durable; all or nothing.
/// Always durable: a commit without its flush (redb's `Durability::None`) for
/// the "reported" mark saved 6 to 11 % of a reply's CPU, but with readers on
/// other threads redb 4.6 freed a page a reader still held (its debug
/// assertion in `free_helper` stopped this thread in a node-loss test), so it
/// was taken back (issue 16, docs/benchmarks.md).
fn commit<'a>(db: &Database, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(err)?;
    for write in writes {
        // Dropping the transaction on an error aborts it.
        write(&txn)?;
    }
    txn.commit().map_err(err)
}

fn writer_stopped() -> StoreError {
    StoreError::Failed("the store's writer stopped".into())
}

/// The write that marks the reply under `key` as reported, if it is recorded.
fn mark_reported(key: String) -> impl Fn(&WriteTransaction) -> Result<(), StoreError> {
    move |txn| {
        let mut table = txn.open_table(SENT).map_err(err)?;
        let existing = table
            .get(key.as_str())
            .map_err(err)?
            .map(|v| v.value().to_vec());
        if let Some(bytes) = existing {
            let mut record: SentRecord = serde_json::from_slice(&bytes).map_err(codec)?;
            record.reported = true;
            let value = serde_json::to_vec(&record).map_err(codec)?;
            table.insert(key.as_str(), value.as_slice()).map_err(err)?;
        }
        Ok(())
    }
}

/// Opens the database file at `path`, creating it readable by its owner only
/// (it holds who wrote to whom), with every table.
fn open_file(path: &Path) -> Result<Database, Opening> {
    create_private(path).map_err(|e| {
        Opening::Open(StoreError::Unavailable(format!(
            "cannot create {}: {e}",
            path.display()
        )))
    })?;
    let db = Database::create(path).map_err(|e| {
        let e: redb::Error = e.into();
        let detail = format!("cannot open {}: {e}", path.display());
        Opening::Open(match e {
            // Another process has it; waiting will not help.
            redb::Error::DatabaseAlreadyOpen => StoreError::Failed(detail),
            _ => StoreError::Unavailable(detail),
        })
    })?;
    with_tables(db)
}

/// Creates the tables a new file lacks. A commit, so it needs room on the
/// disk even when every table is there.
fn with_tables(db: Database) -> Result<Database, Opening> {
    let ready = || {
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SENT).map_err(err)?;
        txn.open_table(SENT_PARTS).map_err(err)?;
        txn.open_table(SEND_INTENTS).map_err(err)?;
        txn.open_table(CHANNEL_OWNERS).map_err(err)?;
        txn.open_table(OWN_SENDS).map_err(err)?;
        txn.open_table(DELIVERED).map_err(err)?;
        txn.open_table(CURSORS).map_err(err)?;
        txn.open_table(CHANNELS).map_err(err)?;
        txn.open_table(REGISTRY_META).map_err(err)?;
        txn.open_table(OAUTH2_GRANTS).map_err(err)?;
        txn.commit().map_err(err)
    };
    ready().map_err(Opening::Write)?;
    Ok(db)
}

/// Creates an empty file at `path`, mode 0600, unless one is there (redb
/// initialises an empty file as a new database). An existing file keeps its
/// mode: the operator may have chosen it.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the folders up to `folder` that are missing, mode 0700: only the
/// bridge's user needs to enter them.
fn create_private_folder(folder: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file (0600) and its parent
    /// folder (0700) if needed.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                create_private_folder(parent).map_err(|e| {
                    StoreError::Failed(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        let path: PathBuf = path.to_owned();
        EmbeddedStore::with_opener(Box::new(move || open_file(&path)))
    }

    /// Opens the file with `opener` and starts the writer. A file that opens
    /// but cannot be written to (a full disk) is not a startup failure: the
    /// store starts closed, unwritable, and the writer opens the file again
    /// with backoff, as after an I/O error at run time. Exiting instead left
    /// a bridge restarted on a full disk (a deploy, a crash) unable to start
    /// at all, every start failing the same way, where a running one goes on
    /// publishing webhook events and heals by itself once there is room. A
    /// file that cannot be opened at all still fails the start: a wrong path or
    /// another process holding the file is not healed by waiting.
    fn with_opener(opener: Opener) -> Result<EmbeddedStore, StoreError> {
        let health = StoreHealth::new();
        let db = match opener() {
            Ok(db) => Some(Arc::new(db)),
            Err(Opening::Write(error)) if error.is_unavailable() => {
                tracing::warn!(%error, "the state file opens but cannot be written (a full disk?); starting without it, and opening it again until it takes writes");
                health.write_failed(&error);
                None
            }
            Err(opening) => return Err(opening.into()),
        };
        let shared = Arc::new(Shared {
            db: RwLock::new(db),
            opener,
            health,
            marks_in_flight: Mutex::default(),
        });
        let (queue, pending) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("xbridge-store-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(shared, pending)
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the store's writer: {e}")))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                shared,
                queue: Some(queue),
                thread: Some(thread),
            }),
        })
    }

    /// Applies `write` durably, in a commit it may share with other writes
    /// waiting at the same time. Fails at once while the file is being opened
    /// again after an I/O error.
    async fn write(
        &self,
        write: impl Fn(&WriteTransaction) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        self.enqueue(Box::new(write), Done::Caller(done))?;
        outcome.await.map_err(|_| writer_stopped())?
    }

    /// Hands the mark of the reply under `key` to the writer without waiting
    /// for its commit, which it shares with the next write somebody waits for
    /// (see [`LONE_DEFERRED_WAIT`]); reads count it meanwhile.
    fn mark_deferred(&self, key: String) -> Result<(), StoreError> {
        self.inner.shared.marks_in_flight().insert(key.clone());
        let queued = self.enqueue(
            Box::new(mark_reported(key.clone())),
            Done::Mark(key.clone()),
        );
        if queued.is_err() {
            self.inner.shared.marks_in_flight().remove(&key);
        }
        queued
    }

    fn enqueue(&self, write: Write, done: Done) -> Result<(), StoreError> {
        self.inner
            .queue
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(PendingWrite { write, done })
            .map_err(|_| writer_stopped())
    }

    /// Runs a read on the calling thread. A read transaction never waits for
    /// the writer (it sees the last commit), and a lookup of a few pages, mostly
    /// in redb's cache, costs less than handing it to a blocking thread and back
    /// (which, once per lookup, was a visible part of the bridge's CPU time).
    fn read_now<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.inner.shared.current()?;
        work(&db)
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
        let value = serde_json::to_vec(record).map_err(codec)?;
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

/// A redb error as a [`StoreError`]: an I/O error (a full disk) poisons the
/// open database until it is opened again, so the store cannot write.
fn err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Io(_)
        | redb::Error::PreviousIo
        | redb::Error::DatabaseClosed
        | redb::Error::Backend(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Failed(e.to_string()),
    }
}

/// A record that does not encode or decode: that record's problem, not the store's.
fn codec(e: serde_json::Error) -> StoreError {
    StoreError::Failed(format!("a stored record does not encode or decode: {e}"))
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
    serde_json::from_slice(value.value())
        .map(Some)
        .map_err(codec)
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn sent(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<SentRecord>, StoreError> {
        let key = key(channel, message_id);
        let record: Option<SentRecord> = self.read_now(|db| read(db, SENT, &key))?;
        Ok(record.map(|mut record| {
            record.reported |= self.inner.shared.marks_in_flight().contains(&key);
            record
        }))
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

    async fn claim_channel(&self, channel: &str) -> Result<u64, StoreError> {
        // The write may run twice (alone after a shared commit failed): the
        // epoch it saw in the transaction that committed is the last one set.
        let claimed = Arc::new(AtomicU64::new(0));
        let seen = claimed.clone();
        let channel = channel.to_owned();
        self.write(move |txn| {
            let mut owners = txn.open_table(CHANNEL_OWNERS).map_err(err)?;
            let current = owners
                .get(channel.as_str())
                .map_err(err)?
                .map(|v| v.value());
            let next = current.unwrap_or(0).saturating_add(1);
            owners.insert(channel.as_str(), next).map_err(err)?;
            seen.store(next, Ordering::SeqCst);
            Ok(())
        })
        .await?;
        Ok(claimed.load(Ordering::SeqCst))
    }

    async fn record_send_intent(
        &self,
        channel: &str,
        message_id: &str,
        part: usize,
        started_at: DateTime<Utc>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let key = part_key(channel, message_id, part);
        let millis = started_at.timestamp_millis();
        // A refusal is not an error of the write: failing it would abort the
        // commit it shares with other writes. It is told beside instead.
        let fenced = Arc::new(AtomicBool::new(false));
        let refused = fenced.clone();
        let owner = channel.to_owned();
        self.write(move |txn| {
            let owners = txn.open_table(CHANNEL_OWNERS).map_err(err)?;
            let current = owners.get(owner.as_str()).map_err(err)?.map(|v| v.value());
            let owned = current == Some(epoch);
            refused.store(!owned, Ordering::SeqCst);
            if owned {
                let mut table = txn.open_table(SEND_INTENTS).map_err(err)?;
                table.insert(key.as_str(), millis).map_err(err)?;
            }
            Ok(())
        })
        .await?;
        if fenced.load(Ordering::SeqCst) {
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
        self.write(mark_reported(key(channel, message_id))).await
    }

    async fn mark_reported_soon(&self, channel: &str, message_id: &str) -> Result<(), StoreError> {
        self.mark_deferred(key(channel, message_id))
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

    async fn put_channel(&self, record: &ChannelRecord) -> Result<Applied, StoreError> {
        revision_as_i64(record.revision)?;
        let stored = StoredChannel::live(record);
        self.put_if_newer(record.name.clone(), stored).await
    }

    async fn channel(&self, name: &str) -> Result<Option<ChannelEntry>, StoreError> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(CHANNELS).map_err(err)?;
            let Some(value) = table.get(name).map_err(err)? else {
                return Ok(None);
            };
            StoredChannel::decode(value.value())?
                .into_entry(name)
                .map(Some)
        })
    }

    async fn channels(&self) -> Result<ChannelList, StoreError> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(CHANNELS).map_err(err)?;
            let mut list = ChannelList::default();
            for row in table.iter().map_err(err)? {
                let (name, value) = row.map_err(err)?;
                let name = name.value();
                let decoded =
                    StoredChannel::decode(value.value()).and_then(|stored| stored.into_entry(name));
                list.push(name, decoded);
            }
            Ok(list)
        })
    }

    async fn keep_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let candidate = candidate.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(REGISTRY_META).map_err(err)?;
            if table.get(KEY_CHECK).map_err(err)?.is_none() {
                table.insert(KEY_CHECK, candidate.as_slice()).map_err(err)?;
            }
            Ok(())
        })
        .await?;
        self.read_now(|db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(REGISTRY_META).map_err(err)?;
            let stored = table.get(KEY_CHECK).map_err(err)?;
            stored
                .map(|value| value.value().to_vec())
                .ok_or_else(|| StoreError::Failed("the key-check record was not kept".into()))
        })
    }

    async fn remove_channel(&self, tombstone: &ChannelTombstone) -> Result<Applied, StoreError> {
        revision_as_i64(tombstone.revision)?;
        let stored = StoredChannel::Removed {
            revision: tombstone.revision,
            removed_at: tombstone.removed_at,
        };
        self.put_if_newer(tombstone.name.clone(), stored).await
    }

    fn health(&self) -> StoreHealth {
        self.inner.shared.health.clone()
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<Pruned, StoreError> {
        let (sent_replies, own_replies) = self.prune_sent(SENT, older_than).await?;
        let (sent_reply_parts, own_parts) = self.prune_sent(SENT_PARTS, older_than).await?;
        Ok(Pruned {
            sent_replies,
            sent_reply_parts,
            own_sends: own_replies + own_parts,
            send_intents: self.prune_timed(SEND_INTENTS, older_than).await?,
            delivered_events: self.prune_timed(DELIVERED, older_than).await?,
        })
    }

    async fn oauth2_grant(&self, channel: &str) -> Result<Option<OAuth2GrantRow>, StoreError> {
        let stored = self.read_now(|db| read_grant_row(db, channel))?;
        Ok(stored.and_then(StoredGrant::into_row))
    }

    async fn store_oauth2_grant(
        &self,
        channel: &str,
        base: GrantBase,
        sealed: &SealedGrant,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<GrantWrite, StoreError> {
        let blob = sealed.as_bytes().to_vec();
        let expires = expires_at.map(|at| at.timestamp_millis());
        self.update_grant(channel, move |row| {
            if !base.admits(row.generation, row.sealed.is_some()) {
                return GrantWrite::Stale(row.generation);
            }
            row.generation += 1;
            row.sealed = Some(blob.clone());
            row.expires_at = expires;
            row.refused = false;
            GrantWrite::Stored(row.generation)
        })
        .await
    }

    async fn delete_oauth2_grant(&self, channel: &str) -> Result<bool, StoreError> {
        self.update_grant(channel, |row| {
            let had = row.sealed.is_some();
            row.sealed = None;
            row.expires_at = None;
            row.refused = false;
            had
        })
        .await
    }

    async fn lease_oauth2_refresh(
        &self,
        channel: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let replica = replica.to_owned();
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.update_grant(channel, move |row| {
            let now = Utc::now().timestamp_millis();
            let free = row.refreshing_by.as_deref().is_none_or(|by| by == replica)
                || row.refreshing_until.is_none_or(|until| until <= now);
            if free {
                row.refreshing_by = Some(replica.clone());
                row.refreshing_until = Some(now.saturating_add(ttl));
            }
            free
        })
        .await
    }

    async fn release_oauth2_refresh(&self, channel: &str, replica: &str) -> Result<(), StoreError> {
        let replica = replica.to_owned();
        self.update_grant(channel, move |row| {
            if row.refreshing_by.as_deref() == Some(replica.as_str()) {
                row.refreshing_by = None;
                row.refreshing_until = None;
            }
        })
        .await
    }

    async fn mark_oauth2_refused(
        &self,
        channel: &str,
        generation: u64,
    ) -> Result<bool, StoreError> {
        self.update_grant(channel, move |row| {
            let same = row.generation == generation && row.sealed.is_some();
            if same {
                row.refused = true;
            }
            same
        })
        .await
    }
}

/// A channel's row of [`OAUTH2_GRANTS`]. A row may hold a lease and no grant yet
/// (a channel refreshing from its configured refresh token for the first time).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct StoredGrant {
    generation: u64,
    sealed: Option<Vec<u8>>,
    expires_at: Option<i64>,
    refused: bool,
    refreshing_by: Option<String>,
    refreshing_until: Option<i64>,
}

impl StoredGrant {
    fn into_row(self) -> Option<OAuth2GrantRow> {
        Some(OAuth2GrantRow {
            generation: self.generation,
            sealed: SealedGrant::from_stored(self.sealed?),
            expires_at: self.expires_at.and_then(DateTime::from_timestamp_millis),
            refused: self.refused,
        })
    }
}

fn read_grant_row(db: &Database, channel: &str) -> Result<Option<StoredGrant>, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let table = txn.open_table(OAUTH2_GRANTS).map_err(err)?;
    let Some(value) = table.get(channel).map_err(err)? else {
        return Ok(None);
    };
    serde_json::from_slice(value.value())
        .map(Some)
        .map_err(codec)
}

impl EmbeddedStore {
    /// Reads `channel`'s grant row (an empty one if none), applies `change` and writes
    /// the row back, in one write transaction, so the check and the write are atomic;
    /// returns what `change` said. The writer may run a write twice (alone after a
    /// shared commit failed): the answer of the run that committed is the one kept.
    async fn update_grant<T: Send + 'static>(
        &self,
        channel: &str,
        change: impl Fn(&mut StoredGrant) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let answer = Arc::new(std::sync::Mutex::new(None));
        let seen = answer.clone();
        let channel = channel.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(OAUTH2_GRANTS).map_err(err)?;
            let mut row: StoredGrant = match table.get(channel.as_str()).map_err(err)? {
                Some(value) => serde_json::from_slice(value.value()).map_err(codec)?,
                None => StoredGrant::default(),
            };
            let said = change(&mut row);
            let bytes = serde_json::to_vec(&row).map_err(codec)?;
            table
                .insert(channel.as_str(), bytes.as_slice())
                .map_err(err)?;
            *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(said);
            Ok(())
        })
        .await?;
        let said = answer.lock().unwrap_or_else(PoisonError::into_inner).take();
        said.ok_or_else(|| StoreError::Failed("the grant write ran no change".into()))
    }
}

impl EmbeddedStore {
    /// Writes `stored` at channel `name` unless the entry there has the same
    /// revision or a newer one, in one write, so two racing writers cannot
    /// both win.
    async fn put_if_newer(
        &self,
        name: String,
        stored: StoredChannel,
    ) -> Result<Applied, StoreError> {
        let value = serde_json::to_vec(&stored).map_err(codec)?;
        let revision = stored.revision();
        let outcome = Arc::new(std::sync::Mutex::new(Applied::Yes));
        let told = outcome.clone();
        self.write(move |txn| {
            let mut table = txn.open_table(CHANNELS).map_err(err)?;
            let current = match table.get(name.as_str()).map_err(err)? {
                Some(existing) => Some(StoredChannel::decode(existing.value())?.revision()),
                None => None,
            };
            let applied = match current {
                Some(current) if current >= revision => Applied::Stale { current },
                _ => {
                    table.insert(name.as_str(), value.as_slice()).map_err(err)?;
                    Applied::Yes
                }
            };
            *told.lock().unwrap_or_else(PoisonError::into_inner) = applied;
            Ok(())
        })
        .await?;
        let applied = *outcome.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(applied)
    }
}

/// A registry entry as the embedded store keeps it. The name is the key.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum StoredChannel {
    Live {
        origin: String,
        settings: String,
        /// Sealed: the only form credentials take in the store.
        credentials: Vec<u8>,
        revision: u64,
        paused: bool,
        updated_at: DateTime<Utc>,
    },
    Removed {
        revision: u64,
        removed_at: DateTime<Utc>,
    },
}

impl StoredChannel {
    fn live(record: &ChannelRecord) -> StoredChannel {
        StoredChannel::Live {
            origin: record.origin.as_str().to_owned(),
            settings: record.settings.clone(),
            credentials: record.credentials.as_bytes().to_vec(),
            revision: record.revision,
            paused: record.paused,
            updated_at: record.updated_at,
        }
    }

    fn revision(&self) -> u64 {
        match self {
            StoredChannel::Live { revision, .. } | StoredChannel::Removed { revision, .. } => {
                *revision
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<StoredChannel, StoreError> {
        serde_json::from_slice(bytes).map_err(codec)
    }

    fn into_entry(self, name: &str) -> Result<ChannelEntry, StoreError> {
        Ok(match self {
            StoredChannel::Live {
                origin,
                settings,
                credentials,
                revision,
                paused,
                updated_at,
            } => ChannelEntry::Live(ChannelRecord {
                name: name.to_owned(),
                origin: ChannelOrigin::parse(&origin).ok_or_else(|| {
                    StoreError::Failed(format!("channel {name} has an unknown origin {origin:?}"))
                })?,
                settings,
                credentials: SealedCredentials::from_stored(credentials),
                revision,
                paused,
                updated_at,
            }),
            StoredChannel::Removed {
                revision,
                removed_at,
            } => ChannelEntry::Removed(ChannelTombstone {
                name: name.to_owned(),
                revision,
                removed_at,
            }),
        })
    }
}

fn contains<V: redb::Value + 'static>(
    db: &Database,
    table: TableDefinition<&'static str, V>,
    key: &str,
) -> Result<bool, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let table = txn.open_table(table).map_err(err)?;
    // Bound to a local, not left in the tail expression: a tail's temporaries (here the
    // value's guard, which holds a page but not the transaction) outlive the function's
    // locals in edition 2021, so the guard would outlive `txn`, a concurrent commit could
    // free its page, and redb's debug build stops the writer on that (a node-loss test
    // hit it, 2026-12-05).
    let found = table.get(key).map_err(err)?.is_some();
    Ok(found)
}

/// Entries one prune step reads (on a snapshot, never waiting for the
/// writer) before it hands those that expired to the writer, as one short
/// write among the others.
const PRUNE_BATCH: usize = 1000;

/// A table's value read as Unix milliseconds, to be compared with the cutoff.
trait Millis: redb::Value + Send + Sync + 'static {
    fn millis(value: Self::SelfType<'_>) -> i64;
}

impl Millis for i64 {
    fn millis(value: i64) -> i64 {
        value
    }
}

impl Millis for u64 {
    fn millis(value: u64) -> i64 {
        i64::try_from(value).unwrap_or(i64::MAX)
    }
}

/// Up to [`PRUNE_BATCH`] entries of `table` after key `after` (from the
/// start when `None`): the keys of those `expired` says are, and the last key
/// read when there may be more.
fn scan<V: redb::Value + 'static>(
    db: &Database,
    table: TableDefinition<'static, &'static str, V>,
    after: Option<&str>,
    expired: impl for<'v> Fn(V::SelfType<'v>) -> bool,
) -> Result<(Vec<String>, Option<String>), StoreError> {
    use std::ops::Bound;
    let txn = db.begin_read().map_err(err)?;
    let table = txn.open_table(table).map_err(err)?;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut found = Vec::new();
    let mut seen = 0;
    for row in table
        .range::<&str>((start, Bound::Unbounded))
        .map_err(err)?
    {
        let (key, value) = row.map_err(err)?;
        let key = key.value();
        if expired(value.value()) {
            found.push(key.to_owned());
        }
        seen += 1;
        if seen == PRUNE_BATCH {
            return Ok((found, Some(key.to_owned())));
        }
    }
    Ok((found, None))
}

/// Whether a stored sent record was sent before `cutoff`; one that does not
/// decode is kept (its age is unknown).
fn sent_before(value: &[u8], cutoff: DateTime<Utc>) -> Option<SentRecord> {
    serde_json::from_slice::<SentRecord>(value)
        .ok()
        .filter(|record| record.sent_at < cutoff)
}

impl EmbeddedStore {
    /// Removes the sent records of `table` (replies or parts) sent before
    /// `cutoff`, and their DMs' own-send entries: (records, own sends).
    async fn prune_sent(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        cutoff: DateTime<Utc>,
    ) -> Result<(u64, u64), StoreError> {
        let (mut records, mut own) = (0, 0);
        let mut after = None;
        loop {
            let (keys, last) = self.read_now(|db| {
                scan(db, table, after.as_deref(), |value: &[u8]| {
                    sent_before(value, cutoff).is_some()
                })
            })?;
            if !keys.is_empty() {
                let counts = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
                self.write({
                    let counts = counts.clone();
                    move |txn| {
                        let mut entries = txn.open_table(table).map_err(err)?;
                        let mut own_sends = txn.open_table(OWN_SENDS).map_err(err)?;
                        let (mut removed, mut own_removed) = (0, 0);
                        for key in &keys {
                            // Checked again: the snapshot may be old.
                            let stored = entries.get(key.as_str()).map_err(err)?;
                            let Some(record) = stored.and_then(|v| sent_before(v.value(), cutoff))
                            else {
                                continue;
                            };
                            entries.remove(key.as_str()).map_err(err)?;
                            removed += 1;
                            let channel = key.split('\0').next().unwrap_or_default();
                            for id in record.dm_event_ids() {
                                if own_sends
                                    .remove(self::key(channel, &id).as_str())
                                    .map_err(err)?
                                    .is_some()
                                {
                                    own_removed += 1;
                                }
                            }
                        }
                        *counts.lock().unwrap_or_else(PoisonError::into_inner) =
                            (removed, own_removed);
                        Ok(())
                    }
                })
                .await?;
                let (removed, own_removed) = *counts.lock().unwrap_or_else(PoisonError::into_inner);
                records += removed;
                own += own_removed;
            }
            match last {
                Some(last) => after = Some(last),
                None => return Ok((records, own)),
            }
            tokio::task::yield_now().await;
        }
    }

    /// Removes the entries of `table` (a time in Unix milliseconds per key)
    /// older than `cutoff`.
    async fn prune_timed<V: Millis>(
        &self,
        table: TableDefinition<'static, &'static str, V>,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let cutoff = cutoff.timestamp_millis();
        let mut pruned = 0;
        let mut after = None;
        loop {
            let (keys, last) = self.read_now(|db| {
                scan(db, table, after.as_deref(), |value| {
                    V::millis(value) < cutoff
                })
            })?;
            if !keys.is_empty() {
                let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
                self.write({
                    let count = count.clone();
                    move |txn| {
                        let mut entries = txn.open_table(table).map_err(err)?;
                        let mut removed = 0;
                        for key in &keys {
                            // Checked again: a newer intent may have replaced it.
                            let old = entries
                                .get(key.as_str())
                                .map_err(err)?
                                .is_some_and(|v| V::millis(v.value()) < cutoff);
                            if old {
                                entries.remove(key.as_str()).map_err(err)?;
                                removed += 1;
                            }
                        }
                        count.store(removed, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    }
                })
                .await?;
                pruned += count.load(std::sync::atomic::Ordering::SeqCst);
            }
            match last {
                Some(last) => after = Some(last),
                None => return Ok(pruned),
            }
            tokio::task::yield_now().await;
        }
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
    async fn the_state_file_holds_no_credential_in_the_clear() {
        use crate::contract::{sample_channel, SAMPLE_CREDENTIALS};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            for (n, name) in ["acme", "globex", "initech"].iter().enumerate() {
                let revision = n as u64 + 1;
                store
                    .put_channel(&sample_channel(name, revision))
                    .await
                    .unwrap();
            }
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.windows(4).any(|w| w == b"acme"), "the file was read");
        for credential in SAMPLE_CREDENTIALS {
            assert!(
                !bytes
                    .windows(credential.len())
                    .any(|w| w == credential.as_bytes()),
                "{credential} is readable in the state file"
            );
        }
        // And it comes back after a restart.
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.channels().await.unwrap().entries.len(), 3);
    }

    #[tokio::test]
    async fn a_channel_that_does_not_decode_does_not_hide_the_others() {
        use crate::contract::sample_channel;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
        store.put_channel(&sample_channel("good", 1)).await.unwrap();
        let mut stored = StoredChannel::live(&sample_channel("odd", 1));
        if let StoredChannel::Live { origin, .. } = &mut stored {
            *origin = "from-a-newer-version".into();
        }
        let odd = serde_json::to_vec(&stored).unwrap();
        store
            .write(move |txn| {
                let mut table = txn.open_table(CHANNELS).map_err(err)?;
                table.insert("odd", odd.as_slice()).map_err(err)?;
                table
                    .insert("garbled", b"{not json".as_slice())
                    .map_err(err)?;
                Ok(())
            })
            .await
            .unwrap();
        let list = store.channels().await.unwrap();
        let names: Vec<&str> = list.entries.iter().map(ChannelEntry::name).collect();
        assert_eq!(names, ["good"]);
        let broken: Vec<&str> = list.broken.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(broken, ["garbled", "odd"]);
        assert!(list.broken[1].reason.contains("unknown origin"), "{list:?}");
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
        let mut bad = std::pin::pin!(store.write(|_| Err(StoreError::Failed("refused".into()))));
        let mut last = std::pin::pin!(store.write(cursor("last")));
        assert!(futures::poll!(blocker.as_mut()).is_pending());
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(bad.as_mut()).is_pending());
        assert!(futures::poll!(last.as_mut()).is_pending());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();

        blocker.await.unwrap();
        first.await.unwrap();
        assert!(
            matches!(bad.await.unwrap_err(), StoreError::Failed(detail) if detail == "refused")
        );
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

    /// A file that fails every write while `full` is set, as a full disk does.
    #[derive(Debug)]
    struct FillableFile {
        file: redb::backends::FileBackend,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FillableFile {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
            } else {
                Ok(())
            }
        }
    }

    use redb::BackendError;
    use std::ops::Bound;

    impl redb::StorageBackend for FillableFile {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
        // The real file's locks, so reopening meets redb's lock as it would.
        fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.file.try_lock_range(s, e)
        }
        fn try_lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.file.try_lock_shared_range(s, e)
        }
        fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.file.lock_range(s, e)
        }
        fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.file.lock_shared_range(s, e)
        }
        fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.file.unlock_range(s, e)
        }
        fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.file.query_lock_range(s, e)
        }
    }

    #[tokio::test]
    async fn after_an_io_error_the_store_fails_fast_then_opens_the_file_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = EmbeddedStore::with_opener(Box::new({
            let full = full.clone();
            move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| Opening::Open(StoreError::Unavailable(e.to_string())))?;
                let backend = FillableFile {
                    file: redb::backends::FileBackend::new(file)
                        .map_err(|e| Opening::Open(err(e)))?,
                    full: full.clone(),
                };
                let db = Database::builder()
                    .create_with_backend(backend)
                    .map_err(|e| Opening::Open(err(e)))?;
                with_tables(db)
            }
        }))
        .unwrap();
        let health = store.health();
        store.set_poll_cursor("acme", "1").await.unwrap();

        full.store(true, std::sync::atomic::Ordering::SeqCst);
        let error = store.set_poll_cursor("acme", "2").await.unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(!health.is_writable());
        // Closed until the file takes writes: every call fails at once.
        for _ in 0..3 {
            let error = store
                .record_delivered("acme", &["7".into()])
                .await
                .unwrap_err();
            assert!(error.is_unavailable(), "{error}");
        }

        full.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), health.wait_writable())
            .await
            .expect("the store opens the file again once it takes writes");
        store.set_poll_cursor("acme", "3").await.unwrap();
        assert_eq!(
            store.poll_cursor("acme").await.unwrap().as_deref(),
            Some("3")
        );
        assert!(!store.is_delivered("acme", "7").await.unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_new_state_file_and_its_folder_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.redb");
        drop(EmbeddedStore::open(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
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

    /// A mark nobody waited for is still in the file after a clean close:
    /// closing drains the writer's queue, so a bridge that stops cleanly right
    /// after telling the CRM does not tell it again after a restart.
    #[tokio::test]
    async fn a_deferred_mark_is_kept_by_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let record = crate::contract::sample_record();
            store.record_sent("acme", "m1", &record).await.unwrap();
            store.mark_reported_soon("acme", "m1").await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let record = store.sent("acme", "m1").await.unwrap().unwrap();
        assert!(record.reported);
    }
}
