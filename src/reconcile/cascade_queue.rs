//! The cascades waiting for their turn: one per parent, each with the time it may run. Only
//! the ones running are tasks; the rest wait here, small, so that a backlog (NetBox slow, a
//! burst of renames) costs a few hundred bytes a parent, and a parent queued again while it
//! waits is pulled once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// One parent's cascade and the tries it had.
pub(super) struct Queued<T, K> {
    pub trigger: T,
    pub attempt: u32,
    /// Its row in the journal.
    pub kept: Option<K>,
}

/// What [`Queue::take`] found.
pub(super) enum Next<T, K> {
    Ready(Queued<T, K>),
    /// Nothing may run before then.
    At(Instant),
    Empty,
}

/// When a cascade may run, and its arrival: first come first among those due.
type Turn = (Instant, u64);

pub(super) struct Queue<T, K> {
    by_key: HashMap<String, (Queued<T, K>, Turn)>,
    by_due: BTreeMap<Turn, String>,
    arrivals: u64,
    /// Where a new trigger joins the burst it arrived in: all run one debounce after the first.
    burst_ends: Option<Instant>,
}

impl<T, K> Default for Queue<T, K> {
    fn default() -> Self {
        Queue {
            by_key: HashMap::new(),
            by_due: BTreeMap::new(),
            arrivals: 0,
            burst_ends: None,
        }
    }
}

impl<T, K> Queue<T, K> {
    /// A new trigger: it runs with the burst it arrived in, one `debounce` after that began. One
    /// already queued for the same parent gives way to it but keeps its place, and the fewer
    /// tries of the two count.
    pub fn arrive(&mut self, key: String, mut queued: Queued<T, K>, debounce: Duration) {
        let now = Instant::now();
        let due = match self.burst_ends {
            Some(ends) if ends > now => ends,
            _ => *self.burst_ends.insert(now + debounce),
        };
        let mut turn = self.turn(due);
        if let Some((old, old_turn)) = self.by_key.remove(&key) {
            self.by_due.remove(&old_turn);
            queued.attempt = queued.attempt.min(old.attempt);
            turn = turn.min(old_turn);
        }
        self.insert(key, queued, turn);
    }

    /// A failed cascade to try again at `due`, unless its parent was queued again meanwhile:
    /// that newer trigger runs instead, in its own turn.
    pub fn retry(&mut self, key: String, queued: Queued<T, K>, due: Instant) {
        if !self.by_key.contains_key(&key) {
            let turn = self.turn(due);
            self.insert(key, queued, turn);
        }
    }

    fn turn(&mut self, due: Instant) -> Turn {
        self.arrivals += 1;
        (due, self.arrivals)
    }

    fn insert(&mut self, key: String, queued: Queued<T, K>, turn: Turn) {
        self.by_due.insert(turn, key.clone());
        self.by_key.insert(key, (queued, turn));
    }

    /// The first cascade whose time has come.
    pub fn take(&mut self) -> Next<T, K> {
        let Some(entry) = self.by_due.first_entry() else {
            return Next::Empty;
        };
        let due = entry.key().0;
        if due > Instant::now() {
            return Next::At(due);
        }
        let key = entry.remove();
        match self.by_key.remove(&key) {
            Some((queued, _)) => Next::Ready(queued),
            None => Next::Empty,
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(trigger: &'static str, attempt: u32) -> Queued<&'static str, ()> {
        Queued {
            trigger,
            attempt,
            kept: None,
        }
    }

    fn ready(queue: &mut Queue<&'static str, ()>) -> Vec<(&'static str, u32)> {
        let mut out = Vec::new();
        while let Next::Ready(q) = queue.take() {
            out.push((q.trigger, q.attempt));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_runs_one_debounce_after_it_began_first_come_first() {
        let debounce = Duration::from_secs(2);
        let mut queue = Queue::default();
        let began = Instant::now();
        queue.arrive("b".into(), queued("b1", 0), debounce);
        tokio::time::advance(Duration::from_millis(1500)).await;
        queue.arrive("a".into(), queued("a1", 0), debounce);
        // Queued again: the newer trigger, in the first one's place.
        queue.arrive("b".into(), queued("b2", 0), debounce);
        assert!(matches!(queue.take(), Next::At(at) if at == began + debounce));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(ready(&mut queue), [("b2", 0), ("a1", 0)]);
        assert!(matches!(queue.take(), Next::Empty));

        // The next burst begins with the next arrival.
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = Instant::now();
        queue.arrive("c".into(), queued("c1", 0), debounce);
        assert!(matches!(queue.take(), Next::At(at) if at == second + debounce));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_and_gives_way_to_a_new_trigger_of_its_parent() {
        let debounce = Duration::from_secs(2);
        let mut queue = Queue::default();
        let later = Instant::now() + Duration::from_secs(60);
        queue.retry("a".into(), queued("a-retry", 2), later);
        queue.retry("b".into(), queued("b-retry", 1), later);
        assert!(matches!(queue.take(), Next::At(at) if at == later));

        queue.arrive("a".into(), queued("a-new", 0), debounce);
        tokio::time::advance(debounce).await;
        assert_eq!(ready(&mut queue), [("a-new", 0)]);
        assert_eq!(queue.len(), 1, "b still waits its back-off");
        // A retry of an older trigger, failed while a newer one was queued, gives way to it.
        queue.arrive("c".into(), queued("c-new", 0), debounce);
        queue.retry("c".into(), queued("c-retry", 1), Instant::now());
        tokio::time::advance(debounce).await;
        assert_eq!(ready(&mut queue), [("c-new", 0)]);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(ready(&mut queue), [("b-retry", 1)]);
    }
}
