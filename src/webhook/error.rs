//! Every way a webhook can fail, and the one place that maps each to its answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::signature::SignatureError;
use crate::netbox::webhook::PayloadError;
use crate::publish::DeliveryError;
use crate::reconcile::HoldError;
use crate::translate::TranslateError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot read the body: {0}")]
    Body(String),
    #[error("the body did not arrive within {0:?} (server.request_timeout)")]
    BodyTimeout(std::time::Duration),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("the delta could not be made durable: {0}")]
    Unavailable(DeliveryError),
    /// The delta cannot fit in one NATS message: nothing was published or spooled.
    #[error("{0}")]
    DeltaTooLarge(DeliveryError),
    /// NetBox's main did not confirm in time and the webhook could not be held.
    #[error("the webhook could not be held for confirmation: {0}")]
    NotHeld(HoldError),
}

impl From<DeliveryError> for WebhookError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::TooLarge { .. } => WebhookError::DeltaTooLarge(e),
            e => WebhookError::Unavailable(e),
        }
    }
}

impl WebhookError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WebhookError::TooLarge { .. } | WebhookError::DeltaTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            WebhookError::Body(_) | WebhookError::Payload(_) | WebhookError::Translate(_) => {
                StatusCode::BAD_REQUEST
            }
            WebhookError::Signature(_) => StatusCode::UNAUTHORIZED,
            WebhookError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            WebhookError::Unavailable(_) | WebhookError::NotHeld(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `error` of the answer, and the `result` of the webhook's log line and metric.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::UnsupportedMediaType => "unsupported_media_type",
            WebhookError::TooLarge { .. } | WebhookError::DeltaTooLarge(_) => "too_large",
            WebhookError::Body(_) | WebhookError::Payload(_) | WebhookError::Translate(_) => {
                "bad_payload"
            }
            WebhookError::Signature(_) => "bad_signature",
            WebhookError::BodyTimeout(_) => "timeout",
            WebhookError::Unavailable(_) | WebhookError::NotHeld(_) => "unavailable",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = self.status();
        // 5xx bodies stay opaque; the cause is in the webhook's log line.
        let message = if status.is_server_error() {
            "the delta could not be published or spooled; reconciliation will repair it".to_string()
        } else {
            self.to_string()
        };
        (
            status,
            Json(json!({"error": self.code(), "message": message})),
        )
            .into_response()
    }
}

/// The answers to a path no route has and to a method a route does not take: JSON, like every
/// other answer, saying what exists.
pub fn with_fallbacks(router: axum::Router) -> axum::Router {
    router
        .fallback(|uri: axum::http::Uri| async move {
            let message = format!(
                "no such path: {} (README.md lists the endpoints)",
                uri.path()
            );
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_found", "message": message})),
            )
        })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                let message = format!("{} does not take {method}", uri.path());
                let body = Json(json!({"error": "method_not_allowed", "message": message}));
                (StatusCode::METHOD_NOT_ALLOWED, body)
            },
        )
}
