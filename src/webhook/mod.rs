//! The HTTP face: the webhook receiver, the reconcile endpoints, health and metrics. It never
//! builds a delta itself.

mod admin;
mod error;
mod handler;
pub mod server;
pub mod signature;
pub mod tls;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use error::{with_fallbacks, WebhookError};

use crate::publish::{Delivery, Publisher};
use crate::reconcile::{Cascades, Confirmer, Reconciler};
use crate::state::Health;
use crate::translate::Translator;
use signature::Verifier;

/// What the handlers share.
pub struct AppState {
    pub verifier: Verifier,
    pub translator: Translator,
    pub publisher: Arc<Publisher>,
    pub delivery: Arc<Delivery>,
    pub reconciler: Arc<Reconciler>,
    /// None when cascades are off.
    pub cascades: Option<Arc<Cascades>>,
    /// Checks webhooks that may come from a netbox-branching branch against NetBox's main.
    pub confirmer: Arc<Confirmer>,
    pub admin_token: Option<secrecy::SecretString>,
    pub max_body_bytes: usize,
    /// A request's body must arrive within this time (`server.request_timeout`).
    pub request_timeout: std::time::Duration,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Whether the state file takes writes and its commit thread runs.
    pub store_health: Arc<Health>,
    /// Keys whose clamped revision was logged already (once per key, bounded).
    pub clamped_keys: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The relay's routes, with `others` (service discovery's endpoint) mounted beside them under the
/// same limits and tracing.
pub fn router(state: Arc<AppState>, others: Router) -> Router {
    let limit = state.max_body_bytes;
    let body_timeout = state.request_timeout;
    let routes = Router::new()
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
        .with_state(state)
        .merge(others);
    error::with_fallbacks(routes)
        // 5xx answers are logged once where they arise (WebhookError); a 503 from /readyz while
        // NATS is away is an answer, not an error worth a line per probe.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
}

/// Ready while a webhook sent now would be made durable: the state file takes writes, and
/// JetStream takes deltas or the spool has room for one. NATS being away is not a reason by
/// itself (the spool takes over); the body says how NATS and the spool are.
async fn readyz(State(app): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let spool = app.delivery.spool();
    let (connected, stream) = (app.publisher.is_connected(), app.publisher.stream_ready());
    let publishing = connected && stream;
    // Room for a sizeable delta; the largest possible one would make a small spool never ready.
    let room = spool.has_room(app.publisher.max_delta_bytes().min(64 << 10) as u64);
    let reason = match app.store_health.problem() {
        Some(problem) => Some(problem),
        None if !publishing && !room => Some(format!(
            "NATS does not take deltas and the spool is full ({} bytes, spool.max_bytes)",
            spool.max_bytes()
        )),
        None if app.confirmer.is_full() => Some(format!(
            "{} webhooks wait for NetBox's main to confirm them (webhook.max_held): those that need confirmation get 503",
            app.confirmer.held()
        )),
        None => None,
    };
    let body = json!({
        "ready": reason.is_none(),
        "reason": reason,
        "nats": if connected { "connected" } else { "away" },
        "stream": if stream { "ready" } else { "not_ready" },
        "spool_depth": spool.depth(),
        "held_webhooks": app.confirmer.held(),
        // Held webhooks that wait while the others are confirmed (a type the token may not
        // read, an object main cannot serve), and why every confirmation waits, if it does.
        "unconfirmed": app.confirmer.stuck(),
        "confirmation_waits_for": app.confirmer.waiting_for_netbox(),
        "dead_letters": spool.dead(),
    });
    let status = match reason {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(body))
}

async fn render_metrics(State(app): State<Arc<AppState>>) -> String {
    app.metrics.as_ref().map(|m| m.render()).unwrap_or_default()
}
