//! The HTTP face: the webhook receiver and the health endpoints. It never builds a delta itself.

mod error;
mod handler;
pub mod signature;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use error::WebhookError;

use crate::publish::Publisher;
use crate::translate::Translator;
use signature::Verifier;

/// What the handlers share.
pub struct AppState {
    pub verifier: Verifier,
    pub translator: Translator,
    pub publisher: Arc<Publisher>,
    pub max_body_bytes: usize,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route(
            "/webhooks/netbox",
            post(handler::receive).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Ready when NATS is connected and the stream is present.
async fn readyz(State(app): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let mut reasons = Vec::new();
    if !app.publisher.is_connected() {
        reasons.push("NATS is not connected");
    } else if !app.publisher.stream_ready() {
        reasons.push("the JetStream stream is not ready");
    }
    match reasons.is_empty() {
        true => (StatusCode::OK, Json(json!({"status": "ready"}))),
        false => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reasons": reasons})),
        ),
    }
}
