//! State files written before a key's record was its head alone: they kept each accepted delta's
//! JSON in a `records` table (about 1 KB a key, behind a copy of its head since 2026-11, the JSON
//! alone before), which every webhook wrote and only reconcile's comparison of entries read.
//! At open, such records become heads that hold their entry's hash, and the table goes.

use chrono::{DateTime, Utc};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;

use super::record::RecordHead;
use super::store::{Store, StoreError, HEADS};
use crate::delta::{entry_hash, Entry, Op, Origin};

/// Registry key -> the last accepted delta's JSON, in older files.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// Marks a record that starts with a copy of its head: the marker, the head's length, the head.
const HEAD_PREFIX: u8 = 1;

/// Records turned into heads per transaction.
const CHUNK: usize = 50_000;

/// The fields of an older record's JSON that make its head.
#[derive(Deserialize)]
struct Legacy {
    revision: DateTime<Utc>,
    delta_id: String,
    op: Op,
    origin: Option<Origin>,
    entry: Option<Entry>,
}

/// Turns the records of an older file into heads, [`CHUNK`] at a time (each chunk one
/// transaction: an interrupted migration goes on at the next open), drops the table and
/// compacts the file, which the records had made about 20 times larger than the heads need. A
/// record that cannot be read is dropped with its head: the next reconcile publishes the key's
/// current state again.
pub(super) fn records_into_heads(store: &Store) -> Result<(), StoreError> {
    let count = {
        let tx = store.begin_read()?;
        match tx.open_table(RECORDS) {
            Ok(table) => table.len().map_err(|e| store.fail(e))?,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(store.fail(e)),
        }
    };
    let size = || std::fs::metadata(store.path()).map_or(0, |m| m.len());
    let before = size();
    tracing::info!(
        records = count,
        "state file: turning the records of an older relay into heads, once"
    );
    let mut dropped = 0;
    while let Some(unreadable) = next_chunk(store, CHUNK)? {
        dropped += unreadable;
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "state file: records that could not be read were dropped; the next reconcile publishes those keys again"
        );
    }
    // Only space: a file that cannot be compacted now works as it is.
    if let Err(e) = store.compact() {
        tracing::warn!(error = %e, "state file: not compacted after turning its records into heads");
    }
    tracing::info!(
        records = count,
        bytes_before = before,
        bytes_after = size(),
        "state file: records turned into heads"
    );
    Ok(())
}

/// Migrates the first `size` records; None once there were none left (the table is gone).
/// Answers how many could not be read.
fn next_chunk(store: &Store, size: usize) -> Result<Option<u64>, StoreError> {
    let tx = store.begin_write()?;
    let fail = |e: &dyn std::fmt::Display| store.fail(e);
    let chunk: Vec<(String, Vec<u8>)> = {
        let records = tx.open_table(RECORDS).map_err(|e| fail(&e))?;
        let rows = records.iter().map_err(|e| fail(&e))?.take(size);
        rows.map(|row| {
            let (key, value) = row.map_err(|e| fail(&e))?;
            Ok((key.value().to_string(), value.value().to_vec()))
        })
        .collect::<Result<_, StoreError>>()?
    };
    if chunk.is_empty() {
        tx.delete_table(RECORDS).map_err(|e| fail(&e))?;
        store.commit(tx)?;
        return Ok(None);
    }
    let mut unreadable = 0;
    {
        let mut records = tx.open_table(RECORDS).map_err(|e| fail(&e))?;
        let mut heads = tx.open_table(HEADS).map_err(|e| fail(&e))?;
        for (key, value) in &chunk {
            match head_of(value) {
                Some(head) => heads.insert(key.as_str(), head.to_bytes().as_slice()),
                None => {
                    unreadable += 1;
                    heads.remove(key.as_str())
                }
            }
            .map_err(|e| fail(&e))?;
            records.remove(key.as_str()).map_err(|e| fail(&e))?;
        }
    }
    store.commit(tx)?;
    Ok(Some(unreadable))
}

/// The head of an older record: the fields from its JSON, the stream sequence from its copy of
/// the head where that has one.
fn head_of(value: &[u8]) -> Option<RecordHead> {
    let (prefix, json) = match value {
        [HEAD_PREFIX, len, rest @ ..] if rest.len() >= *len as usize => {
            let (head, json) = rest.split_at(*len as usize);
            (Some(head), json)
        }
        json => (None, json),
    };
    let record: Legacy = serde_json::from_slice(json).ok()?;
    let entry = record.entry.as_ref().map(entry_hash).transpose().ok()?;
    Some(RecordHead {
        inferred: record.op == Op::Delete && record.origin == Some(Origin::Reconcile),
        revision: record.revision,
        delta_id: record.delta_id,
        op: record.op,
        seq: prefix.and_then(RecordHead::from_bytes).and_then(|h| h.seq),
        entry,
        shown: None,
    })
}

#[cfg(test)]
mod tests {
    use redb::Database;

    use super::*;
    use crate::delta::RegistryDelta;

    const REVISION: &str = "2026-11-22T10:45:01.583546Z";

    fn delta(id: u64, op: Op, origin: Origin) -> RegistryDelta {
        let mut delta = crate::state::testing::device_delete(id, REVISION.parse().unwrap());
        (delta.op, delta.origin) = (op, origin);
        if op == Op::Upsert {
            delta.entry = Some(Entry {
                name: format!("device-{id}"),
                status: Some("active".into()),
                addresses: vec!["10.0.0.1".into()],
                labels: [("source".to_string(), "netbox".to_string())].into(),
                attributes: Default::default(),
                sweep: None,
                netbox_url: format!("/api/dcim/devices/{id}/"),
            });
        }
        delta
    }

    /// A record as relays before this format wrote it: `head` (when given) copied in front of
    /// the delta's JSON.
    fn legacy(delta: &RegistryDelta, head: Option<Vec<u8>>) -> Vec<u8> {
        let mut value = Vec::new();
        if let Some(head) = head {
            value.extend([HEAD_PREFIX, head.len() as u8]);
            value.extend(head);
        }
        value.extend(serde_json::to_vec(delta).unwrap());
        value
    }

    #[test]
    fn an_older_files_records_become_heads_with_their_entrys_hash_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let upsert = delta(1, Op::Upsert, Origin::Webhook);
        let inferred = delta(2, Op::Delete, Origin::Reconcile);
        let stated = delta(3, Op::Delete, Origin::Webhook);
        let key = |id: u64| format!("netbox/default/dcim.device/{id}");
        let sequenced = RecordHead {
            seq: Some(42),
            ..RecordHead::of(&upsert)
        };
        // Deletes before inferred ones were told apart had op byte 1 and no sequence slot.
        let mut legacy_delete = RecordHead::of(&stated).to_bytes();
        legacy_delete[0] = 1;
        legacy_delete.drain(13..21);
        let rows = [
            (key(1), legacy(&upsert, Some(sequenced.to_bytes()))),
            (key(2), legacy(&inferred, None)),
            (key(3), legacy(&stated, Some(legacy_delete))),
            (key(4), b"not a record".to_vec()),
        ];
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut records = tx.open_table(RECORDS).unwrap();
                let mut heads = tx.open_table(HEADS).unwrap();
                for (key, value) in &rows {
                    records.insert(key.as_str(), value.as_slice()).unwrap();
                }
                heads
                    .insert(key(1).as_str(), sequenced.to_bytes().as_slice())
                    .unwrap();
                heads.insert(key(4).as_str(), [].as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let expected = RecordHead {
            entry: Some(entry_hash(upsert.entry.as_ref().unwrap()).unwrap()),
            ..sequenced
        };
        let heads = |store: &Store| {
            let keys: Vec<String> = (1..=4).map(key).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            store.heads(&keys).unwrap()
        };
        let migrated = heads(&store);
        assert_eq!(
            migrated[0],
            Some(expected),
            "the sequence kept, the hash added"
        );
        let (two, three) = (migrated[1].clone().unwrap(), migrated[2].clone().unwrap());
        assert!(two.deleted() && two.inferred, "a reconcile delete");
        assert!(three.deleted() && !three.inferred, "a webhook delete");
        assert_eq!(
            (two.delta_id, three.delta_id),
            (inferred.delta_id, stated.delta_id)
        );
        assert_eq!(migrated[3], None, "an unreadable record is dropped");
        let gone = |store: &Store| {
            let tx = store.begin_read().unwrap();
            matches!(
                tx.open_table(RECORDS),
                Err(redb::TableError::TableDoesNotExist(_))
            )
        };
        assert!(gone(&store), "the table goes");
        drop(store);
        let compacted = std::fs::metadata(&path).unwrap().len();
        let store = Store::open(&path).unwrap();
        assert_eq!(heads(&store), migrated, "opened again, nothing changes");
        assert!(gone(&store));
        assert!(std::fs::metadata(&path).unwrap().len() <= compacted);
    }

    #[test]
    fn a_migration_cut_short_goes_on_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let count = 25;
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut records = tx.open_table(RECORDS).unwrap();
                for id in 1..=count {
                    let d = delta(id, Op::Upsert, Origin::Reconcile);
                    records
                        .insert(d.key.as_str(), legacy(&d, None).as_slice())
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        // One chunk done, as if the process had stopped after it.
        {
            let store = Store::open_unmigrated(&path, 1 << 20).unwrap();
            assert_eq!(next_chunk(&store, 15).unwrap(), Some(0));
            let tx = store.begin_read().unwrap();
            let left = tx.open_table(RECORDS).unwrap().len().unwrap();
            assert_eq!(left, 10);
        }
        let store = Store::open(&path).unwrap();
        let known = store.known_under("netbox/default/dcim.device/").unwrap();
        assert_eq!(known.len() as u64, count);
        assert!(known.iter().all(|k| k.live));
        let last = store.head(&delta(count, Op::Upsert, Origin::Reconcile).key);
        assert!(last.unwrap().unwrap().entry.is_some());
    }
}
