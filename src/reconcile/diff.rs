//! One object type: upserts for new or changed entries, deletes for keys the complete pull did not
//! return (and whose revision predates the run), nothing for the unchanged; deletes withheld past
//! `reconcile.max_delete_fraction` unless forced, and none at all after a failed pull.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::runs::{RunStatus, TypeReport};
use super::{Output, Reconciler};
use crate::delta::RegistryDelta;
use crate::netbox::ObjectType;
use crate::publish::Delivered;
use crate::state::StoreError;
use crate::translate::Object;

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
            report.status = Some(if report.errors > 0 {
                RunStatus::Partial
            } else {
                RunStatus::Succeeded
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
            for obj in page.map_err(|e| e.to_string())? {
                self.object(object_type, &obj, report, seen).await;
            }
        }
        Ok(())
    }

    async fn object(
        &self,
        object_type: ObjectType,
        obj: &Object,
        report: &mut TypeReport,
        seen: &mut HashSet<u64>,
    ) {
        report.fetched += 1;
        if let Some(id) = obj.get("id").and_then(serde_json::Value::as_u64) {
            seen.insert(id);
        }
        let delta = match self
            .reconciler
            .translator
            .reconcile_upsert(object_type, obj, Utc::now())
        {
            Ok(delta) => delta,
            Err(e) => {
                tracing::warn!(object_type = object_type.name, error = %e, "reconcile: object not translated");
                report.errors += 1;
                return;
            }
        };
        let unchanged = match self.reconciler.store.record(&delta.key) {
            Ok(record) => record.is_some_and(|r| !r.deleted && r.entry == delta.entry),
            Err(e) => {
                tracing::error!(error = %e, "reconcile: state unreadable");
                report.errors += 1;
                return;
            }
        };
        if unchanged {
            report.unchanged += 1;
            return;
        }
        match self.emit(&delta).await {
            Some(true) => report.upserted += 1,
            Some(false) => report.unchanged += 1,
            None => report.errors += 1,
        }
    }

    async fn deletes(
        &self,
        object_type: ObjectType,
        seen: &HashSet<u64>,
        report: &mut TypeReport,
    ) -> Result<(), StoreError> {
        let prefix = self.reconciler.translator.key_prefix(object_type);
        let records = self.reconciler.store.records_with_prefix(&prefix)?;
        let known = records.iter().filter(|(_, r)| !r.deleted).count();
        let gone: Vec<u64> = records
            .iter()
            .filter(|(_, r)| !r.deleted && r.revision < self.run_start)
            .filter_map(|(key, _)| key[prefix.len()..].parse::<u64>().ok())
            .filter(|id| !seen.contains(id))
            .collect();
        let limit = self.reconciler.max_delete_fraction * known as f64;
        if !self.force && gone.len() as f64 > limit {
            report.withheld_deletes = gone.len() as u64;
            report.status = Some(RunStatus::Partial);
            report.message = Some(format!(
                "{} deletes withheld: more than {:.0}% of {known} known entries (reconcile.max_delete_fraction); force the run to apply them",
                gone.len(),
                self.reconciler.max_delete_fraction * 100.0
            ));
            tracing::warn!(
                object_type = object_type.name,
                withheld = gone.len(),
                known,
                "reconcile: deletes withheld"
            );
            return Ok(());
        }
        for id in gone {
            let delta = self.reconciler.translator.reconcile_delete(
                object_type,
                id,
                self.run_start,
                Utc::now(),
            );
            match delta {
                Ok(delta) => match self.emit(&delta).await {
                    Some(true) => report.deleted += 1,
                    Some(false) => report.unchanged += 1,
                    None => report.errors += 1,
                },
                Err(_) => report.errors += 1,
            }
        }
        Ok(())
    }

    /// Publishes (or, in a dry run, prints) a delta: `Some(true)` when it went out, `Some(false)`
    /// when delivery judged it stale or duplicate (a newer webhook won), `None` on failure.
    async fn emit(&self, delta: &RegistryDelta) -> Option<bool> {
        match self.output {
            Output::Print => {
                println!("{}", serde_json::to_string(delta).ok()?);
                Some(true)
            }
            Output::Publish(delivery) => match delivery.deliver(delta).await {
                Ok(Delivered::Published | Delivered::Spooled) => Some(true),
                Ok(Delivered::Dropped(_)) => Some(false),
                Err(e) => {
                    tracing::error!(error = %e, key = %delta.key, "reconcile: delta not delivered");
                    None
                }
            },
        }
    }
}
