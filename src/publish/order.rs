//! The per-key publish rule: a delta is published only while its key's last message on the
//! stream is the one it was judged against (`Nats-Expected-Last-Subject-Sequence`); on a conflict
//! the key's last message is read and the delta judged again.

use bytes::Bytes;

use super::jetstream::Last;
use super::{PublishError, Publisher};
use crate::delta::RegistryDelta;
use crate::state::{self, judge, with_seq, RecordHead, Verdict, Write};
use crate::telemetry;

/// What a checked publish came to.
pub(super) enum Checked {
    /// Stored at this stream sequence; `over` is another relay's message the key had instead
    /// of the one this relay remembered, read on a conflict (see [`Delivered::Published`]).
    Published {
        seq: u64,
        over: Option<Box<RegistryDelta>>,
    },
    /// JetStream had stored this very delta already (its `Nats-Msg-Id`, within the
    /// de-duplication window), at this sequence: nothing new was stored.
    AlreadyStored(u64),
    /// Another relay published to the key first, and this delta loses to that one (stale or the
    /// same): not published. `latest` remembers the stream's delta for the key instead.
    Superseded { verdict: Verdict, latest: Write },
}

/// Conflicts in a row before the delta is left for later (spooled, or kept in the spool).
const MAX_CONFLICTS: usize = 5;

/// Publishes `delta` (`json`) only while the key's last message on the stream is the one it was
/// judged against, whose sequence is `known` (0: the key has none; None: not known, so read it).
/// On a conflict the key's last message is read from the stream and the delta judged again.
/// A single relay knows every sequence it published and never reads.
pub(super) async fn publish_checked(
    publisher: &Publisher,
    delta: &RegistryDelta,
    json: &Bytes,
    mut known: Option<u64>,
) -> Result<Checked, PublishError> {
    let mut restore_id = None;
    let mut over = None;
    for _ in 0..MAX_CONFLICTS {
        let expected = match known {
            Some(seq) => seq,
            None => match publisher.last_of(delta).await? {
                None => 0,
                // Not ours: published over, so that the key's history stays in order and the
                // registry follows NetBox again.
                Some(Last::Foreign(seq)) => {
                    telemetry::foreign_message();
                    tracing::warn!(key = %delta.key, stream_seq = seq,
                        "the key's last message on the stream is no delta (published by hand or by another tool); publishing over it");
                    seq
                }
                Some(Last::Delta(latest, seq)) => {
                    let head = RecordHead {
                        seq: Some(seq),
                        ..RecordHead::of(&latest)
                    };
                    let verdict = judge(Some(&head), delta);
                    if verdict != Verdict::Accept {
                        let record = state::record(&latest)
                            .map_err(|e| PublishError::Encode(e.to_string()))?;
                        let key = latest.key;
                        let latest = Write::Record {
                            key,
                            record: with_seq(record, seq),
                        };
                        return Ok(Checked::Superseded { verdict, latest });
                    }
                    over = Some(latest);
                    seq
                }
            },
        };
        match publisher
            .publish(delta, json.clone(), Some(expected), restore_id.as_deref())
            .await
        {
            // JetStream kept this very delta earlier (within `nats.duplicate_window`), and
            // another came after it on the key: an entry changed and changed back, as when a
            // rename is undone. The key's last message is to be this delta again, so it goes
            // under an id of its own, the same for every retry of this restore.
            Ok(ack) if ack.duplicate && ack.sequence != expected && restore_id.is_none() => {
                restore_id = Some(format!("{}-after-{expected}", delta.delta_id));
                known = Some(expected);
            }
            Ok(ack) if ack.duplicate => return Ok(Checked::AlreadyStored(ack.sequence)),
            Ok(ack) => {
                let seq = ack.sequence;
                return Ok(Checked::Published { seq, over });
            }
            Err(PublishError::Conflict(_)) => (known, restore_id) = (None, None),
            Err(e) => return Err(e),
        }
    }
    Err(PublishError::Conflict(format!(
        "{} still changing after {MAX_CONFLICTS} attempts",
        delta.key
    )))
}
