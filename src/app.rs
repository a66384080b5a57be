//! Wires the stages together and runs them until shutdown.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::publish::{self, Delivery, Publisher, Spool};
use crate::state::{Committer, Store};
use crate::telemetry;
use crate::translate::{SweepOptions, Translator};
use crate::webhook::{self, signature::Verifier, AppState};

/// A started relay: its HTTP server, the spool drainer and the stream keeper.
pub struct Relay {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// What runs in the background and must be stopped in order.
struct Parts {
    state: Arc<AppState>,
    store: Arc<Store>,
    committer: Committer,
    spool: Arc<Spool>,
    grace: Duration,
}

impl Relay {
    /// Opens the state store, binds `server.listen` and starts serving; NATS may still be
    /// connecting (webhooks go to the spool meanwhile).
    pub async fn start(config: Config) -> anyhow::Result<Relay> {
        let store = Arc::new(Store::open(&config.state.path)?);
        let stats = store.spool_stats()?;
        if stats.depth > 0 {
            tracing::info!(
                depth = stats.depth,
                "the spool holds deltas from before; draining them"
            );
        }
        let committer = Committer::start(store.clone(), stats.next_seq);
        let spool = Arc::new(Spool::new(stats.depth, stats.bytes, config.spool.max_bytes));
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let publisher = Arc::new(Publisher::connect(&config.nats).await?);
        let delivery = Delivery::new(
            publisher.clone(),
            store.clone(),
            committer.clone(),
            spool.clone(),
        );
        let state = Arc::new(AppState {
            verifier: Verifier::new(
                config.webhook.secrets.0.clone(),
                config.webhook.require_signature,
            ),
            translator: translator(&config)?,
            publisher,
            delivery,
            max_body_bytes: config.webhook.max_body_bytes,
            metrics: telemetry::metrics(),
        });
        if !config.webhook.require_signature {
            tracing::warn!(
                "webhook.require_signature = false: anyone who reaches the relay can publish"
            );
        }
        let parts = Parts {
            state,
            store,
            committer,
            spool,
            grace: config.server.shutdown_timeout,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, parts, shutdown.clone()));
        tracing::info!(%addr, stream = %config.nats.stream, state = %config.state.path.display(), "netbox-relay listening");
        Ok(Relay {
            addr,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancel this token to shut the relay down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the relay has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the relay task panicked")?
    }

    /// Shuts down: in-flight webhooks finish, the state is flushed, then NATS is drained.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

async fn run(
    listener: TcpListener,
    parts: Parts,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let publisher = parts.state.publisher.clone();
    let stream_keeper = {
        let (publisher, shutdown) = (publisher.clone(), shutdown.clone());
        tokio::spawn(async move { publisher.keep_stream(shutdown).await })
    };
    let drainer = tokio::spawn(publish::drain(
        parts.spool,
        parts.store,
        parts.committer.clone(),
        publisher.clone(),
        shutdown.clone(),
    ));
    let served = serve(listener, parts.state, parts.grace, &shutdown).await;
    shutdown.cancel();
    stream_keeper.await.ok();
    drainer.await.ok();
    parts.committer.close().await;
    publisher.drain().await;
    tracing::info!("netbox-relay stopped");
    served
}

/// Serves until shutdown; in-flight webhooks get `grace` to finish.
async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    grace: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let server = axum::serve(listener, webhook::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let mut server = tokio::spawn(server);
    let served = tokio::select! {
        served = &mut server => served,
        _ = shutdown.cancelled() => match tokio::time::timeout(grace, &mut server).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!(?grace, "in-flight webhooks did not finish in time; closing them");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    served
        .context("the HTTP server panicked")?
        .context("the HTTP server failed")
}

fn translator(config: &Config) -> anyhow::Result<Translator> {
    let sweep = SweepOptions {
        expand_subnets: config.registry.expand_subnets,
        max_expanded_hosts: config.registry.max_expanded_hosts,
    };
    Ok(Translator::new(
        &config.registry.partition,
        sweep,
        &config.object_types()?,
    ))
}
