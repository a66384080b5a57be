//! What a run repairs beyond the objects it fetches: the dependents of the parents it finds
//! changed. NetBox does not retry a webhook it could not deliver, and a renamed site stamps none
//! of its devices, so a cheap pass that fetched only what `last_updated` shows changed would
//! leave the devices with the old label. A run therefore cascades as the webhooks would have:
//! - a registry-kind parent (site, tenant, cluster, VRF, VLAN, device, VM, IP address) saved
//!   since its entry was published, whose entry the cheap pass found changed;
//! - a parent that is no registry kind (device role, platform, tag, IPAM role) whose slug differs
//!   from the one the last run listed (`fields=id,slug`: a few hundred small rows);
//! - an IP address found deleted (its host, which NetBox does not save);
//! - a tag deleted since the last run: each object NetBox's change log shows it was taken off in
//!   the delete's request (NetBox saves none of them), read again;
//! - every cascade still pending in the state file (a webhook's whose relay stopped first, or one
//!   that failed), and those the cascades call for in turn.
//!
//! The run's own triggers are kept in the state file before the parents' changes are published,
//! and all are carried out at the end of the run, which counts them in its report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::cascade::{cascade, Journal};
use super::changelog;
use super::runs::{CascadeReport, RunStatus};
use super::{Output, Reconciler};
use crate::delta::{Entry, Kind, RegistryDelta};
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::parents::{Parent, Trigger, PARENTS};
use crate::netbox::ObjectType;
use crate::publish::Last;
use crate::state::{PendingCascade, StoreError, Write};

/// The cascades of one run.
pub(super) struct RunCascades {
    /// None for a dry run (which writes nothing) and when cascades are off.
    journal: Option<Journal>,
    enabled: bool,
    /// The run's own triggers, by parent: a dry run carries out these alone.
    found: Mutex<BTreeMap<String, Trigger>>,
}

impl RunCascades {
    pub fn of(reconciler: &Reconciler) -> RunCascades {
        RunCascades {
            journal: reconciler.journal(),
            enabled: reconciler.cascades_enabled,
            found: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the run carries out cascades (`cascade.enabled` not false): when not, nothing is
    /// read to find them.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps the cascades the run found, durably: call before the parents' changes are published.
    pub async fn found(&self, triggers: Vec<Trigger>) -> Result<(), StoreError> {
        if !self.enabled || triggers.is_empty() {
            return Ok(());
        }
        if let Some(journal) = &self.journal {
            journal.keep(&triggers).await?;
        }
        self.remember(triggers);
        Ok(())
    }

    /// Keeps triggers in memory, for a run without a journal (a dry run).
    fn remember(&self, triggers: impl IntoIterator<Item = Trigger>) {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        for trigger in triggers {
            found.insert(trigger.key(), trigger);
        }
    }

    /// What to carry out: the pending cascades in the state file, and the run's own.
    async fn pending(&self) -> Result<Vec<(Trigger, Option<PendingCascade>)>, StoreError> {
        let mut own = std::mem::take(&mut *self.found.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pending = Vec::new();
        if let Some(journal) = &self.journal {
            for (trigger, row) in journal.pending().await? {
                own.remove(&trigger.key());
                pending.push((trigger, Some(row)));
            }
        }
        pending.extend(own.into_values().map(|t| (t, None)));
        Ok(pending)
    }
}

/// What [`Reconciler::moved_on_stream`] found.
#[derive(Default)]
pub(super) struct Moved {
    /// Another relay's entry is the key's last message: to be published over it.
    pub changed: Vec<RegistryDelta>,
    /// The key's last message could not be read: to be judged against it when published.
    pub unread: Vec<RegistryDelta>,
}

impl Reconciler {
    /// Where cascades are kept: the state file, unless this is a dry run or cascades are off.
    pub(super) fn journal(&self) -> Option<Journal> {
        match (&self.output, self.cascades_enabled) {
            (Output::Publish(delivery), true) => Some(Journal::new(
                self.store.clone(),
                delivery.committer().clone(),
            )),
            _ => None,
        }
    }

    /// Keeps the cascades of the `replaced` objects (changed, and saved since their entry was
    /// published) among `candidates`, durably where there is a journal: what the cascade
    /// publishing them carries out in turn.
    pub(super) async fn keep(
        &self,
        mut candidates: HashMap<u64, Trigger>,
        replaced: &[u64],
        changed: &[RegistryDelta],
    ) -> Result<Vec<(Trigger, Option<PendingCascade>)>, StoreError> {
        let triggers: Vec<Trigger> = replaced
            .iter()
            .filter_map(|id| candidates.remove(id))
            .collect();
        let triggers = self.shown_changed(triggers, changed).await;
        let rows = match (self.journal(), triggers.is_empty()) {
            (Some(journal), false) => journal
                .keep(&triggers)
                .await?
                .into_iter()
                .map(Some)
                .collect(),
            _ => vec![None; triggers.len()],
        };
        Ok(triggers.into_iter().zip(rows).collect())
    }

    /// Of `triggers` (parents found saved and changed), those whose change reaches their
    /// dependents: what they show differs between the registry's entry (the key's last message on
    /// the stream) and the new one in `changed`. One read of the stream per parent spares NetBox a
    /// filtered pull per dependent type for each parent whose save changed nothing its dependents
    /// show (a status, a description). A parent whose last entry cannot be read cascades.
    pub(super) async fn shown_changed(
        &self,
        triggers: Vec<Trigger>,
        changed: &[RegistryDelta],
    ) -> Vec<Trigger> {
        let Output::Publish(delivery) = &self.output else {
            return triggers;
        };
        let entries: HashMap<u64, &Entry> = changed
            .iter()
            .filter_map(|d| Some((d.object_id, d.entry.as_ref()?)))
            .collect();
        let partition = self.translator.partition();
        let judged = stream::iter(triggers).map(|trigger| {
            let new = entries.get(&trigger.id).copied();
            async move {
                let Some(kind) = ObjectType::from_name(trigger.parent.name).map(|t| t.kind) else {
                    return Some(trigger);
                };
                let old = delivery
                    .publisher()
                    .last_of_key(partition, kind, trigger.id);
                let old = match old.await {
                    Ok(Some(Last::Delta(old, _))) => old.entry,
                    _ => None,
                };
                let shown = |entry: Option<&Entry>| entry.and_then(|e| trigger.parent.shown_in(e));
                let same = old.is_some() && shown(old.as_ref()) == shown(new);
                (!same).then_some(trigger)
            }
        });
        judged
            .buffered(READS_AT_ONCE)
            .filter_map(|t| async { t })
            .collect()
            .await
    }

    /// Of the deltas a cascade, or the cheap pass among what it fetched, found unchanged against
    /// this relay's records (`matched`, each with the sequence of the record it matched), those
    /// whose key's last message on the stream
    /// is another: a relay sharing the stream published to the key since. Each such message is
    /// remembered, so that the delta is judged against it and published over it. A single relay
    /// finds every key as it left it. A key that cannot be read now (NATS away) is delivered to
    /// be judged against the stream when it is published (or drained from the spool).
    pub(super) async fn moved_on_stream(
        &self,
        matched: Vec<(RegistryDelta, Option<u64>)>,
    ) -> Moved {
        let mut moved = Moved::default();
        let Output::Publish(delivery) = &self.output else {
            return moved;
        };
        let judged = stream::iter(matched).map(|(delta, seq)| async move {
            let (latest, at) = match delivery.publisher().last_of(&delta).await {
                Ok(Some(Last::Delta(latest, at))) => (latest, at),
                Ok(Some(Last::Foreign(_)) | None) => return (delta, Some(true)),
                Err(_) => return (delta, None),
            };
            if seq == Some(at) || latest.entry == delta.entry {
                return (delta, Some(false));
            }
            if let Err(e) = delivery.remember(&latest, at).await {
                tracing::warn!(key = %delta.key, error = %e, "cannot remember a key read from the stream");
            }
            (delta, Some(true))
        });
        let mut judged = judged.buffer_unordered(READS_AT_ONCE);
        while let Some((delta, changed)) = judged.next().await {
            match changed {
                Some(true) => moved.changed.push(delta),
                Some(false) => {}
                None => moved.unread.push(delta),
            }
        }
        moved
    }

    /// Compares the slugs of the parents that are no registry kind with those the last run
    /// listed, and keeps a cascade for each one that changed. A parent type the token may not
    /// read is passed over (its dependents' labels wait for a full pass), and said.
    pub(super) async fn list_parents(
        &self,
        client: &NetboxClient,
        version: (u32, u32),
        cascades: &RunCascades,
        report: &mut CascadeReport,
    ) {
        if !cascades.enabled {
            return;
        }
        let enabled: Vec<&str> = self.types.iter().map(|t| t.name).collect();
        let parents = PARENTS.iter().filter(|p| p.trigger_only()).filter(|p| {
            p.dependents
                .iter()
                .any(|(dependent, _)| enabled.contains(dependent))
        });
        for parent in parents {
            let listed = match list_slugs(client, parent.api_path, parent.name, version).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(parent = parent.name, error = %e, "reconcile: cannot list a parent type; its changes reach dependents at the next full pass");
                    report.status = Some(RunStatus::Partial);
                    let message = format!("{} not listed: {e}", parent.name);
                    report.message.get_or_insert(message);
                    continue;
                }
            };
            let store = self.store.clone();
            let before = match store.read(move |s| s.slugs_of(parent.name)).await {
                Ok(before) => before,
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile: cannot read the parents' slugs");
                    continue;
                }
            };
            let mut triggers: Vec<Trigger> = changed_slugs(&before, &listed)
                .map(|(id, slug)| Trigger {
                    parent,
                    id,
                    slug: Some(slug.to_string()),
                    hosts: Vec::new(),
                })
                .collect();
            let mut mark = None;
            if parent.deleted_unstamped() {
                match self.untagged(client, version, parent, report).await {
                    Some((rereads, read_to)) => {
                        triggers.extend(rereads);
                        mark = read_to;
                    }
                    // The next run asks again.
                    None => continue,
                }
            }
            if let Err(e) = cascades.found(triggers).await {
                tracing::warn!(error = %e, "reconcile: cannot keep the cascades found");
                report.status = Some(RunStatus::Partial);
                continue;
            }
            if let Output::Publish(delivery) = &self.output {
                let slugs = listed.into_iter().collect();
                let mut writes = vec![(
                    Write::Slugs {
                        parent: parent.name,
                        slugs,
                    },
                    "the parents' slugs",
                )];
                // Not remembered, the next run reads the change log again from the last mark.
                writes.extend(mark.map(|at| {
                    let write = Write::LogMark {
                        parent: parent.name,
                        at,
                    };
                    (write, "how far NetBox's change log was read")
                }));
                for (write, what) in writes {
                    if let Err(e) = delivery.committer().commit(write).await {
                        tracing::warn!(error = %e, "reconcile: cannot remember {what}");
                    }
                }
            }
        }
    }

    /// Carries out every pending cascade, `netbox.concurrency` at a time, and counts them; then
    /// the cascades those call for in turn, up to `ROUNDS` deep (what is left stays pending).
    pub(super) async fn cascade_all(&self, cascades: &RunCascades, report: &mut CascadeReport) {
        if !cascades.enabled {
            return;
        }
        let mut tried = HashSet::new();
        for _ in 0..ROUNDS {
            let pending = match cascades.pending().await {
                Ok(pending) => pending,
                Err(e) => {
                    report.status = Some(RunStatus::Partial);
                    report.message = Some(format!("pending cascades not read: {e}"));
                    return;
                }
            };
            // Each row once a run: one that failed waits for the next run.
            let fresh = pending.into_iter().filter(|(trigger, row)| {
                let value = row.as_ref().map(|r| r.value.clone());
                tried.insert((trigger.key(), value))
            });
            let fresh: Vec<_> = fresh.collect();
            if fresh.is_empty() {
                break;
            }
            self.cascade_round(cascades, fresh, report).await;
        }
        if report.status.is_none() {
            report.status = Some(RunStatus::Succeeded);
        }
    }

    async fn cascade_round(
        &self,
        cascades: &RunCascades,
        pending: Vec<(Trigger, Option<PendingCascade>)>,
        report: &mut CascadeReport,
    ) {
        let outcomes: Vec<_> = stream::iter(pending)
            .map(|(trigger, row)| async move { (cascade(self, &trigger).await, trigger, row) })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut done = Vec::new();
        for (outcome, trigger, row) in outcomes {
            report.parents += 1;
            match outcome {
                Ok(tally) => {
                    report.pulled += tally.pulled;
                    report.published += tally.published;
                    done.extend(row);
                    // A dry run keeps them in memory; the journal has the others already.
                    let unkept = tally.further.into_iter().filter(|(_, row)| row.is_none());
                    cascades.remember(unkept.map(|(t, _)| t));
                }
                Err(e) => {
                    tracing::warn!(parent = trigger.parent.name, id = trigger.id, error = %e,
                        "reconcile: a cascade failed; kept for the next run");
                    report.failed += 1;
                    report.status = Some(RunStatus::Partial);
                    let message =
                        format!("{} cascades failed, kept for the next run", report.failed);
                    report.message = Some(message);
                }
            }
        }
        if let Some(journal) = &cascades.journal {
            journal.done(done).await;
        }
    }
}

impl Reconciler {
    /// The objects NetBox took `parent`s (tags) off when it deleted them since the last run
    /// read its change log, each to be read again, and how far the log was read now (to keep
    /// once they are kept). The first read finds nothing to read again: what was deleted before
    /// it was a full pass's (the first run of a state is one). None when the log could not be
    /// read for now (the run is partial, and the next one asks again); a log the token may not
    /// read is said, and what the deleted tags were on keeps them until the next full pass.
    async fn untagged(
        &self,
        client: &NetboxClient,
        version: (u32, u32),
        parent: &'static Parent,
        report: &mut CascadeReport,
    ) -> Option<(Vec<Trigger>, Option<String>)> {
        let store = self.store.clone();
        let mark = match store.read(move |s| s.log_mark(parent.name)).await {
            Ok(mark) => mark,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile: cannot read how far the change log was read");
                return Some((Vec::new(), None));
            }
        };
        let read = async {
            let newest = changelog::newest(client, version).await?;
            let changed = match &mark {
                Some(mark) => {
                    changelog::changed_with_deletes_since(client, version, parent.name, mark)
                        .await?
                }
                None => Vec::new(),
            };
            Ok::<_, ApiError>((changed, newest))
        };
        let (changed, newest) = match read.await {
            Ok(read) => read,
            Err(e) => {
                let forbidden = matches!(e, ApiError::Forbidden { .. });
                tracing::warn!(parent = parent.name, error = %e, "reconcile: cannot read NetBox's change log; what a tag deleted without its webhooks was on keeps it until a run reads the log, or the next full pass");
                report.status = Some(RunStatus::Partial);
                report
                    .message
                    .get_or_insert(format!("change log not read: {e}"));
                return forbidden.then(|| (Vec::new(), None));
            }
        };
        let enabled: HashSet<&str> = self.types.iter().map(|t| t.name).collect();
        let followed = changed.into_iter().filter_map(|(object_type, id)| {
            let object_type = ObjectType::from_name(&object_type)?;
            enabled
                .contains(object_type.name)
                .then_some((object_type, id))
        });
        let rereads = followed
            .map(|(t, id)| Trigger::reread(t.name, id))
            .collect();
        let read_to = newest.unwrap_or_else(|| changelog::EMPTY_LOG.to_string());
        Some((rereads, Some(read_to)))
    }
}

/// Stream reads in flight at once when a run compares parents' entries.
const READS_AT_ONCE: usize = 64;

/// How deep a run follows cascades that call for cascades (site, device, its interfaces).
const ROUNDS: usize = 8;

impl Reconciler {
    /// The cascades of IP addresses a run found deleted: NetBox cleared each from its host's
    /// primary or OOB IP without saving the host. The host is found through the address's last
    /// entry on the stream (the interface it was assigned to) and NetBox (that interface's device
    /// or VM), since neither the address nor the state file knows it any more.
    pub(super) async fn hosts_of_deleted(&self, ids: &[u64]) -> Vec<Trigger> {
        let (Output::Publish(delivery), Some(client)) = (&self.output, &self.client) else {
            return Vec::new();
        };
        let Some(parent) = Parent::from_name(IP) else {
            return Vec::new();
        };
        let partition = self.translator.partition();
        let mut interfaces: Vec<(u64, &'static str, u64)> = Vec::new();
        for &id in ids {
            let last = delivery
                .publisher()
                .last_of_key(partition, Kind::IpAddress, id);
            let assigned = match last.await {
                Ok(Some(Last::Delta(delta, _))) => delta.entry.as_ref().and_then(assignment),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(id, error = %e, "reconcile: cannot read a deleted address's last entry; its host keeps it until a full pass");
                    None
                }
            };
            interfaces.extend(assigned.map(|(endpoint, interface)| (id, endpoint, interface)));
        }
        let mut triggers = Vec::new();
        for (id, endpoint, interface) in interfaces {
            match host_of(client, endpoint, interface).await {
                Ok(hosts) if !hosts.is_empty() => triggers.push(Trigger {
                    parent,
                    id,
                    slug: None,
                    hosts,
                }),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(id, error = %e, "reconcile: cannot find a deleted address's host; it keeps the address until a full pass")
                }
            }
        }
        triggers
    }
}

/// The interface an IP address's entry says it was assigned to: its endpoint and id.
fn assignment(entry: &Entry) -> Option<(&'static str, u64)> {
    let id = entry.attributes.get("assigned_object_id")?.as_u64()?;
    match entry.attributes.get("assigned_object_type")?.as_str()? {
        "dcim.interface" => Some(("dcim/interfaces", id)),
        "virtualization.vminterface" => Some(("virtualization/interfaces", id)),
        _ => None,
    }
}

/// The device or VM of interface `id` at `endpoint`, as NetBox serves it now.
async fn host_of(
    client: &NetboxClient,
    endpoint: &str,
    id: u64,
) -> Result<Vec<(&'static str, u64)>, ApiError> {
    let (what, permission) = match endpoint {
        "dcim/interfaces" => ("dcim.interface", "dcim.view_interface"),
        _ => (
            "virtualization.vminterface",
            "virtualization.view_vminterface",
        ),
    };
    let path = format!("/api/{endpoint}/?id={id}&limit=1&fields=id,device,virtual_machine");
    let page = client.get(&path, what, permission).await?;
    let results = page.get("results").and_then(Value::as_array);
    let hosts = results.into_iter().flatten().flat_map(|interface| {
        [(DEVICE, "device"), (VM, "virtual_machine")]
            .into_iter()
            .filter_map(|(host_type, field)| {
                let host = interface.get(field)?.get("id")?.as_u64()?;
                Some((host_type, host))
            })
    });
    Ok(hosts.collect())
}

const IP: &str = "ipam.ipaddress";
const DEVICE: &str = "dcim.device";
const VM: &str = "virtualization.virtualmachine";

/// The parents whose slug differs from the one listed before. A parent not listed before is
/// passed over: what points at a new parent was saved (and stamped) when it was made to.
fn changed_slugs<'a>(
    before: &'a HashMap<u64, String>,
    listed: &'a [(u64, String)],
) -> impl Iterator<Item = (u64, &'a str)> + 'a {
    listed.iter().filter_map(|(id, slug)| {
        let old = before.get(id)?;
        (old != slug).then_some((*id, slug.as_str()))
    })
}

/// Ids and slugs of every object at `api_path` (`dcim/platforms`), paged by id.
async fn list_slugs(
    client: &NetboxClient,
    api_path: &str,
    what: &str,
    version: (u32, u32),
) -> Result<Vec<(u64, String)>, ApiError> {
    let (app, model) = what.split_once('.').unwrap_or((what, what));
    let permission = format!("{app}.view_{model}");
    let limit = super::pull::MAX_PAGE_SIZE;
    let mut listed = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let cursor = match (version >= (4, 6), after) {
            (true, None) => "start=0".to_string(),
            (true, Some(last)) => format!("start={}", last + 1),
            (false, None) => "ordering=id".to_string(),
            (false, Some(last)) => format!("ordering=id&id__gt={last}"),
        };
        let path = format!("/api/{api_path}/?{cursor}&limit={limit}&fields=id,slug");
        let page = client.get(&path, what, &permission).await?;
        let results = page.get("results").and_then(Value::as_array);
        let rows: Vec<(u64, String)> = results
            .into_iter()
            .flatten()
            .filter_map(|o| Some((o.get("id")?.as_u64()?, o.get("slug")?.as_str()?.to_string())))
            .collect();
        let Some(last) = rows.iter().map(|(id, _)| *id).max() else {
            return Ok(listed);
        };
        if after.is_some_and(|a| last <= a) {
            return Ok(listed);
        }
        after = Some(last);
        listed.extend(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_parent_listed_before_with_another_slug_calls_for_a_cascade() {
        let before = HashMap::from([(1, "junos".to_string()), (2, "eos".to_string())]);
        let listed = vec![
            (1, "junos".to_string()),
            (2, "arista-eos".to_string()),
            (3, "nxos".to_string()),
        ];
        let changed: Vec<_> = changed_slugs(&before, &listed).collect();
        assert_eq!(changed, [(2, "arista-eos")]);
    }
}
