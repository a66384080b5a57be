//! The embedded store of what has been accepted, per registry key (for stale-drop and reconcile
//! diffs), and the spool of deltas waiting for NATS. One redb file at `state.path`; deleting it
//! is safe (the next reconcile rebuilds the records), except for a spool that still holds deltas.

mod cascades;
mod codec;
mod committer;
mod dead;
mod held;
mod letter;
mod migrate;
mod pending;
mod record;
mod store;

pub use cascades::PendingCascade;
pub use codec::{encode, record, with_seq, Encoded};
pub use committer::{Committer, Health};
pub use dead::{Retried, Selection};
pub use held::Unheld;
pub use letter::{key_and_id, DeadLetter};
pub use record::{judge, RecordHead, Verdict};
pub use store::{
    Acked, Known, Served, ServedHash, SpoolStats, SpooledDelta, Store, StoreError, Write,
    CACHE_BYTES,
};

#[cfg(test)]
pub(crate) mod testing {
    use chrono::{DateTime, Utc};

    use crate::delta::RegistryDelta;

    /// A delete of device `id` at `at`, as reconcile infers it: a delta of the shape every
    /// state test stores.
    pub fn device_delete(id: u64, at: DateTime<Utc>) -> RegistryDelta {
        let device = crate::netbox::ObjectType::from_name("dcim.device").unwrap();
        let sweep = crate::translate::SweepOptions {
            expand_subnets: false,
            max_expanded_hosts: 0,
        };
        let translator = crate::translate::Translator::new("default", sweep, &[device]);
        translator.reconcile_delete(device, id, at, at).unwrap()
    }
}
