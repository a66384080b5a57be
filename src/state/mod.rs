//! The embedded store of what has been accepted, per registry key (for stale-drop and reconcile
//! diffs), and the spool of deltas waiting for NATS. One redb file at `state.path`; deleting it
//! is safe (the next reconcile rebuilds the records), except for a spool that still holds deltas.

mod codec;
mod committer;
mod dead;
mod letter;
mod migrate;
mod pending;
mod record;
mod store;

pub use codec::{encode, record, with_seq, Encoded};
pub use committer::{Committer, Health};
pub use dead::{Retried, Selection};
pub use letter::{key_and_id, DeadLetter};
pub use record::{judge, RecordHead, Verdict};
pub use store::{
    Acked, Known, Served, ServedHash, SpoolStats, SpooledDelta, Store, StoreError, Write,
    CACHE_BYTES,
};
