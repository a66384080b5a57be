use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::committer::Write;
use super::record::{Record, RecordHead};

/// Registry key -> the last accepted delta (JSON), read back as a [`Record`].
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Spool sequence -> the delta as published (JSON), drained in sequence order.
const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("state store: unreadable record for {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("state store is closed")]
    Closed,
}

/// One delta waiting in the spool.
#[derive(Debug, Clone)]
pub struct SpooledDelta {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// What the spool holds, read at open.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolStats {
    pub depth: u64,
    pub bytes: u64,
    pub next_seq: u64,
}

/// redb's page cache. Lookups touch one record per webhook and the spool is read from its head,
/// so a small cache serves; redb's default (1 GiB) only grows the process.
const CACHE_BYTES: usize = 32 << 20;

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the store, creating the file (and its directory) on first start.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| fail(&e))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        store.write(&[], &mut 0, true)?;
        Ok(store)
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The head of one key's record (revision, delta id, tombstone), without parsing the entry.
    pub fn head(&self, key: &str) -> Result<Option<RecordHead>, StoreError> {
        Ok(self.get_many(&[key])?.pop().flatten())
    }

    /// The records of `keys`, in order, read in one transaction.
    pub fn records(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, StoreError> {
        self.get_many(keys)
    }

    /// The heads of `keys`, in order, read in one transaction.
    pub fn heads(&self, keys: &[&str]) -> Result<Vec<Option<RecordHead>>, StoreError> {
        self.get_many(keys)
    }

    fn get_many<T: serde::de::DeserializeOwned>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(RECORDS).map_err(|e| self.fail(e))?;
        keys.iter()
            .map(|key| {
                let Some(value) = table.get(*key).map_err(|e| self.fail(e))? else {
                    return Ok(None);
                };
                serde_json::from_slice(value.value())
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_string(),
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// Revision and tombstone of every key starting with `prefix` (not the entries: a reconcile
    /// of a large type would otherwise hold them all).
    pub fn heads_with_prefix(&self, prefix: &str) -> Result<Vec<(String, RecordHead)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(RECORDS).map_err(|e| self.fail(e))?;
        let mut heads = Vec::new();
        for row in table.range(prefix..).map_err(|e| self.fail(e))? {
            let (key, value) = row.map_err(|e| self.fail(e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let head = serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                message: e.to_string(),
            })?;
            heads.push((key.to_string(), head));
        }
        Ok(heads)
    }

    /// The oldest `limit` spooled deltas, in order.
    pub fn spool_head(&self, limit: usize) -> Result<Vec<SpooledDelta>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
        let rows = table.iter().map_err(|e| self.fail(e))?.take(limit);
        rows.map(|row| {
            let (seq, bytes) = row.map_err(|e| self.fail(e))?;
            Ok(SpooledDelta {
                seq: seq.value(),
                bytes: bytes.value().to_vec(),
            })
        })
        .collect()
    }

    pub fn spool_stats(&self) -> Result<SpoolStats, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
        let mut stats = SpoolStats::default();
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (seq, bytes) = row.map_err(|e| self.fail(e))?;
            stats.depth += 1;
            stats.bytes += bytes.value().len() as u64;
            stats.next_seq = seq.value() + 1;
        }
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
        let mut tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability).map_err(|e| self.fail(e))?;
        let mut seq = *next_seq;
        {
            let mut records = tx.open_table(RECORDS).map_err(|e| self.fail(e))?;
            let mut spool = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
            for write in writes {
                match write {
                    Write::Record { key, delta } | Write::Spool { key, delta } => {
                        records
                            .insert(key.as_str(), delta.as_ref())
                            .map_err(|e| self.fail(e))?;
                    }
                    Write::Unspool { seqs } => {
                        for s in seqs {
                            spool.remove(*s).map_err(|e| self.fail(e))?;
                        }
                    }
                    Write::Flush | Write::Close => {}
                }
                if let Write::Spool { delta, .. } = write {
                    spool
                        .insert(seq, delta.as_ref())
                        .map_err(|e| self.fail(e))?;
                    seq += 1;
                }
            }
        }
        tx.commit().map_err(|e| self.fail(e))?;
        *next_seq = seq;
        Ok(())
    }
}
