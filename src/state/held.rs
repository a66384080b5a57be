//! Held webhooks an operator releases or drops (`netbox-relay held`), with the relay stopped.

use super::store::{Records, Store, StoreError, HELD, SPOOL};
use crate::delta::RegistryDelta;

/// What an operator's `release` or `drop` did.
#[derive(Debug, Default)]
pub struct Unheld {
    /// Deltas put in the spool, published as sent at the relay's next start.
    pub spooled: usize,
    /// Released deltas not spooled: the registry already has a newer delta of their key.
    pub older: usize,
    pub dropped: usize,
}

impl Store {
    /// Every held webhook, in order (at most `webhook.max_held`).
    pub fn held_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|(id, _)| *id);
            let rows = self.held_after(after, 1024)?;
            if rows.is_empty() {
                return Ok(all);
            }
            all.extend(rows);
        }
    }

    /// Forgets held webhooks, in one transaction: those of `release` with their delta put in the
    /// spool (unless the key's record is newer), those of `drop` for good.
    pub fn unhold(
        &self,
        release: Vec<(u64, RegistryDelta)>,
        drop: Vec<u64>,
    ) -> Result<Unheld, StoreError> {
        let mut next_seq = self.spool_stats()?.next_seq;
        let mut unheld = Unheld::default();
        let tx = self.begin_write()?;
        {
            let mut records = Records::open(&tx).map_err(|e| self.fail(e))?;
            let mut spool = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
            let mut held = tx.open_table(HELD).map_err(|e| self.fail(e))?;
            for (id, delta) in release {
                held.remove(id).map_err(|e| self.fail(e))?;
                match self.respool(&mut records, &mut spool, &mut next_seq, &delta)? {
                    true => unheld.spooled += 1,
                    false => unheld.older += 1,
                }
            }
            for id in drop {
                if held.remove(id).map_err(|e| self.fail(e))?.is_some() {
                    unheld.dropped += 1;
                }
            }
        }
        self.commit(tx)?;
        Ok(unheld)
    }
}
