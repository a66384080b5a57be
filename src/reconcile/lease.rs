//! One reconcile at a time across relays: a lease in a JetStream KV bucket (`nats.kv_bucket`),
//! renewed while the run lasts and taken over once it expired (its holder died), and the run
//! reports, so that every relay answers for every run. JetStream's compare-and-set on the key's
//! revision is the whole protocol.
//!
//! Expiry is judged on no host's wall clock: a lease has expired when the relay that wants it has
//! seen the same revision of it, unrenewed, for `reconcile.lease_ttl` on its own monotonic clock.
//! A holder whose clock runs years ahead or behind, or who wrote something unreadable, holds the
//! lease exactly as long as it renews it.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::runs::RunReport;

const LEASE: &str = "reconcile.lease";
const LATEST: &str = "reconcile.latest";
/// When the last full pass that ended, of any relay, started (RFC 3339).
const LAST_FULL: &str = "reconcile.last_full";

fn run_key(id: u64) -> String {
    format!("reconcile.runs.{id}")
}

/// The shared KV bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("KV bucket {bucket}: {message}")]
pub struct BucketError {
    bucket: String,
    message: String,
}

/// The lease's value. `expires_at` is written for relays of earlier versions, never read.
#[derive(Serialize, Deserialize)]
struct Holder {
    run_id: u64,
    holder: String,
    expires_at: DateTime<Utc>,
}

/// The lease of a run in progress, at its KV revision.
pub struct Lease {
    pub run_id: u64,
    revision: u64,
}

/// Why no lease was taken.
pub enum Refused {
    /// Another relay's run holds it.
    Held(u64),
    /// The bucket cannot be reached (NATS away): the caller runs under its own exclusion only.
    Unreachable(String),
    /// `reconcile.latest` holds the last run id there is.
    Exhausted(u64),
}

/// Run ids stay exact for JSON readers that hold numbers as doubles.
const MAX_RUN_ID: u64 = (1 << 53) - 1;

pub struct Coordination {
    kv: kv::Store,
    bucket: String,
    holder: String,
    ttl: Duration,
    /// The lease's revision as this relay last saw it held, and since when.
    seen: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
}

impl Coordination {
    /// Opens the bucket, creating it (one value per key, file storage) when absent.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
        ttl: Duration,
    ) -> Result<Coordination, BucketError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| BucketError {
                    bucket: bucket.to_string(),
                    message: e.to_string(),
                })?,
        };
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "netbox-relay".to_string());
        Ok(Coordination {
            kv,
            bucket: bucket.to_string(),
            holder: format!("{host}:{}:{}", std::process::id(), uuid::Uuid::new_v4()),
            ttl,
            seen: std::sync::Mutex::new(None),
        })
    }

    /// Takes the lease for a new run, numbered after every run any relay started and after
    /// `local_next`.
    pub async fn acquire(&self, local_next: u64) -> Result<Lease, Refused> {
        let unreachable = |e: &dyn std::fmt::Display| Refused::Unreachable(e.to_string());
        let latest = match self.kv.get(LATEST).await {
            Ok(value) => value.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok()),
            Err(e) => return Err(unreachable(&e)),
        };
        let latest = latest.unwrap_or(0).max(local_next.saturating_sub(1));
        if latest >= MAX_RUN_ID {
            return Err(Refused::Exhausted(latest));
        }
        let run_id = latest + 1;
        let value = self.value(run_id);
        let revision = match self.kv.create(LEASE, value.clone()).await {
            Ok(revision) => revision,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                self.take_over(value).await?
            }
            Err(e) => return Err(unreachable(&e)),
        };
        // Recorded under the lease: the next run anywhere is numbered after this one.
        if let Err(e) = self.kv.put(LATEST, run_id.to_string().into()).await {
            tracing::warn!(error = %e, "cannot record the run id in the KV bucket");
        }
        Ok(Lease { run_id, revision })
    }

    /// The lease another relay holds, unless it expired (that relay died mid-run).
    async fn take_over(&self, value: Bytes) -> Result<u64, Refused> {
        let unreachable = |e: &dyn std::fmt::Display| Refused::Unreachable(e.to_string());
        let entry = self.kv.entry(LEASE).await.map_err(|e| unreachable(&e))?;
        let Some(entry) = entry else {
            return Err(Refused::Unreachable("the lease vanished".into()));
        };
        let held = serde_json::from_slice::<Holder>(&entry.value).ok();
        let run_id = held.as_ref().map_or(0, |h| h.run_id);
        let expired = match entry.operation {
            kv::Operation::Put if !self.unrenewed(entry.revision) => {
                return Err(Refused::Held(run_id));
            }
            kv::Operation::Put => held.map(|h| h.run_id),
            // Given back.
            _ => None,
        };
        match self.kv.update(LEASE, value, entry.revision).await {
            Ok(revision) => {
                if let Some(run_id) = expired {
                    self.end_abandoned(run_id).await;
                }
                Ok(revision)
            }
            // Another relay took it in between.
            Err(_) => Err(Refused::Held(self.holder_run().await.unwrap_or(0))),
        }
    }

    /// The report of a run whose relay died holding the lease ends failed, saying so.
    async fn end_abandoned(&self, run_id: u64) {
        let Some(mut report) = self.report(run_id).await else {
            return;
        };
        if report.status != super::RunStatus::Running {
            return;
        }
        tracing::warn!(
            run_id,
            "reconcile: the relay running this run stopped renewing its lease; marked failed"
        );
        report.status = super::RunStatus::Failed;
        report.ended_at = Some(Utc::now());
        report.message = Some("the relay running it stopped (its lease expired)".to_string());
        self.record(&report).await;
    }

    /// Whether the lease at `revision` has gone unrenewed for the TTL, as this relay has seen it.
    fn unrenewed(&self, revision: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match *seen {
            Some((rev, since)) if rev == revision => since.elapsed() >= self.ttl,
            _ => {
                *seen = Some((revision, std::time::Instant::now()));
                false
            }
        }
    }

    async fn holder_run(&self) -> Option<u64> {
        let value = self.kv.get(LEASE).await.ok()??;
        Some(serde_json::from_slice::<Holder>(&value).ok()?.run_id)
    }

    /// Extends the lease; false when it was lost (expired and taken by another relay) or cannot
    /// be renewed. The holder is checked, not only the revision: a bucket made anew numbers its
    /// revisions from 1 again.
    pub async fn renew(&self, lease: &mut Lease) -> bool {
        let ours = match self.kv.entry(LEASE).await {
            Ok(Some(entry)) => {
                entry.revision == lease.revision
                    && serde_json::from_slice::<Holder>(&entry.value)
                        .is_ok_and(|h| h.holder == self.holder && h.run_id == lease.run_id)
            }
            _ => false,
        };
        if !ours {
            return false;
        }
        match self
            .kv
            .update(LEASE, self.value(lease.run_id), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the lease back, unless another relay holds it by now.
    pub async fn release(&self, lease: Lease) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(LEASE, Some(lease.revision))
            .await
        {
            tracing::debug!(error = %e, "the reconcile lease was not released (taken over, or NATS away); it expires");
        }
    }

    /// Stores a run's report for every relay to answer with.
    pub async fn record(&self, report: &RunReport) {
        let Ok(value) = serde_json::to_vec(report) else {
            return;
        };
        if let Err(e) = self.kv.put(run_key(report.run_id), value.into()).await {
            tracing::warn!(run_id = report.run_id, error = %e, "cannot store the run report in the KV bucket");
        }
    }

    pub async fn report(&self, id: u64) -> Option<RunReport> {
        let value = self.kv.get(run_key(id)).await.ok()??;
        serde_json::from_slice(&value).ok()
    }

    pub async fn latest(&self) -> Option<RunReport> {
        let value = self.kv.get(LATEST).await.ok()??;
        self.report(std::str::from_utf8(&value).ok()?.parse().ok()?)
            .await
    }

    /// How long ago the last full pass of any relay ended, by the NATS server's clock alone:
    /// the server stamps both the record of that pass and this run's lease (taken just now),
    /// so no relay's clock enters. Called by a run that holds the lease.
    pub async fn last_full_age(&self) -> Option<Duration> {
        let full = self.kv.entry(LAST_FULL).await.ok()??;
        let now = self.kv.entry(LEASE).await.ok()??;
        let age = now.created - full.created;
        Some(age.to_std().unwrap_or_default())
    }

    /// Records that a full pass has ended (its start in the value, for operators reading it).
    pub async fn record_full(&self, at: DateTime<Utc>) {
        if let Err(e) = self.kv.put(LAST_FULL, at.to_rfc3339().into()).await {
            tracing::warn!(error = %e, "cannot record the full pass in the KV bucket");
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn value(&self, run_id: u64) -> Bytes {
        let holder = Holder {
            run_id,
            holder: self.holder.clone(),
            expires_at: Utc::now() + self.ttl,
        };
        serde_json::to_vec(&holder).unwrap_or_default().into()
    }
}
