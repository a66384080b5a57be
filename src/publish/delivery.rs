//! Getting one delta durably on its way: per key in order, stale and duplicate ones dropped,
//! straight to JetStream when the spool is empty, into the spool otherwise.

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard};

use super::order::{publish_checked, Checked};
use super::spool::Spool;
use super::Publisher;
use crate::delta::{Op, RegistryDelta};
use crate::state::{
    self, encode, judge, with_seq, Committer, Encoded, RecordHead, Served, Store, StoreError,
    Verdict, Write,
};

/// Where a delta went.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// Acknowledged by JetStream. `over`: the key's last message was another relay's, not the
    /// one this relay remembered (read on the conflict, and published after): what the registry
    /// showed before this delta, where this relay's record was behind.
    Published { over: Option<Box<RegistryDelta>> },
    /// Fsynced into the spool; drained once NATS takes it.
    Spooled,
    /// Not published: stale or duplicate.
    Dropped(Verdict),
}

/// What a delta is judged against before it is published.
#[derive(Clone, Copy, PartialEq)]
enum Against {
    /// The key's record (what this relay last published or read of it).
    Record,
    /// The record, and nothing is published at its revision with another entry.
    RecordUnlessAmbiguous,
    /// The key's last message on the stream, read when the delta is published.
    Stream,
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
    /// Nothing was published or spooled: the state file cannot be written.
    #[error("{0}")]
    StoreFaulted(String),
    /// The delta cannot be made to fit in one NATS message.
    #[error("the delta of {object} ({key}) is {size} bytes; the NATS server's max_payload ({max_payload} bytes) leaves {max} for a delta")]
    TooLarge {
        object: String,
        key: String,
        size: usize,
        max: usize,
        max_payload: usize,
    },
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

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The record of `key`: what the registry shows of it, as this relay knows.
    pub fn head(&self, key: &str) -> Result<Option<RecordHead>, DeliveryError> {
        Ok(self.store.head(key)?)
    }

    /// The state file's commit thread, for what reconcile keeps beside the records.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Remembers a delta read from the stream (another relay published it) as the key's record.
    pub async fn remember(&self, latest: &RegistryDelta, seq: u64) -> Result<(), DeliveryError> {
        let record = with_seq(state::record(latest)?, seq);
        let key = latest.key.clone();
        self.committer.commit(Write::Record { key, record }).await?;
        Ok(())
    }

    /// Remembers what a full pass translated (a cache: a failure costs the next full pass the
    /// translation of these objects, and is only logged).
    pub async fn remember_served(&self, rows: Vec<Served>) {
        if let Err(e) = self.committer.commit(Write::Served { rows }).await {
            tracing::warn!(error = %e, "reconcile: cannot remember what this pass translated");
        }
    }

    /// The JetStream context deltas go through, for the reconcile lease's KV bucket.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        self.publisher.jetstream()
    }

    /// Returns once the delta is in JetStream or fsynced in the spool, or judged stale or
    /// duplicate. Deltas of one key are handled one at a time, in arrival order.
    pub async fn deliver(&self, delta: &RegistryDelta) -> Result<Delivered, DeliveryError> {
        let delivered = self.deliver_unless(delta, Against::Record).await?;
        Ok(delivered.unwrap_or(Delivered::Dropped(Verdict::Stale)))
    }

    /// [`Delivery::deliver`] for a webhook's own delta, which is not published when the key's
    /// record is at the same revision with another entry ([`Delivered::Ambiguous`]): NetBox
    /// changes some objects without stamping them (a deleted tag removed from each), and a late
    /// webhook may land after a cascade showed the object's renamed parent. The revision cannot
    /// tell which is newer; NetBox, read again, can. `None` in that case.
    pub async fn deliver_webhook(
        &self,
        delta: &RegistryDelta,
    ) -> Result<Option<Delivered>, DeliveryError> {
        self.deliver_unless(delta, Against::RecordUnlessAmbiguous)
            .await
    }

    /// [`Delivery::deliver`] judged against the key's last message on the stream instead of the
    /// record, which may be behind it (another relay published since) and could not be checked:
    /// the stream is read when the delta is published, or when it is drained from the spool.
    pub async fn deliver_judged_by_stream(
        &self,
        delta: &RegistryDelta,
    ) -> Result<Delivered, DeliveryError> {
        let delivered = self.deliver_unless(delta, Against::Stream).await?;
        Ok(delivered.unwrap_or(Delivered::Dropped(Verdict::Stale)))
    }

    /// Reconcile's delete of a key that a complete listing begun at `listed_from` did not
    /// return. The key's record may be behind the stream: another relay may have published a
    /// newer upsert, which the publish finds and which would make the delete stale. Every version
    /// saved before the listing began is gone from NetBox as well, so the delete is stamped again
    /// at that version's revision and published over it (found by the soak's hour of seed 2032).
    pub async fn deliver_gone(
        &self,
        delta: &RegistryDelta,
        listed_from: DateTime<Utc>,
    ) -> Result<Delivered, DeliveryError> {
        let mut delta = Cow::Borrowed(delta);
        for _ in 0..MAX_RESTAMPS {
            let delivered = self.deliver(&delta).await?;
            if delivered != Delivered::Dropped(Verdict::Stale) {
                return Ok(delivered);
            }
            // The stale verdict left the stream's newer message as the key's record.
            let newer = self.head(&delta.key)?.filter(|h| {
                !h.deleted() && h.revision > delta.revision && h.revision < listed_from
            });
            match newer.and_then(|h| delta.at_revision(h.revision)) {
                Some(restamped) => delta = Cow::Owned(restamped),
                None => return Ok(delivered),
            }
        }
        Ok(Delivered::Dropped(Verdict::Stale))
    }

    async fn deliver_unless(
        &self,
        delta: &RegistryDelta,
        against: Against,
    ) -> Result<Option<Delivered>, DeliveryError> {
        // While the state file takes no writes nothing is published: a published delta whose
        // record could not be kept would make the store and the stream disagree.
        if let Some(problem) = self.committer.health().problem() {
            return Err(DeliveryError::StoreFaulted(problem));
        }
        let _key = self.locks.lock(&delta.key).await;
        // Read on the runtime thread, unlike the drainer's and reconcile's reads: one B-tree
        // lookup in redb's cache (3% of the relay's CPU per webhook), while a hop to the blocking
        // pool cost 11% of the throughput (BENCHMARKS-HISTORY.md, "Store reads").
        let head = match against {
            Against::Stream => None,
            _ => self.store.head(&delta.key)?,
        };
        let verdict = judge(head.as_ref(), delta);
        if verdict != Verdict::Accept {
            return Ok(Some(Delivered::Dropped(verdict)));
        }
        let at_same_revision = head.as_ref().is_some_and(|h| {
            !h.deleted() && h.revision == delta.revision && delta.op == Op::Upsert
        });
        if against == Against::RecordUnlessAmbiguous && at_same_revision {
            return Ok(None);
        }
        let restamped = after_inferred_delete(head.as_ref(), delta);
        let delta = restamped.as_ref().unwrap_or(delta);
        // Serialized once: the JSON that is published (or spooled), and the record (the head,
        // with the entry's hash) that is remembered.
        let (delta, Encoded { record, json }) = self.fit(delta)?;
        // A delta made to fit has another id: it may be the one already published.
        if let Cow::Owned(fitted) = &delta {
            let verdict = judge(head.as_ref(), fitted);
            if verdict != Verdict::Accept {
                return Ok(Some(Delivered::Dropped(verdict)));
            }
        }
        let key = delta.key.clone();
        // Judged against the key's last message as this relay knows it (0: none): published
        // only while that is still the last one on the stream (another relay may have gone first).
        let known = match against {
            Against::Stream => None,
            _ => head.as_ref().map_or(Some(0), |h| h.seq),
        };
        // While the spool holds anything, new deltas queue behind it so that per-key order holds.
        if self.spool.depth() == 0 {
            match publish_checked(&self.publisher, &delta, &json, known).await {
                // The record is not waited for: the delta is safe in JetStream, and the key's
                // next delta reads the record from the pending ones until it is committed.
                Ok(Checked::Published { seq, over }) => {
                    let record = with_seq(record, seq);
                    self.committer.record_later(key, record).await?;
                    return Ok(Some(Delivered::Published { over }));
                }
                Ok(Checked::AlreadyStored(seq)) => {
                    let record = with_seq(record, seq);
                    self.committer.record_later(key, record).await?;
                    return Ok(Some(Delivered::Dropped(Verdict::Duplicate)));
                }
                Ok(Checked::Superseded { verdict, latest }) => {
                    self.committer.commit(latest).await?;
                    return Ok(Some(Delivered::Dropped(verdict)));
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
                after: known,
            })
            .await
        {
            self.spool.release(size);
            return Err(e.into());
        }
        self.spool.added();
        Ok(Some(Delivered::Spooled))
    }

    /// Whether `delta` can be made to fit one NATS message (see [`Delivery::deliver`]).
    pub fn fits(&self, delta: &RegistryDelta) -> Result<(), DeliveryError> {
        self.fit(delta).map(drop)
    }

    /// The delta as it will be published, made to fit in one NATS message: a prefix's host
    /// list is dropped (its CIDR stays, and the sweep says how many hosts were left out).
    /// A delta that cannot be made to fit is never accepted: JetStream would refuse it.
    fn fit<'d>(
        &self,
        delta: &'d RegistryDelta,
    ) -> Result<(Cow<'d, RegistryDelta>, Encoded), DeliveryError> {
        let max = self.publisher.max_delta_bytes();
        let encoded = encode(delta)?;
        if encoded.json.len() <= max {
            return Ok((Cow::Borrowed(delta), encoded));
        }
        if let Some(smaller) = delta.without_sweep_hosts() {
            let fitted = encode(&smaller)?;
            if fitted.json.len() <= max {
                return Ok((Cow::Owned(smaller), fitted));
            }
        }
        Err(DeliveryError::TooLarge {
            object: format!("{} {}", delta.object_type, delta.object_id),
            key: delta.key.clone(),
            size: encoded.json.len(),
            max,
            max_payload: self.publisher.max_payload(),
        })
    }
}

/// An object seen again at the very revision reconcile deleted it at (it was hidden from the
/// token, then shown again) is published one microsecond later: revisions per key keep rising
/// for consumers that order by them, and its id differs from the upsert before the delete, which
/// JetStream would otherwise drop as a duplicate within its window.
fn after_inferred_delete(
    head: Option<&RecordHead>,
    delta: &RegistryDelta,
) -> Option<RegistryDelta> {
    let head = head.filter(|h| h.inferred && delta.op == Op::Upsert)?;
    if delta.revision > head.revision {
        return None;
    }
    delta.at_revision(head.revision + chrono::Duration::microseconds(1))
}

/// Times [`Delivery::deliver_gone`] stamps a delete again: once is the rule (the stream's last
/// message is read on the conflict); more only while other relays keep publishing the key.
const MAX_RESTAMPS: usize = 3;

/// Mutexes by key hash: deltas of one key never race; unrelated keys rarely wait on each other.
struct KeyLocks(Vec<Mutex<()>>);

impl KeyLocks {
    const SHARDS: usize = 1024;

    fn new() -> Self {
        KeyLocks((0..Self::SHARDS).map(|_| Mutex::new(())).collect())
    }

    async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        // Keys come from signed webhooks and NetBox's answers; a quick hash will do.
        let hash = rustc_hash::FxBuildHasher.hash_one(key);
        self.0[(hash % Self::SHARDS as u64) as usize].lock().await
    }
}
