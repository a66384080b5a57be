//! The redb file: its tables (records as heads, spool, dead letters, held webhooks), the reads the pipeline
//! makes and the one write transaction the commit thread applies.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use bytes::Bytes;

use super::cascades::{self, PendingCascade};
use super::letter::DeadLetter;
use super::pending::Pending;
use super::record::RecordHead;

/// Registry key -> the key's record: the head of the last delta accepted for it
/// ([`RecordHead::to_bytes`], under 80 bytes; the delta itself is on the stream). Judging a
/// delta and reconcile's scans and comparisons read these few bytes, so a million of them stay
/// in redb's cache. Files that also kept each delta's JSON are migrated at open
/// ([`super::migrate`]).
pub(super) const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads");
/// Registry key -> what a full pass last translated for it: a hash of the object as NetBox served
/// it ([`ServedHash`]), then the delta id of the record that translation matched or made. While
/// the key's head has that delta id, the same bytes would translate into the same entry, so a
/// full pass passes them over unparsed. Only a cache: rows of keys whose head moved on are
/// ignored, and losing the table costs one full pass of translation.
pub(super) const SERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("served");
/// Spool sequence -> the delta as published (JSON), drained in sequence order.
pub(super) const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
/// Spool sequence -> the stream sequence of the key's message the spooled delta was judged
/// against, where the relay knew it: the drainer publishes after it without reading the stream.
pub(super) const SPOOL_AFTER: TableDefinition<u64, u64> = TableDefinition::new("spool_after");
/// Spool sequence -> a delta JetStream refused, or a spool row that could not be read, with why
/// ([`DeadLetter`]); kept until `netbox-relay spool retry|drop`.
pub(super) const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// Hold number -> a verified webhook body waiting to be confirmed against NetBox's main.
pub(super) const HELD: TableDefinition<u64, &[u8]> = TableDefinition::new("held_webhooks");

/// One change to the store, applied by the commit thread ([`super::Committer`]). A `record` is
/// made by [`encode`] before it comes here, so that the commit thread, which every webhook waits
/// for, only inserts.
#[derive(Debug)]
pub enum Write {
    /// Remember the delta published for a key (not fsynced at once: it is already safe in
    /// JetStream; a later durable commit or the idle flush persists it).
    Record { key: String, record: Bytes },
    /// Put a delta in the spool and remember it, durably. `after`: the stream sequence of the
    /// key's message it was judged against (0: none), when known.
    Spool {
        key: String,
        record: Bytes,
        delta: Bytes,
        after: Option<u64>,
    },
    /// Remove drained deltas from the spool and move refused or unreadable ones to the dead
    /// letters, durably; a key whose record is a drained delta learns its stream sequence.
    Unspool {
        seqs: Vec<u64>,
        dead: Vec<DeadLetter>,
        acked: Vec<Acked>,
    },
    /// Hold a webhook body until NetBox's main confirms it, durably.
    Hold { id: u64, body: Bytes },
    /// Forget held webhooks whose outcome is durable.
    Release { ids: Vec<u64> },
    /// Remember what full passes translated (see [`SERVED`]); never fsynced on its own.
    Served { rows: Vec<Served> },
    /// Keep cascades until they are carried out, durably ([`super::cascades::CASCADES`]).
    Cascade { pending: Vec<PendingCascade> },
    /// Forget cascades carried out, each unless it was queued again since (another value).
    Cascaded { done: Vec<PendingCascade> },
    /// The slugs a run listed of one parent type, in place of those listed before.
    Slugs {
        parent: &'static str,
        slugs: Vec<(u64, String)>,
    },
    /// How far a run read NetBox's change log for deletes of `parent` (`extras.tag`): the
    /// time of the newest change logged then ([`super::cascades::LOG_MARKS`]).
    LogMark { parent: &'static str, at: String },
    /// Persist everything written so far.
    Flush,
    /// Persist everything and stop the commit thread.
    Close,
}

impl Write {
    pub(super) fn needs_fsync(&self) -> bool {
        // A cascade forgotten too late runs once more; nothing is lost.
        !matches!(
            self,
            Write::Record { .. } | Write::Served { .. } | Write::Cascaded { .. }
        )
    }
}

/// A hash of an object as NetBox served it, with what its translation depends on besides.
pub type ServedHash = [u8; 16];

/// One row of [`SERVED`].
#[derive(Debug, Clone)]
pub struct Served {
    pub key: String,
    pub hash: ServedHash,
    pub delta_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("state store {path} is in use by another netbox-relay process")]
    InUse { path: PathBuf },
    #[error("state store: unreadable record for {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("state store is closed")]
    Closed,
    /// A write failed (disk full, I/O error); the store reopens itself once the file is writable.
    #[error("state store {path} cannot be written ({message}); retrying")]
    Faulted { path: PathBuf, message: String },
}

/// A spooled delta JetStream stored, at `seq`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub delta_id: String,
    pub seq: u64,
}

/// One key of a type as its record says: see [`Store::known_under`].
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub id: u64,
    pub revision: chrono::DateTime<chrono::Utc>,
    pub live: bool,
    /// The hash of the object a full pass translated into this head, if one did ([`SERVED`]).
    pub served: Option<ServedHash>,
}

impl Known {
    /// The key as `delta` leaves it.
    pub fn of(delta: &crate::delta::RegistryDelta) -> Known {
        Known {
            id: delta.object_id,
            revision: delta.revision,
            live: delta.op != crate::delta::Op::Delete,
            served: None,
        }
    }
}

/// One delta waiting in the spool.
#[derive(Debug, Clone)]
pub struct SpooledDelta {
    pub seq: u64,
    pub bytes: Vec<u8>,
    /// See [`SPOOL_AFTER`].
    pub after: Option<u64>,
}

/// What the spool holds, read at open.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolStats {
    pub depth: u64,
    pub bytes: u64,
    pub next_seq: u64,
    /// Dead letters waiting for an operator.
    pub dead: u64,
}

/// redb's page cache by default (`state.cache_bytes`). Lookups touch one record per webhook and
/// the spool is read from its head, so a small cache serves; redb's default (1 GiB) only grows
/// the process.
pub const CACHE_BYTES: usize = 32 << 20;

pub struct Store {
    /// The heads table as of the last commit, for the reads of each webhook: a read transaction
    /// and its table opened once per commit, not once per webhook. `commits` counts commits; a
    /// view taken at an older count is opened again. Declared before `db`, so that it is
    /// dropped before the file is closed.
    view: Mutex<Option<(u64, Arc<HeadsView>)>>,
    commits: AtomicU64,
    /// None only while [`Store::reopen`] swaps it: redb refuses a second handle on one file.
    db: RwLock<Option<Database>>,
    /// Records handed to the commit thread and not yet in the file; reads look here first.
    pub(super) pending: Pending,
    path: PathBuf,
    cache_bytes: usize,
}

type HeadsView = ReadOnlyTable<&'static str, &'static [u8]>;

impl Store {
    /// Opens the store, creating the file (and its directory) on first start.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, CACHE_BYTES)
    }

    /// [`Store::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        let store = Store::open_unmigrated(path, cache_bytes)?;
        super::migrate::records_into_heads(&store)?;
        Ok(store)
    }

    /// Opens the file and creates its tables, leaving an older file's records as they are.
    pub(super) fn open_unmigrated(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let store = Store {
            view: Mutex::new(None),
            commits: AtomicU64::new(0),
            db: RwLock::new(Some(create(path, cache_bytes)?)),
            pending: Pending::default(),
            path: path.to_path_buf(),
            cache_bytes,
        };
        store.write(&[], &mut 0, true)?;
        Ok(store)
    }

    /// Gives the file's free pages back (redb keeps them for later writes otherwise).
    pub(super) fn compact(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // redb compacts no file that a read transaction holds.
        self.forget_view();
        let db = db.as_mut().ok_or_else(|| self.fail(REOPENING))?;
        db.compact().map(drop).map_err(|e| self.fail(e))
    }

    /// After a failed write redb refuses every further one ("previous I/O error") until the file
    /// is opened again: closes it and opens it again, which succeeds once the disk takes writes.
    pub(super) fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // A view of the old file would keep it open, and redb opens no file twice.
        self.forget_view();
        drop(db.take());
        *db = Some(create(&self.path, self.cache_bytes)?);
        drop(db);
        self.write(&[], &mut 0, true)
    }

    /// Commits `tx`; the reads of heads see it from now on. The view of the file before it is
    /// dropped at once: a read transaction left open would keep redb from reusing the pages
    /// this and later commits free (a full pass commits many while no webhook reads).
    pub(super) fn commit(&self, tx: WriteTransaction) -> Result<(), StoreError> {
        tx.commit().map_err(|e| self.fail(e))?;
        self.forget_view();
        Ok(())
    }

    /// The heads table as of the last commit: the view kept since, or a new one.
    fn heads_view(&self) -> Result<Arc<HeadsView>, StoreError> {
        let at = self.commits.load(Ordering::SeqCst);
        let kept = self.view.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, view)) = kept.as_ref().filter(|(n, _)| *n == at) {
            return Ok(view.clone());
        }
        drop(kept);
        let tx = self.begin_read()?;
        let view = Arc::new(tx.open_table(HEADS).map_err(|e| self.fail(e))?);
        let mut kept = self.view.lock().unwrap_or_else(|e| e.into_inner());
        // Kept only if nothing was committed (or the file reopened) since `at` was read.
        if self.commits.load(Ordering::SeqCst) == at {
            *kept = Some((at, view.clone()));
        }
        Ok(view)
    }

    /// Drops the kept view; a view being opened now is not kept.
    fn forget_view(&self) {
        let mut kept = self.view.lock().unwrap_or_else(|e| e.into_inner());
        self.commits.fetch_add(1, Ordering::SeqCst);
        *kept = None;
    }

    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or_else(|| self.fail(REOPENING))?;
        db.begin_read().map_err(|e| self.fail(e))
    }

    pub(super) fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or_else(|| self.fail(REOPENING))?;
        db.begin_write().map_err(|e| self.fail(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read on tokio's blocking pool: a read that misses redb's cache waits for the disk,
    /// and must not hold a runtime thread that other webhooks are served on meanwhile.
    pub async fn read<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| self.fail(format!("a read stopped: {e}")))?
    }

    pub(super) fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The head of one key's record (revision, delta id, tombstone), without parsing the entry.
    pub fn head(&self, key: &str) -> Result<Option<RecordHead>, StoreError> {
        Ok(self.heads(&[key])?.pop().flatten())
    }

    /// The heads of `keys`, in order, read in one transaction (or on their way to it).
    pub fn heads(&self, keys: &[&str]) -> Result<Vec<Option<RecordHead>>, StoreError> {
        // The pending records first: one committed since is removed from them only after its
        // commit, so a view taken after looking there shows it.
        let pending: Vec<Option<Bytes>> = keys.iter().map(|key| self.pending.get(key)).collect();
        let heads = match pending.iter().all(Option::is_some) {
            true => None,
            false => Some(self.heads_view()?),
        };
        keys.iter()
            .zip(pending)
            .map(|(key, pending)| {
                let head = match (pending, &heads) {
                    (Some(record), _) => RecordHead::from_bytes(&record),
                    (None, Some(heads)) => match heads.get(*key).map_err(|e| self.fail(e))? {
                        Some(bytes) => RecordHead::from_bytes(bytes.value()),
                        None => return Ok(None),
                    },
                    (None, None) => None,
                };
                head.map(Some).ok_or_else(|| corrupt(key, "malformed head"))
            })
            .collect()
    }

    /// Whether no key has a record: a new state file, or one deleted.
    pub fn has_no_records(&self) -> Result<bool, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(HEADS).map_err(|e| self.fail(e))?;
        let first = table.first().map_err(|e| self.fail(e))?;
        Ok(first.is_none())
    }

    /// The id, revision and liveness of every key `<prefix><id>`: what reconcile's delete check
    /// needs, about 40 bytes a key, so that a large type's scan holds neither entries nor keys.
    pub fn known_under(&self, prefix: &str) -> Result<Vec<Known>, StoreError> {
        self.known(prefix, false)
    }

    /// [`Self::known_under`] with the hash of what a full pass translated into each key's head,
    /// where that is still the head: the heads and [`SERVED`] read side by side, in key order,
    /// in one read transaction.
    pub fn known_and_served_under(&self, prefix: &str) -> Result<Vec<Known>, StoreError> {
        self.known(prefix, true)
    }

    fn known(&self, prefix: &str, with_served: bool) -> Result<Vec<Known>, StoreError> {
        let tx = self.begin_read()?;
        let served = tx.open_table(SERVED).map_err(|e| self.fail(e))?;
        let mut served = match with_served {
            true => Some(served.range(prefix..).map_err(|e| self.fail(e))?.peekable()),
            false => None,
        };
        let mut known = Vec::new();
        self.heads_in(&tx, prefix, |key, head| {
            let Ok(id) = key[prefix.len()..].parse() else {
                return;
            };
            let hash = served.as_mut().and_then(|rows| {
                // Rows of keys without a head are passed over; the cache's own errors only
                // cost the hash.
                while let Some(Ok((row_key, _))) = rows.peek() {
                    if row_key.value() >= key {
                        break;
                    }
                    rows.next();
                }
                match rows.peek() {
                    Some(Ok((row_key, row))) if row_key.value() == key => {
                        served_hash(row.value(), &head).filter(|_| self.pending.get(key).is_none())
                    }
                    _ => None,
                }
            });
            known.push(Known {
                id,
                revision: head.revision,
                live: !head.deleted(),
                served: hash,
            });
        })?;
        Ok(known)
    }

    /// Calls `each` with the key and head of every record whose key starts with `prefix`, in one
    /// read transaction.
    pub fn each_head(
        &self,
        prefix: &str,
        each: impl FnMut(&str, RecordHead),
    ) -> Result<(), StoreError> {
        self.heads_in(&self.begin_read()?, prefix, each)
    }

    fn heads_in(
        &self,
        tx: &ReadTransaction,
        prefix: &str,
        mut each: impl FnMut(&str, RecordHead),
    ) -> Result<(), StoreError> {
        let table = tx.open_table(HEADS).map_err(|e| self.fail(e))?;
        for row in table.range(prefix..).map_err(|e| self.fail(e))? {
            let (key, value) = row.map_err(|e| self.fail(e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let head = RecordHead::from_bytes(value.value())
                .ok_or_else(|| corrupt(key, "malformed head"))?;
            each(key, head);
        }
        Ok(())
    }

    /// The oldest `limit` spooled deltas, in order.
    pub fn spool_head(&self, limit: usize) -> Result<Vec<SpooledDelta>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
        let after = tx.open_table(SPOOL_AFTER).map_err(|e| self.fail(e))?;
        let rows = table.iter().map_err(|e| self.fail(e))?.take(limit);
        rows.map(|row| {
            let (seq, bytes) = row.map_err(|e| self.fail(e))?;
            let seq = seq.value();
            Ok(SpooledDelta {
                seq,
                bytes: bytes.value().to_vec(),
                after: after.get(seq).map_err(|e| self.fail(e))?.map(|a| a.value()),
            })
        })
        .collect()
    }

    /// The oldest `limit` held webhooks after hold number `after`, in order.
    pub fn held_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(HELD).map_err(|e| self.fail(e))?;
        let from = after.map_or(0, |a| a.saturating_add(1));
        let rows = table.range(from..).map_err(|e| self.fail(e))?.take(limit);
        rows.map(|row| {
            let (id, body) = row.map_err(|e| self.fail(e))?;
            Ok((id.value(), body.value().to_vec()))
        })
        .collect()
    }

    /// How many webhooks are held, and the next free hold number.
    pub fn held_stats(&self) -> Result<(u64, u64), StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(HELD).map_err(|e| self.fail(e))?;
        let count = table.len().map_err(|e| self.fail(e))?;
        let last = table.last().map_err(|e| self.fail(e))?;
        Ok((count, last.map_or(0, |(id, _)| id.value() + 1)))
    }

    pub fn spool_stats(&self) -> Result<SpoolStats, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
        let mut stats = SpoolStats::default();
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (seq, bytes) = row.map_err(|e| self.fail(e))?;
            stats.depth += 1;
            stats.bytes += bytes.value().len() as u64;
            stats.next_seq = seq.value() + 1;
        }
        // Dead letters keep their spool sequence as their id: new rows never take one of them.
        let dead = tx.open_table(DEAD).map_err(|e| self.fail(e))?;
        let last_dead = dead.last().map_err(|e| self.fail(e))?;
        if let Some((seq, _)) = last_dead {
            stats.next_seq = stats.next_seq.max(seq.value() + 1);
        }
        stats.dead = dead.len().map_err(|e| self.fail(e))?;
        Ok(stats)
    }

    /// Applies `writes` in one transaction; `durable` waits for fsync. Spooled deltas take
    /// sequence numbers from `next_seq`, which moves only when the commit succeeds.
    pub(super) fn write(
        &self,
        writes: &[Write],
        next_seq: &mut u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write()?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability).map_err(|e| self.fail(e))?;
        let mut seq = *next_seq;
        {
            let mut records = Records::open(&tx).map_err(|e| self.fail(e))?;
            let mut spool = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
            let mut spool_after = tx.open_table(SPOOL_AFTER).map_err(|e| self.fail(e))?;
            let mut dead = tx.open_table(DEAD).map_err(|e| self.fail(e))?;
            let mut held = tx.open_table(HELD).map_err(|e| self.fail(e))?;
            let mut served = tx.open_table(SERVED).map_err(|e| self.fail(e))?;
            cascades::create(&tx).map_err(|e| self.fail(e))?;
            for write in writes {
                match write {
                    Write::Record { key, record } | Write::Spool { key, record, .. } => {
                        records.insert(key, record).map_err(|e| self.fail(e))?;
                    }
                    Write::Unspool {
                        seqs,
                        dead: letters,
                        acked,
                    } => {
                        for s in seqs {
                            spool.remove(*s).map_err(|e| self.fail(e))?;
                            spool_after.remove(*s).map_err(|e| self.fail(e))?;
                        }
                        for a in acked {
                            learn_seq(&mut records, a).map_err(|e| self.fail(e))?;
                        }
                        for letter in letters {
                            spool.remove(letter.seq).map_err(|e| self.fail(e))?;
                            spool_after.remove(letter.seq).map_err(|e| self.fail(e))?;
                            dead.insert(letter.seq, letter.to_bytes().as_slice())
                                .map_err(|e| self.fail(e))?;
                            forget(&mut records, letter).map_err(|e| self.fail(e))?;
                        }
                    }
                    Write::Hold { id, body } => {
                        held.insert(*id, body.as_ref()).map_err(|e| self.fail(e))?;
                    }
                    Write::Release { ids } => {
                        for id in ids {
                            held.remove(*id).map_err(|e| self.fail(e))?;
                        }
                    }
                    Write::Served { rows } => {
                        for row in rows {
                            let mut value = row.hash.to_vec();
                            value.extend_from_slice(row.delta_id.as_bytes());
                            served
                                .insert(row.key.as_str(), value.as_slice())
                                .map_err(|e| self.fail(e))?;
                        }
                    }
                    Write::Cascade { .. }
                    | Write::Cascaded { .. }
                    | Write::Slugs { .. }
                    | Write::LogMark { .. } => {
                        cascades::apply(&tx, write).map_err(|e| self.fail(e))?;
                    }
                    Write::Flush | Write::Close => {}
                }
                if let Write::Spool { delta, after, .. } = write {
                    spool
                        .insert(seq, delta.as_ref())
                        .map_err(|e| self.fail(e))?;
                    if let Some(after) = after {
                        spool_after.insert(seq, after).map_err(|e| self.fail(e))?;
                    }
                    seq += 1;
                }
            }
        }
        self.commit(tx)?;
        *next_seq = seq;
        Ok(())
    }
}

/// What a transaction meets while [`Store::reopen`] swaps the database.
const REOPENING: &str = "being reopened after a failed write";

fn create(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
            },
            e => StoreError::Db {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })
}

/// The records (heads) as the commit thread and the dead letters write them.
pub(super) struct Records<'t> {
    heads: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Records<'t> {
    pub fn open(tx: &'t WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Records {
            heads: tx.open_table(HEADS)?,
        })
    }

    pub fn insert(&mut self, key: &str, record: &[u8]) -> Result<(), redb::StorageError> {
        self.heads.insert(key, record).map(drop)
    }

    /// The key's head; None also for one that cannot be read, which the next write replaces.
    pub fn head(&self, key: &str) -> Result<Option<RecordHead>, redb::StorageError> {
        let bytes = self.heads.get(key)?;
        Ok(bytes.and_then(|b| RecordHead::from_bytes(b.value())))
    }

    pub fn remove(&mut self, key: &str) -> Result<(), redb::StorageError> {
        self.heads.remove(key).map(drop)
    }
}

/// A [`SERVED`] row's hash, if it was stored with `head`'s delta id and the head is live.
fn served_hash(row: &[u8], head: &RecordHead) -> Option<ServedHash> {
    let (hash, delta_id) = row.split_at_checked(size_of::<ServedHash>())?;
    let live = !head.deleted() && delta_id == head.delta_id.as_bytes();
    live.then(|| hash.try_into().ok())?
}

/// The key's record gets the sequence its delta was stored at, if it still is that delta (a
/// later one may have been spooled since).
fn learn_seq(tables: &mut Records, acked: &Acked) -> Result<(), redb::StorageError> {
    match tables.head(&acked.key)? {
        Some(head) if head.delta_id == acked.delta_id => {
            let head = RecordHead {
                seq: Some(acked.seq),
                ..head
            };
            tables.insert(&acked.key, &head.to_bytes())
        }
        _ => Ok(()),
    }
}

/// A dead-lettered delta no longer stands for its key: the record is removed when it still
/// points at that delta, so that the next reconcile publishes the key's current state again.
fn forget(tables: &mut Records, letter: &DeadLetter) -> Result<(), redb::StorageError> {
    let Some((key, delta_id)) = letter.key_and_id() else {
        return Ok(());
    };
    match tables.head(&key)? {
        Some(head) if head.delta_id == delta_id => tables.remove(&key),
        _ => Ok(()),
    }
}

pub(super) fn corrupt(key: &str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{encode, with_seq, Encoded};
    use super::super::testing::device_delete;
    use super::*;
    use crate::delta::{entry_hash, Op, RegistryDelta};

    #[test]
    fn heads_keep_op_revision_sequence_entry_hash_and_delta_id_in_a_few_bytes() {
        let revision = "2026-11-22T10:45:01.583546Z".parse().unwrap();
        let head = RecordHead {
            revision,
            delta_id: "00112233445566778899aabbccddeeff".into(),
            op: Op::Delete,
            inferred: false,
            seq: None,
            entry: None,
            shown: None,
        };
        assert_eq!(RecordHead::from_bytes(&head.to_bytes()), Some(head.clone()));
        assert_eq!(RecordHead::from_bytes(&[7, 0]), None);
        let full = RecordHead {
            op: Op::Upsert,
            seq: Some(1 << 40 | 7),
            entry: Some([9; 16]),
            shown: Some([5; 8]),
            ..head.clone()
        };
        let bytes = full.to_bytes();
        assert_eq!(RecordHead::from_bytes(&bytes), Some(full.clone()));
        assert_eq!(bytes.len(), 1 + 12 + 8 + 16 + 8 + 32, "under 80 bytes");
        assert_eq!(
            RecordHead::from_bytes(&bytes[..bytes.len() - 33]),
            None,
            "cut inside the shown values' hash"
        );
        // A head written before the shown values' hash: the id follows the entry's.
        let mut no_shown = full.to_bytes();
        no_shown[0] &= !0x40;
        no_shown.drain(1 + 12 + 8 + 16..1 + 12 + 8 + 16 + 8);
        let without = RecordHead {
            shown: None,
            ..full.clone()
        };
        assert_eq!(RecordHead::from_bytes(&no_shown), Some(without));
        // A head written before the sequence slot: the id follows the revision directly.
        let mut old = head.to_bytes();
        old[0] &= 0x0f;
        old.drain(13..21);
        assert_eq!(RecordHead::from_bytes(&old), Some(head.clone()));

        // An encoded upsert: its record holds the entry's hash; before its ack the sequence is
        // unknown, then the ack's is written into the same buffer.
        let mut delta = device_delete(7, revision);
        delta.op = Op::Upsert;
        delta.entry = Some(crate::delta::Entry {
            name: "dmi01-akron-rtr01".into(),
            status: Some("active".into()),
            addresses: vec!["10.0.0.1".into()],
            labels: [("source".to_string(), "netbox".to_string())].into(),
            attributes: Default::default(),
            sweep: None,
            netbox_url: "/api/dcim/devices/7/".into(),
        });
        let Encoded { record, json } = encode(&delta).unwrap();
        assert_eq!(
            serde_json::from_slice::<RegistryDelta>(&json).unwrap(),
            delta
        );
        let unacked = RecordHead::from_bytes(&record).unwrap();
        assert_eq!(unacked.seq, None);
        let hash = entry_hash(delta.entry.as_ref().unwrap()).unwrap();
        assert_eq!(unacked.entry, Some(hash));
        let device = crate::netbox::parents::Parent::from_name("dcim.device").unwrap();
        assert_eq!(
            unacked.shown,
            device.shown_hash(delta.entry.as_ref().unwrap())
        );
        assert!(unacked.shows_as(&delta));
        let mut renamed = delta.clone();
        renamed.entry.as_mut().unwrap().name = "dmi01-akron-rtr02".into();
        assert!(!unacked.shows_as(&renamed));
        assert_eq!(unacked.delta_id, delta.delta_id);
        let buffer = record.as_ptr();
        let acked = with_seq(record, 43);
        assert_eq!(acked.as_ptr(), buffer, "written in place");
        let acked = RecordHead::from_bytes(&acked).unwrap();
        assert_eq!((acked.seq, acked.entry), (Some(43), Some(hash)));
    }

    /// Reads of heads share one view of the file per commit: a commit is seen by the next read,
    /// and a kept view neither holds the file open when it is reopened nor keeps it from being
    /// compacted.
    #[test]
    fn a_kept_view_of_the_heads_gives_way_to_each_commit_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let revision = "2026-11-22T10:45:01.583546Z".parse().unwrap();
        let delta = device_delete(1, revision);
        let later = device_delete(1, revision + chrono::Duration::seconds(1));
        assert_eq!(store.head(&delta.key).unwrap(), None);
        for (d, durable) in [(&delta, false), (&later, true)] {
            let record = encode(d).unwrap().record;
            let write = Write::Record {
                key: d.key.clone(),
                record,
            };
            store.write(&[write], &mut 0, durable).unwrap();
            let head = store.head(&d.key).unwrap().unwrap();
            assert_eq!(head.delta_id, d.delta_id);
        }
        let revision = |store: &Store| store.head(&delta.key).unwrap().unwrap().revision;
        store.reopen().unwrap();
        assert_eq!(revision(&store), later.revision);
        store.compact().unwrap();
        assert_eq!(revision(&store), later.revision);
    }

    #[test]
    fn an_ack_fills_in_a_records_sequence_and_a_dead_letter_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let revision = "2026-11-22T10:45:01.583546Z".parse().unwrap();
        let ids = |store: &Store| -> Vec<u64> {
            let known = store.known_under("netbox/default/dcim.device/").unwrap();
            known.iter().map(|k| k.id).collect()
        };
        assert!(store.has_no_records().unwrap());
        let deltas: Vec<RegistryDelta> = (1..=3).map(|id| device_delete(id, revision)).collect();
        let writes: Vec<Write> = deltas
            .iter()
            .map(|d| Write::Record {
                key: d.key.clone(),
                record: encode(d).unwrap().record,
            })
            .collect();
        store.write(&writes, &mut 0, true).unwrap();
        assert_eq!(ids(&store), [1, 2, 3]);
        assert!(!store.has_no_records().unwrap());
        assert!(store
            .known_under("netbox/default/ipam.prefix/")
            .unwrap()
            .is_empty());
        // A spooled delta's ack gives its record the stream sequence, unless the key moved on.
        let acked = |d: &RegistryDelta, delta_id: &str, seq| Acked {
            key: d.key.clone(),
            delta_id: delta_id.to_string(),
            seq,
        };
        let unspool = Write::Unspool {
            seqs: Vec::new(),
            dead: Vec::new(),
            acked: vec![
                acked(&deltas[1], &deltas[1].delta_id, 77),
                acked(&deltas[2], "an older delta", 78),
            ],
        };
        store.write(&[unspool], &mut 0, true).unwrap();
        assert_eq!(store.head(&deltas[1].key).unwrap().unwrap().seq, Some(77));
        assert_eq!(store.head(&deltas[2].key).unwrap().unwrap().seq, None);
        // A dead letter's record goes while it still points at the dead delta.
        let letter = |d: &RegistryDelta, seq| DeadLetter {
            seq,
            reason: "refused".into(),
            dead_at: revision,
            bytes: encode(d).unwrap().json.to_vec(),
        };
        let mut older = device_delete(3, revision);
        older.delta_id = "an older delta".into();
        let unspool = Write::Unspool {
            seqs: Vec::new(),
            dead: vec![letter(&deltas[0], 0), letter(&older, 1)],
            acked: Vec::new(),
        };
        store.write(&[unspool], &mut 0, true).unwrap();
        assert_eq!(ids(&store), [2, 3]);
        assert_eq!(store.head(&deltas[0].key).unwrap(), None);
        // A head that cannot be read is an error, not a missing key.
        {
            let tx = store.begin_write().unwrap();
            let mut heads = tx.open_table(HEADS).unwrap();
            heads
                .insert(deltas[1].key.as_str(), b"junk".as_slice())
                .unwrap();
            drop(heads);
            store.commit(tx).unwrap();
        }
        assert!(store.head(&deltas[1].key).is_err());
    }

    #[test]
    fn a_served_hash_counts_only_while_its_key_has_the_live_head_it_was_stored_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let delta = |id: u64, seconds: i64, op: Op| {
            let at = chrono::DateTime::from_timestamp(1_790_000_000 + seconds, 0).unwrap();
            let mut d = device_delete(id, at);
            d.op = op;
            d.delta_id = format!("{id}-{seconds}-{op:?}");
            d
        };
        let record = |d: &crate::delta::RegistryDelta| Write::Record {
            key: d.key.clone(),
            record: encode(d).unwrap().record,
        };
        let row = |d: &crate::delta::RegistryDelta, hash: u8, delta_id: &str| Served {
            key: d.key.clone(),
            hash: [hash; 16],
            delta_id: delta_id.to_string(),
        };
        let (one, two, three, four) = (
            delta(1, 0, Op::Upsert),
            delta(2, 0, Op::Upsert),
            delta(3, 0, Op::Delete),
            delta(4, 0, Op::Upsert),
        );
        let no_head = delta(15, 0, Op::Upsert);
        let rows = vec![
            row(&one, 1, &one.delta_id),
            row(&no_head, 15, &no_head.delta_id),
            row(&two, 2, "another delta"),
            row(&three, 3, &three.delta_id),
        ];
        let writes = [
            record(&one),
            record(&two),
            record(&three),
            record(&four),
            Write::Served { rows },
        ];
        store.write(&writes, &mut 0, false).unwrap();
        let served = |store: &Store| -> Vec<(u64, Option<u8>)> {
            let known = store
                .known_and_served_under("netbox/default/dcim.device/")
                .unwrap();
            known
                .iter()
                .map(|k| (k.id, k.served.map(|h| h[0])))
                .collect()
        };
        assert_eq!(
            served(&store),
            [(1, Some(1)), (2, None), (3, None), (4, None)],
            "stored with the head; another delta; a delete; no row"
        );
        store
            .write(&[record(&delta(1, 60, Op::Upsert))], &mut 0, false)
            .unwrap();
        assert_eq!(served(&store)[0], (1, None), "the head moved on");
    }
}
