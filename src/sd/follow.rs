//! Keeps [`Targets`] in step with the stream: an ordered consumer (nothing stored on the server)
//! with the "last per subject" deliver policy gives the current registry, then every change.
//! The first load goes into a fresh map that replaces the served one once complete, so that a
//! restart of the follower (NATS lost the consumer, the stream was recreated) never serves half
//! a registry nor keeps keys whose tombstones expired meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::targets::{Target, Targets};
use crate::delta::RegistryDelta;
use crate::telemetry;

/// Where the registry is read from.
#[derive(Clone)]
pub struct Source {
    pub js: jetstream::Context,
    pub stream: String,
    pub subject_prefix: String,
}

/// Follows until shutdown, starting over a second after any failure; `loaded` turns true once
/// the current registry has been read.
pub async fn follow(
    source: Source,
    targets: Arc<Targets>,
    loaded: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
) {
    loop {
        let run = follow_once(&source, &targets, &loaded);
        let error = tokio::select! {
            error = run => error,
            _ = shutdown.cancelled() => return,
        };
        tracing::warn!(stream = %source.stream, %error, "service discovery: following the stream failed; starting over");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn follow_once(source: &Source, targets: &Targets, loaded: &watch::Sender<bool>) -> String {
    let stream = match source.js.get_stream(&source.stream).await {
        Ok(stream) => stream,
        Err(e) => return format!("stream {}: {e}", source.stream),
    };
    let config = OrderedConfig {
        filter_subjects: vec![crate::publish::subject::all(&source.subject_prefix)],
        deliver_policy: DeliverPolicy::LastPerSubject,
        ..Default::default()
    };
    let consumer = match stream.create_consumer(config).await {
        Ok(consumer) => consumer,
        Err(e) => return format!("consumer: {e}"),
    };
    // Until the current registry is read, deltas go to a fresh map.
    let mut fresh = Some(BTreeMap::new());
    if consumer.cached_info().num_pending == 0 {
        finish_load(targets, loaded, &mut fresh);
    }
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(e) => return format!("messages: {e}"),
    };
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => return format!("message: {e}"),
        };
        match serde_json::from_slice::<RegistryDelta>(&message.payload) {
            Ok(delta) => match fresh.as_mut() {
                Some(map) => {
                    Targets::apply_to(map, &delta, Target::of(&delta));
                }
                None => {
                    off_the_runtime(|| targets.apply(&delta));
                    telemetry::sd_targets(targets.len());
                }
            },
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "service discovery: a message is not a registry delta; skipped")
            }
        }
        let pending = message.info().map(|i| i.pending).unwrap_or(1);
        if pending == 0 && fresh.is_some() {
            finish_load(targets, loaded, &mut fresh);
        }
    }
    "the consumer ended".to_string()
}

fn finish_load(
    targets: &Targets,
    loaded: &watch::Sender<bool>,
    fresh: &mut Option<BTreeMap<String, Target>>,
) {
    if let Some(map) = fresh.take() {
        let count = map.len();
        off_the_runtime(|| targets.replace(map));
        telemetry::sd_targets(count);
        loaded.send_replace(true);
        tracing::info!(
            targets = count,
            "service discovery: current registry loaded"
        );
    }
}

/// Runs `f`, which may wait for the targets' lock while answers are rendered from them, without
/// holding up the other tasks of this runtime thread (webhooks, probes).
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
