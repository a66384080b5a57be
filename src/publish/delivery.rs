//! Getting one delta durably on its way: per key in order, stale and duplicate ones dropped,
//! straight to JetStream when the spool is empty, into the spool otherwise.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use super::spool::Spool;
use super::Publisher;
use crate::delta::RegistryDelta;
use crate::state::{encode, judge, Committer, Encoded, Store, StoreError, Verdict, Write};

/// Where a delta went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Acknowledged by JetStream.
    Published,
    /// Fsynced into the spool; drained once NATS takes it.
    Spooled,
    /// Not published: stale or duplicate.
    Dropped(Verdict),
}

/// Why a delta could not be made durable. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("JetStream did not take the delta and the spool is full ({max_bytes} bytes)")]
    SpoolFull { max_bytes: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot serialize the delta: {0}")]
    Serialize(#[from] serde_json::Error),
}

pub struct Delivery {
    publisher: Arc<Publisher>,
    store: Arc<Store>,
    committer: Committer,
    spool: Arc<Spool>,
    locks: KeyLocks,
}

impl Delivery {
    pub fn new(
        publisher: Arc<Publisher>,
        store: Arc<Store>,
        committer: Committer,
        spool: Arc<Spool>,
    ) -> Self {
        Delivery {
            publisher,
            store,
            committer,
            spool,
            locks: KeyLocks::new(),
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Returns once the delta is in JetStream or fsynced in the spool, or judged stale or
    /// duplicate. Deltas of one key are handled one at a time, in arrival order.
    pub async fn deliver(&self, delta: &RegistryDelta) -> Result<Delivered, DeliveryError> {
        let _key = self.locks.lock(&delta.key).await;
        let verdict = judge(self.store.head(&delta.key)?.as_ref(), delta);
        if verdict != Verdict::Accept {
            return Ok(Delivered::Dropped(verdict));
        }
        // Serialized once: one buffer holds the record's head and the JSON that is published,
        // spooled if need be, and remembered behind that head.
        let Encoded { record, json } = encode(delta)?;
        let key = delta.key.clone();
        // While the spool holds anything, new deltas queue behind it so that per-key order holds.
        if self.spool.depth() == 0 {
            match self.publisher.publish(delta, json.clone()).await {
                Ok(_) => {
                    let write = Write::Record { key, record };
                    self.committer.commit(write).await?;
                    return Ok(Delivered::Published);
                }
                // Per delta only at debug: during an outage this is every webhook. The drainer
                // logs the spool's depth every 10 s instead.
                Err(e) => tracing::debug!(error = %e, key = %delta.key, "spooling the delta"),
            }
        }
        let size = json.len() as u64;
        if !self.spool.reserve(size) {
            let max_bytes = self.spool.max_bytes();
            return Err(DeliveryError::SpoolFull { max_bytes });
        }
        if let Err(e) = self
            .committer
            .commit(Write::Spool {
                key,
                record,
                delta: json,
            })
            .await
        {
            self.spool.release(size);
            return Err(e.into());
        }
        self.spool.added();
        Ok(Delivered::Spooled)
    }
}

/// Mutexes by key hash: deltas of one key never race; unrelated keys rarely wait on each other.
struct KeyLocks(Vec<Mutex<()>>);

impl KeyLocks {
    const SHARDS: usize = 1024;

    fn new() -> Self {
        KeyLocks((0..Self::SHARDS).map(|_| Mutex::new(())).collect())
    }

    async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        self.0[(hasher.finish() % Self::SHARDS as u64) as usize]
            .lock()
            .await
    }
}
