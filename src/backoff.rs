//! One back-off policy for every retry in the relay (NetBox requests, the spool drainer, held
//! webhooks, cascades, restarted parts): waits that grow by a factor from a first one to a
//! ceiling, each with jitter, so that parts and relays that failed together do not retry in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The waits of one retrying loop; [`Backoff::reset`] after a success.
pub struct Backoff {
    builder: ExponentialBuilder,
    waits: ExponentialBackoff,
    most: Duration,
}

impl Backoff {
    /// Waits from `first`, doubling, up to `most` (jitter adds up to the wait again).
    pub fn new(first: Duration, most: Duration) -> Backoff {
        Backoff::with_factor(first, most, 2.0)
    }

    /// As [`Backoff::new`], each wait `factor` times the one before.
    pub fn with_factor(first: Duration, most: Duration, factor: f32) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(most)
            .with_factor(factor)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            waits: builder.build(),
            most,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        self.waits.next().unwrap_or(self.most)
    }

    /// The `n`-th wait from the start (0: the first), for a retry that keeps its count elsewhere.
    pub fn nth_wait(first: Duration, most: Duration, factor: f32, n: usize) -> Duration {
        let mut backoff = Backoff::with_factor(first, most, factor);
        for _ in 0..n {
            backoff.next_wait();
        }
        backoff.next_wait()
    }

    /// Starts again from the first wait.
    pub fn reset(&mut self) {
        self.waits = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_ceiling_with_at_most_their_own_length_of_jitter() {
        let (first, most) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(first, most);
        let mut floor = first;
        for _ in 0..20 {
            let wait = backoff.next_wait();
            assert!(
                wait >= floor && wait <= floor * 2,
                "{wait:?} from {floor:?}"
            );
            floor = (floor * 2).min(most);
        }
        backoff.reset();
        assert!(backoff.next_wait() <= first * 2);
        let third = Backoff::nth_wait(first, most, 4.0, 2);
        assert!(third >= first * 16 && third <= first * 32, "{third:?}");
    }
}
