//! Prometheus HTTP service discovery from the registry: `GET /sd/prometheus` answers the target
//! groups of the current registry from memory, kept in step with the stream (so any number of
//! `netbox-relay sd` processes can run beside Prometheus, without a NetBox token). The relay
//! serves the same endpoint and starts following the stream at its first request.

mod follow;
mod query;
mod targets;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub use follow::Source;
pub use query::{parse as parse_query, QueryError};
pub use targets::{label_name, Selection, Target, Targets, TARGET_KINDS};

/// How long the relay's first request waits for the registry to load before answering 503
/// (Prometheus keeps its last targets meanwhile and asks again).
const FIRST_LOAD_WAIT: Duration = Duration::from_secs(10);

/// Why an SD request is not answered with targets.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("a bearer token is required (sd.token)")]
    Unauthorized,
    #[error("the registry is still loading from the stream")]
    Loading,
}

impl IntoResponse for SdError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            SdError::Query(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            SdError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            SdError::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
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
    loaded: Arc<AtomicBool>,
    token: Option<SecretString>,
    source: Source,
    started: Once,
    shutdown: CancellationToken,
}

impl Discovery {
    pub fn new(source: Source, token: Option<SecretString>, shutdown: CancellationToken) -> Self {
        Discovery {
            targets: Arc::new(Targets::default()),
            loaded: Arc::new(AtomicBool::new(false)),
            token,
            source,
            started: Once::new(),
            shutdown,
        }
    }

    /// Starts following the stream (once).
    pub fn start(&self) {
        self.started.call_once(|| {
            let (targets, loaded) = (self.targets.clone(), self.loaded.clone());
            tokio::spawn(follow::follow(
                self.source.clone(),
                targets,
                loaded,
                self.shutdown.clone(),
            ));
        });
    }

    /// Whether the current registry has been read.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The answer to one request, once the registry is loaded.
    pub async fn answer(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<String, SdError> {
        self.authorize(headers)?;
        let selection = parse_query(query)?;
        self.start();
        let deadline = tokio::time::Instant::now() + FIRST_LOAD_WAIT;
        while !self.is_loaded() {
            if tokio::time::Instant::now() >= deadline {
                return Err(SdError::Loading);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.targets.render(&selection))
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), SdError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        // `Bearer <token>`, or the token alone: what Prometheus 2.x sends for an `authorization`
        // of http_sd_configs that names no `type`.
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
            .unwrap_or_default();
        match bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
            true => Ok(()),
            false => Err(SdError::Unauthorized),
        }
    }
}

/// The standalone server's routes: the endpoint, `/healthz`, and `/readyz` (200 once the
/// registry is loaded).
pub fn router(discovery: Arc<Discovery>) -> Router {
    Router::new()
        .route("/sd/prometheus", get(prometheus))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(discovery)
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

/// `GET /sd/prometheus`.
pub async fn prometheus(
    State(discovery): State<Arc<Discovery>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match discovery.answer(&headers, query.as_deref()).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => e.into_response(),
    }
}
