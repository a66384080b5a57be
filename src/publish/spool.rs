//! The spool: deltas JetStream did not take, kept in the state store (fsynced before the webhook
//! is answered) and drained in order, with back-off, once NATS is back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::delivery::{publish_checked, Checked};
use super::{PublishError, Publisher};
use crate::delta::RegistryDelta;
use crate::state::{Committer, DeadLetter, SpoolStats, SpooledDelta, Store, Write};
use crate::telemetry;

/// Counters of what the spool holds; the rows themselves live in the store.
pub struct Spool {
    depth: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    /// Dead letters in the state file, waiting for an operator.
    dead: AtomicU64,
    wake: Notify,
}

impl Spool {
    pub fn new(stats: &SpoolStats, max_bytes: u64) -> Spool {
        Spool {
            depth: AtomicU64::new(stats.depth),
            bytes: AtomicU64::new(stats.bytes),
            max_bytes,
            dead: AtomicU64::new(stats.dead),
            wake: Notify::new(),
        }
    }

    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::SeqCst)
    }

    /// Whether `n` more bytes would fit now.
    pub fn has_room(&self, n: u64) -> bool {
        self.bytes.load(Ordering::SeqCst) + n <= self.max_bytes
    }

    fn dead_lettered(&self, count: u64) {
        self.dead.fetch_add(count, Ordering::SeqCst);
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
/// one's ack, so that a failure never lets a later delta of a key overtake an earlier one. A delta
/// JetStream refuses for good, or a row that cannot be read, moves to the dead letters and the
/// rest drains on.
pub async fn drain(
    spool: Arc<Spool>,
    store: Arc<Store>,
    committer: Committer,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
) {
    let mut drainer = Drainer {
        spool: &spool,
        store: &store,
        committer: &committer,
        publisher: &publisher,
        acked: BTreeSet::new(),
    };
    let mut backoff = MIN_BACKOFF;
    let mut last_log = Instant::now();
    loop {
        report(&spool, &store, &mut last_log).await;
        if spool.depth() == 0 {
            tokio::select! {
                _ = spool.wake.notified() => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let progressed =
            publisher.is_connected() && publisher.stream_ready() && drainer.round().await;
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

struct Drainer<'a> {
    spool: &'a Spool,
    store: &'a Arc<Store>,
    committer: &'a Committer,
    publisher: &'a Publisher,
    /// Rows JetStream acknowledged whose removal from the spool has not been committed (the
    /// state file failed): they are removed, never published again, once it takes writes.
    acked: BTreeSet<u64>,
}

impl Drainer<'_> {
    /// Publishes the head of the spool; true when the whole round went out.
    async fn round(&mut self) -> bool {
        let head = match self.store.read(|store| store.spool_head(ROUND)).await {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                return false;
            }
        };
        let (mut drained, mut letters, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bytes, mut complete) = (0, true);
        for row in &head {
            let sent = match self.acked.contains(&row.seq) {
                true => Sent::Acked,
                false => self.publish(row).await,
            };
            match sent {
                Sent::Acked => drained.push(row.seq),
                Sent::Dead(letter, reason) => {
                    letters.push(letter);
                    reasons.push(reason);
                }
                Sent::Paused => {
                    complete = false;
                    break;
                }
            }
            bytes += row.bytes.len() as u64;
        }
        let count = (drained.len() + letters.len()) as u64;
        if count == 0 {
            return false;
        }
        self.acked.extend(drained.iter().copied());
        let unspool = Write::Unspool {
            seqs: drained.clone(),
            dead: letters,
        };
        match self.committer.commit(unspool).await {
            Ok(()) => {
                for seq in &drained {
                    self.acked.remove(seq);
                }
                self.spool.drained(count, bytes);
                self.spool.dead_lettered(reasons.len() as u64);
                for reason in reasons {
                    telemetry::dead_lettered(reason);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot remove drained deltas from the spool; they are not published again");
                return false;
            }
        }
        complete
    }

    /// Publishes one row; a refusal or an unreadable row makes a dead letter.
    async fn publish(&self, row: &SpooledDelta) -> Sent {
        let delta = match serde_json::from_slice::<RegistryDelta>(&row.bytes) {
            Ok(delta) => delta,
            Err(e) => {
                tracing::error!(seq = row.seq, error = %e, "an unreadable spool row moved to the dead letters");
                return Sent::Dead(letter(row, format!("unreadable: {e}")), "unreadable");
            }
        };
        let payload = bytes::Bytes::copy_from_slice(&row.bytes);
        // Another relay may have published to the key while this one spooled: the key's last
        // message on the stream is read, and a delta that loses to it is not published.
        let publisher = self.publisher;
        let mut sent = publish_checked(publisher, &delta, &payload, None).await;
        // No stream answered: make sure the stream is there (created again if it was deleted)
        // and try once more; a stream that is there and still does not take the subject
        // refuses it for good.
        let mut stream_there = false;
        if matches!(sent, Err(PublishError::NoStream(_))) {
            stream_there = self.publisher.ensure_stream().await.is_ok();
            if stream_there {
                sent = publish_checked(publisher, &delta, &payload, None).await;
            }
        }
        let error = match sent {
            Ok(Checked::Published(_) | Checked::AlreadyStored(_)) => return Sent::Acked,
            Ok(Checked::Superseded { verdict, latest }) => {
                tracing::debug!(key = %delta.key, reason = verdict.reason(),
                    "a spooled delta lost to one another relay published; not published");
                // Only remembered: the spool row goes either way.
                self.committer.commit(latest).await.ok();
                return Sent::Acked;
            }
            Err(e) => e,
        };
        let no_stream = matches!(error, PublishError::NoStream(_));
        let refused = error.is_refusal() || (no_stream && stream_there);
        if !refused {
            tracing::warn!(error = %error, depth = self.spool.depth(), "spool drain paused");
            return Sent::Paused;
        }
        tracing::error!(key = %delta.key, delta_id = %delta.delta_id, error = %error,
            "JetStream refused a spooled delta; moved to the dead letters (netbox-relay spool)");
        Sent::Dead(letter(row, error.to_string()), "refused")
    }
}

enum Sent {
    Acked,
    /// The letter, and the reason label of its metric.
    Dead(DeadLetter, &'static str),
    Paused,
}

fn letter(row: &SpooledDelta, reason: String) -> DeadLetter {
    DeadLetter {
        seq: row.seq,
        reason,
        dead_at: Utc::now(),
        bytes: row.bytes.clone(),
    }
}

/// Sets the spool gauges, and logs them while the spool is not empty.
async fn report(spool: &Spool, store: &Arc<Store>, last_log: &mut Instant) {
    let depth = spool.depth();
    let oldest = match depth {
        0 => 0.0,
        _ => store
            .read(|store| store.spool_head(1))
            .await
            .ok()
            .and_then(|head| serde_json::from_slice::<RegistryDelta>(&head.first()?.bytes).ok())
            .map_or(0.0, |d| {
                (Utc::now() - d.observed_at).num_milliseconds().max(0) as f64 / 1000.0
            }),
    };
    telemetry::spool(depth, oldest);
    telemetry::dead_letters(spool.dead());
    if depth > 0 && last_log.elapsed() >= LOG_EVERY {
        tracing::warn!(
            depth,
            oldest_seconds = oldest,
            "deltas are waiting in the spool for NATS"
        );
        *last_log = Instant::now();
    }
}
