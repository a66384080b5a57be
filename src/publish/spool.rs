//! The spool: deltas JetStream did not take, kept in the state store (fsynced before the webhook
//! is answered) and drained in order, with back-off, once NATS is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use crate::delta::RegistryDelta;
use crate::state::{Committer, Store, Write};
use crate::telemetry;

/// Counters of what the spool holds; the rows themselves live in the store.
pub struct Spool {
    depth: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    wake: Notify,
}

impl Spool {
    pub fn new(depth: u64, bytes: u64, max_bytes: u64) -> Spool {
        Spool {
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
            max_bytes,
            wake: Notify::new(),
        }
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Reserves room for `n` bytes; false when the spool is full.
    pub(super) fn reserve(&self, n: u64) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(super) fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::SeqCst);
    }

    /// A reserved delta is now durably in the spool.
    pub(super) fn added(&self) {
        self.depth.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn drained(&self, count: u64, bytes: u64) {
        self.depth.fetch_sub(count, Ordering::SeqCst);
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Deltas taken from the head of the spool per round.
const ROUND: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Drains the spool into JetStream until shutdown. One delta at a time, each after the previous
/// one's ack, so that a failure never lets a later delta of a key overtake an earlier one.
pub async fn drain(
    spool: Arc<Spool>,
    store: Arc<Store>,
    committer: Committer,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut last_log = Instant::now();
    loop {
        report(&spool, &store, &mut last_log);
        if spool.depth() == 0 {
            tokio::select! {
                _ = spool.wake.notified() => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let progressed = publisher.is_connected()
            && publisher.stream_ready()
            && drain_round(&spool, &store, &committer, &publisher).await;
        if progressed {
            backoff = MIN_BACKOFF;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes the head of the spool; true when the whole round went out.
async fn drain_round(
    spool: &Spool,
    store: &Store,
    committer: &Committer,
    publisher: &Publisher,
) -> bool {
    let head = match store.spool_head(ROUND) {
        Ok(head) => head,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the spool");
            return false;
        }
    };
    let (mut seqs, mut bytes, mut complete) = (Vec::new(), 0, true);
    for row in &head {
        match serde_json::from_slice::<RegistryDelta>(&row.bytes) {
            Ok(delta) => {
                let payload = bytes::Bytes::copy_from_slice(&row.bytes);
                if let Err(e) = publisher.publish(&delta, payload).await {
                    tracing::warn!(error = %e, depth = spool.depth(), "spool drain paused");
                    complete = false;
                    break;
                }
            }
            // Only the relay writes the spool; a row it cannot read would block it forever.
            Err(e) => {
                tracing::error!(seq = row.seq, error = %e, "dropping an unreadable spool row")
            }
        }
        seqs.push(row.seq);
        bytes += row.bytes.len() as u64;
    }
    if seqs.is_empty() {
        return false;
    }
    let count = seqs.len() as u64;
    match committer.commit(Write::Unspool { seqs }).await {
        Ok(()) => spool.drained(count, bytes),
        // The deltas are in JetStream; sending them again later is de-duplicated by Nats-Msg-Id.
        Err(e) => {
            tracing::error!(error = %e, "cannot remove drained deltas from the spool");
            return false;
        }
    }
    complete
}

/// Sets the spool gauges, and logs them while the spool is not empty.
fn report(spool: &Spool, store: &Store, last_log: &mut Instant) {
    let depth = spool.depth();
    let oldest = match depth {
        0 => 0.0,
        _ => store
            .spool_head(1)
            .ok()
            .and_then(|head| serde_json::from_slice::<RegistryDelta>(&head.first()?.bytes).ok())
            .map_or(0.0, |d| {
                (Utc::now() - d.observed_at).num_milliseconds().max(0) as f64 / 1000.0
            }),
    };
    telemetry::spool(depth, oldest);
    if depth > 0 && last_log.elapsed() >= LOG_EVERY {
        tracing::warn!(
            depth,
            oldest_seconds = oldest,
            "deltas are waiting in the spool for NATS"
        );
        *last_log = Instant::now();
    }
}
