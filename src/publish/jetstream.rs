//! The publisher: one connection to NATS and one publish with its headers and the per-key
//! expectation. Connecting is in `connect.rs`, the stream's settings in `stream.rs`, the reads of
//! the stream in `reads.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_nats::connection::State;
use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::{header, Client, HeaderMap};
use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::connect::{connect_failed, connect_options, reporting_events, servers};
use super::stream::StreamSettings;
use super::subject;
use crate::config::NatsConfig;
use crate::delta::{Op, RegistryDelta};
use crate::telemetry;

/// Why a delta did not reach JetStream. Messages carry no credentials.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to NATS")]
    NotConnected,
    #[error("NATS connection: {0}")]
    Connect(String),
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("JetStream did not acknowledge the delta: {0}")]
    NoAck(String),
    /// No stream answered for the subject: absent, or it does not capture the subject.
    #[error("no JetStream stream takes the subject {0}")]
    NoStream(String),
    /// JetStream (or the client, for a message past `max_payload`) refused this message; sending
    /// it again gets the same answer.
    #[error("JetStream refused the delta: {0}")]
    Refused(String),
    /// The key's last message on the stream is not the one the relay compared against: another
    /// relay published to the key since.
    #[error("the key's last message on the stream changed: {0}")]
    Conflict(String),
    /// Reading the stream (a key's last message, the keys of a kind) failed.
    #[error("reading the stream: {0}")]
    Read(String),
    /// A delta read from the stream could not be encoded again (a bug, never the message's fault).
    #[error("encoding a delta: {0}")]
    Encode(String),
}

/// A key's last message on the stream.
#[derive(Debug)]
pub enum Last {
    /// A delta, at this stream sequence.
    Delta(Box<RegistryDelta>, u64),
    /// A message that is no delta (published by hand, or by another tool), at this sequence.
    Foreign(u64),
}

impl PublishError {
    /// The message itself was refused, as opposed to NATS being unreachable or slow.
    pub fn is_refusal(&self) -> bool {
        matches!(self, PublishError::Refused(_))
    }
}

/// The header that carries the delta's `op`, for consumers that filter without parsing.
pub const OP_HEADER: &str = "Netbox-Relay-Op";

/// What NATS adds to a delta's JSON on the wire: the header block (`NATS/1.0`, `Nats-Msg-Id`
/// with a 32-character id, or up to 59 for a restore, `Content-Type`), rounded up. `max_payload` counts it.
const HEADER_ALLOWANCE: usize = 256;

pub struct Publisher {
    pub(super) client: Client,
    pub(super) js: jetstream::Context,
    pub(super) settings: StreamSettings,
    pub(super) stream_ready: AtomicBool,
    /// What the stream allows, as last read from it: a delete rolls up its key's earlier
    /// messages, and its tombstone carries a TTL.
    pub(super) rollups: AtomicBool,
    pub(super) message_ttl: AtomicBool,
    /// The stream captures the relay's subjects, as last read from it.
    pub(super) captures: AtomicBool,
    /// The connection's state as its events tell it, for the stream keeper.
    pub(super) connected: Arc<watch::Sender<bool>>,
    /// Told when a publish or a read found no stream, for the stream keeper.
    pub(super) lost: Notify,
}

impl Publisher {
    /// Connects in the background (the relay starts even while NATS is away).
    pub async fn connect(cfg: &NatsConfig) -> Result<Publisher, PublishError> {
        let connected = Arc::new(watch::Sender::new(false));
        let client = reporting_events(
            connect_options(cfg).await?,
            &cfg.url,
            Some(connected.clone()),
        )
        .retry_on_initial_connect()
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| connect_failed(&cfg.url, e))?;
        let js = ContextBuilder::new()
            .timeout(cfg.ack_timeout)
            .ack_timeout(cfg.ack_timeout)
            .build(client.clone());
        Ok(Publisher {
            client,
            js,
            settings: StreamSettings {
                name: cfg.stream.clone(),
                subject_prefix: cfg.subject_prefix.clone(),
                duplicate_window: cfg.duplicate_window,
                replicas: cfg.replicas,
                history_per_key: cfg.history_per_key,
                tombstone_ttl: cfg.tombstone_ttl,
            },
            stream_ready: AtomicBool::new(false),
            rollups: AtomicBool::new(false),
            message_ttl: AtomicBool::new(false),
            captures: AtomicBool::new(false),
            connected,
            lost: Notify::new(),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Returns once the connection is up, or false after `limit`.
    pub async fn connected_within(&self, limit: std::time::Duration) -> bool {
        let mut connected = self.connected.subscribe();
        let up = tokio::time::timeout(limit, connected.wait_for(|up| *up)).await;
        matches!(up, Ok(Ok(_)))
    }

    /// Returns once the connection is lost.
    pub async fn disconnected(&self) {
        let mut connected = self.connected.subscribe();
        // The sender lives as long as `self`.
        let _ = connected.wait_for(|up| !*up).await;
    }

    /// Whether the stream, as last read, captures the relay's subjects: a publish it then answers
    /// with "no stream for the subject" comes from a cluster node that has not caught up yet (a
    /// node just restarted), and is worth trying again.
    pub fn stream_captures_subjects(&self) -> bool {
        self.captures.load(Ordering::Relaxed)
    }

    pub fn stream_ready(&self) -> bool {
        self.stream_ready.load(Ordering::Relaxed)
    }

    /// A publish or a read found no stream: the keeper creates it again.
    pub(super) fn stream_lost(&self) {
        self.stream_ready.store(false, Ordering::Relaxed);
        self.lost.notify_one();
    }

    /// The server's `max_payload` (from its INFO; NATS's default of 1 MiB until the first one).
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// The largest delta JSON that fits in one message.
    pub fn max_delta_bytes(&self) -> usize {
        self.max_payload().saturating_sub(HEADER_ALLOWANCE)
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// `<prefix>.<partition>.<kind>.<object_id>`: one subject per registry key.
    pub fn subject(&self, delta: &RegistryDelta) -> String {
        let prefix = &self.settings.subject_prefix;
        subject::key(prefix, &delta.partition, delta.kind, delta.object_id)
    }

    /// The headers of a delta's message. A delete replaces its key's earlier messages (a
    /// rollup), so that the tombstone's expiry cannot bring back an older upsert.
    fn headers(&self, delta: &RegistryDelta, msg_id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, msg_id);
        headers.insert("Content-Type", "application/json");
        headers.insert(OP_HEADER, delta.op.as_str());
        let compacted = self.settings.history_per_key > 0;
        if delta.op == Op::Delete && compacted && self.rollups.load(Ordering::Relaxed) {
            headers.insert(header::NATS_ROLLUP, "sub");
            if self.message_ttl.load(Ordering::Relaxed) {
                let ttl = self.settings.tombstone_ttl.as_secs().to_string();
                headers.insert(header::NATS_MESSAGE_TTL, ttl.as_str());
            }
        }
        headers
    }

    /// Publishes one delta, `payload` being its JSON, and waits for JetStream's ack. With
    /// `expected`, only if the key's last message on the stream has that sequence (0: none).
    /// `Nats-Msg-Id` is the delta's id, or `msg_id` when given (see `order.rs`).
    pub async fn publish(
        &self,
        delta: &RegistryDelta,
        payload: Bytes,
        expected: Option<u64>,
        msg_id: Option<&str>,
    ) -> Result<PublishAck, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::NotConnected);
        }
        let mut headers = self.headers(delta, msg_id.unwrap_or(&delta.delta_id));
        if let Some(seq) = expected {
            let seq = seq.to_string();
            headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, seq.as_str());
        }
        let started = Instant::now();
        let ack = async {
            self.js
                .publish_with_headers(self.subject(delta), headers, payload)
                .await?
                .await
        };
        let ack = ack.await.map_err(|e| self.classify(e))?;
        telemetry::delta_published(delta, started.elapsed());
        Ok(ack)
    }

    fn classify(&self, e: async_nats::jetstream::context::PublishError) -> PublishError {
        use std::error::Error;
        let answered = e
            .source()
            .is_some_and(|s| s.downcast_ref::<jetstream::Error>().is_some());
        match e.kind() {
            PublishErrorKind::StreamNotFound => {
                self.stream_lost();
                PublishError::NoStream(e.to_string())
            }
            PublishErrorKind::MaxPayloadExceeded => PublishError::Refused(e.to_string()),
            PublishErrorKind::WrongLastSequence => {
                telemetry::publish_conflict();
                PublishError::Conflict(e.to_string())
            }
            // JetStream answered with an API error (message too large for the stream, bad
            // request, ...): the same message would be refused again.
            PublishErrorKind::Other if answered => PublishError::Refused(e.to_string()),
            _ => PublishError::NoAck(e.to_string()),
        }
    }

    /// Flushes what is pending and closes the connection.
    pub async fn drain(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
    }
}
