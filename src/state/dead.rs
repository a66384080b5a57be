//! Dead letters: spooled deltas that JetStream refused for good (too large, no stream for the
//! subject, a bad request) and spool rows that could not be read. They leave the spool so that the
//! rest drains on, and wait here for an operator (`netbox-relay spool retry|drop`).

use chrono::DateTime;
use redb::ReadableTable;

use super::codec::encode;
use super::letter::DeadLetter;
use super::store::{Records, Store, StoreError, DEAD, SPOOL};
use crate::delta::RegistryDelta;

/// Which dead letters a `retry` or `drop` acts on.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    /// By delta id.
    Ids(Vec<String>),
}

impl Selection {
    fn picks(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => letter.key_and_id().is_some_and(|(_, id)| ids.contains(&id)),
        }
    }
}

/// What a `retry` did with each dead letter it picked.
#[derive(Debug, Default)]
pub struct Retried {
    /// Back at the end of the spool.
    pub requeued: Vec<String>,
    /// Left where they are, with why (unreadable, or a newer delta of the key was accepted since).
    pub kept: Vec<(u64, String)>,
}

impl Store {
    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(DEAD).map_err(|e| self.fail(e))?;
        let mut letters = Vec::new();
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (seq, value) = row.map_err(|e| self.fail(e))?;
            let seq = seq.value();
            letters.push(
                DeadLetter::from_bytes(seq, value.value()).unwrap_or(DeadLetter {
                    seq,
                    reason: "the dead letter itself is unreadable".to_string(),
                    dead_at: DateTime::UNIX_EPOCH,
                    bytes: value.value().to_vec(),
                }),
            );
        }
        Ok(letters)
    }

    /// Puts `delta` at the end of the spool (as `next_seq`) and makes it its key's record, unless
    /// a newer delta of the key was accepted: publishing the old one would undo it. Whether it
    /// was spooled.
    pub(super) fn respool(
        &self,
        records: &mut Records<'_>,
        spool: &mut redb::Table<'_, u64, &'static [u8]>,
        next_seq: &mut u64,
        delta: &RegistryDelta,
    ) -> Result<bool, StoreError> {
        let head = records.head(&delta.key).map_err(|e| self.fail(e))?;
        if head.is_some_and(|h| h.revision > delta.revision) {
            return Ok(false);
        }
        let encoded = encode(delta).map_err(|e| self.fail(e))?;
        records
            .insert(&delta.key, &encoded.record)
            .map_err(|e| self.fail(e))?;
        spool
            .insert(*next_seq, encoded.json.as_ref())
            .map_err(|e| self.fail(e))?;
        *next_seq += 1;
        Ok(true)
    }

    /// Puts the picked dead letters back at the end of the spool, unless a newer delta of their
    /// key was accepted meanwhile (publishing the old one would undo it) or they do not parse.
    pub fn retry_dead(&self, selection: &Selection) -> Result<Retried, StoreError> {
        let picked = self.picked(selection)?;
        let mut next_seq = self.spool_stats()?.next_seq;
        let mut retried = Retried::default();
        let tx = self.begin_write()?;
        {
            let mut records = Records::open(&tx).map_err(|e| self.fail(e))?;
            let mut spool = tx.open_table(SPOOL).map_err(|e| self.fail(e))?;
            let mut dead = tx.open_table(DEAD).map_err(|e| self.fail(e))?;
            for letter in picked {
                let delta = match serde_json::from_slice::<RegistryDelta>(&letter.bytes) {
                    Ok(delta) => delta,
                    Err(e) => {
                        retried.kept.push((letter.seq, format!("unreadable: {e}")));
                        continue;
                    }
                };
                if !self.respool(&mut records, &mut spool, &mut next_seq, &delta)? {
                    let why = format!("{}: a newer delta of the key was accepted since", delta.key);
                    retried.kept.push((letter.seq, why));
                    continue;
                }
                dead.remove(letter.seq).map_err(|e| self.fail(e))?;
                retried.requeued.push(delta.delta_id);
            }
        }
        self.commit(tx)?;
        Ok(retried)
    }

    fn picked(&self, selection: &Selection) -> Result<Vec<DeadLetter>, StoreError> {
        let letters = self.dead_letters()?.into_iter();
        Ok(letters.filter(|l| selection.picks(l)).collect())
    }

    /// Removes the picked dead letters for good; answers how many.
    pub fn drop_dead(&self, selection: &Selection) -> Result<usize, StoreError> {
        let picked: Vec<u64> = self.picked(selection)?.iter().map(|l| l.seq).collect();
        let tx = self.begin_write()?;
        {
            let mut dead = tx.open_table(DEAD).map_err(|e| self.fail(e))?;
            for seq in &picked {
                dead.remove(*seq).map_err(|e| self.fail(e))?;
            }
        }
        self.commit(tx)?;
        Ok(picked.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_reads_back_as_written() {
        let letter = DeadLetter {
            seq: 7,
            reason: "JetStream refused it: maximum message size exceeded".to_string(),
            dead_at: DateTime::from_timestamp_millis(1_790_000_000_123).unwrap(),
            bytes: br#"{"key":"netbox/default/dcim.device/1","delta_id":"ab"}"#.to_vec(),
        };
        let read = DeadLetter::from_bytes(7, &letter.to_bytes()).unwrap();
        assert_eq!(read, letter);
        let names = ("netbox/default/dcim.device/1".to_string(), "ab".to_string());
        assert_eq!(read.key_and_id(), Some(names));
        assert_eq!(DeadLetter::from_bytes(1, &[0, 9, b'x']), None);
    }
}
