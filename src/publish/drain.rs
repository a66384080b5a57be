//! The spool drainer: spooled deltas into JetStream, in order, with back-off, once NATS is back;
//! what JetStream refuses for good goes to the dead letters.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::order::{publish_checked, Checked};
use super::spool::Spool;
use super::{PublishError, Publisher};
use crate::backoff::Backoff;
use crate::delta::{Kind, RegistryDelta};
use crate::state::{Acked, Committer, DeadLetter, SpooledDelta, Store, Write};
use crate::telemetry;

/// Deltas taken from the head of the spool per round.
const ROUND: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Keys whose last published sequence the drainer keeps between rounds; past this, it starts
/// over (a key it forgot is read from the stream once).
const KEPT_SEQS: usize = 65_536;

/// Drains the spool into JetStream until shutdown. One delta at a time, each after the previous
/// one's ack, so that a failure never lets a later delta of a key overtake an earlier one. A delta
/// JetStream refuses for good, or a row that cannot be read, moves to the dead letters and the
/// rest drains on.
pub async fn drain(
    spool: Arc<Spool>,
    store: Arc<Store>,
    committer: Committer,
    publisher: Arc<Publisher>,
    rereads: Option<Rereads>,
    shutdown: CancellationToken,
) {
    let mut drainer = Drainer {
        spool: &spool,
        store: &store,
        committer: &committer,
        publisher: &publisher,
        rereads,
        acked: BTreeSet::new(),
        last_seq: HashMap::new(),
    };
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
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
            backoff.reset();
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_wait()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Objects (kind, id) to read again from NetBox: a spooled delta was published over another
/// relay's entry of the same revision, which may be the newer one.
pub type Rereads = tokio::sync::mpsc::Sender<(Kind, u64)>;

struct Drainer<'a> {
    spool: &'a Spool,
    rereads: Option<Rereads>,
    store: &'a Arc<Store>,
    committer: &'a Committer,
    publisher: &'a Publisher,
    /// Rows JetStream acknowledged whose removal from the spool has not been committed (the
    /// state file failed): they are removed, never published again, once it takes writes.
    acked: BTreeSet<u64>,
    /// The stream sequence of the last delta the drainer published per key, so that the key's
    /// next spooled delta is published after it without reading the stream; None where the
    /// stream must be read (another relay's delta won).
    last_seq: HashMap<String, Option<u64>>,
}

impl Drainer<'_> {
    /// Asks for `delta`'s object to be read again (see [`Rereads`]); with no one to ask, or the
    /// queue full, the next full pass compares it.
    fn read_again(&self, delta: &RegistryDelta) {
        let asked = self
            .rereads
            .as_ref()
            .map(|r| r.try_send((delta.kind, delta.object_id)));
        if !matches!(asked, Some(Ok(()))) {
            tracing::warn!(key = %delta.key, "a spooled delta was published over another relay's entry of the same revision, and its object cannot be read again now; the next full pass compares it");
        }
    }

    /// Publishes the head of the spool; true when the whole round went out.
    async fn round(&mut self) -> bool {
        let head = match self.store.read(|store| store.spool_head(ROUND)).await {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                return false;
            }
        };
        if self.last_seq.len() > KEPT_SEQS {
            self.last_seq.clear();
        }
        let (mut drained, mut letters, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        let mut acked = Vec::new();
        let (mut bytes, mut complete) = (0, true);
        for row in &head {
            let sent = match self.acked.contains(&row.seq) {
                true => Sent::Acked(None),
                false => self.publish(row).await,
            };
            match sent {
                Sent::Acked(seq) => {
                    drained.push(row.seq);
                    acked.extend(seq);
                }
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
            acked,
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

    /// The sequence a row of `key` is published after: the drainer's last publish of the key,
    /// else the one spooled with the row; None: read from the stream. One that is no longer the
    /// key's last (the relay restarted mid-drain, another relay published) is refused by
    /// JetStream, and the key is read then.
    fn expected(&self, key: &str, row: &SpooledDelta) -> Option<u64> {
        match self.last_seq.get(key) {
            Some(seq) => *seq,
            None => row.after,
        }
    }

    /// Publishes one row; a refusal or an unreadable row makes a dead letter.
    async fn publish(&mut self, row: &SpooledDelta) -> Sent {
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
        let known = self.expected(&delta.key, row);
        let mut sent = publish_checked(publisher, &delta, &payload, known).await;
        // No stream answered: make sure the stream is there (created again if it was deleted)
        // and try once more. A stream that is there and does not capture the subject refuses
        // it for good; one that captures it was answered for by a cluster node that has not
        // caught up (just restarted): the drain pauses and tries again.
        let mut stream_there = false;
        if matches!(sent, Err(PublishError::NoStream(_))) {
            stream_there = self.publisher.ensure_stream().await.is_ok();
            if stream_there {
                sent = publish_checked(publisher, &delta, &payload, known).await;
            }
        }
        let error = match sent {
            Ok(Checked::Published { seq, over }) => {
                if over.is_some_and(|other| delta.differs_at_same_revision(&other)) {
                    self.read_again(&delta);
                }
                self.last_seq.insert(delta.key.clone(), Some(seq));
                return Sent::Acked(Some(Acked {
                    key: delta.key,
                    delta_id: delta.delta_id,
                    seq,
                }));
            }
            Ok(Checked::AlreadyStored(seq)) => {
                self.last_seq.insert(delta.key.clone(), Some(seq));
                return Sent::Acked(Some(Acked {
                    key: delta.key,
                    delta_id: delta.delta_id,
                    seq,
                }));
            }
            Ok(Checked::Superseded { verdict, latest }) => {
                tracing::debug!(key = %delta.key, reason = verdict.reason(),
                    "a spooled delta lost to one another relay published; not published");
                // The key's next spooled delta was judged against this one, not the stream's.
                self.last_seq.insert(delta.key.clone(), None);
                // Only remembered: the spool row goes either way.
                self.committer.commit(latest).await.ok();
                return Sent::Acked(None);
            }
            Err(e) => e,
        };
        let captured = self.publisher.stream_captures_subjects();
        if !refused_for_good(&error, stream_there, captured) {
            tracing::warn!(error = %error, depth = self.spool.depth(), "spool drain paused");
            return Sent::Paused;
        }
        tracing::error!(key = %delta.key, delta_id = %delta.delta_id, error = %error,
            "JetStream refused a spooled delta; moved to the dead letters (netbox-relay spool)");
        Sent::Dead(letter(row, error.to_string()), "refused")
    }
}

/// Whether JetStream's answer refuses a delta for good (it becomes a dead letter) rather than
/// for now (the drain pauses): a refusal of the message itself, or no stream for its subject
/// while the stream is there and does not capture it. Captured, "no stream" came from a cluster
/// node that has not caught up with the stream yet.
fn refused_for_good(error: &PublishError, stream_there: bool, captured: bool) -> bool {
    let no_stream = matches!(error, PublishError::NoStream(_));
    error.is_refusal() || (no_stream && stream_there && !captured)
}

enum Sent {
    /// Stored (at this sequence, when it was published now).
    Acked(Option<Acked>),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_stream_for_a_captured_subject_is_tried_again() {
        let no_stream = PublishError::NoStream("no stream found for given subject".into());
        // Found by the soak: a NATS node just restarted answers so while the stream is there.
        assert!(!refused_for_good(&no_stream, true, true));
        assert!(
            refused_for_good(&no_stream, true, false),
            "a stream that takes other subjects"
        );
        assert!(
            !refused_for_good(&no_stream, false, false),
            "no stream reached: NATS away"
        );
        let too_large = PublishError::Refused("message size exceeds maximum allowed".into());
        assert!(refused_for_good(&too_large, true, true));
        assert!(!refused_for_good(
            &PublishError::NoAck("timed out".into()),
            true,
            true
        ));
    }
}
