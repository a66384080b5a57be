//! Records on their way to the state file. A webhook's record is handed to the commit thread
//! without waiting for its transaction (its delta is in JetStream already, and the record is
//! not fsynced anyway), and reads find it here until it is committed, so that the key's next
//! delta is judged against it. Bounded: past [`MAX_PENDING`] records in flight, writers wait for
//! the commit thread.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustc_hash::{FxBuildHasher, FxHashMap};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Records handed to the commit thread and not yet committed, at most.
pub const MAX_PENDING: usize = 8192;
const SHARDS: usize = 32;

/// Keys come from signed webhooks and NetBox's answers, at most [`MAX_PENDING`] of them: a quick
/// hash will do.
pub struct Pending {
    shards: Vec<Mutex<FxHashMap<String, Bytes>>>,
    room: Arc<Semaphore>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            room: Arc::new(Semaphore::new(MAX_PENDING)),
        }
    }
}

impl Pending {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, FxHashMap<String, Bytes>> {
        // The high bits: the map within the shard uses the low ones.
        let shard = (FxBuildHasher.hash_one(key) >> 32) as usize % SHARDS;
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key's record if one is on its way.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.shard(key).get(key).cloned()
    }

    /// Room for one more record; waits while [`MAX_PENDING`] are in flight.
    pub async fn room(&self) -> OwnedSemaphorePermit {
        let room = self.room.clone();
        room.acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    pub fn put(&self, key: &str, record: Bytes) {
        self.shard(key).insert(key.to_string(), record);
    }

    /// `record` of `key` is in the file: forgotten here, unless a newer one is on its way.
    pub fn committed(&self, key: &str, record: &Bytes) {
        let mut shard = self.shard(key);
        let same = shard
            .get(key)
            .is_some_and(|r| r.as_ptr() == record.as_ptr() && r.len() == record.len());
        if same {
            shard.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{encode, with_seq, Committer, Store, Write};

    fn record_of(id: u64, seconds: i64) -> (String, bytes::Bytes) {
        let at = chrono::DateTime::from_timestamp(1_790_000_000 + seconds, 0).unwrap();
        let delta = super::super::testing::device_delete(id, at);
        (delta.key.clone(), encode(&delta).unwrap().record)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_not_waited_for_is_read_at_once_then_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
        let committer = Committer::start(store.clone(), 0);
        let (key, first) = record_of(7, 0);
        let first = with_seq(first, 11);
        committer.record_later(key.clone(), first).await.unwrap();
        // Read at once, whether or not the commit thread has got to it.
        assert_eq!(store.head(&key).unwrap().unwrap().seq, Some(11));
        let (_, second) = record_of(7, 60);
        let second = with_seq(second, 12);
        committer.record_later(key.clone(), second).await.unwrap();
        assert_eq!(
            store.head(&key).unwrap().unwrap().seq,
            Some(12),
            "the newer one"
        );
        // A commit waited for comes after both (one queue): then both are in the file.
        committer.commit(Write::Flush).await.unwrap();
        assert!(
            store.pending.get(&key).is_none(),
            "forgotten once committed"
        );
        assert_eq!(store.head(&key).unwrap().unwrap().seq, Some(12));
        committer.close().await;
    }
}
