//! The HTTP face: the webhook receiver, the reconcile endpoints, health and metrics. It never
//! builds a delta itself.

mod admin;
mod error;
mod handler;
pub mod signature;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use error::WebhookError;

use crate::publish::{Delivery, Publisher};
use crate::reconcile::Reconciler;
use crate::translate::Translator;
use signature::Verifier;

/// What the handlers share.
pub struct AppState {
    pub verifier: Verifier,
    pub translator: Translator,
    pub publisher: Arc<Publisher>,
    pub delivery: Arc<Delivery>,
    pub reconciler: Arc<Reconciler>,
    pub admin_token: Option<secrecy::SecretString>,
    pub max_body_bytes: usize,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
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
        .route("/metrics", get(render_metrics))
        .route("/reconcile", post(admin::start_run))
        .route("/reconcile/runs/latest", get(admin::latest_run))
        .route("/reconcile/runs/{id}", get(admin::run_by_id))
        // 5xx answers are logged once where they arise (WebhookError); a 503 from /readyz while
        // NATS is away is an answer, not an error worth a line per probe.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(state)
}

/// Ready when NATS is connected and the stream is present. While NATS is away webhooks are still
/// accepted into the spool, but the relay is degraded: 503 with the reason.
async fn readyz(State(app): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let spooled = app.delivery.spool().depth();
    let reason = if !app.publisher.is_connected() {
        Some("NATS is not connected; webhooks go to the spool")
    } else if !app.publisher.stream_ready() {
        Some("the JetStream stream is not ready; webhooks go to the spool")
    } else {
        None
    };
    match reason {
        None => (
            StatusCode::OK,
            Json(json!({"status": "ready", "spooled": spooled})),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "reasons": [reason], "spooled": spooled})),
        ),
    }
}

async fn render_metrics(State(app): State<Arc<AppState>>) -> String {
    app.metrics.as_ref().map(|m| m.render()).unwrap_or_default()
}
