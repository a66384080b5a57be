//! The reconcile schedule: a run every `reconcile.interval` (with jitter), and once at start;
//! a tick is left out when another relay sharing the NATS ran lately.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{InProgress, Reconciler, RunOptions};

impl Reconciler {
    /// Runs on `interval` (with up to 10% jitter so that several relays do not hit NetBox at once),
    /// and once at start when `on_start`. A zero interval disables the schedule.
    pub async fn schedule(
        self: Arc<Self>,
        interval: Duration,
        on_start: bool,
        shutdown: CancellationToken,
    ) {
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
            let trigger = if on_start && self.runs.latest().is_none() {
                "start"
            } else {
                "schedule"
            };
            if trigger == "schedule" && self.ran_elsewhere_lately(interval).await {
                tracing::debug!("reconcile: another relay ran lately; skipping this tick");
                continue;
            }
            let options = RunOptions {
                trigger: trigger.to_string(),
                force: false,
                only: Vec::new(),
            };
            if let Err(InProgress(running)) = self.spawn(options).await {
                tracing::info!(
                    running,
                    "reconcile: a run is already in progress; skipping this one"
                );
            }
        }
    }

    /// Whether another relay sharing the NATS started a run within the last nine tenths of
    /// `interval`: then this relay's scheduled tick is left out, so that NetBox is pulled about
    /// once per interval however many relays there are.
    async fn ran_elsewhere_lately(&self, interval: Duration) -> bool {
        let Some(coordination) = self.coordination().await else {
            return false;
        };
        let Some(latest) = coordination.latest().await else {
            return false;
        };
        if self.runs.get(latest.run_id).is_some() {
            return false;
        }
        let since = (Utc::now() - latest.started_at)
            .to_std()
            .unwrap_or_default();
        since < interval.mul_f64(0.9)
    }
}

fn jitter(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    interval.mul_f64(f64::from(nanos % 1000) / 10_000.0)
}
