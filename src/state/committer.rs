//! Group commit: every write waiting when the store is free goes into one transaction with one
//! fsync, so durability costs one fsync per batch, not one per webhook.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::store::{Store, StoreError};

/// One change to the store. A `record` is made by [`super::encode`] before it comes here,
/// so that the commit thread, which every webhook waits for, only inserts.
#[derive(Debug)]
pub enum Write {
    /// Remember the delta published for a key (not fsynced at once: it is already safe in
    /// JetStream; a later durable commit or the idle flush persists it).
    Record { key: String, record: Bytes },
    /// Put a delta in the spool and remember it, durably.
    Spool {
        key: String,
        record: Bytes,
        delta: Bytes,
    },
    /// Remove drained deltas from the spool, durably.
    Unspool { seqs: Vec<u64> },
    /// Persist everything written so far.
    Flush,
    /// Persist everything and stop the commit thread.
    Close,
}

impl Write {
    fn needs_fsync(&self) -> bool {
        !matches!(self, Write::Record { .. })
    }
}

struct Request {
    write: Write,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle of the commit thread; cloning shares the thread.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// Most writes one transaction takes.
const MAX_BATCH: usize = 2048;
/// How long the store may hold non-durable records before they are flushed: after this much
/// idle time, and at the latest after `MAX_UNFLUSHED` under sustained load.
const IDLE_FLUSH: Duration = Duration::from_millis(200);
const MAX_UNFLUSHED: Duration = Duration::from_secs(1);

impl Committer {
    pub fn start(store: Arc<Store>, next_seq: u64) -> Committer {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-commit".into())
            .spawn(move || run(&store, &rx, next_seq))
            .expect("spawning the state commit thread at start");
        Committer {
            tx,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        }
    }

    /// Writes and waits until the write is committed (and fsynced where it must be).
    pub async fn commit(&self, write: Write) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Request { write, done })
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
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

fn run(store: &Store, rx: &mpsc::Receiver<Request>, mut next_seq: u64) {
    let mut dirty = false;
    let mut last_durable = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(if dirty { IDLE_FLUSH } else { Duration::MAX }) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => Request {
                write: Write::Flush,
                done: oneshot::channel().0,
            },
            Err(RecvTimeoutError::Disconnected) => {
                if dirty {
                    store.write(&[], &mut next_seq, true).ok();
                }
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
        let overdue = dirty && last_durable.elapsed() >= MAX_UNFLUSHED;
        let durable = overdue || batch.iter().any(|r| r.write.needs_fsync());
        let closing = batch.iter().any(|r| matches!(r.write, Write::Close));
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.into_iter().map(|r| (r.write, r.done)).unzip();
        let result = store.write(&writes, &mut next_seq, durable);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = writes.len(), "state commit failed");
        }
        match (durable, result.is_ok()) {
            (true, true) => {
                dirty = false;
                last_durable = std::time::Instant::now();
            }
            (false, true) => dirty = true,
            _ => {}
        }
        for reply in replies {
            reply.send(result.clone()).ok();
        }
        if closing {
            return;
        }
    }
}
