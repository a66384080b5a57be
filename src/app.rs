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
use crate::publish::Publisher;
use crate::translate::{SweepOptions, Translator};
use crate::webhook::{self, signature::Verifier, AppState};

/// A started relay: its HTTP server, and the task that keeps the JetStream stream present.
pub struct Relay {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    /// Binds `server.listen` and starts serving; NATS may still be connecting.
    pub async fn start(config: Config) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let publisher = Arc::new(Publisher::connect(&config.nats).await?);
        let state = Arc::new(AppState {
            verifier: Verifier::new(
                config.webhook.secrets.0.clone(),
                config.webhook.require_signature,
            ),
            translator: translator(&config)?,
            publisher: publisher.clone(),
            max_body_bytes: config.webhook.max_body_bytes,
        });
        if !config.webhook.require_signature {
            tracing::warn!(
                "webhook.require_signature = false: anyone who reaches the relay can publish"
            );
        }
        let shutdown = CancellationToken::new();
        let grace = config.server.shutdown_timeout;
        let task = tokio::spawn(run(listener, state, publisher, shutdown.clone(), grace));
        tracing::info!(%addr, stream = %config.nats.stream, "netbox-relay listening");
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

    /// Shuts down: in-flight webhooks finish, then NATS is drained.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let stream_keeper = {
        let (publisher, shutdown) = (publisher.clone(), shutdown.clone());
        tokio::spawn(async move { publisher.keep_stream(shutdown).await })
    };
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
    shutdown.cancel();
    stream_keeper.await.ok();
    publisher.drain().await;
    tracing::info!("netbox-relay stopped");
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
