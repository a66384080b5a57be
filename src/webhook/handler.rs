//! `POST /webhooks/netbox`: verify, parse, translate, publish, and answer only when durable.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;

use super::error::WebhookError;
use super::AppState;
use crate::netbox::webhook::{self, Parsed};
use crate::publish::Delivered;
use crate::translate::Outcome;

pub async fn receive(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, WebhookError> {
    if !is_json(&headers) {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => WebhookError::TooLarge {
            limit: app.max_body_bytes,
        },
        _ => WebhookError::Body(rejection.body_text()),
    })?;
    let signature = headers.get("x-hook-signature").map(|v| v.as_bytes());
    let body = app.verifier.verify(signature, body)?;
    let event = match webhook::parse(body.as_bytes())? {
        Parsed::Change(event) => event,
        Parsed::Ignored(reason) => return Ok(ignored(reason)),
    };
    let delta = match app.translator.webhook(&event, Utc::now())? {
        Outcome::Publish(delta) => delta,
        Outcome::Ignore(reason) => return Ok(ignored(reason)),
    };
    let delivered = app.delivery.deliver(&delta).await?;
    tracing::info!(
        object_type = event.object_type.name,
        id = event.object_id,
        event = event.event.as_str(),
        request_id = event.request_id.as_deref(),
        delta_id = %delta.delta_id,
        result = ?delivered,
        "webhook handled"
    );
    match delivered {
        Delivered::Published | Delivered::Spooled => {
            let answer = json!({"status": "accepted", "deltas": 1});
            Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
        }
        Delivered::Dropped(verdict) => Ok(ignored(verdict.reason().to_string())),
    }
}

fn ignored(reason: String) -> Response {
    tracing::info!(reason = %reason, "webhook ignored");
    Json(json!({"status": "ignored", "reason": reason})).into_response()
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}
