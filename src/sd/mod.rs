//! Prometheus HTTP service discovery from the registry: `GET /sd/prometheus` answers the target
//! groups of the current registry from memory, kept in step with the stream (so any number of
//! `netbox-relay sd` processes can run beside Prometheus, without a NetBox token). The relay
//! serves the same endpoint and starts following the stream at its first request.

mod follow;
mod query;
mod targets;

use std::collections::VecDeque;
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::telemetry;

pub use follow::Source;
pub use query::{parse as parse_query, QueryError};
pub use targets::{Selection, Targets};

/// How long the relay's first request waits for the registry to load before answering 503
/// (Prometheus keeps its last targets meanwhile and asks again).
const FIRST_LOAD_WAIT: Duration = Duration::from_secs(10);

/// Answers in memory at once, from building until the last part is handed to the connection (or
/// the client, not reading, is given up on after the write timeout). One answer of a large
/// registry is tens of MB (100,000 targets: 49 MB), so requests beyond these wait their turn (up
/// to `TURN_WAIT`, then 503) rather than each taking that memory.
const ANSWERS_AT_ONCE: usize = 4;
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Why an SD request is not answered with targets.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("a bearer token is required (sd.token)")]
    Unauthorized,
    #[error("the registry is still loading from the stream")]
    Loading,
    #[error("too many service-discovery requests at once; ask again")]
    Busy,
}

impl SdError {
    fn code(&self) -> &'static str {
        match self {
            SdError::Query(_) => "bad_query",
            SdError::Unauthorized => "unauthorized",
            SdError::Loading => "loading",
            SdError::Busy => "busy",
        }
    }
}

impl IntoResponse for SdError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            SdError::Query(_) => (StatusCode::BAD_REQUEST, self.code()),
            SdError::Unauthorized => (StatusCode::UNAUTHORIZED, self.code()),
            SdError::Loading | SdError::Busy => (StatusCode::SERVICE_UNAVAILABLE, self.code()),
        };
        let body = json!({"error": code, "message": self.to_string()});
        let mut response = (status, Json(body)).into_response();
        if matches!(self, SdError::Unauthorized) {
            let challenge = header::HeaderValue::from_static("Bearer");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The targets, the stream follower that keeps them and the endpoint's access rule.
pub struct Discovery {
    targets: Arc<Targets>,
    /// Turns true once the current registry has been read.
    loaded: Arc<watch::Sender<bool>>,
    token: Option<SecretString>,
    source: Source,
    started: Once,
    shutdown: CancellationToken,
    turns: Turns,
    rendered: Rendered,
    write_timeout: Duration,
}

/// Says at start that `/sd/prometheus` asks for no token (an empty NETBOX_RELAY_SD__TOKEN, a
/// variable left unset in a template, counts as none): a warning where other hosts reach
/// `listen`, a note where only this host does.
pub fn say_if_open(token: Option<&SecretString>, listen: std::net::SocketAddr) {
    if token.is_some() {
        return;
    }
    if listen.ip().is_loopback() {
        tracing::info!(%listen, "sd.token is not set: /sd/prometheus answers any client on this host; set sd.token (NETBOX_RELAY_SD__TOKEN) before listening beyond it");
    } else {
        tracing::warn!(%listen, "sd.token is not set: /sd/prometheus answers anyone who reaches the port with the registry's addresses; set sd.token (NETBOX_RELAY_SD__TOKEN) and give Prometheus the same as its bearer token");
    }
}

impl Discovery {
    /// `write_timeout`: how long a client may take to accept each part of an answer before the
    /// answer is abandoned (`server.request_timeout`).
    pub fn new(
        source: Source,
        token: Option<SecretString>,
        write_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Discovery {
            targets: Arc::new(Targets::default()),
            loaded: Arc::new(watch::Sender::new(false)),
            token,
            source,
            started: Once::new(),
            shutdown,
            turns: Turns::new(ANSWERS_AT_ONCE, TURN_WAIT),
            rendered: Rendered::default(),
            write_timeout,
        }
    }

    /// Starts following the stream (once), restarted if it panics.
    pub fn start(&self) {
        self.started.call_once(|| {
            let (targets, loaded) = (self.targets.clone(), self.loaded.clone());
            let (source, shutdown) = (self.source.clone(), self.shutdown.clone());
            let follower = move || {
                let (targets, loaded) = (targets.clone(), loaded.clone());
                follow::follow(source.clone(), targets, loaded, shutdown.clone())
            };
            let part = crate::telemetry::part::SERVICE_DISCOVERY;
            tokio::spawn(crate::supervise::supervise(
                part,
                self.shutdown.clone(),
                follower,
            ));
        });
    }

    /// Whether the current registry has been read.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The answer to one request, once the registry is loaded.
    pub async fn answer(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Bytes, SdError> {
        self.authorize(headers)?;
        let selection = parse_query(query)?;
        self.start();
        let mut loaded = self.loaded.subscribe();
        tokio::time::timeout(FIRST_LOAD_WAIT, loaded.wait_for(|l| *l))
            .await
            .map_err(|_| SdError::Loading)?
            .map_err(|_| SdError::Loading)?;
        let turn = self.turns.take().await?;
        let body = self.rendered(selection).await?;
        Ok(Answer::bytes(body, turn))
    }

    /// The answer's text: one rendered for the same selection of the same targets if there is
    /// one, else rendered now, one render at a time, off the threads webhooks are served on.
    async fn rendered(&self, selection: Selection) -> Result<Arc<String>, SdError> {
        if let Some(body) = self.rendered.find(&selection, self.targets.version()) {
            return Ok(body);
        }
        let _alone = self.rendered.one_at_a_time.lock().await;
        // Rendered while this request waited, by one that asked the same.
        if let Some(body) = self.rendered.find(&selection, self.targets.version()) {
            return Ok(body);
        }
        let (targets, asked) = (self.targets.clone(), selection.clone());
        let (version, body) = tokio::task::spawn_blocking(move || targets.render_versioned(&asked))
            .await
            .map_err(|_| SdError::Busy)?;
        let body = Arc::new(body);
        self.rendered.keep(selection, version, body.clone());
        Ok(body)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), SdError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        // `Bearer <token>`, or the token alone: what Prometheus 2.x sends for an `authorization`
        // of http_sd_configs that names no `type`.
        let bare = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let given = crate::bearer::token(headers).or(bare).unwrap_or_default();
        match bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
            true => Ok(()),
            false => Err(SdError::Unauthorized),
        }
    }
}

/// Answers rendered lately, by selection and the version of the targets they show: clients that
/// ask the same of an unchanged registry share one text.
#[derive(Default)]
struct Rendered {
    recent: std::sync::Mutex<VecDeque<(Selection, u64, Arc<String>)>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// How many rendered answers are kept; each counts among the answers held in memory.
const RENDERED_KEPT: usize = 2;

impl Rendered {
    fn find(&self, selection: &Selection, version: u64) -> Option<Arc<String>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let found = recent
            .iter()
            .find(|(s, v, _)| *v == version && s == selection);
        found.map(|(_, _, body)| body.clone())
    }

    fn keep(&self, selection: Selection, version: u64, body: Arc<String>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(_, v, _)| *v == version);
        if recent.len() >= RENDERED_KEPT {
            recent.pop_front();
        }
        recent.push_back((selection, version, body));
    }
}

/// Turns to hold an answer in memory: a few at once, a bounded wait for one.
struct Turns {
    free: Arc<Semaphore>,
    wait: Duration,
}

impl Turns {
    fn new(at_once: usize, wait: Duration) -> Turns {
        Turns {
            free: Arc::new(Semaphore::new(at_once)),
            wait,
        }
    }

    async fn take(&self) -> Result<OwnedSemaphorePermit, SdError> {
        let turn = self.free.clone().acquire_owned();
        match tokio::time::timeout(self.wait, turn).await {
            Ok(Ok(turn)) => Ok(turn),
            _ => Err(SdError::Busy),
        }
    }
}

/// An answer's text with the turn it holds until the last byte is sent.
struct Answer {
    body: Arc<String>,
    _turn: OwnedSemaphorePermit,
}

impl Answer {
    fn bytes(body: Arc<String>, turn: OwnedSemaphorePermit) -> Bytes {
        Bytes::from_owner(Answer { body, _turn: turn })
    }
}

impl AsRef<[u8]> for Answer {
    fn as_ref(&self) -> &[u8] {
        self.body.as_bytes()
    }
}

/// A part of an answer handed to the connection at a time.
const CHUNK: usize = 64 << 10;

/// The answer (which holds its turn) sent in parts, each copied out, so that the connection's
/// buffers never share the answer's memory. A part the connection does not take within
/// `write_timeout` (a client that does not read) abandons the answer: its memory and its turn
/// are given back, and the connection is closed at its next write.
fn streamed(answer: Bytes, write_timeout: Duration) -> Body {
    let (parts, received) = tokio::sync::mpsc::channel::<Bytes>(1);
    let abandoned = CancellationToken::new();
    let abandon = abandoned.clone();
    tokio::spawn(async move {
        for start in (0..answer.len()).step_by(CHUNK) {
            let part = Bytes::copy_from_slice(&answer[start..(start + CHUNK).min(answer.len())]);
            match parts.send_timeout(part, write_timeout).await {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => {
                    telemetry::sd_answered("write_timeout");
                    abandon.cancel();
                    return;
                }
                Err(SendTimeoutError::Closed(_)) => return,
            }
        }
    });
    let parts = futures::stream::unfold(
        (received, abandoned, false),
        |(mut received, abandoned, ended)| async move {
            if ended {
                return None;
            }
            match received.recv().await {
                Some(part) => Some((Ok(part), (received, abandoned, false))),
                None if abandoned.is_cancelled() => {
                    let error = std::io::Error::other("the client did not read the answer in time");
                    Some((Err(error), (received, abandoned, true)))
                }
                None => None,
            }
        },
    );
    Body::from_stream(parts)
}

/// The endpoint alone, for the relay to serve beside its own routes.
pub fn endpoint(discovery: Arc<Discovery>) -> Router {
    Router::new()
        .route("/sd/prometheus", get(prometheus))
        .with_state(discovery)
}

/// The standalone server's routes: the endpoint, `/healthz`, and `/readyz` (200 once the
/// registry is loaded).
pub fn router(discovery: Arc<Discovery>) -> Router {
    let routes = Router::new()
        .route("/sd/prometheus", get(prometheus))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(discovery);
    crate::webhook::with_fallbacks(routes)
}

async fn readyz(State(discovery): State<Arc<Discovery>>) -> (StatusCode, Json<serde_json::Value>) {
    let targets = discovery.targets.len();
    match discovery.is_loaded() {
        true => (
            StatusCode::OK,
            Json(json!({"ready": true, "targets": targets})),
        ),
        false => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"ready": false, "reason": "the registry is still loading from the stream"}),
            ),
        ),
    }
}

async fn metrics() -> String {
    let handle = telemetry::metrics_handle();
    handle.map(|m| m.render()).unwrap_or_default()
}

/// `GET /sd/prometheus`.
pub async fn prometheus(
    State(discovery): State<Arc<Discovery>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match discovery.answer(&headers, query.as_deref()).await {
        Ok(body) => {
            telemetry::sd_answered("ok");
            let body = streamed(body, discovery.write_timeout);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => {
            telemetry::sd_answered(e.code());
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_answer_is_shared_until_the_targets_change() {
        let (rendered, targets) = (Rendered::default(), Targets::default());
        let (all, one) = (
            parse_query(None).unwrap(),
            parse_query(Some("port=9100")).unwrap(),
        );
        let (version, body) = targets.render_versioned(&all);
        let body = Arc::new(body);
        rendered.keep(all.clone(), version, body.clone());
        let found = rendered.find(&all, targets.version()).unwrap();
        assert!(Arc::ptr_eq(&found, &body), "the same text, not a copy");
        assert!(rendered.find(&one, targets.version()).is_none());
        targets.replace(Default::default());
        assert!(rendered.find(&all, targets.version()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_holds_its_turn_until_it_is_dropped() {
        let turns = Turns::new(2, Duration::from_secs(10));
        let first = Answer::bytes(Arc::new("[]".into()), turns.take().await.unwrap());
        let second = Answer::bytes(Arc::new("[1]".into()), turns.take().await.unwrap());
        assert_eq!(&second[..], b"[1]");
        assert!(matches!(turns.take().await, Err(SdError::Busy)));
        // A clone of the bytes (hyper's write buffer) keeps the turn too.
        let sending = first.clone();
        drop(first);
        assert!(matches!(turns.take().await, Err(SdError::Busy)));
        drop(sending);
        assert!(turns.take().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_nobody_reads_gives_its_turn_back_after_the_write_timeout() {
        use http_body_util::BodyExt;
        let turns = Turns::new(1, Duration::from_secs(1));
        let large = "x".repeat(10 * CHUNK);
        let answer = Answer::bytes(Arc::new(large.clone()), turns.take().await.unwrap());
        let mut body = streamed(answer, Duration::from_secs(5));
        // The client reads one part, then stops reading.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), CHUNK);
        assert!(
            matches!(turns.take().await, Err(SdError::Busy)),
            "the answer holds its turn"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(turns.take().await.is_ok(), "the turn came back");
        // What is left is one part already handed over, then an error that closes the connection.
        let mut rest = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => rest.extend(frame.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("an abandoned answer must not end as if complete"),
            }
        };
        assert!(rest.len() <= CHUNK, "{}", rest.len());
        assert!(error.to_string().contains("did not read"), "{error}");
    }

    #[tokio::test]
    async fn an_answer_read_at_once_arrives_whole() {
        use http_body_util::BodyExt;
        let turns = Turns::new(1, Duration::from_secs(1));
        let large: String = (0..3 * CHUNK + 7)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let answer = Answer::bytes(Arc::new(large.clone()), turns.take().await.unwrap());
        let body = streamed(answer, Duration::from_secs(5));
        let whole = body.collect().await.unwrap().to_bytes();
        assert_eq!(whole, large.as_bytes());
        assert!(turns.take().await.is_ok());
    }
}
