//! Reconciliation: pull every enabled object type from the NetBox REST API, translate each object
//! exactly as a webhook would, and publish only what differs from the state store. Triggered on a
//! schedule, at start, by `POST /reconcile` and by `netbox-relay reconcile`.

mod cascade;
mod cascade_queue;
mod changelog;
mod confirm;
mod diff;
mod held;
mod learn;
mod lease;
mod on_main;
mod pull;
mod repair;
mod run;
mod runs;
mod schedule;
mod served;
mod unconfirmed;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use cascade::{Cascades, Journal};
pub use confirm::{Confirmed, Confirmer, HoldError};
use lease::{Coordination, Lease, Refused};
pub use pull::{by_ids, pages, PullOptions};
pub use runs::{
    CascadeReport, InProgress, NotStarted, PassKind, RunReport, RunStatus, Runs, TypeReport,
};
pub use unconfirmed::{Stuck, Unconfirmed};

use crate::config::Config;
use crate::netbox::client::NetboxClient;
use crate::netbox::ObjectType;
use crate::publish::Delivery;
use crate::state::Store;
use crate::translate::Translator;

/// Where a run's deltas go.
pub enum Output {
    Publish(Arc<Delivery>),
    /// A dry run: print each delta as a JSON line, publish nothing.
    Print,
}

pub struct RunOptions {
    pub trigger: String,
    /// Apply deletes even past `reconcile.max_delete_fraction`.
    pub force: bool,
    /// A full pass, whether or not one is due.
    pub full: bool,
    /// Only these object types; all enabled ones when empty.
    pub only: Vec<ObjectType>,
}

pub struct Reconciler {
    client: Option<Arc<NetboxClient>>,
    translator: Translator,
    store: Arc<Store>,
    output: Output,
    types: Vec<ObjectType>,
    page_size: u32,
    concurrency: usize,
    max_delete_fraction: f64,
    /// Deletes of a type never withheld, up to this many.
    delete_floor: u64,
    /// Whether runs carry out cascades (`cascade.enabled` not false).
    cascades_enabled: bool,
    /// How often a run is a full pass.
    full_interval: Duration,
    /// When this relay's last full pass ended, on its monotonic clock (the shared bucket has
    /// any relay's).
    last_full: std::sync::Mutex<Option<std::time::Instant>>,
    runs: Runs,
    /// The KV bucket every relay on the same NATS shares (absent for a dry run).
    shared: Option<Shared>,
    /// Cancelled at shutdown: a run in progress stops.
    stop: CancellationToken,
    /// Runs started in the background, awaited at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

/// Where the lease and the run reports live, opened on first use (NATS may be away at start).
struct Shared {
    js: async_nats::jetstream::Context,
    bucket: String,
    replicas: usize,
    ttl: Duration,
    opened: tokio::sync::OnceCell<Coordination>,
}

impl Reconciler {
    /// Without `netbox.url` and a token every run fails with a message saying so.
    pub fn new(
        config: &Config,
        translator: Translator,
        store: Arc<Store>,
        output: Output,
    ) -> anyhow::Result<Self> {
        let client = match NetboxClient::new(&config.netbox) {
            Ok(client) => Some(Arc::new(client)),
            Err(crate::netbox::client::ApiError::NotConfigured) => None,
            Err(e) => return Err(e.into()),
        };
        let shared = match &output {
            Output::Publish(delivery) => Some(Shared {
                js: delivery.jetstream().clone(),
                bucket: config.nats.kv_bucket.clone(),
                replicas: config.nats.replicas,
                ttl: config.reconcile.lease_ttl,
                opened: tokio::sync::OnceCell::new(),
            }),
            Output::Print => None,
        };
        Ok(Reconciler {
            client,
            translator,
            store,
            output,
            types: config.object_types()?,
            page_size: config.netbox.page_size,
            concurrency: config.netbox.concurrency,
            max_delete_fraction: config.reconcile.max_delete_fraction,
            delete_floor: config.reconcile.delete_floor,
            cascades_enabled: config.cascade.enabled != Some(false),
            full_interval: config.reconcile.full_interval,
            last_full: std::sync::Mutex::new(None),
            runs: Runs::default(),
            shared,
            stop: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// The NetBox client, when NetBox's URL and token are set.
    pub fn client(&self) -> Option<Arc<NetboxClient>> {
        self.client.clone()
    }

    /// Whether NetBox's URL and token are set, so that a run can pull at all.
    pub fn is_configured(&self) -> bool {
        self.client.is_some()
    }

    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// Starts a run in the background; `Err` holds the id of the run already in progress, on this
    /// relay or on another one sharing the NATS.
    pub async fn spawn(self: &Arc<Self>, options: RunOptions) -> Result<u64, NotStarted> {
        let (report, lease) = self.begin(&options).await?;
        let id = report.run_id;
        let this = self.clone();
        self.tasks
            .spawn(async move { this.execute(report, options, lease).await });
        Ok(id)
    }

    /// Runs to the end and answers the report; `Err` holds the id of the run in progress.
    pub async fn run(&self, options: RunOptions) -> Result<RunReport, NotStarted> {
        let (report, lease) = self.begin(&options).await?;
        Ok(self.execute(report, options, lease).await)
    }

    /// A run's report, from this relay or from the shared bucket.
    pub async fn report(&self, id: u64) -> Option<RunReport> {
        match self.runs.get(id) {
            Some(report) => Some(report),
            None => self.coordination().await?.report(id).await,
        }
    }

    /// The latest run of any relay sharing the NATS (this relay's, when the bucket is away).
    pub async fn latest(&self) -> Option<RunReport> {
        let local = self.runs.latest();
        let shared = match self.coordination().await {
            Some(c) => c.latest().await,
            None => None,
        };
        match (local, shared) {
            (Some(l), Some(s)) => Some(if s.run_id > l.run_id { s } else { l }),
            (l, s) => l.or(s),
        }
    }

    /// Registers a run: under the KV lease when the bucket is reachable (one run at a time
    /// across relays), under this relay's own exclusion otherwise.
    async fn begin(&self, options: &RunOptions) -> Result<(RunReport, Option<Lease>), NotStarted> {
        if let Some(running) = self.runs.running() {
            return Err(InProgress(running).into());
        }
        let coordination = self.coordination().await;
        let lease = match coordination {
            Some(c) => match c.acquire(self.runs.next_id()).await {
                Ok(lease) => Some(lease),
                Err(Refused::Held(run_id)) => return Err(InProgress(run_id).into()),
                Err(Refused::Exhausted(latest)) => {
                    let bucket = c.bucket().to_string();
                    return Err(NotStarted::IdsExhausted { bucket, latest });
                }
                Err(Refused::Unreachable(e)) => {
                    tracing::warn!(error = %e, "reconcile: the shared lease is out of reach; running under this relay's own exclusion");
                    None
                }
            },
            None => None,
        };
        let at_least = lease.as_ref().map_or(0, |l| l.run_id);
        let begun = self
            .runs
            .begin_from(&options.trigger, self.is_dry_run(), Utc::now(), at_least);
        match (begun, coordination) {
            (Ok(report), Some(c)) => {
                c.record(&report).await;
                Ok((report, lease))
            }
            (Ok(report), None) => Ok((report, lease)),
            (Err(running), c) => {
                if let (Some(c), Some(lease)) = (c, lease) {
                    c.release(lease).await;
                }
                Err(running.into())
            }
        }
    }

    /// The shared bucket, opened on first use; None for a dry run or while NATS is away (at
    /// once: a request to an absent server would hold the caller for JetStream's timeout).
    async fn coordination(&self) -> Option<&Coordination> {
        let shared = self.shared.as_ref()?;
        let connected =
            shared.js.client().connection_state() == async_nats::connection::State::Connected;
        if !connected {
            return None;
        }
        let opened = shared
            .opened
            .get_or_try_init(|| {
                Coordination::open(&shared.js, &shared.bucket, shared.replicas, shared.ttl)
            })
            .await;
        match opened {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "reconcile: the shared KV bucket is out of reach");
                None
            }
        }
    }

    /// Stores a report where every relay reads it.
    async fn share(&self, report: &RunReport) {
        if let Some(c) = self.shared.as_ref().and_then(|s| s.opened.get()) {
            c.record(report).await;
        }
    }

    fn is_dry_run(&self) -> bool {
        matches!(self.output, Output::Print)
    }

    /// Waits for the runs in progress to end; they stop at once when the relay shuts down
    /// ([`Reconciler::stopping_with`]).
    pub async fn wait_stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs watch `shutdown`: a run in progress stops, records its end and gives the lease back.
    pub fn stopping_with(mut self, shutdown: CancellationToken) -> Self {
        self.stop = shutdown;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reconciler without NetBox: each run fails at once, which is all a schedule test needs.
    fn unconfigured(dir: &std::path::Path) -> Arc<Reconciler> {
        let config = Config::default();
        let store = Arc::new(Store::open(&dir.join("state.redb")).unwrap());
        let translator = crate::app::translator(&config).unwrap();
        Arc::new(Reconciler::new(&config, translator, store, Output::Print).unwrap())
    }

    /// Lets spawned tasks run without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn triggers(reconciler: &Reconciler) -> Vec<String> {
        let latest = reconciler.runs.latest().map_or(0, |r| r.run_id);
        (1..=latest)
            .filter_map(|id| reconciler.runs.get(id))
            .map(|r| r.trigger)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_runs_at_start_then_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let reconciler = unconfigured(dir.path());
        let interval = Duration::from_secs(3600);
        let shutdown = CancellationToken::new();
        let schedule = tokio::spawn(
            reconciler
                .clone()
                .schedule(interval, true, shutdown.clone()),
        );
        settle().await;
        assert_eq!(triggers(&reconciler), ["start"]);

        // Not before the interval has passed; then at most 10% later (jitter).
        tokio::time::advance(interval - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(triggers(&reconciler), ["start"]);
        tokio::time::advance(interval / 10 + Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(triggers(&reconciler), ["start", "schedule"]);
        tokio::time::advance(interval.mul_f64(1.1)).await;
        settle().await;
        assert_eq!(triggers(&reconciler), ["start", "schedule", "schedule"]);

        shutdown.cancel();
        schedule.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_while_a_run_is_in_progress_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let reconciler = unconfigured(dir.path());
        let held = reconciler.runs.begin("api", false, Utc::now()).unwrap();
        let interval = Duration::from_secs(60);
        let shutdown = CancellationToken::new();
        let schedule = tokio::spawn(
            reconciler
                .clone()
                .schedule(interval, false, shutdown.clone()),
        );
        tokio::time::advance(interval.mul_f64(1.1)).await;
        settle().await;
        assert_eq!(
            triggers(&reconciler),
            ["api"],
            "the tick found a run in progress"
        );

        let mut held = held;
        held.finish(Utc::now());
        reconciler.runs.update(&held);
        tokio::time::advance(interval.mul_f64(1.1)).await;
        settle().await;
        assert_eq!(triggers(&reconciler), ["api", "schedule"]);
        shutdown.cancel();
        schedule.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_runs_only_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let reconciler = unconfigured(dir.path());
        let shutdown = CancellationToken::new();
        let schedule = reconciler.clone().schedule(Duration::ZERO, true, shutdown);
        tokio::time::timeout(Duration::from_secs(1), schedule)
            .await
            .expect("a zero interval ends the schedule after the start run");
        settle().await;
        assert_eq!(triggers(&reconciler), ["start"]);
    }
}
