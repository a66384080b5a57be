//! Cascade re-label: when a parent's shown value changes (a site's slug, a VRF's name, a tag's
//! slug), pull the objects that show it with NetBox's filter for the relation, translate them as
//! reconcile does and publish what changed, with origin `cascade`.
//!
//! Triggers wait `cascade.debounce` and are coalesced per parent, so a bulk edit of fifty sites
//! pulls each site's dependents once; at most `netbox.concurrency` parents are pulled at a time,
//! each on its own, so that a slow one delays no other.
//! Each trigger is kept in the state file ([`Journal`]) before the parent's change is published,
//! and forgotten once its dependents were pulled: one queued when the relay stops runs at its next
//! start, and one that failed `ATTEMPTS` times runs at the next reconcile run.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cascade_queue::{Next, Queue};
use super::diff::{cascades_of, Emitter, PullError};
use super::pull::{Pager, PullOptions};
use super::Reconciler;
use crate::backoff::Backoff;
use crate::delta::Origin;
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::parents::{Filter, Trigger};
use crate::netbox::ObjectType;
use crate::state::{Committer, PendingCascade, Store, StoreError, Write};
use crate::telemetry;
use crate::translate;

/// Tries of one cascade before it is left to the next reconcile; the n-th retry waits
/// `debounce * 4^n`.
const ATTEMPTS: u32 = 4;

/// What the queue needs to run a cascade; the reconciler is the one implementation outside tests.
pub trait Dependents: Send + Sync + 'static {
    /// How many parents are pulled at once.
    fn concurrency(&self) -> usize;
    /// Pulls one parent's dependents and publishes what changed.
    fn cascade(
        &self,
        trigger: &Trigger,
    ) -> impl Future<Output = Result<CascadeTally, PullError>> + Send;
}

/// The pending cascades in the state file.
#[derive(Clone)]
pub struct Journal {
    store: Arc<Store>,
    committer: Committer,
}

impl Journal {
    pub fn new(store: Arc<Store>, committer: Committer) -> Journal {
        Journal { store, committer }
    }

    /// Keeps `triggers` durably; each row is to be given back to [`Journal::done`].
    pub async fn keep(&self, triggers: &[Trigger]) -> Result<Vec<PendingCascade>, StoreError> {
        let rows: Vec<PendingCascade> = triggers
            .iter()
            .map(|t| PendingCascade {
                key: t.key(),
                value: Bytes::from(t.encode(&uuid::Uuid::new_v4().simple().to_string())),
            })
            .collect();
        if !rows.is_empty() {
            let pending = rows.clone();
            self.committer.commit(Write::Cascade { pending }).await?;
        }
        Ok(rows)
    }

    /// Forgets cascades carried out (a failure costs one more run of them, and is only logged).
    pub async fn done(&self, done: Vec<PendingCascade>) {
        if done.is_empty() {
            return;
        }
        if let Err(e) = self.committer.commit(Write::Cascaded { done }).await {
            tracing::warn!(error = %e, "cascade: cannot forget cascades carried out; they run again");
        }
    }

    /// Every pending cascade; rows no longer understood are forgotten.
    pub async fn pending(&self) -> Result<Vec<(Trigger, PendingCascade)>, StoreError> {
        let rows = self.store.read(|s| s.pending_cascades()).await?;
        let mut pending = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in rows {
            match Trigger::decode(&row.key, &row.value) {
                Some(trigger) => pending.push((trigger, row)),
                None => unreadable.push(row),
            }
        }
        if !unreadable.is_empty() {
            tracing::error!(count = unreadable.len(), "cascade: pending cascades not understood; forgotten (the next full pass repairs what they would have)");
            self.done(unreadable).await;
        }
        Ok(pending)
    }
}

impl Dependents for Reconciler {
    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn cascade(
        &self,
        trigger: &Trigger,
    ) -> impl Future<Output = Result<CascadeTally, PullError>> + Send {
        cascade(self, trigger)
    }
}

/// The queue of cascades and the task that runs them.
pub struct Cascades {
    /// By [`Trigger::key`]; only the cascades running are tasks.
    pending: Mutex<Queue<Trigger, PendingCascade>>,
    wake: Notify,
    debounce: Duration,
    /// Where triggers are kept until carried out (none in the queue's own unit tests).
    journal: Option<Journal>,
}

type Queued = super::cascade_queue::Queued<Trigger, PendingCascade>;

/// What one cascade did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CascadeTally {
    pub pulled: u64,
    pub published: u64,
    /// The cascades its dependents call for in turn: a dependent that is a parent too, found
    /// changed (a device renamed by a lost webhook, re-labelled by its site's cascade), each with
    /// its row in the journal (none for a dry run).
    pub further: Vec<(Trigger, Option<PendingCascade>)>,
    /// Deltas spooled (NATS away). Each is NetBox as pulled; published later, it may be older
    /// than NetBox by then, with nothing after it to show so: the cascade runs again.
    pub spooled: u64,
}

impl Cascades {
    pub fn new(debounce: Duration) -> Arc<Cascades> {
        Arc::new(Cascades {
            pending: Mutex::default(),
            wake: Notify::new(),
            debounce,
            journal: None,
        })
    }

    /// A queue whose triggers outlive a restart.
    pub fn kept_in(debounce: Duration, journal: Journal) -> Arc<Cascades> {
        Arc::new(Cascades {
            pending: Mutex::default(),
            wake: Notify::new(),
            debounce,
            journal: Some(journal),
        })
    }

    /// Queues a cascade, durably once it returns `Ok`; one already queued for the same parent
    /// takes the newer slug.
    pub async fn push(&self, trigger: Trigger) -> Result<(), StoreError> {
        let kept = match &self.journal {
            Some(journal) => journal.keep(std::slice::from_ref(&trigger)).await?.pop(),
            None => None,
        };
        self.queue(trigger, 0, kept);
        Ok(())
    }

    /// Queues a new trigger: it runs with the burst it arrived in.
    fn queue(&self, trigger: Trigger, attempt: u32, kept: Option<PendingCascade>) {
        let key = trigger.key();
        let queued = Queued {
            trigger,
            attempt,
            kept,
        };
        let mut waiting = self.waiting();
        waiting.arrive(key, queued, self.debounce);
        telemetry::cascades_waiting(waiting.len());
        drop(waiting);
        self.wake.notify_one();
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Queue<Trigger, PendingCascade>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the cascades a relay before this one kept and did not carry out.
    async fn resume(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        match journal.pending().await {
            Ok(pending) if pending.is_empty() => {}
            Ok(pending) => {
                tracing::info!(
                    count = pending.len(),
                    "cascade: cascades kept from before are queued again"
                );
                for (trigger, kept) in pending {
                    self.queue(trigger, 0, Some(kept));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cascade: cannot read the pending cascades; the next reconcile run carries them out")
            }
        }
    }

    /// Runs queued cascades until shutdown. Each parent's pull is a task of its own, at most
    /// `netbox.concurrency` at once: one slow parent (NetBox answering 429 with a long
    /// `Retry-After`) holds one of them, never the parents queued after it. The others wait in
    /// the queue, not as tasks, and are taken as pulls end.
    pub async fn run(
        self: Arc<Self>,
        reconciler: Arc<impl Dependents>,
        shutdown: CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(reconciler.concurrency().max(1)));
        let pulls = TaskTracker::new();
        self.resume().await;
        let mut next = None;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep_until(next), if next.is_some() => {}
                _ = shutdown.cancelled() => break,
            }
            next = loop {
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                    _ = shutdown.cancelled() => break None,
                };
                let mut waiting = self.waiting();
                let next = waiting.take();
                telemetry::cascades_waiting(waiting.len());
                drop(waiting);
                let queued = match next {
                    Next::Ready(queued) => queued,
                    Next::At(at) => break Some(at),
                    Next::Empty => break None,
                };
                let (this, reconciler, shutdown) =
                    (self.clone(), reconciler.clone(), shutdown.clone());
                pulls.spawn(async move {
                    // At shutdown the pipeline closes: pulls in progress are left to the next
                    // reconcile.
                    tokio::select! {
                        _ = this.pull(&*reconciler, queued) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    drop(permit);
                });
            };
            if shutdown.is_cancelled() {
                break;
            }
        }
        pulls.close();
        pulls.wait().await;
    }

    /// One try of a parent's cascade; a failed one is queued again to run after its back-off,
    /// unless a newer trigger of the same parent was queued meanwhile (that one runs instead).
    async fn pull(self: &Arc<Self>, reconciler: &impl Dependents, queued: Queued) {
        if let Some((wait, again)) = self.attempt(reconciler, queued).await {
            let key = again.trigger.key();
            let due = tokio::time::Instant::now() + wait + self.debounce;
            let mut waiting = self.waiting();
            waiting.retry(key, again, due);
            telemetry::cascades_waiting(waiting.len());
            drop(waiting);
            self.wake.notify_one();
        }
    }

    /// The try after `attempt`, and how long it waits: four debounces, then four times as long
    /// each time.
    fn again(
        &self,
        trigger: Trigger,
        attempt: u32,
        kept: Option<PendingCascade>,
    ) -> (Duration, Queued) {
        let (first, most) = (self.debounce * 4, self.debounce * 4u32.pow(ATTEMPTS));
        let wait = Backoff::nth_wait(first, most, 4.0, attempt as usize);
        let attempt = attempt + 1;
        let again = Queued {
            trigger,
            attempt,
            kept,
        };
        (wait, again)
    }

    /// Runs one cascade; when it is to be tried again, how long to wait and what to queue.
    async fn attempt(
        &self,
        reconciler: &impl Dependents,
        queued: Queued,
    ) -> Option<(Duration, Queued)> {
        let Queued {
            trigger,
            attempt,
            kept,
        } = queued;
        let (parent, id) = (trigger.parent.name, trigger.id);
        match reconciler.cascade(&trigger).await {
            // Pulled again later, behind what it spooled: NetBox as it is then follows it.
            Ok(tally) if tally.spooled > 0 && attempt + 1 < ATTEMPTS => {
                for (further, kept) in tally.further {
                    self.queue(further, 0, kept);
                }
                let again = self.again(trigger, attempt, kept);
                tracing::info!(parent, id, spooled = tally.spooled, again_in = ?again.0,
                    "cascade: deltas spooled (NATS away); the dependents are read again");
                return Some(again);
            }
            Ok(tally) => {
                // Still spooling at its last try: kept for the next reconcile run to carry out.
                if let (Some(journal), Some(kept), 0) = (&self.journal, kept, tally.spooled) {
                    journal.done(vec![kept]).await;
                }
                for (further, kept) in tally.further {
                    self.queue(further, 0, kept);
                }
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
                let again = self.again(trigger, attempt, kept);
                tracing::warn!(parent, id, error = %e, retry_in = ?again.0, "cascade: failed; retrying");
                return Some(again);
            }
            Err(e) => {
                telemetry::cascade_ran("failed", 0);
                tracing::error!(parent, id, error = %e,
                    "cascade: failed for good here; kept for the next reconcile run");
            }
        }
        None
    }
}

/// Pulls the dependents of one parent, type by type (the enabled ones), and publishes the
/// entries that changed.
///
/// A parent that is a registry kind of its own (a device, a site) is listed before and after
/// its dependents are pulled, and published after them if the registry does not show it at that
/// revision: the registry then shows the parent as its dependents were pulled, even when the
/// save they show came with a webhook that was lost, and a later save that undoes it differs
/// from that entry, and cascades. A parent saved while its dependents were pulled has them
/// pulled again (up to `PARENT_READS` times).
pub async fn cascade(
    reconciler: &Reconciler,
    trigger: &Trigger,
) -> Result<CascadeTally, PullError> {
    let client = reconciler.client.clone().ok_or(PullError::NotConfigured)?;
    let version = client.version().await?;
    let options = PullOptions {
        version,
        page_size: reconciler.page_size,
        concurrency: 1,
        listing: false,
    };
    let enabled: HashSet<&str> = reconciler.types.iter().map(|t| t.name).collect();
    let itself = ObjectType::from_name(trigger.parent.name).filter(|t| enabled.contains(t.name));
    let pull = Pull {
        reconciler,
        client: &client,
        options,
        trigger,
    };
    let mut tally = CascadeTally::default();
    let mut before = match itself {
        Some(object_type) => Some(pull.revision(object_type).await?),
        None => None,
    };
    for round in 1..=PARENT_READS {
        for (dependent, filter) in trigger.parent.dependents {
            let Some(object_type) =
                ObjectType::from_name(dependent).filter(|t| enabled.contains(t.name))
            else {
                continue;
            };
            let Some(query) = trigger.query(*filter) else {
                continue;
            };
            pull.dependents(object_type, query, &mut tally).await?;
        }
        let (Some(object_type), Some(seen)) = (itself, before) else {
            break;
        };
        let now = pull.revision(object_type).await?;
        if now != seen && round < PARENT_READS {
            before = Some(now);
            continue;
        }
        if !pull.shown_at(object_type, now).await? {
            pull.itself(object_type, &mut tally).await?;
        }
        break;
    }
    Ok(tally)
}

/// Times a cascade pulls the dependents of a parent (a registry kind) that was saved while
/// they were pulled.
const PARENT_READS: usize = 3;

/// One cascade's pulls.
struct Pull<'a> {
    reconciler: &'a Reconciler,
    client: &'a NetboxClient,
    options: PullOptions,
    trigger: &'a Trigger,
}

impl Pull<'_> {
    /// The parent's revision as NetBox lists it now (None when NetBox no longer has it).
    async fn revision(&self, object_type: ObjectType) -> Result<Option<DateTime<Utc>>, PullError> {
        let listed = super::pull::listed(self.client, object_type, self.trigger.id).await?;
        Ok(listed.as_ref().and_then(translate::listed_revision))
    }

    /// Whether this relay's record of the parent is at `revision` (a parent NetBox no longer
    /// has: nothing to publish here, its delete is the webhook's or a run's).
    async fn shown_at(
        &self,
        object_type: ObjectType,
        revision: Option<DateTime<Utc>>,
    ) -> Result<bool, PullError> {
        let Some(revision) = revision else {
            return Ok(true);
        };
        let key = self.reconciler.translator.key(object_type, self.trigger.id);
        let store = self.reconciler.store.clone();
        let head = store.read(move |s| s.head(&key)).await?;
        Ok(head.is_some_and(|h| h.revision == revision))
    }

    /// Reads the parent itself in full and publishes its entry if it changed.
    async fn itself(
        &self,
        object_type: ObjectType,
        tally: &mut CascadeTally,
    ) -> Result<(), PullError> {
        let reread = Trigger::reread(object_type.name, self.trigger.id);
        if let Some(query) = reread.query(Filter::Host(object_type.name)) {
            self.dependents(object_type, query, tally).await?;
        }
        Ok(())
    }

    /// Pulls the objects of `object_type` that `query` selects and publishes those that
    /// changed.
    async fn dependents(
        &self,
        object_type: ObjectType,
        query: String,
        tally: &mut CascadeTally,
    ) -> Result<(), PullError> {
        let reconciler = self.reconciler;
        let mut pager =
            Pager::new(self.client, object_type, self.options, None, None).filtered(query.clone());
        let mut emitter = Emitter::new(&reconciler.output);
        let mut failure = None;
        loop {
            let page = match pager.next_objects().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) if parent_gone(&e, &query) => {
                    tracing::debug!(dependent = object_type.name, %query, "cascade: the parent is gone, so none points at it");
                    break;
                }
                Err(e) => {
                    failure = Some(PullError::Api(e));
                    break;
                }
            };
            let candidates = cascades_of(object_type, &page);
            let mut sorted = reconciler.sort_off_runtime(object_type, page).await?;
            tally.pulled += sorted.ids.len() as u64;
            // Unchanged by this relay's records, not always by the stream's (another relay's).
            let moved = reconciler
                .moved_on_stream(std::mem::take(&mut sorted.matched))
                .await;
            sorted
                .replaced
                .extend(moved.changed.iter().map(|d| d.object_id));
            sorted.changed.extend(moved.changed);
            // Kept before the dependents that call for them are published.
            let further = reconciler
                .keep(candidates, &sorted.replaced, &sorted.changed)
                .await?;
            tally.further.extend(further);
            for mut delta in sorted.changed {
                delta.origin = Origin::Cascade;
                emitter.push(delta).await;
            }
            for mut delta in moved.unread {
                delta.origin = Origin::Cascade;
                emitter.push_judged_by_stream(delta).await;
            }
        }
        let sent = emitter.finish().await;
        tally.published += sent.out;
        tally.spooled += sent.spooled;
        tally
            .further
            .extend(sent.reread.into_iter().map(|t| (t, None)));
        match failure.or((sent.failed > 0).then_some(PullError::NotDelivered(sent.failed))) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// NetBox refuses a filter naming an object it no longer has (`ip_address_id=31` after the
/// address was deleted: 400 `{"ip_address_id": ["Select a valid choice. 31 is not one of the
/// available choices."]}`): nothing can point at a parent that is gone, so there is nothing to
/// pull, rather than a cascade that fails at every try.
fn parent_gone(e: &ApiError, query: &str) -> bool {
    let ApiError::Status {
        status: 400,
        message,
        ..
    } = e
    else {
        return false;
    };
    let field = query.split('=').next().unwrap_or_default();
    message.contains(&format!("\"{field}\""))
        && message.contains("is not one of the available choices")
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netbox::parents::Parent;
    use tokio::time::Instant;

    /// Records each pull and the paused clock's time; the parents in `failing` always fail.
    struct Recorder {
        epoch: Instant,
        pulls: Mutex<Vec<(u64, Option<String>, Duration)>>,
        failing: Vec<u64>,
        /// How long each pull takes.
        takes: Duration,
    }

    impl Dependents for Recorder {
        fn concurrency(&self) -> usize {
            4
        }

        async fn cascade(&self, trigger: &Trigger) -> Result<CascadeTally, PullError> {
            let at = self.epoch.elapsed();
            let pull = (trigger.id, trigger.slug.clone(), at);
            self.pulls.lock().unwrap().push(pull);
            tokio::time::sleep(self.takes).await;
            if self.failing.contains(&trigger.id) {
                return Err(PullError::NotDelivered(1));
            }
            Ok(CascadeTally::default())
        }
    }

    fn site(id: u64, slug: &str) -> Trigger {
        Trigger {
            parent: Parent::from_name("dcim.site").unwrap(),
            id,
            slug: Some(slug.to_string()),
            hosts: Vec::new(),
        }
    }

    fn started(failing: Vec<u64>) -> (Arc<Cascades>, Arc<Recorder>, CancellationToken) {
        started_taking(failing, Duration::ZERO)
    }

    fn started_taking(
        failing: Vec<u64>,
        takes: Duration,
    ) -> (Arc<Cascades>, Arc<Recorder>, CancellationToken) {
        let cascades = Cascades::new(Duration::from_secs(2));
        let recorder = Arc::new(Recorder {
            epoch: Instant::now(),
            pulls: Mutex::new(Vec::new()),
            failing,
            takes,
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(cascades.clone().run(recorder.clone(), shutdown.clone()));
        (cascades, recorder, shutdown)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_pulls_each_parent_once_with_its_last_slug_one_debounce_after_it_began() {
        let (cascades, recorder, shutdown) = started(Vec::new());
        tokio::task::yield_now().await;
        // Fifty sites renamed over 1.5 s, site 7 twice.
        for id in 1..=50 {
            cascades
                .push(site(id, &format!("site-{id}")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        cascades.push(site(7, "site-7-again")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        shutdown.cancel();

        let mut pulls = recorder.pulls.lock().unwrap().clone();
        pulls.sort();
        let expected: Vec<_> = (1..=50)
            .map(|id| {
                let slug = if id == 7 {
                    "site-7-again".to_string()
                } else {
                    format!("site-{id}")
                };
                (id, Some(slug), Duration::from_secs(2))
            })
            .collect();
        assert_eq!(pulls, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_parent_is_tried_four_times_and_holds_no_other() {
        let (cascades, recorder, shutdown) = started(vec![1]);
        tokio::task::yield_now().await;
        cascades.push(site(1, "failing")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        cascades.push(site(2, "healthy")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        shutdown.cancel();

        let pulls = recorder.pulls.lock().unwrap().clone();
        let healthy: Vec<_> = pulls.iter().filter(|p| p.0 == 2).map(|p| p.2).collect();
        assert_eq!(
            healthy,
            [Duration::from_secs(5)],
            "one debounce after it was queued"
        );
        let tries: Vec<_> = pulls.iter().filter(|p| p.0 == 1).map(|p| p.2).collect();
        assert_eq!(tries.len(), 4, "{tries:?}");
        // Each retry waits 4, 16, 64 debounces (up to twice that with jitter), then the debounce
        // of the queue it joins again.
        let debounce = Duration::from_secs(2);
        assert_eq!(tries[0], debounce);
        for (n, pair) in tries.windows(2).enumerate() {
            let floor = debounce * 4u32.pow(n as u32 + 1) + debounce;
            let gap = pair[1] - pair[0];
            assert!(
                gap >= floor && gap <= floor * 2,
                "retry {n}: {gap:?}, floor {floor:?}"
            );
        }
    }

    /// A backlog (NetBox slow, a burst of renames) waits in the queue, not as a task per
    /// parent: 2,000 parents queued with pulls of a second each, four at a time, cost four
    /// tasks, and a parent queued again before its turn is pulled once.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_waits_in_the_queue_and_a_parent_queued_again_is_pulled_once() {
        let (cascades, recorder, shutdown) = started_taking(Vec::new(), Duration::from_secs(1));
        tokio::task::yield_now().await;
        let before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        for id in 1..=2000 {
            cascades.push(site(id, "first")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            - before;
        assert!(alive <= 4, "{alive} tasks for four pulls at a time");
        for id in 1500..=2000 {
            cascades.push(site(id, "second")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
        shutdown.cancel();

        let pulls = recorder.pulls.lock().unwrap().clone();
        assert_eq!(pulls.len(), 2000, "each parent once");
        let last = pulls.iter().find(|p| p.0 == 2000).unwrap();
        assert_eq!(last.1.as_deref(), Some("second"), "with its newer slug");
    }
}
