//! Wires the stages together and runs them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::publish::{self, Delivery, Publisher, Spool};
use crate::reconcile::{Cascades, Confirmer, Journal, Output, Reconciler, RunOptions, RunReport};
use crate::sd::{self, Discovery, Source};
use crate::state::{Committer, Store};
use crate::supervise::supervise;
use crate::telemetry::{self, part};
use crate::translate::{SweepOptions, Translator};
use crate::webhook::{self, server, signature::Verifier, tls::Tls, AppState};

/// A started relay: its HTTP server, the spool drainer and the stream keeper.
pub struct Relay {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// What runs in the background and must be stopped in order.
struct Parts {
    state: Arc<AppState>,
    /// `GET /sd/prometheus`, following the stream from its first request on.
    discovery: Arc<Discovery>,
    /// Reconcile interval and whether to run at start, when NetBox is configured.
    schedule: Option<(Duration, bool)>,
    pipeline: Pipeline,
    grace: Duration,
    limits: server::Limits,
    /// HTTPS only, when `server.tls_cert` and `server.tls_key` are set.
    tls: Option<Arc<Tls>>,
}

impl Relay {
    /// Opens the state store, binds `server.listen` and starts serving; NATS may still be
    /// connecting (webhooks go to the spool meanwhile).
    pub async fn start(config: Config) -> anyhow::Result<Relay> {
        server::raise_open_files_limit();
        let store = Arc::new(Store::open_with_cache(
            &config.state.path,
            config.state.cache_bytes,
        )?);
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let pipeline = Pipeline::open(&config, store).await?;
        let delivery = pipeline.delivery.clone();
        let output = Output::Publish(delivery.clone());
        let store = pipeline.store.clone();
        let shutdown = CancellationToken::new();
        let reconciler = Arc::new(
            Reconciler::new(&config, translator(&config)?, store, output)?
                .stopping_with(shutdown.clone()),
        );
        if !reconciler.is_configured() {
            tracing::info!("NetBox's API is not configured: webhooks are relayed, but reconciliation, cascades (a renamed site, tenant or tag re-labels its dependents) and confirmation against main (netbox-branching) are off. To turn them on, set netbox.url and netbox.token (NETBOX_RELAY_NETBOX__URL, NETBOX_RELAY_NETBOX__TOKEN; a read-only token does)");
        }
        let journal = Journal::new(pipeline.store.clone(), pipeline.committer.clone());
        let cascades = cascades(&config, &reconciler, journal);
        let confirmer = Arc::new(
            Confirmer::new(
                &config,
                reconciler.client(),
                translator(&config)?,
                pipeline.store.clone(),
                pipeline.committer.clone(),
            )?
            .cascading(cascades.clone()),
        );
        sd::say_if_open(config.sd.token.as_ref(), config.server.listen);
        let discovery = Arc::new(Discovery::new(
            sd_source(&config, pipeline.publisher.jetstream().clone()),
            config.sd.token.clone(),
            config.server.request_timeout,
            shutdown.clone(),
        ));
        let state = Arc::new(AppState {
            verifier: Verifier::new(
                config.webhook.secrets.0.clone(),
                config.webhook.require_signature,
            ),
            translator: translator(&config)?,
            publisher: pipeline.publisher.clone(),
            delivery,
            reconciler,
            cascades,
            confirmer,
            admin_token: config.api.admin_token.clone(),
            max_body_bytes: config.webhook.max_body_bytes,
            request_timeout: config.server.request_timeout,
            metrics: telemetry::metrics_handle(),
            store_health: pipeline.committer.health().clone(),
            clamped_keys: Default::default(),
        });
        if !config.webhook.require_signature {
            tracing::warn!(
                "webhook.require_signature = false: anyone who reaches the relay can publish"
            );
        }
        let schedule = config
            .netbox
            .url
            .as_ref()
            .map(|_| (config.reconcile.interval, config.reconcile.on_start));
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
            _ => None,
        };
        let parts = Parts {
            tls,
            state,
            discovery,
            schedule,
            pipeline,
            grace: config.server.shutdown_timeout,
            limits: server::Limits {
                header_timeout: config.server.header_timeout,
                idle_timeout: config.server.idle_timeout,
                max_connections: config.server.max_connections,
            },
        };
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
        tokio::spawn(supervise(
            part::STREAM_KEEPER,
            shutdown.clone(),
            move || {
                let (publisher, shutdown) = (publisher.clone(), shutdown.clone());
                async move { publisher.keep_stream(shutdown).await }
            },
        ))
    };
    let rereads = parts.state.cascades.clone().map(read_again);
    let drainer = parts.pipeline.spawn_drainer(rereads, shutdown.clone());
    let confirmer = {
        let (confirmer, delivery) = (parts.state.confirmer.clone(), parts.state.delivery.clone());
        tokio::spawn(supervise(part::CONFIRMER, shutdown.clone(), {
            let shutdown = shutdown.clone();
            move || confirmer.clone().run(delivery.clone(), shutdown.clone())
        }))
    };
    let mut parts_to_await = Vec::new();
    if let Some(cascades) = parts.state.cascades.clone() {
        let reconciler = parts.state.reconciler.clone();
        let shutdown = shutdown.clone();
        parts_to_await.push(tokio::spawn(supervise(
            part::CASCADES,
            shutdown.clone(),
            move || cascades.clone().run(reconciler.clone(), shutdown.clone()),
        )));
    }
    if let Some((interval, on_start)) = parts.schedule {
        let reconciler = parts.state.reconciler.clone();
        let shutdown = shutdown.clone();
        parts_to_await.push(tokio::spawn(supervise(
            part::SCHEDULE,
            shutdown.clone(),
            move || {
                reconciler
                    .clone()
                    .schedule(interval, on_start, shutdown.clone())
            },
        )));
    }
    let reconciler = parts.state.reconciler.clone();
    let router = webhook::router(parts.state, sd::endpoint(parts.discovery));
    if let Some(tls) = &parts.tls {
        tokio::spawn(tls.clone().reload_on_change(shutdown.clone()));
    }
    server::serve(
        listener,
        router,
        parts.limits,
        parts.tls,
        shutdown.clone(),
        parts.grace,
    )
    .await;
    shutdown.cancel();
    // A run in progress stops, records its end and gives the lease back while NATS is there.
    for part in parts_to_await {
        part.await.ok();
    }
    reconciler.wait_stopped().await;
    stream_keeper.await.ok();
    confirmer.await.ok();
    drainer.await.ok();
    parts.pipeline.close().await;
    tracing::info!("netbox-relay stopped");
    Ok(())
}

/// `netbox-relay sd`: Prometheus service discovery alone, following the stream, until
/// `shutdown`. `/readyz` answers 200 once the current registry is loaded.
pub async fn discovery_only(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.sd.listen)
        .await
        .with_context(|| format!("cannot listen on {} (sd.listen)", config.sd.listen))?;
    let client = publish::connect_reader(&config.nats).await?;
    let js = async_nats::jetstream::new(client);
    sd::say_if_open(config.sd.token.as_ref(), config.sd.listen);
    let discovery = Arc::new(Discovery::new(
        sd_source(&config, js),
        config.sd.token.clone(),
        config.server.request_timeout,
        shutdown.clone(),
    ));
    // Installed before the first count, which would otherwise go nowhere.
    telemetry::metrics_handle();
    discovery.start();
    let router = sd::router(discovery).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        config.server.request_timeout,
    ));
    tracing::info!(addr = %listener.local_addr()?, stream = %config.nats.stream, "netbox-relay sd listening");
    let limits = server::Limits {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
    };
    server::serve(
        listener,
        router,
        limits,
        None,
        shutdown,
        config.server.shutdown_timeout,
    )
    .await;
    Ok(())
}

/// Where service discovery reads the registry: the configured stream.
pub fn sd_source(config: &Config, js: async_nats::jetstream::Context) -> Source {
    Source {
        js,
        stream: config.nats.stream.clone(),
        subject_prefix: config.nats.subject_prefix.clone(),
    }
}

/// Objects the drainer asks to read again, queued as cascades of the objects themselves (kept
/// in the state file). Up to 1,024 wait; past that the drainer says so.
fn read_again(cascades: Arc<Cascades>) -> publish::Rereads {
    let (rereads, mut asked) = tokio::sync::mpsc::channel::<(crate::delta::Kind, u64)>(1024);
    tokio::spawn(async move {
        while let Some((kind, id)) = asked.recv().await {
            let object_type = crate::netbox::ObjectType::from_kind(kind).name;
            let trigger = crate::netbox::parents::Trigger::reread(object_type, id);
            if let Err(e) = cascades.push(trigger).await {
                tracing::warn!(object_type, id, error = %e, "cannot keep an object to read again; the next full pass compares it");
            }
        }
    });
    rereads
}

/// The cascade queue, when cascades are on (`cascade.enabled`, by default whenever NetBox's URL
/// and token are set, as `start` says).
fn cascades(config: &Config, reconciler: &Reconciler, journal: Journal) -> Option<Arc<Cascades>> {
    match (config.cascade.enabled, reconciler.is_configured()) {
        (Some(false), _) => {
            tracing::info!("cascades off: cascade.enabled = false");
            None
        }
        (_, false) => None,
        (_, true) => Some(Cascades::kept_in(config.cascade.debounce, journal)),
    }
}

pub fn translator(config: &Config) -> anyhow::Result<Translator> {
    let sweep = SweepOptions {
        expand_subnets: config.registry.expand_subnets,
        max_expanded_hosts: config.registry.max_expanded_hosts,
    };
    Ok(
        Translator::new(&config.registry.partition, sweep, &config.object_types()?)
            .with_max_clock_skew(config.webhook.max_clock_skew),
    )
}

/// `netbox-relay reconcile`: one run, then exit. Publishes through the same delivery path as
/// `serve` (the spool included); a dry run only prints the deltas it would publish.
pub async fn reconcile_once(
    config: Config,
    dry_run: bool,
    options: RunOptions,
) -> anyhow::Result<RunReport> {
    let path = config.state.path.clone();
    let absent = !path.exists();
    // A dry run changes nothing, not even by creating a state file where it was run from.
    let scratch = (dry_run && absent).then(|| {
        std::env::temp_dir().join(format!("netbox-relay-dry-run-{}.redb", std::process::id()))
    });
    match (&scratch, absent) {
        (Some(_), _) => tracing::warn!(state = %path.display(),
            "no state file there: the dry run compares NetBox with an empty state (every object would be published)"),
        (None, true) => tracing::warn!(state = %path.display(),
            "no state file there: creating it; `serve` must use the same state.path (NETBOX_RELAY_STATE__PATH)"),
        (None, false) => {}
    }
    let opened =
        Store::open_with_cache(scratch.as_ref().unwrap_or(&path), config.state.cache_bytes);
    let store = Arc::new(opened.context(
        "cannot open the state file (a running `netbox-relay serve` holds it: use POST /reconcile)",
    )?);
    let translator = translator(&config)?;
    if dry_run {
        let reconciler = Reconciler::new(&config, translator, store, Output::Print)?;
        let report = reconciler.run(options).await;
        drop(reconciler);
        if let Some(scratch) = scratch {
            std::fs::remove_file(scratch).ok();
        }
        return Ok(report?);
    }
    let pipeline = Pipeline::open(&config, store.clone()).await?;
    wait_for_stream(&pipeline.publisher).await;
    let output = Output::Publish(pipeline.delivery.clone());
    let reconciler = Reconciler::new(&config, translator, store, output)?;
    let report = reconciler.run(options).await.map_err(anyhow::Error::from);
    // Drain what this run spooled while NATS is there; otherwise the next `serve` drains it.
    let shutdown = CancellationToken::new();
    let drainer = pipeline.spawn_drainer(None, shutdown.clone());
    let (spool, publisher) = (&pipeline.spool, &pipeline.publisher);
    tokio::select! {
        _ = spool.empty() => {}
        _ = publisher.disconnected() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    shutdown.cancel();
    drainer.await.ok();
    if spool.depth() > 0 {
        let depth = spool.depth();
        tracing::warn!(
            depth,
            "deltas stay in the spool until `netbox-relay serve` drains them"
        );
    }
    pipeline.close().await;
    report
}

/// The delivery path `serve` and `reconcile` both publish through: the state file, its commit
/// thread, the spool and the NATS connection.
struct Pipeline {
    store: Arc<Store>,
    committer: Committer,
    spool: Arc<Spool>,
    publisher: Arc<Publisher>,
    delivery: Arc<Delivery>,
}

impl Pipeline {
    async fn open(config: &Config, store: Arc<Store>) -> anyhow::Result<Pipeline> {
        // The spool may hold up to spool.max_bytes: walked off the runtime's threads.
        let stats = store.read(|s| s.spool_stats()).await?;
        if stats.depth > 0 {
            tracing::info!(
                depth = stats.depth,
                "the spool holds deltas from before; draining them"
            );
        }
        let committer = Committer::start(store.clone(), stats.next_seq);
        let spool = Arc::new(Spool::new(&stats, config.spool.max_bytes));
        let publisher = Arc::new(Publisher::connect(&config.nats).await?);
        let delivery = Arc::new(Delivery::new(
            publisher.clone(),
            store.clone(),
            committer.clone(),
            spool.clone(),
        ));
        Ok(Pipeline {
            store,
            committer,
            spool,
            publisher,
            delivery,
        })
    }

    /// The spool drainer, restarted if it panics, until `shutdown`.
    /// `rereads`: where objects to read again from NetBox go (see [`publish::Rereads`]).
    fn spawn_drainer(
        &self,
        rereads: Option<publish::Rereads>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let (spool, store) = (self.spool.clone(), self.store.clone());
        let (committer, publisher) = (self.committer.clone(), self.publisher.clone());
        tokio::spawn(supervise(part::DRAINER, shutdown.clone(), move || {
            publish::drain(
                spool.clone(),
                store.clone(),
                committer.clone(),
                publisher.clone(),
                rereads.clone(),
                shutdown.clone(),
            )
        }))
    }

    /// Flushes the state file, then lets NATS deliver what is in flight.
    async fn close(self) {
        self.committer.close().await;
        self.publisher.drain().await;
    }
}

/// Gives a fresh connection a moment to reach NATS and find or create the stream.
async fn wait_for_stream(publisher: &Publisher) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    if !publisher.connected_within(Duration::from_secs(10)).await {
        return;
    }
    // A cluster may still be electing the stream's leader: try again for the rest of the time.
    while publisher.ensure_stream().await.is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
