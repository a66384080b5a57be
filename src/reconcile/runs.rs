//! Run status: what `GET /reconcile/runs/<id>` reports, and the rule of one run at a time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    /// Some deletes were withheld by `reconcile.max_delete_fraction`, some objects were not
    /// translated, or NetBox refused some (not all) object types.
    Partial,
    /// At least one object type could not be pulled completely.
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }
}

/// What a run asks of NetBox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassKind {
    /// Every object fetched in full: finds what `last_updated` does not show.
    #[default]
    Full,
    /// Ids and `last_updated` listed; only new and changed objects fetched in full.
    Cheap,
}

impl PassKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Full => "full",
            PassKind::Cheap => "cheap",
        }
    }
}

/// Counts and outcome for one object type.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TypeReport {
    /// Objects NetBox listed.
    pub fetched: u64,
    /// Of those, the objects NetBox serialized in full (all of them in a full pass).
    #[serde(default)]
    pub fetched_in_full: u64,
    pub upserted: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Of the unchanged, those a full pass recognised as served byte for byte as when it last
    /// translated them, and passed over unparsed.
    #[serde(default)]
    pub unchanged_as_served: u64,
    pub errors: u64,
    /// Deletes not published because they exceeded the safety limit.
    pub withheld_deletes: u64,
    pub status: Option<RunStatus>,
    pub message: Option<String>,
    /// NetBox refused to show this type (403).
    #[serde(skip)]
    pub refused: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: u64,
    pub status: RunStatus,
    pub trigger: String,
    pub dry_run: bool,
    /// Which pass ran (reports of relays before the cheap pass read as full).
    #[serde(default)]
    pub pass: PassKind,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Why a run ended other than by finishing its object types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub object_types: BTreeMap<String, TypeReport>,
    /// The cascades the run carried out: those its cheap pass found, and those kept pending.
    #[serde(default)]
    pub cascades: CascadeReport,
}

/// What a run's cascades did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CascadeReport {
    /// Parents whose dependents were pulled (or were to be).
    pub parents: u64,
    /// Dependents fetched in full.
    pub pulled: u64,
    /// Dependents whose entry changed, published.
    pub published: u64,
    /// Parents whose cascade failed: kept for the next run.
    pub failed: u64,
    /// Partial when some failed, or a parent type could not be listed.
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl RunReport {
    /// What is known of a run that was stopped before this relay kept its report.
    pub fn stopped(run_id: u64) -> RunReport {
        let now = Utc::now();
        RunReport {
            run_id,
            status: RunStatus::Failed,
            trigger: String::new(),
            dry_run: false,
            pass: PassKind::Full,
            started_at: now,
            ended_at: Some(now),
            message: Some(super::run::STOPPED.to_string()),
            object_types: BTreeMap::new(),
            cascades: CascadeReport::default(),
        }
    }

    /// The run's status from its object types': failed beats partial beats succeeded.
    /// A run in which NetBox refused every type pulled nothing: failed.
    pub fn finish(&mut self, now: DateTime<Utc>) {
        let statuses = self.object_types.values().filter_map(|t| t.status);
        let statuses = statuses.chain(self.cascades.status);
        self.status = statuses.fold(RunStatus::Succeeded, |run, t| match (run, t) {
            (RunStatus::Failed, _) | (_, RunStatus::Failed) => RunStatus::Failed,
            (RunStatus::Partial, _) | (_, RunStatus::Partial) => RunStatus::Partial,
            _ => RunStatus::Succeeded,
        });
        if !self.object_types.is_empty() && self.object_types.values().all(|t| t.refused) {
            self.status = RunStatus::Failed;
        }
        self.ended_at = Some(now);
    }
}

/// The recent runs, newest last, and which one is in progress.
#[derive(Default)]
pub struct Runs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    running: Option<u64>,
    reports: VecDeque<RunReport>,
}

/// Reports kept for `GET /reconcile/runs/<id>`.
const KEEP: usize = 50;

/// A run could not start: the run with this id is in progress, on this relay or another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("run {0} is in progress")]
pub struct InProgress(pub u64);

/// Why a run was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotStarted {
    #[error(transparent)]
    InProgress(#[from] InProgress),
    /// The shared run counter is at its end: numbering past it would overwrite old reports.
    #[error("reconcile.latest in KV bucket {bucket} is {latest}: no run id is left after it (ids stay below 2^53 for JSON readers); delete the key (`nats kv del {bucket} reconcile.latest`) and restart the relays to number runs from 1 again")]
    IdsExhausted { bucket: String, latest: u64 },
}

impl Runs {
    /// Registers a new run, or answers the id of the one in progress.
    pub fn begin(
        &self,
        trigger: &str,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<RunReport, InProgress> {
        self.begin_from(trigger, dry_run, now, 0)
    }

    /// As [`Runs::begin`], the run numbered at least `at_least` (the id the KV lease gave it).
    pub fn begin_from(
        &self,
        trigger: &str,
        dry_run: bool,
        now: DateTime<Utc>,
        at_least: u64,
    ) -> Result<RunReport, InProgress> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = inner.running {
            return Err(InProgress(running));
        }
        inner.next_id = (inner.next_id + 1).max(at_least);
        let report = RunReport {
            run_id: inner.next_id,
            status: RunStatus::Running,
            trigger: trigger.to_string(),
            dry_run,
            pass: PassKind::Full,
            started_at: now,
            ended_at: None,
            message: None,
            object_types: BTreeMap::new(),
            cascades: CascadeReport::default(),
        };
        inner.running = Some(report.run_id);
        inner.reports.push_back(report.clone());
        if inner.reports.len() > KEEP {
            inner.reports.pop_front();
        }
        Ok(report)
    }

    /// Stores a report; a finished one ends the run.
    pub fn update(&self, report: &RunReport) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if report.status != RunStatus::Running && inner.running == Some(report.run_id) {
            inner.running = None;
        }
        if let Some(slot) = inner.reports.iter_mut().find(|r| r.run_id == report.run_id) {
            *slot = report.clone();
        }
    }

    /// Ends a run that stopped without its final report (its task panicked, or the relay shut
    /// down): failed, saying `why`, so that the next trigger is not refused for a run that no
    /// longer exists.
    pub fn abandon(&self, run_id: u64, now: DateTime<Utc>, why: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.running != Some(run_id) {
            return;
        }
        inner.running = None;
        if let Some(slot) = inner.reports.iter_mut().find(|r| r.run_id == run_id) {
            slot.status = RunStatus::Failed;
            slot.ended_at = Some(now);
            slot.message = Some(why.to_string());
        }
    }

    /// Says why an ended run ended, in place of what its report said.
    pub fn explain(&self, run_id: u64, why: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = inner.reports.iter_mut().find(|r| r.run_id == run_id) {
            slot.message = Some(why.to_string());
        }
    }

    /// The id the next run of this relay gets, unless the KV lease numbers it higher.
    pub fn next_id(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next_id + 1
    }

    pub fn running(&self) -> Option<u64> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).running
    }

    pub fn get(&self, id: u64) -> Option<RunReport> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.reports.iter().find(|r| r.run_id == id).cloned()
    }

    pub fn latest(&self) -> Option<RunReport> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.reports.back().cloned()
    }
}
