//! One object type: upserts for new or changed entries, deletes for keys the complete pull did not
//! return (and whose revision predates the run), nothing for the unchanged; deletes withheld past
//! `reconcile.max_delete_fraction` unless forced, and none at all after a failed pull.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};

use super::runs::{RunStatus, TypeReport};
use super::{Output, Reconciler};
use crate::delta::RegistryDelta;
use crate::netbox::ObjectType;
use crate::publish::Delivered;
use crate::state::StoreError;
use crate::translate::Object;

/// Deltas of one page in flight at once. They are all of different keys, so per-key order holds,
/// and JetStream acks and state commits overlap instead of queueing one behind the other.
const IN_FLIGHT: usize = 256;

/// What became of one delta.
enum Emitted {
    Out,
    /// Delivery judged it stale or duplicate: a newer webhook won.
    Dropped,
    Failed,
}

/// The run-wide facts one object type needs.
pub(super) struct Pass<'a> {
    pub reconciler: &'a Reconciler,
    pub output: &'a Output,
    pub version: (u32, u32),
    pub run_start: DateTime<Utc>,
    pub force: bool,
}

impl Pass<'_> {
    pub async fn object_type(&self, object_type: ObjectType) -> TypeReport {
        let mut report = TypeReport::default();
        let mut seen = HashSet::new();
        if let Err(message) = self.pull(object_type, &mut report, &mut seen).await {
            tracing::error!(object_type = object_type.name, error = %message, "reconcile: pull failed; no deletes");
            report.status = Some(RunStatus::Failed);
            report.message = Some(message);
            return report;
        }
        if let Err(e) = self.deletes(object_type, &seen, &mut report).await {
            report.status = Some(RunStatus::Failed);
            report.message = Some(e.to_string());
            return report;
        }
        if report.status.is_none() {
            let clean = report.errors == 0;
            report.status = Some(if clean {
                RunStatus::Succeeded
            } else {
                RunStatus::Partial
            });
        }
        report
    }

    async fn pull(
        &self,
        object_type: ObjectType,
        report: &mut TypeReport,
        seen: &mut HashSet<u64>,
    ) -> Result<(), String> {
        let client = self.reconciler.client.clone();
        let client = client.ok_or("netbox.url or netbox.token is not configured")?;
        let options = super::pull::PullOptions {
            version: self.version,
            page_size: self.reconciler.page_size,
            concurrency: self.reconciler.concurrency,
        };
        let mut pages = super::pull::pages(client, object_type, options);
        while let Some(page) = pages.recv().await {
            let page = page.map_err(|e| e.to_string())?;
            self.page(object_type, &page, report, seen).await;
        }
        Ok(())
    }

    /// Translates a page, drops what the state already holds (one read for the page), and
    /// publishes the rest.
    async fn page(
        &self,
        object_type: ObjectType,
        page: &[Object],
        report: &mut TypeReport,
        seen: &mut HashSet<u64>,
    ) {
        let now = Utc::now();
        let mut deltas = Vec::with_capacity(page.len());
        for obj in page {
            report.fetched += 1;
            seen.extend(obj.get("id").and_then(serde_json::Value::as_u64));
            match self
                .reconciler
                .translator
                .reconcile_upsert(object_type, obj, now)
            {
                Ok(delta) => deltas.push(delta),
                Err(e) => {
                    tracing::warn!(object_type = object_type.name, error = %e, "reconcile: object not translated");
                    report.errors += 1;
                }
            }
        }
        let changed = match self.changed(deltas) {
            Ok((changed, unchanged)) => {
                report.unchanged += unchanged;
                changed
            }
            Err((e, count)) => {
                tracing::error!(error = %e, "reconcile: state unreadable");
                report.errors += count;
                return;
            }
        };
        let (out, dropped, failed) = self.emit_all(changed).await;
        report.upserted += out;
        report.unchanged += dropped;
        report.errors += failed;
    }

    /// The deltas whose entry differs from the stored one, and how many did not. An equal
    /// `delta_id` proves an equal entry (it hashes key, op, revision and entry), so stored
    /// entries are parsed only for the rest.
    fn changed(
        &self,
        deltas: Vec<RegistryDelta>,
    ) -> Result<(Vec<RegistryDelta>, u64), (StoreError, u64)> {
        let count = deltas.len() as u64;
        let store = &self.reconciler.store;
        let keys: Vec<&str> = deltas.iter().map(|d| d.key.as_str()).collect();
        let heads = store.heads(&keys).map_err(|e| (e, count))?;
        let (mut same, mut maybe) = (0, Vec::new());
        for (delta, head) in deltas.into_iter().zip(heads) {
            match head {
                Some(h) if !h.deleted() && h.delta_id == delta.delta_id => same += 1,
                _ => maybe.push(delta),
            }
        }
        let keys: Vec<&str> = maybe.iter().map(|d| d.key.as_str()).collect();
        let records = store.records(&keys).map_err(|e| (e, count))?;
        let mut changed = Vec::with_capacity(maybe.len());
        for (delta, record) in maybe.into_iter().zip(records) {
            match record {
                Some(r) if !r.deleted() && r.entry == delta.entry => same += 1,
                _ => changed.push(delta),
            }
        }
        Ok((changed, same))
    }

    async fn deletes(
        &self,
        object_type: ObjectType,
        seen: &HashSet<u64>,
        report: &mut TypeReport,
    ) -> Result<(), StoreError> {
        let prefix = self.reconciler.translator.key_prefix(object_type);
        let heads = self.reconciler.store.heads_with_prefix(&prefix)?;
        let known = heads.iter().filter(|(_, h)| !h.deleted()).count();
        let gone: Vec<u64> = heads
            .iter()
            .filter(|(_, h)| !h.deleted() && h.revision < self.run_start)
            .filter_map(|(key, _)| key[prefix.len()..].parse::<u64>().ok())
            .filter(|id| !seen.contains(id))
            .collect();
        let fraction = self.reconciler.max_delete_fraction;
        if !self.force && gone.len() as f64 > fraction * known as f64 {
            report.withheld_deletes = gone.len() as u64;
            report.status = Some(RunStatus::Partial);
            report.message = Some(format!(
                "{} deletes withheld: more than {:.0}% of {known} known entries (reconcile.max_delete_fraction); force the run to apply them",
                gone.len(),
                fraction * 100.0
            ));
            tracing::warn!(
                object_type = object_type.name,
                withheld = gone.len(),
                known,
                "reconcile: deletes withheld"
            );
            return Ok(());
        }
        let now = Utc::now();
        let translator = &self.reconciler.translator;
        let deltas: Vec<RegistryDelta> = gone
            .into_iter()
            .filter_map(|id| {
                translator
                    .reconcile_delete(object_type, id, self.run_start, now)
                    .ok()
            })
            .collect();
        let (out, dropped, failed) = self.emit_all(deltas).await;
        report.deleted += out;
        report.unchanged += dropped;
        report.errors += failed;
        Ok(())
    }

    /// Emits deltas of distinct keys, `IN_FLIGHT` at a time; counts (out, dropped, failed).
    async fn emit_all(&self, deltas: Vec<RegistryDelta>) -> (u64, u64, u64) {
        let outcomes: Vec<Emitted> = stream::iter(deltas)
            .map(|delta| self.emit(delta))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let count = |kind: fn(&Emitted) -> bool| outcomes.iter().filter(|o| kind(o)).count() as u64;
        (
            count(|o| matches!(o, Emitted::Out)),
            count(|o| matches!(o, Emitted::Dropped)),
            count(|o| matches!(o, Emitted::Failed)),
        )
    }

    /// Publishes (or, in a dry run, prints) one delta.
    async fn emit(&self, delta: RegistryDelta) -> Emitted {
        match self.output {
            Output::Print => match serde_json::to_string(&delta) {
                Ok(line) => {
                    println!("{line}");
                    Emitted::Out
                }
                Err(_) => Emitted::Failed,
            },
            Output::Publish(delivery) => match delivery.deliver(&delta).await {
                Ok(Delivered::Published | Delivered::Spooled) => Emitted::Out,
                Ok(Delivered::Dropped(_)) => Emitted::Dropped,
                Err(e) => {
                    tracing::error!(error = %e, key = %delta.key, "reconcile: delta not delivered");
                    Emitted::Failed
                }
            },
        }
    }
}
