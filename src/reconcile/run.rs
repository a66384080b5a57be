//! One run: the enabled object types (a few at once in a cheap pass), under the KV lease (renewed meanwhile,
//! given back at the end), its report shared after each type; a run that stops early (shutdown,
//! a lost lease, a panic) is recorded `failed` saying why.

use chrono::Utc;
use futures::StreamExt;

use super::diff;
use super::lease::Lease;
use super::repair::RunCascades;
use super::runs::{CascadeReport, PassKind, RunReport, RunStatus, Runs, TypeReport};
use super::{Output, Reconciler, RunOptions};
use crate::netbox::ObjectType;
use crate::telemetry;

impl Reconciler {
    /// Runs, renewing the lease meanwhile; gives it back at the end.
    pub(super) async fn execute(
        &self,
        report: RunReport,
        options: RunOptions,
        lease: Option<Lease>,
    ) -> RunReport {
        let run_id = report.run_id;
        let work = self.work(report, options);
        let (Some(mut lease), Some(c)) = (lease, self.shared.as_ref().and_then(|s| s.opened.get()))
        else {
            let finished = tokio::select! {
                report = work => Some(report),
                _ = self.stop.cancelled() => None,
            };
            return finished.unwrap_or_else(|| {
                self.runs
                    .get(run_id)
                    .unwrap_or_else(|| RunReport::stopped(run_id))
            });
        };
        // Boxed, so that dropping it ends the run here (its guard marks it stopped).
        let mut work = Box::pin(work);
        let finished = loop {
            tokio::select! {
                report = &mut work => break Ok(report),
                _ = self.stop.cancelled() => break Err(STOPPED),
                _ = tokio::time::sleep(c.renew_every()) => {
                    if !c.renew(&mut lease).await {
                        break Err(LEASE_LOST);
                    }
                }
            }
        };
        let report = match finished {
            Ok(report) => report,
            Err(why) => {
                // Dropping the run ends it; its report and the lease are given back while NATS
                // is still there, so that another relay may run at once.
                drop(work);
                self.runs.explain(run_id, why);
                tracing::warn!(run_id, reason = why, "reconcile: run stopped");
                let report = self.runs.get(run_id);
                if let Some(report) = &report {
                    c.record(report).await;
                }
                report.unwrap_or_else(|| RunReport::stopped(run_id))
            }
        };
        c.release(lease).await;
        report
    }

    async fn work(&self, mut report: RunReport, options: RunOptions) -> RunReport {
        tracing::info!(run_id = report.run_id, trigger = %report.trigger, "reconcile: run started");
        let _unfinished = Unfinished {
            runs: &self.runs,
            run_id: report.run_id,
            started: std::time::Instant::now(),
        };
        let whole = options.only.is_empty();
        let types = if whole {
            self.types.clone()
        } else {
            options.only.clone()
        };
        let version = match &self.client {
            Some(client) => client.version().await.map_err(|e| e.to_string()),
            None => Err("netbox.url or netbox.token is not configured".to_string()),
        };
        // A run without NetBox fails each type at once, whichever pass it is.
        if let Ok(version) = &version {
            let new_state = self.store.read(|s| s.has_no_records()).await;
            let new_state = new_state.unwrap_or(true);
            report.pass = self.pass_for(&options, *version, new_state).await;
            // A full pass of every type compares NetBox with the registry as published: what
            // other relays published since this one's records is read first.
            if new_state || (report.pass == PassKind::Full && whole) {
                self.learn_registry(new_state).await;
            }
        }
        telemetry::reconcile_pass(report.pass.as_str());
        self.runs.update(&report);
        let cascades = RunCascades::of(self);
        // The parents that are no registry kind are listed while the types are passed over:
        // their cascades are carried out at the end, with the others.
        let mut listed = CascadeReport::default();
        let parents = async {
            if let (Ok(version), Some(client)) = (&version, &self.client) {
                self.list_parents(client, *version, &cascades, &mut listed)
                    .await;
            }
        };
        let passes = self.pass_types(types, &version, &options, &cascades, &mut report);
        tokio::join!(parents, passes);
        if listed.status.is_some() {
            report.cascades.status = listed.status;
            report.cascades.message = listed.message.or(report.cascades.message.take());
        }
        if version.is_ok() {
            self.cascade_all(&cascades, &mut report.cascades).await;
        }
        report.finish(Utc::now());
        self.runs.update(&report);
        self.share(&report).await;
        let counts = report.pass == PassKind::Full && whole && !report.dry_run;
        if counts && report.status != RunStatus::Failed {
            self.full_pass_ended(report.started_at).await;
        }
        let elapsed = (report.ended_at.unwrap_or(report.started_at) - report.started_at)
            .to_std()
            .unwrap_or_default();
        telemetry::reconcile_ended(report.status.as_str(), elapsed);
        tracing::info!(run_id = report.run_id, status = ?report.status, "reconcile: run ended");
        report
    }
}

impl Reconciler {
    /// The pass over each of `types`, each type's report kept and shared as it ends; types end in
    /// any order, so that a long one does not keep the next from starting. Either way
    /// `netbox.concurrency` requests are in flight. A cheap pass spends them on types, that many
    /// at once, each listed by one cursor: most types fit in one small page, one after the other
    /// their round trips add up, and splitting a type's ids into segments made NetBox list them
    /// slower (BENCHMARKS.md). A full pass, which has NetBox serialize every object, takes one
    /// type at a time, its ids split into segments.
    async fn pass_types(
        &self,
        types: Vec<ObjectType>,
        version: &Result<(u32, u32), String>,
        options: &RunOptions,
        cascades: &RunCascades,
        report: &mut RunReport,
    ) {
        let (run_start, kind) = (report.started_at, report.pass);
        let at_once = match kind {
            PassKind::Cheap => self.concurrency.max(1),
            PassKind::Full => 1,
        };
        let passes = types.into_iter().map(|object_type| async move {
            let type_report = match version {
                Ok(version) => {
                    let pass = diff::Pass {
                        reconciler: self,
                        output: &self.output,
                        version: *version,
                        run_start,
                        force: options.force,
                        kind,
                        cascades,
                    };
                    pass.object_type(object_type).await
                }
                Err(message) => TypeReport {
                    status: Some(RunStatus::Failed),
                    message: Some(message.clone()),
                    ..TypeReport::default()
                },
            };
            (object_type, type_report)
        });
        let mut passes = futures::stream::iter(passes).buffer_unordered(at_once);
        while let Some((object_type, type_report)) = passes.next().await {
            report
                .object_types
                .insert(object_type.name.to_string(), type_report);
            self.runs.update(report);
            self.share(report).await;
        }
    }

    /// Full when asked, when NetBox has no `fields=` (before 4.0), when the state is new, and when
    /// the last full pass of any relay started `reconcile.full_interval` ago or more; else cheap.
    async fn pass_for(
        &self,
        options: &RunOptions,
        version: (u32, u32),
        new_state: bool,
    ) -> PassKind {
        let why = if options.full {
            "asked for"
        } else if version < (4, 0) {
            "NetBox before 4.0 lists no fields= selection"
        } else if self.full_interval.is_zero() {
            "reconcile.full_interval is 0"
        } else if new_state {
            "the state is new"
        } else {
            match self.last_full_age().await {
                None => "no full pass on record",
                Some(age) if age >= self.full_interval => {
                    "reconcile.full_interval has passed since the last one"
                }
                Some(_) => return PassKind::Cheap,
            }
        };
        tracing::info!(reason = why, "reconcile: a full pass");
        PassKind::Full
    }

    /// Every key's last message is read once, in one pass, so that the run compares NetBox with
    /// the registry as published. A new state file knows none of the keys: without this, every
    /// object would be published again (each refused by the per-key check, then read alone).
    /// Otherwise only the keys whose last message is newer than the record are remembered:
    /// another relay published them (a record waiting for its ack is left alone).
    async fn learn_registry(&self, new_state: bool) {
        let Output::Publish(delivery) = &self.output else {
            return;
        };
        let started = std::time::Instant::now();
        let partition = self.translator.partition();
        let behind =
            |delta: &crate::delta::RegistryDelta, seq: u64| match self.store.head(&delta.key) {
                Ok(Some(head)) => head.seq.is_some_and(|s| s < seq),
                Ok(None) => true,
                Err(_) => false,
            };
        let learned = super::learn::learn(delivery, partition, None, behind, |_| {}).await;
        let what = match new_state {
            true => "a new state file",
            false => "a full pass",
        };
        match learned {
            // A stream not created yet (the first start of all) holds nothing to learn.
            Ok(0)
            | Err(super::learn::LearnError::Read(crate::publish::PublishError::NoStream(_))) => {}
            Ok(keys) => tracing::info!(
                keys,
                seconds = started.elapsed().as_secs_f64(),
                "reconcile: {what}; keys this relay had no record of, or an older one, were read from the stream"
            ),
            Err(e) => tracing::warn!(error = %e,
                "reconcile: {what}, and the registry could not be read from the stream; keys are read one at a time where they conflict"),
        }
    }

    /// How long ago the last full pass of this relay or of any relay sharing the NATS ended,
    /// each measured without comparing two hosts' clocks.
    async fn last_full_age(&self) -> Option<std::time::Duration> {
        let local = *self.last_full.lock().unwrap_or_else(|e| e.into_inner());
        let local = local.map(|at| at.elapsed());
        let shared = match self.coordination().await {
            Some(c) => c.last_full_age().await,
            None => None,
        };
        match (local, shared) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn full_pass_ended(&self, started: chrono::DateTime<Utc>) {
        *self.last_full.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        if let Some(c) = self.coordination().await {
            c.record_full(started).await;
        }
    }
}

/// Ends its run as failed if the run stops before its final report (a panic unwinds through it).
struct Unfinished<'a> {
    runs: &'a Runs,
    run_id: u64,
    started: std::time::Instant,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            tracing::error!(
                run_id = self.run_id,
                "reconcile: the run stopped unexpectedly; marked failed"
            );
            "the run stopped unexpectedly (a panic in the relay: the log has it under this run_id)"
        } else {
            STOPPED
        };
        if self.runs.running() == Some(self.run_id) {
            telemetry::reconcile_ended("failed", self.started.elapsed());
        }
        self.runs.abandon(self.run_id, Utc::now(), why);
    }
}

/// The report's message of a run the relay's shutdown stopped.
pub(super) const STOPPED: &str = "the run was stopped: the relay shut down before it ended";
/// The report's message of a run whose lease could not be renewed: another relay may run now.
const LEASE_LOST: &str =
    "the run was stopped: its lease could not be renewed (NATS away, or the relay was paused past reconcile.lease_ttl and another relay took it)";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_run_that_panics_ends_failed_and_the_next_may_start() {
        let runs = Arc::new(Runs::default());
        let run_id = runs.begin("test", false, Utc::now()).unwrap().run_id;
        let held = runs.clone();
        let task = tokio::spawn(async move {
            let _unfinished = Unfinished {
                runs: &held,
                run_id,
                started: std::time::Instant::now(),
            };
            panic!("a bug in the middle of a run");
        });
        assert!(task.await.unwrap_err().is_panic());
        let report = runs.get(run_id).unwrap();
        assert_eq!(report.status, RunStatus::Failed);
        assert!(report.ended_at.is_some());
        assert!(report.message.unwrap().contains("stopped unexpectedly"));
        assert!(runs.begin("next", false, Utc::now()).is_ok());
    }

    #[test]
    fn a_finished_run_keeps_its_status() {
        let runs = Runs::default();
        let mut report = runs.begin("test", false, Utc::now()).unwrap();
        {
            let _unfinished = Unfinished {
                runs: &runs,
                run_id: report.run_id,
                started: std::time::Instant::now(),
            };
            report.finish(Utc::now());
            runs.update(&report);
        }
        assert_eq!(
            runs.get(report.run_id).unwrap().status,
            RunStatus::Succeeded
        );
    }
}
