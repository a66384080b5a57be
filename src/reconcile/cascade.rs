//! Cascade re-label: when a parent's shown value changes (a site's slug, a VRF's name, a tag's
//! slug), pull the objects that show it with NetBox's filter for the relation, translate them as
//! reconcile does and publish what changed, with origin `cascade`.
//!
//! Triggers wait `cascade.debounce` and are coalesced per parent, so a bulk edit of fifty sites
//! pulls each site's dependents once; at most `netbox.concurrency` parents are pulled at a time,
//! each on its own, so that a slow one delays no other.
//! Pending triggers live in memory: a relay that stops with some queued leaves them to the next
//! reconcile, as it does a cascade that failed `ATTEMPTS` times.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::diff::{sort, Emitter};
use super::pull::{Pager, PullOptions};
use super::Reconciler;
use crate::backoff::Backoff;
use crate::delta::Origin;
use crate::netbox::client::ApiError;
use crate::netbox::parents::Trigger;
use crate::netbox::ObjectType;
use crate::telemetry;

/// Tries of one cascade before it is left to the next reconcile; the n-th retry waits
/// `debounce * 4^n`.
const ATTEMPTS: u32 = 4;

/// The queue of cascades and the task that runs them.
pub struct Cascades {
    pending: Mutex<BTreeMap<(&'static str, u64), Queued>>,
    wake: Notify,
    debounce: Duration,
}

struct Queued {
    trigger: Trigger,
    attempt: u32,
}

/// What one cascade did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CascadeTally {
    pub pulled: u64,
    pub published: u64,
}

impl Cascades {
    pub fn new(debounce: Duration) -> Arc<Cascades> {
        Arc::new(Cascades {
            pending: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            debounce,
        })
    }

    /// Queues a cascade; one already queued for the same parent takes the newer slug.
    pub fn push(&self, trigger: Trigger) {
        self.queue(trigger, 0);
    }

    fn queue(&self, trigger: Trigger, attempt: u32) {
        let key = (trigger.parent.name, trigger.id);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = pending
            .get(&key)
            .map_or(attempt, |q| q.attempt.min(attempt));
        pending.insert(key, Queued { trigger, attempt });
        drop(pending);
        self.wake.notify_one();
    }

    /// Runs queued cascades until shutdown. Each parent's pull is a task of its own, at most
    /// `netbox.concurrency` at once: one slow parent (NetBox answering 429 with a long
    /// `Retry-After`) holds one of them, never the parents queued after it.
    pub async fn run(self: Arc<Self>, reconciler: Arc<Reconciler>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(reconciler.concurrency.max(1)));
        let pulls = TaskTracker::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            // Let the burst that woke us finish arriving.
            tokio::select! {
                _ = tokio::time::sleep(self.debounce) => {}
                _ = shutdown.cancelled() => break,
            }
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            for queued in batch.into_values() {
                let (this, reconciler) = (self.clone(), reconciler.clone());
                let (permits, shutdown) = (permits.clone(), shutdown.clone());
                pulls.spawn(async move {
                    // At shutdown the pipeline closes: pulls in progress are left to the next
                    // reconcile.
                    tokio::select! {
                        _ = this.pull(&reconciler, &permits, queued) => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        }
        pulls.close();
        pulls.wait().await;
    }

    /// One try of a parent's cascade; a failed one waits its back-off here, inside the task
    /// shutdown cancels, then is queued again (taking a newer trigger of the same parent along).
    async fn pull(self: &Arc<Self>, reconciler: &Reconciler, permits: &Semaphore, queued: Queued) {
        let retry = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            self.attempt(reconciler, queued).await
        };
        if let Some((wait, again)) = retry {
            tokio::time::sleep(wait).await;
            self.queue(again.trigger, again.attempt);
        }
    }

    /// Runs one cascade; when it is to be tried again, how long to wait and what to queue.
    async fn attempt(&self, reconciler: &Reconciler, queued: Queued) -> Option<(Duration, Queued)> {
        let Queued { trigger, attempt } = queued;
        let (parent, id) = (trigger.parent.name, trigger.id);
        match cascade(reconciler, &trigger).await {
            Ok(tally) => {
                telemetry::cascade_ran("succeeded", tally.pulled);
                tracing::info!(
                    parent,
                    id,
                    pulled = tally.pulled,
                    published = tally.published,
                    "cascade: dependents re-labelled"
                );
            }
            Err(e) if attempt + 1 < ATTEMPTS => {
                telemetry::cascade_ran("retried", 0);
                let (first, most) = (self.debounce * 4, self.debounce * 4u32.pow(ATTEMPTS));
                let wait = Backoff::nth_wait(first, most, 4.0, attempt as usize);
                tracing::warn!(parent, id, error = %e, retry_in = ?wait, "cascade: failed; retrying");
                let attempt = attempt + 1;
                return Some((wait, Queued { trigger, attempt }));
            }
            Err(e) => {
                telemetry::cascade_ran("failed", 0);
                tracing::error!(parent, id, error = %e,
                    "cascade: failed for good; the next reconcile re-labels what it missed");
            }
        }
        None
    }
}

/// Why a cascade did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    #[error("netbox.url or netbox.token is not configured")]
    NotConfigured,
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("translating a page failed: {0}")]
    Translate(String),
    #[error("{0} deltas not delivered")]
    NotDelivered(u64),
}

/// Pulls the dependents of one parent, type by type (the enabled ones), and publishes the
/// entries that changed.
pub async fn cascade(
    reconciler: &Reconciler,
    trigger: &Trigger,
) -> Result<CascadeTally, CascadeError> {
    let client = reconciler
        .client
        .clone()
        .ok_or(CascadeError::NotConfigured)?;
    let version = client.version().await?;
    let options = PullOptions {
        version,
        page_size: reconciler.page_size,
        concurrency: 1,
    };
    let enabled: HashSet<&str> = reconciler.types.iter().map(|t| t.name).collect();
    let mut tally = CascadeTally::default();
    for (dependent, filter) in trigger.parent.dependents {
        let Some(object_type) =
            ObjectType::from_name(dependent).filter(|t| enabled.contains(t.name))
        else {
            continue;
        };
        let Some(query) = trigger.query(*filter) else {
            continue;
        };
        let mut pager = Pager::new(&client, object_type, options, None, None).filtered(query);
        let mut emitter = Emitter::new(&reconciler.output);
        let mut failure = None;
        loop {
            let page = match pager.next_page().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(CascadeError::Api(e));
                    break;
                }
            };
            let (translator, store) = (reconciler.translator.clone(), reconciler.store.clone());
            let sorted =
                tokio::task::spawn_blocking(move || sort(&translator, &store, object_type, page))
                    .await
                    .map_err(|e| CascadeError::Translate(e.to_string()))?;
            tally.pulled += sorted.ids.len() as u64;
            for mut delta in sorted.changed {
                delta.origin = Origin::Cascade;
                emitter.push(delta).await;
            }
        }
        let sent = emitter.finish().await;
        tally.published += sent.out;
        if let Some(e) =
            failure.or((sent.failed > 0).then_some(CascadeError::NotDelivered(sent.failed)))
        {
            return Err(e);
        }
    }
    Ok(tally)
}
