//! Learning the registry from the stream: a relay with no record of keys the stream holds (a new
//! state file, a lost disk, many keys another relay published) reads every key's last message in
//! one pass and remembers it, instead of reading the keys one request at a time.

use futures::stream::{FuturesUnordered, StreamExt};

use crate::delta::{Kind, RegistryDelta};
use crate::publish::{Delivery, DeliveryError, Last, PublishError};
use crate::telemetry;

/// Records being written while the next keys are read: the commit thread takes them in batches.
const IN_FLIGHT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Read(#[from] PublishError),
    #[error("remembering a key read from the stream: {0}")]
    Remember(#[from] DeliveryError),
}

/// Reads the last message of every key of `kind` (every kind when None) in `partition` and
/// remembers those `wanted` picks (by the delta and its stream sequence), so that their next delta is
/// judged and published without reading the stream. `found` sees each remembered delta.
/// Answers how many were remembered.
pub(super) async fn learn(
    delivery: &Delivery,
    partition: &str,
    kind: Option<Kind>,
    wanted: impl Fn(&RegistryDelta, u64) -> bool,
    mut found: impl FnMut(&RegistryDelta),
) -> Result<u64, LearnError> {
    let mut keys = delivery.publisher().last_per_key(partition, kind).await?;
    let mut writing = FuturesUnordered::new();
    let mut learned = 0;
    while let Some(last) = keys.next().await {
        // Not a delta (published by hand): no key of ours.
        let Last::Delta(delta, seq) = last? else {
            continue;
        };
        if !wanted(&delta, seq) {
            continue;
        }
        found(&delta);
        if writing.len() >= IN_FLIGHT {
            if let Some(written) = writing.next().await {
                written?;
            }
        }
        writing.push(async move { delivery.remember(&delta, seq).await });
        learned += 1;
    }
    while let Some(written) = writing.next().await {
        written?;
    }
    telemetry::keys_learned(learned);
    Ok(learned)
}
