//! Keeps long-lived parts running: one that panics is logged, counted and started again.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::telemetry;

/// Runs a long-lived part until it ends or shutdown; a part that panics is logged, counted
/// (`netbox_relay_restarts_total{part}`) and started again a second later, instead of leaving
/// the relay answering while, say, nothing drains.
pub async fn supervise<F, Fut>(part: &'static str, shutdown: CancellationToken, start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // A part that keeps panicking is started again less and less often; one that ran a while
    // before it panicked starts from the first wait again.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let started = tokio::time::Instant::now();
        let ended = tokio::spawn(start()).await;
        let Err(e) = ended else { return };
        if shutdown.is_cancelled() || !e.is_panic() {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        tracing::error!(part, error = %e, restart_in = ?wait, "a background part panicked; starting it again");
        telemetry::restarted(part);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_part_that_panics_is_started_again_until_it_ends() {
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        supervise("test part", CancellationToken::new(), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { assert!(n >= 1, "the first start fails") }
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }
}
