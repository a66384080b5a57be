//! The NATS side of publishing: the connection (credentials, reconnects, events), the stream's
//! settings (created or updated at start, kept by the stream keeper), one publish with its
//! headers and the per-key expectation, and the reads of the stream (a key's last message, the
//! keys of a kind).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::{header, Client, ConnectOptions, Event, HeaderMap};
use bytes::Bytes;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::subject;
use crate::config::NatsConfig;
use crate::delta::{Kind, Op, RegistryDelta};
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
/// with a 32-character id, `Content-Type`), rounded up. `max_payload` counts it.
const HEADER_ALLOWANCE: usize = 256;

pub struct Publisher {
    client: Client,
    js: jetstream::Context,
    settings: StreamSettings,
    stream_ready: AtomicBool,
    /// What the stream allows, as last read from it: a delete rolls up its key's earlier
    /// messages, and its tombstone carries a TTL.
    rollups: AtomicBool,
    message_ttl: AtomicBool,
}

impl Publisher {
    /// Connects in the background (the relay starts even while NATS is away).
    pub async fn connect(cfg: &NatsConfig) -> Result<Publisher, PublishError> {
        let client = logging_events(connect_options(cfg).await?)
            .retry_on_initial_connect()
            .connect(servers(&cfg.url))
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
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
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    pub fn stream_ready(&self) -> bool {
        self.stream_ready.load(Ordering::Relaxed)
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
    fn headers(&self, delta: &RegistryDelta) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, delta.delta_id.as_str());
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
    pub async fn publish(
        &self,
        delta: &RegistryDelta,
        payload: Bytes,
        expected: Option<u64>,
    ) -> Result<PublishAck, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::NotConnected);
        }
        let mut headers = self.headers(delta);
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
                self.stream_ready.store(false, Ordering::Relaxed);
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

    /// The key's last message on the stream (read from the stream's leader), with its sequence;
    /// None when the key has none (never published, or its tombstone expired).
    pub async fn last_of(&self, delta: &RegistryDelta) -> Result<Option<Last>, PublishError> {
        self.last_on(&self.subject(delta)).await
    }

    /// The key of `kind` `id`'s last message on the stream, as [`Publisher::last_of`].
    pub async fn last_of_key(
        &self,
        partition: &str,
        kind: Kind,
        id: u64,
    ) -> Result<Option<Last>, PublishError> {
        let prefix = &self.settings.subject_prefix;
        self.last_on(&subject::key(prefix, partition, kind, id))
            .await
    }

    /// The object ids of `kind` that have a message on the stream (an entry or a tombstone),
    /// whichever relay published it.
    pub async fn ids_on_stream(
        &self,
        partition: &str,
        kind: Kind,
    ) -> Result<Vec<u64>, PublishError> {
        let prefix = &self.settings.subject_prefix;
        let filter = subject::keys_of(prefix, partition, Some(&kind));
        let api = format!("STREAM.INFO.{}", self.settings.name);
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let request = serde_json::json!({"subjects_filter": filter, "offset": offset});
            let failed = |e: &dyn std::fmt::Display| {
                PublishError::Read(format!("listing the keys of {kind}: {e}"))
            };
            let page: keys::Page = self
                .js
                .request(api.clone(), &request)
                .await
                .map_err(|e| failed(&e))?;
            let (listed, total) = page.into_ids(&mut ids).map_err(|e| failed(&e))?;
            offset += listed;
            if listed == 0 || offset >= total {
                return Ok(ids);
            }
        }
    }

    async fn last_on(&self, subject: &str) -> Result<Option<Last>, PublishError> {
        use jetstream::stream::LastRawMessageErrorKind;
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(|e| PublishError::NoStream(e.to_string()))?;
        let message = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => message,
            Err(e) => {
                return match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    LastRawMessageErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        self.stream_ready.store(false, Ordering::Relaxed);
                        Err(PublishError::NoStream(e.to_string()))
                    }
                    _ => Err(PublishError::Read(format!(
                        "reading the key's last message: {e}"
                    ))),
                }
            }
        };
        Ok(Some(
            match serde_json::from_slice::<RegistryDelta>(&message.payload) {
                Ok(last) => Last::Delta(Box::new(last), message.sequence),
                Err(_) => Last::Foreign(message.sequence),
            },
        ))
    }

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
        if !config.subjects.iter().any(|subject| subject == &subjects) {
            tracing::warn!(stream = %s.name, expected = %subjects, found = ?config.subjects,
                "the existing stream does not capture the relay's subjects as configured");
        }
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

    /// Keeps the stream present: creates it once NATS is reachable, and again if it disappears.
    pub async fn keep_stream(&self, shutdown: CancellationToken) {
        loop {
            telemetry::nats_connected(self.is_connected());
            if self.is_connected() && !self.stream_ready() {
                match self.ensure_stream().await {
                    Ok(()) => {
                        tracing::info!(stream = %self.settings.name, "JetStream stream ready")
                    }
                    Err(e) => tracing::warn!(error = %e, "JetStream stream not ready; retrying"),
                }
            }
            // Poll quickly while NATS is connecting so that readiness follows it closely.
            let pause = match self.is_connected() {
                true => Duration::from_secs(1),
                false => Duration::from_millis(100),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Flushes what is pending and closes the connection.
    pub async fn drain(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
    }
}

/// What `check` found on NATS: the stream's subjects, if the stream exists.
#[derive(Debug)]
pub struct Probe {
    pub server_version: String,
    pub stream_subjects: Option<Vec<String>>,
}

/// A connection with the configured credentials that fails at once when NATS is away, for
/// commands (`check`, `tail`) rather than the long-running relay.
pub async fn connect_once(cfg: &NatsConfig) -> Result<Client, PublishError> {
    connect_options(cfg)
        .await?
        .connection_timeout(Duration::from_secs(5))
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| PublishError::Connect(e.to_string()))
}

/// A long-lived connection for reading the stream (`netbox-relay sd`): retried until NATS
/// answers, reconnecting as the relay's own does.
pub async fn connect_reader(cfg: &NatsConfig) -> Result<Client, PublishError> {
    logging_events(connect_options(cfg).await?)
        .retry_on_initial_connect()
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| PublishError::Connect(e.to_string()))
}

/// Connects once (no retries), and looks up the configured stream.
pub async fn probe(cfg: &NatsConfig) -> Result<Probe, PublishError> {
    let client = connect_once(cfg).await?;
    let server_version = client.server_info().version;
    let js = jetstream::new(client.clone());
    let stream_subjects = match js.get_stream(&cfg.stream).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| PublishError::Stream {
                stream: cfg.stream.clone(),
                message: e.to_string(),
            })?;
            Some(info.config.subjects.clone())
        }
        Err(e) if stream_not_found(e.kind()) => None,
        Err(e) => {
            return Err(PublishError::Stream {
                stream: cfg.stream.clone(),
                message: e.to_string(),
            })
        }
    };
    client.drain().await.ok();
    Ok(Probe {
        server_version,
        stream_subjects,
    })
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

fn stream_not_found(kind: jetstream::context::GetStreamErrorKind) -> bool {
    use jetstream::context::GetStreamErrorKind;
    use jetstream::ErrorCode;
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// `nats.url`: one server, or several separated by commas (a cluster's nodes; the client also
/// learns the others from the server it reaches).
fn servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

async fn connect_options(cfg: &NatsConfig) -> Result<ConnectOptions, PublishError> {
    let mut options = match &cfg.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                PublishError::Connect(format!("nats.creds_file {}: {e}", path.display()))
            })?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_string());
    }
    if let Some(token) = &cfg.token {
        options = options.token(token.expose_secret().to_string());
    }
    if let Some(ca) = &cfg.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options.name("netbox-relay"))
}

/// The relay reports its NATS connection coming and going; commands (`check`, `tail`) do not.
fn logging_events(options: ConnectOptions) -> ConnectOptions {
    options.event_callback(|event| async move {
        match event {
            Event::Connected => tracing::info!("connected to NATS"),
            Event::Disconnected => tracing::warn!("disconnected from NATS"),
            // An operator acts on these: refused credentials, a slow consumer, a server limit.
            Event::ServerError(async_nats::ServerError::AuthorizationViolation) => tracing::error!(
                "NATS refused the relay's credentials (nats.user and nats.password, nats.token or nats.creds_file); deltas wait in the spool"
            ),
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
            other => tracing::debug!(event = %other, "NATS client event"),
        }
    })
}

/// The stream's answer to a subjects listing (`STREAM.INFO` with `subjects_filter`), read as the
/// ids its subjects end with. A page lists up to 100,000 subjects; async-nats' own listing holds
/// two copies of each page as strings, several times what the ids take.
mod keys {
    use std::fmt;

    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Page {
        #[serde(default)]
        state: Option<State>,
        #[serde(default)]
        total: usize,
        #[serde(default)]
        error: Option<ApiError>,
    }

    #[derive(Deserialize)]
    struct ApiError {
        #[serde(default)]
        description: String,
    }

    #[derive(Deserialize)]
    struct State {
        #[serde(default, deserialize_with = "ids")]
        subjects: Listed,
    }

    /// How many subjects the page listed, and the ids of those that end with one.
    #[derive(Default)]
    struct Listed(usize, Vec<u64>);

    impl Page {
        /// Appends the page's ids; returns how many subjects it listed and the total.
        pub fn into_ids(self, ids: &mut Vec<u64>) -> Result<(usize, usize), String> {
            if let Some(error) = self.error {
                return Err(error.description);
            }
            let Listed(listed, found) = self.state.map(|s| s.subjects).unwrap_or_default();
            ids.extend(found);
            Ok((listed, self.total))
        }
    }

    fn ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Listed, D::Error> {
        struct Ids;
        impl<'de> Visitor<'de> for Ids {
            type Value = Listed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of subjects to message counts")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Listed, M::Error> {
                let mut listed = Listed::default();
                while let Some(subject) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    listed.0 += 1;
                    if let Some(id) = subject.rsplit('.').next().and_then(|id| id.parse().ok()) {
                        listed.1.push(id);
                    }
                }
                Ok(listed)
            }
        }
        deserializer.deserialize_map(Ids)
    }
}
