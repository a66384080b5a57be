//! The reconcile schedule: a run every `reconcile.interval` (with jitter), and once at start;
//! a tick is left out when another relay sharing the NATS started a run since this relay's
//! previous tick.
//!
//! "Since the previous tick" is judged by run ids, not by time: a run started elsewhere is one
//! whose id this relay had not seen as the latest when it last looked. No host's clock is
//! compared with another's, so a relay whose clock is skewed neither skips every tick nor
//! none.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{InProgress, NotStarted, Reconciler, RunOptions};

/// What the schedule needs of a relay; the reconciler is the one implementation outside tests.
pub(crate) trait Scheduled {
    /// The id of the latest run started by another relay sharing the NATS, if the latest run
    /// anywhere is one; `None` when it is this relay's or there is none (or the bucket is away).
    async fn latest_elsewhere(&self) -> Option<u64>;
    /// Whether this relay has started a run since it began.
    fn has_run(&self) -> bool;
    /// Starts a run in the background.
    async fn start(&self, trigger: &'static str) -> Result<u64, NotStarted>;
}

/// Runs on `interval` (plus `jitter`), and once at start when `on_start`. A zero interval
/// disables the schedule.
pub(crate) async fn run_schedule(
    relay: &impl Scheduled,
    interval: Duration,
    on_start: bool,
    jitter: impl Fn(Duration) -> Duration,
    shutdown: CancellationToken,
) {
    let mut seen = relay.latest_elsewhere().await;
    let mut first = on_start;
    loop {
        if !first {
            if interval.is_zero() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval + jitter(interval)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        first = false;
        let trigger = if on_start && !relay.has_run() {
            "start"
        } else {
            "schedule"
        };
        let latest = relay.latest_elsewhere().await;
        let elsewhere = latest.is_some() && latest != seen;
        seen = latest;
        if trigger == "schedule" && elsewhere {
            tracing::debug!(
                run = latest,
                "reconcile: another relay ran since the last tick; skipping this one"
            );
            continue;
        }
        match relay.start(trigger).await {
            Ok(_) => {}
            Err(NotStarted::InProgress(InProgress(running))) => tracing::info!(
                running,
                "reconcile: a run is already in progress; skipping this one"
            ),
            Err(e) => tracing::error!(error = %e, "reconcile: the scheduled run did not start"),
        }
    }
}

impl Scheduled for Arc<Reconciler> {
    async fn latest_elsewhere(&self) -> Option<u64> {
        let latest = self.coordination().await?.latest().await?;
        self.runs
            .get(latest.run_id)
            .is_none()
            .then_some(latest.run_id)
    }

    fn has_run(&self) -> bool {
        self.runs.latest().is_some()
    }

    async fn start(&self, trigger: &'static str) -> Result<u64, NotStarted> {
        self.spawn(RunOptions {
            trigger: trigger.to_string(),
            force: false,
            full: false,
            only: Vec::new(),
        })
        .await
    }
}

impl Reconciler {
    /// Runs on `interval` (with up to 10% jitter so that several relays do not hit NetBox at once),
    /// and once at start when `on_start`. A zero interval disables the schedule.
    pub async fn schedule(
        self: Arc<Self>,
        interval: Duration,
        on_start: bool,
        shutdown: CancellationToken,
    ) {
        run_schedule(&self, interval, on_start, jitter, shutdown).await;
    }
}

fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(fastrand::f64() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Relays sharing one run log, as they share the KV bucket; a run takes no time.
    #[derive(Clone)]
    struct Relay {
        name: &'static str,
        log: Arc<Mutex<Vec<(&'static str, Duration)>>>,
        epoch: Instant,
    }

    impl Scheduled for Relay {
        async fn latest_elsewhere(&self) -> Option<u64> {
            let log = self.log.lock().unwrap();
            let (by, _) = log.last()?;
            (*by != self.name).then_some(log.len() as u64)
        }

        fn has_run(&self) -> bool {
            self.log
                .lock()
                .unwrap()
                .iter()
                .any(|(by, _)| *by == self.name)
        }

        async fn start(&self, _trigger: &'static str) -> Result<u64, NotStarted> {
            let mut log = self.log.lock().unwrap();
            log.push((self.name, self.epoch.elapsed()));
            Ok(log.len() as u64)
        }
    }

    fn no_jitter(_: Duration) -> Duration {
        Duration::ZERO
    }

    #[tokio::test(start_paused = true)]
    async fn relays_on_one_schedule_pull_netbox_once_per_interval() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let epoch = Instant::now();
        let relay = |name| Relay {
            name,
            log: log.clone(),
            epoch,
        };
        let interval = Duration::from_secs(2);
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let a = relay("a");
        let a_task = tokio::spawn({
            let stop = stop_a.clone();
            async move { run_schedule(&a, interval, false, no_jitter, stop).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = relay("b");
        let b_task = tokio::spawn({
            let stop = stop_b.clone();
            async move { run_schedule(&b, interval, false, no_jitter, stop).await }
        });
        // A ticks at 2, 4, 6, 8, 10 s and runs each time; B ticks at 3, 5, 7, 9 s and each time
        // finds a run of A's since its previous tick.
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        stop_a.cancel();
        a_task.await.unwrap();
        // B's tick at 11 s still sees A's run at 10 s; at 13 s nothing new: B runs.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop_b.cancel();
        b_task.await.unwrap();
        let secs = |s| Duration::from_secs(s);
        assert_eq!(
            *log.lock().unwrap(),
            [
                ("a", secs(2)),
                ("a", secs(4)),
                ("a", secs(6)),
                ("a", secs(8)),
                ("a", secs(10)),
                ("b", secs(13)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_starts_runs_at_start_whatever_ran_elsewhere() {
        let log = Arc::new(Mutex::new(vec![("a", Duration::ZERO)]));
        let b = Relay {
            name: "b",
            log: log.clone(),
            epoch: Instant::now(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { run_schedule(&b, Duration::from_secs(60), true, no_jitter, stop).await }
        });
        // A ran just before B started: B's start run is not left out, but its first tick,
        // which follows only B's own run, is not either.
        tokio::time::sleep(Duration::from_secs(61)).await;
        stop.cancel();
        task.await.unwrap();
        let runs: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(by, at)| (*by, at.as_secs()))
            .collect();
        assert_eq!(runs, [("a", 0), ("b", 0), ("b", 60)]);
    }
}
