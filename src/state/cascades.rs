//! What the cascades need to outlive a restart: the triggers not yet carried out, the slugs
//! runs last listed of the parents that are no registry kind (device role, platform, tag, IPAM
//! role), so that a run tells a re-slugged one from an unchanged one, and how far runs have read
//! NetBox's change log for deleted tags.

use std::collections::HashMap;

use bytes::Bytes;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError, Write};

/// Parent (`dcim.site/3`) -> its pending cascade, as the cascade queue encodes it. A row is
/// written, durably, before the parent's change is published, and removed once its dependents
/// were pulled; a relay that stops in between runs it at its next start or run.
pub(super) const CASCADES: TableDefinition<&str, &[u8]> = TableDefinition::new("cascades");
/// Parent (`dcim.platform/2`) -> its slug as the last run listed it.
pub(super) const SLUGS: TableDefinition<&str, &str> = TableDefinition::new("parent_slugs");
/// Parent type (`extras.tag`) -> the time (NetBox's) of the newest change in NetBox's change log
/// when a run last read the deletes of that type from it.
pub(super) const LOG_MARKS: TableDefinition<&str, &str> = TableDefinition::new("change_log_marks");

/// One pending cascade as stored: the parent's key and the queue's encoding of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCascade {
    pub key: String,
    pub value: Bytes,
}

impl Store {
    /// Every pending cascade, in key order.
    pub fn pending_cascades(&self) -> Result<Vec<PendingCascade>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(CASCADES).map_err(|e| self.fail(e))?;
        let rows = table.iter().map_err(|e| self.fail(e))?;
        rows.map(|row| {
            let (key, value) = row.map_err(|e| self.fail(e))?;
            Ok(PendingCascade {
                key: key.value().to_string(),
                value: Bytes::copy_from_slice(value.value()),
            })
        })
        .collect()
    }

    /// The slugs last listed of `parent`'s objects, by id.
    pub fn slugs_of(&self, parent: &str) -> Result<HashMap<u64, String>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(SLUGS).map_err(|e| self.fail(e))?;
        let prefix = format!("{parent}/");
        let mut slugs = HashMap::new();
        for row in table.range(prefix.as_str()..).map_err(|e| self.fail(e))? {
            let (key, slug) = row.map_err(|e| self.fail(e))?;
            let Some(id) = key.value().strip_prefix(&prefix) else {
                break;
            };
            if let Ok(id) = id.parse() {
                slugs.insert(id, slug.value().to_string());
            }
        }
        Ok(slugs)
    }
}

impl Store {
    /// The time [`LOG_MARKS`] holds for `parent`: None before a run read the change log.
    pub fn log_mark(&self, parent: &str) -> Result<Option<String>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(LOG_MARKS).map_err(|e| self.fail(e))?;
        let mark = table.get(parent).map_err(|e| self.fail(e))?;
        Ok(mark.map(|m| m.value().to_string()))
    }
}

/// Applies the cascade writes of one transaction; other writes are left alone.
pub(super) fn apply(tx: &WriteTransaction, write: &Write) -> Result<(), redb::Error> {
    match write {
        Write::Cascade { pending } => {
            let mut table = tx.open_table(CASCADES)?;
            for p in pending {
                table.insert(p.key.as_str(), p.value.as_ref())?;
            }
        }
        Write::Cascaded { done } => {
            let mut table = tx.open_table(CASCADES)?;
            for p in done {
                // A trigger queued again meanwhile has another value, and stays.
                let same = table
                    .get(p.key.as_str())?
                    .map(|v| v.value() == p.value.as_ref());
                if same == Some(true) {
                    table.remove(p.key.as_str())?;
                }
            }
        }
        Write::Slugs { parent, slugs } => {
            let mut table = tx.open_table(SLUGS)?;
            let prefix = format!("{parent}/");
            let stale: Vec<String> = table
                .range(prefix.as_str()..)?
                .map_while(|row| {
                    let key = row.ok()?.0.value().to_string();
                    key.starts_with(&prefix).then_some(key)
                })
                .collect();
            for key in stale {
                table.remove(key.as_str())?;
            }
            for (id, slug) in slugs {
                table.insert(format!("{prefix}{id}").as_str(), slug.as_str())?;
            }
        }
        Write::LogMark { parent, at } => {
            tx.open_table(LOG_MARKS)?.insert(*parent, at.as_str())?;
        }
        _ => {}
    }
    Ok(())
}

/// Creates the tables, so that reads of a new file find them empty.
pub(super) fn create(tx: &WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(CASCADES)?;
    tx.open_table(SLUGS)?;
    tx.open_table(LOG_MARKS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Committer;
    use std::sync::Arc;

    fn pending(key: &str, value: &str) -> PendingCascade {
        PendingCascade {
            key: key.to_string(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    #[tokio::test]
    async fn a_cascade_done_removes_only_the_trigger_it_ran() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
        let committer = Committer::start(store.clone(), 0);
        let first = pending("dcim.site/3", "a");
        let again = pending("dcim.site/3", "b");
        let other = pending("dcim.site/4", "c");
        let write = Write::Cascade {
            pending: vec![first.clone(), other.clone()],
        };
        committer.commit(write).await.unwrap();
        // Site 3 changed again while its first cascade ran.
        let write = Write::Cascade {
            pending: vec![again.clone()],
        };
        committer.commit(write).await.unwrap();
        let done = vec![first, other];
        committer.commit(Write::Cascaded { done }).await.unwrap();
        assert_eq!(
            store.pending_cascades().unwrap(),
            std::slice::from_ref(&again)
        );
        committer
            .commit(Write::Cascaded { done: vec![again] })
            .await
            .unwrap();
        assert_eq!(store.pending_cascades().unwrap(), []);
    }

    fn slugs<C: FromIterator<(u64, String)>>(list: &[(u64, &str)]) -> C {
        list.iter().map(|(i, s)| (*i, s.to_string())).collect()
    }

    #[tokio::test]
    async fn listed_slugs_replace_those_of_the_parent_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
        let committer = Committer::start(store.clone(), 0);
        for (parent, list) in [
            ("dcim.platform", slugs(&[(1, "junos"), (2, "eos")])),
            ("dcim.devicerole", slugs(&[(1, "leaf")])),
            ("dcim.platform", slugs(&[(2, "arista-eos"), (3, "nxos")])),
        ] {
            committer
                .commit(Write::Slugs {
                    parent,
                    slugs: list,
                })
                .await
                .unwrap();
        }
        let platforms = store.slugs_of("dcim.platform").unwrap();
        let expected: HashMap<u64, String> = slugs(&[(2, "arista-eos"), (3, "nxos")]);
        assert_eq!(platforms, expected);
        let roles = store.slugs_of("dcim.devicerole").unwrap();
        assert_eq!(roles, slugs::<HashMap<_, _>>(&[(1, "leaf")]));
    }
}
