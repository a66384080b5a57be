//! The stream's settings: created when absent, the relay's settings set on one that is there
//! (history per key, rollups, message TTL, de-duplication window, replicas), and kept present
//! by the stream keeper while the relay runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use tokio_util::sync::CancellationToken;

use super::jetstream::{PublishError, Publisher};
use super::subject;
use crate::telemetry;

/// The stream the relay creates when it is absent.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    pub subject_prefix: String,
    pub duplicate_window: Duration,
    pub replicas: usize,
    /// `max_msgs_per_subject`; 0 keeps all.
    pub history_per_key: u32,
    pub tombstone_ttl: Duration,
}

impl Publisher {
    /// Creates the stream if it is absent, and sets the relay's settings on one that is there
    /// (history per key, rollups, message TTL, de-duplication window, replicas), keeping the rest
    /// as the operator set it. What JetStream refuses to change is logged with what to do.
    pub async fn ensure_stream(&self) -> Result<(), PublishError> {
        let s = &self.settings;
        let stream_error = |message: String| PublishError::Stream {
            stream: s.name.clone(),
            message,
        };
        let ttl = supports_message_ttl(&self.client.server_info().version);
        let config = match self.js.get_stream(&s.name).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|e| stream_error(e.to_string()))?;
                let config = self.update(info.config.clone(), ttl).await;
                warn_of_the_old_layout(&stream, &s.subject_prefix).await;
                config
            }
            Err(e) if stream_not_found(e.kind()) => {
                let wanted = self.wanted(stream_config(s), ttl);
                self.js
                    .create_stream(wanted)
                    .await
                    .map_err(|e| stream_error(e.to_string()))?
                    .cached_info()
                    .config
                    .clone()
            }
            Err(e) => return Err(stream_error(e.to_string())),
        };
        let subjects = subject::all(&s.subject_prefix);
        let captures = config.subjects.iter().any(|subject| subject == &subjects);
        if !captures {
            tracing::warn!(stream = %s.name, expected = %subjects, found = ?config.subjects,
                "the existing stream does not capture the relay's subjects as configured");
        }
        self.captures.store(captures, Ordering::Relaxed);
        self.rollups.store(config.allow_rollup, Ordering::Relaxed);
        self.message_ttl
            .store(config.allow_message_ttl, Ordering::Relaxed);
        self.stream_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// `config` with the relay's settings.
    fn wanted(&self, mut config: StreamConfig, ttl: bool) -> StreamConfig {
        let s = &self.settings;
        config.max_messages_per_subject = match s.history_per_key {
            0 => -1,
            n => i64::from(n),
        };
        // A stream that keeps every message keeps every delete too: no rollups, no expiry.
        let compacted = s.history_per_key > 0;
        config.allow_rollup |= compacted;
        // Once on, JetStream does not turn message TTLs off again; never ask it to.
        config.allow_message_ttl |= ttl && compacted;
        config.duplicate_window = s.duplicate_window;
        config.num_replicas = s.replicas;
        config
    }

    /// Sets the relay's settings on the existing stream; answers the stream's config after.
    async fn update(&self, current: StreamConfig, ttl: bool) -> StreamConfig {
        let wanted = self.wanted(current.clone(), ttl);
        if same_settings(&wanted, &current) {
            return current;
        }
        match self.js.update_stream(&wanted).await {
            Ok(info) => {
                tracing::info!(stream = %wanted.name,
                    history_per_key = wanted.max_messages_per_subject,
                    allow_message_ttl = wanted.allow_message_ttl,
                    "JetStream stream settings updated");
                info.config
            }
            Err(e) => {
                tracing::error!(stream = %wanted.name, error = %e,
                    "JetStream refused the relay's stream settings; the stream keeps its own. \
                     Set them with `nats stream edit` (max_msgs_per_subject, allow_rollup_hdrs, \
                     allow_msg_ttl, replicas) or recreate the stream (README: migration)");
                current
            }
        }
    }

    /// Keeps the stream present: creates it once NATS is reachable, and again once it was found
    /// missing. Wakes on the connection's events and on a publish or read that found no stream;
    /// retries a failed attempt every second.
    pub async fn keep_stream(&self, shutdown: CancellationToken) {
        let mut connected = self.connected.subscribe();
        loop {
            let up = self.is_connected();
            telemetry::nats_connected(up);
            if up && !self.stream_ready() {
                match self.ensure_stream().await {
                    Ok(()) => {
                        tracing::info!(stream = %self.settings.name, "JetStream stream ready")
                    }
                    Err(e) => tracing::warn!(error = %e, "JetStream stream not ready; retrying"),
                }
            }
            let retry = self.is_connected() && !self.stream_ready();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = connected.changed() => {}
                _ = self.lost.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
                // The client's events travel through a bounded queue: should one be dropped, the
                // state is read again within a while.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}

/// The stream the relay creates, before [`Publisher::wanted`] adds its settings.
fn stream_config(s: &StreamSettings) -> StreamConfig {
    StreamConfig {
        name: s.name.clone(),
        subjects: vec![subject::all(&s.subject_prefix)],
        storage: StorageType::File,
        ..Default::default()
    }
}

fn same_settings(a: &StreamConfig, b: &StreamConfig) -> bool {
    (
        a.max_messages_per_subject,
        a.allow_rollup,
        a.allow_message_ttl,
        a.duplicate_window,
        a.num_replicas,
    ) == (
        b.max_messages_per_subject,
        b.allow_rollup,
        b.allow_message_ttl,
        b.duplicate_window,
        b.num_replicas,
    )
}

/// Per-message TTL came with NATS 2.11.
fn supports_message_ttl(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

/// Messages of the layout before per-key subjects (`<prefix>.<partition>.<kind>.<op>`) are
/// still in the stream: a consumer reading the last message per subject would take each for a
/// key of its own.
async fn warn_of_the_old_layout(stream: &jetstream::stream::Stream, prefix: &str) {
    use futures::TryStreamExt;
    for op in ["upsert", "delete"] {
        let filter = subject::old_layout(prefix, op);
        let Ok(mut subjects) = stream.info_with_subjects(&filter).await else {
            continue;
        };
        if let Ok(Some((subject, count))) = subjects.try_next().await {
            tracing::warn!(%subject, count, stream = %stream.cached_info().config.name,
                "the stream holds deltas of the old subject layout (<kind>.<op>); consumers of the \
                 current state would read them as keys. Purge them and republish (README: migrating to per-key subjects)");
            return;
        }
    }
}

pub(super) fn stream_not_found(kind: jetstream::context::GetStreamErrorKind) -> bool {
    use jetstream::context::GetStreamErrorKind;
    use jetstream::ErrorCode;
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}
