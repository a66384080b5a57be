//! The spool's counters: deltas JetStream did not take, kept in the state store (fsynced before the
//! webhook is answered) and drained in order by [`super::drain`] once NATS is back.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::state::SpoolStats;

/// Counters of what the spool holds; the rows themselves live in the store.
pub struct Spool {
    depth: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    /// Dead letters in the state file, waiting for an operator.
    dead: AtomicU64,
    pub(super) wake: Notify,
    /// Told when a drain leaves the spool empty.
    emptied: Notify,
}

impl Spool {
    pub fn new(stats: &SpoolStats, max_bytes: u64) -> Spool {
        Spool {
            depth: AtomicU64::new(stats.depth),
            bytes: AtomicU64::new(stats.bytes),
            max_bytes,
            dead: AtomicU64::new(stats.dead),
            wake: Notify::new(),
            emptied: Notify::new(),
        }
    }

    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::SeqCst)
    }

    /// Whether `n` more bytes would fit now.
    pub fn has_room(&self, n: u64) -> bool {
        self.bytes.load(Ordering::SeqCst) + n <= self.max_bytes
    }

    pub(super) fn dead_lettered(&self, count: u64) {
        self.dead.fetch_add(count, Ordering::SeqCst);
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Reserves room for `n` bytes; false when the spool is full.
    pub(super) fn reserve(&self, n: u64) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(super) fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::SeqCst);
    }

    /// A reserved delta is now durably in the spool.
    pub(super) fn added(&self) {
        self.depth.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub(super) fn drained(&self, count: u64, bytes: u64) {
        let before = self.depth.fetch_sub(count, Ordering::SeqCst);
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        if before == count {
            self.emptied.notify_waiters();
        }
    }

    /// Returns once the spool is empty.
    pub async fn empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.depth() == 0 {
                return;
            }
            emptied.await;
        }
    }
}
