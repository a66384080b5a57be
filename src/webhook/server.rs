//! Serving connections within limits: a request's head must arrive within
//! `server.header_timeout`, a keep-alive connection without a request closes after
//! `server.idle_timeout`, and at most `server.max_connections` are served at once. Past the cap
//! the connection that has waited longest without a request in a handler is closed, so that a
//! crowd of slow or idle clients never locks out `/healthz` or NetBox; when every one is in a
//! handler, the newcomer is refused. On shutdown, connections
//! without a request in a handler close at once; the others finish their answer.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::tls::Tls;
use crate::telemetry;

/// The `[server]` limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`; then waits up to
/// `grace` for answers in progress.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let open = Arc::new(Open::default());
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine; pause so that a full table does not spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // At the cap with every connection inside a handler (slow bodies, each bounded by
        // server.request_timeout), the newcomer is refused: descriptors stay bounded.
        if open.count() >= limits.max_connections && !open.evict_one() {
            telemetry::connection_closed("refused");
            drop(stream);
            continue;
        }
        let conn = open.add();
        let (router, shutdown) = (router.clone(), shutdown.clone());
        let (open, tls) = (open.clone(), tls.clone());
        tasks.spawn(async move {
            let io = Watched {
                inner: stream,
                conn: conn.clone(),
            };
            match tls {
                None => serve_connection(io, router, &conn, limits, shutdown).await,
                Some(tls) => serve_tls(io, &tls, router, &conn, limits, shutdown).await,
            }
            open.remove(conn.id);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "in-flight webhooks did not finish in time; closing them"
        );
    }
}

/// What a connection is doing, for its timeouts, eviction and shutdown.
const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

struct Conn {
    id: u64,
    phase: AtomicU8,
    /// When the phase began, in milliseconds since [`epoch`].
    since: AtomicU64,
    in_handler: AtomicUsize,
    close: CancellationToken,
}

impl Conn {
    fn set(&self, phase: u8) {
        self.since.store(now_ms(), Ordering::SeqCst);
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn snapshot(&self) -> (u8, u64) {
        (
            self.phase.load(Ordering::SeqCst),
            self.since.load(Ordering::SeqCst),
        )
    }

    fn begin(&self) {
        self.in_handler.fetch_add(1, Ordering::SeqCst);
        self.set(BUSY);
    }

    fn end(&self) {
        if self.in_handler.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.set(IDLE);
        }
    }

    /// The first bytes after an idle spell start a request head.
    fn read_some(&self) {
        if self.phase.load(Ordering::SeqCst) == IDLE {
            self.set(HEAD);
        }
    }
}

/// The open connections.
#[derive(Default)]
struct Open {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Open {
    fn count(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn add(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(now_ms()),
            in_handler: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.insert(conn.id, conn.clone());
        telemetry::connections(conns.len());
        conn
    }

    fn remove(&self, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.remove(&id);
        telemetry::connections(conns.len());
    }

    /// Closes the connection that has waited longest for a request head or in keep-alive;
    /// false when every one is inside a handler.
    fn evict_one(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = conns
            .values()
            .filter(|c| !c.close.is_cancelled())
            .map(|c| (c.snapshot(), c))
            .filter(|((phase, _), _)| *phase != BUSY);
        match waiting.min_by_key(|((_, since), _)| *since) {
            Some((_, conn)) => {
                conn.close.cancel();
                telemetry::connection_closed("evicted");
                true
            }
            None => false,
        }
    }
}

/// The TLS handshake, then the connection. The handshake is part of the request's head: bounded
/// by the same timeout, and given up when the connection is evicted (past the cap) or the server
/// shuts down. Plain HTTP on this port fails it, and the connection is closed.
async fn serve_tls(
    io: Watched,
    tls: &Tls,
    router: Router,
    conn: &Arc<Conn>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let handshake = tokio::time::timeout(limits.header_timeout, tls.acceptor().accept(io));
    let shaken = tokio::select! {
        shaken = handshake => shaken,
        _ = conn.close.cancelled() => return,
        _ = shutdown.cancelled() => return,
    };
    match shaken {
        Ok(Ok(io)) => serve_connection(io, router, conn, limits, shutdown).await,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            telemetry::connection_closed("tls_handshake");
        }
        Err(_) => telemetry::connection_closed("header_timeout"),
    }
}

async fn serve_connection<S>(
    stream: S,
    router: Router,
    conn: &Arc<Conn>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            conn.begin();
            let in_flight = telemetry::InFlight::start();
            let mut router = router.clone();
            let conn = conn.clone();
            async move {
                let _in_flight = in_flight;
                let response = router.call(request.map(axum::body::Body::new)).await;
                conn.end();
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The head and idle timeouts are kept here (hyper's own header timeout also runs between
    // keep-alive requests, which would make the idle timeout the head timeout).
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            reason = watchdog(conn, limits) => {
                telemetry::connection_closed(reason);
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                if conn.snapshot().0 != BUSY {
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Resolves when the connection must close: a head or an idle spell that lasted too long, or
/// eviction.
async fn watchdog(conn: &Conn, limits: Limits) -> &'static str {
    loop {
        let (phase, since) = conn.snapshot();
        let limit = match phase {
            HEAD => limits.header_timeout,
            IDLE => limits.idle_timeout,
            // A handler runs: the body's own timeout and the handler bound it. Look again later.
            _ => limits.header_timeout,
        };
        let deadline = epoch() + Duration::from_millis(since) + limit;
        tokio::select! {
            _ = conn.close.cancelled() => return "evicted",
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if conn.snapshot() == (phase, since) && phase != BUSY {
            return if phase == HEAD {
                "header_timeout"
            } else {
                "idle_timeout"
            };
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// The socket, telling its connection when request bytes arrive.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open files to the hard one: the connection cap, NATS, the state
/// file and the NetBox client all need descriptors, and 1,024 is a common soft default.
pub fn raise_open_files_limit() {
    let before = rlimit::Resource::NOFILE
        .get()
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(after) if after > before => {
            tracing::debug!(before, after, "raised the open files limit")
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "the open files limit could not be raised"),
    }
}
