//! Group commit: every write waiting when the store is free goes into one transaction with one
//! fsync, so durability costs one fsync per batch, not one per webhook. After a batch of records
//! nobody waits for, the thread sleeps a few milliseconds instead of being woken by each next
//! one. A failed commit (disk full, I/O error) marks the store faulted; the thread reopens the
//! file until it takes writes again, and writes back the records of deltas JetStream already has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::store::{Store, StoreError, Write};
use crate::telemetry;

struct Request {
    write: Write,
    /// None when nobody waits (a record written later, the thread's own flush).
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// A record nobody waits for holds a place among the pending ones until it is committed.
    room: Option<OwnedSemaphorePermit>,
}

/// Whether the store takes writes, and whether the commit thread runs: what `/readyz` reports.
/// Every delivery asks it, so the healthy answer reads atomics and takes no lock.
#[derive(Default)]
pub struct Health {
    faulted: AtomicBool,
    reason: Mutex<String>,
    stopped: AtomicBool,
}

impl Health {
    /// Why a webhook sent now could not be made durable by the store, if it could not.
    pub fn problem(&self) -> Option<String> {
        if self.stopped.load(Ordering::SeqCst) {
            return Some("the state commit thread has stopped".to_string());
        }
        match self.is_faulted() {
            true => Some(
                self.reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
            false => None,
        }
    }

    fn is_faulted(&self) -> bool {
        self.faulted.load(Ordering::SeqCst)
    }

    fn fault(&self, message: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = message;
        self.faulted.store(true, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.faulted.store(false, Ordering::SeqCst);
    }
}

/// The handle of the commit thread; cloning shares the thread.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
    store: Arc<Store>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    health: Arc<Health>,
}

/// Most writes one transaction takes.
const MAX_BATCH: usize = 2048;
/// How long the thread sleeps after a batch of records nobody waits for (a write that is waited
/// for, a spooled delta's say, waits at most this much longer). Each transaction costs the same
/// whatever it holds: 4 ms rather than 1 took 4 % off the relay's CPU per webhook under load
/// (BENCHMARKS-HISTORY.md, "Fewer transactions").
const GATHER_FOR: Duration = Duration::from_millis(4);
/// How long the store may hold non-durable records before they are flushed: after this much
/// idle time, and at the latest after `MAX_UNFLUSHED` under sustained load.
const IDLE_FLUSH: Duration = Duration::from_millis(200);
const MAX_UNFLUSHED: Duration = Duration::from_secs(1);
/// How often a faulted store tries to reopen its file.
const REOPEN_EVERY: Duration = Duration::from_millis(500);

/// Marks the commit thread stopped when dropped.
struct Stopped(Arc<Health>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

impl Committer {
    pub fn start(store: Arc<Store>, next_seq: u64) -> Committer {
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Health::default());
        let committer_store = store.clone();
        let thread = {
            let health = health.clone();
            std::thread::Builder::new()
                .name("state-commit".into())
                .spawn(move || {
                    // Set however the thread ends, a panic included: readiness and every
                    // delivery then say so instead of waiting on a thread that is gone.
                    let _stopped = Stopped(health.clone());
                    let mut thread = Thread::new(&store, &health, next_seq);
                    thread.run(&rx);
                })
                .expect("spawning the state commit thread at start")
        };
        Committer {
            tx,
            store: committer_store,
            thread: Arc::new(Mutex::new(Some(thread))),
            health,
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Writes and waits until the write is committed (and fsynced where it must be).
    pub async fn commit(&self, write: Write) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        let request = Request {
            write,
            done: Some(done),
            room: None,
        };
        self.tx.send(request).map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Remembers the record of a delta JetStream acknowledged without waiting for its
    /// transaction: reads of the key see it at once (from the pending records), the file a
    /// moment later. Waits only while the commit thread is [`super::pending::MAX_PENDING`]
    /// records behind. A webhook's answer does not wait for a commit (or the periodic fsync).
    pub async fn record_later(&self, key: String, record: Bytes) -> Result<(), StoreError> {
        let room = self.store.pending.room().await;
        self.store.pending.put(&key, record.clone());
        let request = Request {
            write: Write::Record { key, record },
            done: None,
            room: Some(room),
        };
        self.tx.send(request).map_err(|_| StoreError::Closed)
    }

    /// Flushes and stops the thread, even while clones are still held elsewhere (a connection
    /// that outlived shutdown); their later commits fail with `Closed`.
    pub async fn close(self) {
        if let Err(e) = self.commit(Write::Close).await {
            tracing::error!(error = %e, "final state flush failed");
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
    }
}

/// The commit thread's own state.
struct Thread<'a> {
    store: &'a Store,
    health: &'a Health,
    next_seq: u64,
    /// Records committed without fsync since the last durable commit: redb forgets them when the
    /// file is reopened after a failure, so they are written again then.
    unflushed: Vec<(String, Bytes)>,
    /// Whether anything else (what full passes translated) was committed without fsync since:
    /// flushed by the same rules, though not written again after a failure (it is a cache).
    unflushed_cache: bool,
    last_durable: Instant,
    /// Records of published deltas that a failed commit did not keep, written on recovery.
    pending: Vec<(String, Bytes)>,
    last_reopen: Option<Instant>,
}

impl<'a> Thread<'a> {
    fn new(store: &'a Store, health: &'a Health, next_seq: u64) -> Self {
        Thread {
            store,
            health,
            next_seq,
            unflushed: Vec::new(),
            unflushed_cache: false,
            last_durable: Instant::now(),
            pending: Vec::new(),
            last_reopen: None,
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Request>) {
        loop {
            let wait = match (self.health.is_faulted(), self.is_flushed()) {
                (true, _) => REOPEN_EVERY,
                (false, false) => IDLE_FLUSH,
                (false, true) => Duration::MAX,
            };
            let first = match rx.recv_timeout(wait) {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => Request {
                    write: Write::Flush,
                    done: None,
                    room: None,
                },
                Err(RecvTimeoutError::Disconnected) => {
                    self.commit(Vec::new(), true).ok();
                    return;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let unwaited = batch.iter().all(|r| r.room.is_some());
            if self.handle(batch) {
                return;
            }
            // Waiting in the channel, the thread is woken by every record sent; asleep, it is
            // not, and the records of the next millisecond make one transaction.
            if unwaited {
                std::thread::sleep(GATHER_FOR);
            }
        }
    }

    /// Commits one batch and answers its writers; true when the batch closes the store.
    fn handle(&mut self, batch: Vec<Request>) -> bool {
        let closing = batch.iter().any(|r| matches!(r.write, Write::Close));
        let overdue = !self.is_flushed() && self.last_durable.elapsed() >= MAX_UNFLUSHED;
        let durable = overdue || batch.iter().any(|r| r.write.needs_fsync());
        // A record's place among the pending ones is given back once the batch is handled (the
        // places are dropped at the end), so that at most MAX_PENDING records wait uncommitted.
        let mut places = Vec::with_capacity(batch.len());
        let (writes, replies): (Vec<Write>, Vec<_>) = batch
            .into_iter()
            .map(|r| {
                places.push(r.room);
                (r.write, r.done)
            })
            .unzip();
        let published: Vec<bool> = writes
            .iter()
            .map(|w| matches!(w, Write::Record { .. }))
            .collect();
        let result = match self.recover() {
            Ok(()) => self.commit(writes, durable),
            Err(e) => Err(self.keep_published(writes, e)),
        };
        // A record's delta is in JetStream already and its record is kept for recovery: its
        // webhook was delivered, whatever became of the batch.
        for (reply, published) in replies.into_iter().zip(published) {
            if let Some(reply) = reply {
                let answer = if published { Ok(()) } else { result.clone() };
                reply.send(answer).ok();
            }
        }
        closing
    }

    /// Applies `writes`; on failure marks the store faulted and keeps what must not be lost.
    fn commit(&mut self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError> {
        let result = self.store.write(&writes, &mut self.next_seq, durable);
        if result.is_ok() {
            for write in &writes {
                if let Write::Record { key, record } | Write::Spool { key, record, .. } = write {
                    self.store.pending.committed(key, record);
                }
            }
        }
        match (&result, durable) {
            (Ok(()), true) => {
                self.unflushed.clear();
                self.unflushed_cache = false;
                self.last_durable = Instant::now();
            }
            (Ok(()), false) => {
                self.unflushed_cache |= writes.iter().any(|w| matches!(w, Write::Served { .. }));
                self.unflushed.extend(records(writes));
            }
            (Err(e), _) => {
                tracing::error!(error = %e, writes = writes.len(), "state commit failed; webhooks get 503 until the state file takes writes again");
                telemetry::store_fault();
                self.health
                    .fault(format!("the state file cannot be written: {e}"));
                let lost = std::mem::take(&mut self.unflushed);
                self.pending.extend(lost);
                return Err(self.keep_published(writes, e.clone()));
            }
        }
        result
    }

    /// Keeps the records of deltas JetStream already acknowledged, to write them on recovery;
    /// the writers of those are answered Ok (their deltas are safe), the others get the error.
    fn keep_published(&mut self, writes: Vec<Write>, error: StoreError) -> StoreError {
        let published = records(
            writes
                .into_iter()
                .filter(|w| matches!(w, Write::Record { .. })),
        );
        self.pending.extend(published);
        match error {
            StoreError::Faulted { .. } => error,
            e => StoreError::Faulted {
                path: self.store.path().to_path_buf(),
                message: e.to_string(),
            },
        }
    }

    fn is_flushed(&self) -> bool {
        self.unflushed.is_empty() && !self.unflushed_cache
    }

    /// While faulted: reopens the file (at most every `REOPEN_EVERY`) and writes back the
    /// pending records, durably. Ok once the store takes writes again.
    fn recover(&mut self) -> Result<(), StoreError> {
        if !self.health.is_faulted() {
            return Ok(());
        }
        let path = self.store.path().to_path_buf();
        let waiting = |message: &str| StoreError::Faulted {
            path: path.clone(),
            message: message.to_string(),
        };
        if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return Err(waiting("waiting to retry"));
        }
        self.last_reopen = Some(Instant::now());
        let reopened = self.store.reopen().and_then(|()| {
            let writes = self.pending.iter().map(|(key, record)| Write::Record {
                key: key.clone(),
                record: record.clone(),
            });
            // Sequences of spool rows that failed were never used: start again from the file.
            let mut next_seq = self.store.spool_stats()?.next_seq;
            self.store
                .write(&writes.collect::<Vec<_>>(), &mut next_seq, true)?;
            self.next_seq = next_seq;
            Ok(())
        });
        match reopened {
            Ok(()) => {
                tracing::info!(
                    records = self.pending.len(),
                    "the state file takes writes again"
                );
                for (key, record) in self.pending.drain(..) {
                    self.store.pending.committed(&key, &record);
                }
                self.health.clear();
                telemetry::store_recovered();
                Ok(())
            }
            Err(e) => Err(waiting(&e.to_string())),
        }
    }
}

fn records(writes: impl IntoIterator<Item = Write>) -> Vec<(String, Bytes)> {
    writes
        .into_iter()
        .filter_map(|w| match w {
            Write::Record { key, record } => Some((key, record)),
            _ => None,
        })
        .collect()
}
