//! The reconcile endpoints: `POST /reconcile` (Bearer `api.admin_token`) and the run reports.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::reconcile::{NotStarted, RunOptions};

/// What `POST /reconcile`'s body may ask (an empty body asks nothing); the same as the query's
/// `?full=true` and `?force=true`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Asked {
    #[serde(default)]
    full: bool,
    #[serde(default)]
    force: bool,
}

pub async fn start_run(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refusal) = refusal(&app, &headers) {
        return refusal;
    }
    let asked = match body.iter().all(u8::is_ascii_whitespace) {
        true => Asked::default(),
        false => match serde_json::from_slice::<Asked>(&body) {
            Ok(asked) => asked,
            Err(e) => {
                let message =
                    format!("the body must be a JSON object such as {{\"full\": true}}: {e}");
                let body = json!({"error": "bad_request", "message": message});
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
        },
    };
    // A run that could only fail is not started: the caller learns why at once.
    if !app.reconciler.is_configured() {
        let message =
            "reconciliation is off: netbox.url and netbox.token (or netbox.token_file) must be set";
        let body = json!({"error": "not_configured", "message": message});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let options = RunOptions {
        trigger: "api".to_string(),
        force: flag("force") || asked.force,
        full: flag("full") || asked.full,
        only: Vec::new(),
    };
    match app.reconciler.spawn(options).await {
        Ok(run_id) => (
            StatusCode::ACCEPTED,
            Json(json!({"run_id": run_id, "status": "running"})),
        )
            .into_response(),
        Err(NotStarted::InProgress(running)) => {
            let body =
                json!({"error": "conflict", "run_id": running.0, "message": running.to_string()});
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        Err(e @ NotStarted::IdsExhausted { .. }) => {
            let body = json!({"error": "run_ids_exhausted", "message": e.to_string()});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// The latest run of any relay sharing the NATS.
pub async fn latest_run(State(app): State<Arc<AppState>>) -> Response {
    report(app.reconciler.latest().await)
}

/// A run of this relay or of another one sharing the NATS.
pub async fn run_by_id(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let found = match id.parse() {
        Ok(id) => app.reconciler.report(id).await,
        Err(_) => None,
    };
    report(found)
}

fn report(report: Option<crate::reconcile::RunReport>) -> Response {
    match report {
        Some(report) => Json(report).into_response(),
        None => {
            let body = json!({"error": "not_found", "message": "no such reconcile run"});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// The refusal, if any: 403 when no admin token is configured, 401 when the request does not
/// carry it.
fn refusal(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &app.admin_token else {
        let body = json!({"error": "forbidden", "message": "api.admin_token is not configured"});
        return Some((StatusCode::FORBIDDEN, Json(body)).into_response());
    };
    let given = crate::bearer::token(headers).unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        return None;
    }
    let body = json!({"error": "unauthorized", "message": "Authorization: Bearer <api.admin_token> required"});
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(body),
        )
            .into_response(),
    )
}
