//! `POST /webhooks/netbox`: verify, parse, translate, publish, and answer only when durable.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{field, Instrument};

use super::error::WebhookError;
use super::signature::VerifiedBody;
use super::AppState;
use crate::delta::RegistryDelta;
use crate::netbox::client::ApiError;
use crate::netbox::parents::Trigger;
use crate::netbox::webhook::{self, Parsed, WebhookEvent};
use crate::netbox::ObjectType;
use crate::publish::{Delivered, DeliveryError};
use crate::reconcile::{Cascades, Confirmed, Unconfirmed};
use crate::telemetry;
use crate::translate::{self, Outcome};

/// What a webhook came to: the answer's status and the `result` of its log line and metric.
struct Handled {
    result: &'static str,
    status: StatusCode,
    /// `None` for the common answer, a delta delivered ([`DELIVERED`]).
    body: Option<serde_json::Value>,
}

/// The answer to a webhook whose delta was delivered, as `json!` would write it: most webhooks
/// get it, so it is not built and serialized for each.
const DELIVERED: &str = r#"{"deltas":1,"status":"accepted"}"#;

/// Every webhook gets one log line (request id, object type, id, event, result, latency) and is
/// counted by result; lines logged while handling it carry its request id through the span.
pub async fn receive(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    // The request taken whole: axum's `HeaderMap` extractor would copy every header.
    let (parts, body) = request.into_parts();
    // NetBox's request id once the body is read; until then, and for bodies without one, ours.
    let span = tracing::info_span!(
        "webhook",
        request_id = %uuid::Uuid::new_v4(),
        object_type = field::Empty,
        id = field::Empty,
        event = field::Empty
    );
    let outcome = handle(&app, &parts.headers, body)
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let _entered = span.enter();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    match outcome {
        Ok(handled) => {
            telemetry::webhook_answered(handled.result, elapsed);
            // Why a webhook changed nothing (ignored, stale, another branch) is in its body.
            let reason = handled.body.as_ref().and_then(|b| b.get("reason"));
            match reason.and_then(|r| r.as_str()) {
                Some(reason) => {
                    tracing::info!(result = handled.result, reason, latency_ms, "webhook")
                }
                None => tracing::info!(result = handled.result, latency_ms, "webhook"),
            }
            match handled.body {
                Some(body) => (handled.status, Json(body)).into_response(),
                None => {
                    let json = [(header::CONTENT_TYPE, "application/json")];
                    (handled.status, json, DELIVERED).into_response()
                }
            }
        }
        Err(error) => {
            let result = error.code();
            telemetry::webhook_answered(result, elapsed);
            if error.status().is_server_error() {
                tracing::error!(result, latency_ms, %error, "webhook");
            } else {
                tracing::info!(result, latency_ms, %error, "webhook");
            }
            error.into_response()
        }
    }
}

async fn handle(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Handled, WebhookError> {
    if !is_json(headers) {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let body = read_body(app, body).await?;
    let signature = headers.get("x-hook-signature").map(|v| v.as_bytes());
    let body = app.verifier.verify(signature, body)?;
    let event = match webhook::parse(body.as_bytes(), translate::READS)? {
        Parsed::Change(event) => event,
        Parsed::Parent {
            parent,
            object_id,
            trigger,
        } => {
            let span = tracing::Span::current();
            span.record("object_type", parent.name);
            span.record("id", object_id);
            return cascade_only(app, trigger).await;
        }
        Parsed::Ignored(reason) => return Ok(ignored("ignored", reason)),
        Parsed::Branch(branch) => {
            let reason =
                format!("made in branch {branch}: only NetBox's main reaches the registry");
            return Ok(ignored("branch", reason));
        }
    };
    record(&event);
    let now = Utc::now();
    let mut delta = match app.translator.webhook(&event, now)? {
        Outcome::Publish(delta) => delta,
        Outcome::Ignore(reason) => return Ok(ignored("ignored", reason)),
    };
    // Why main does not show this change, when main's object is delivered in its place.
    let mut not_on_main = None;
    let mut cascade = event.cascade();
    let mut confirmed = false;
    // One more look-up of the key's record (in redb's cache), only where a cascade can follow.
    if cascade.is_none() && app.cascades.is_some() && event.may_follow_a_lost_change() {
        let head = app.delivery.head(&delta.key)?;
        cascade = event.cascade_after(head.is_some_and(|h| h.shows_as(&delta)));
    }
    if app.confirmer.needed(&event) {
        let newer;
        (delta, not_on_main, newer) = match confirm(app, &event, delta, &body).await? {
            Ok(confirmed) => confirmed,
            Err(handled) => return Ok(handled),
        };
        cascade = newer.or(cascade);
        confirmed = true;
    }
    if let Some(stated) = translate::clamped_from(&app.translator, &event, &delta, now) {
        clamped(app, &delta, stated);
    }
    // Kept before the delta is published, and whatever becomes of it: a duplicate or stale
    // delta (an earlier webhook's confirmation published main's newer object) still leaves this
    // change's dependents to re-label.
    // Judged against this relay's record, which another relay's publish may have left behind.
    let judged_by_the_record = cascade.is_none() && event.may_follow_a_lost_change();
    if let (Some(cascades), Some(trigger)) = (&app.cascades, cascade) {
        cascades.push(trigger).await.map_err(DeliveryError::from)?;
    }
    // main's object, once confirmed, is what NetBox shows now: nothing to read again.
    let delivered = match (&app.cascades, confirmed) {
        (Some(cascades), false) => match app.delivery.deliver_webhook(&delta).await? {
            Some(delivered) => delivered,
            None => return reread(cascades, &delta).await,
        },
        _ => app.delivery.deliver(&delta).await?,
    };
    // The key's last message was another relay's: judged again against it. Kept after the
    // publish, before the 202.
    if let (
        Some(cascades),
        Delivered::Published {
            over: Some(registry),
        },
        true,
    ) = (&app.cascades, &delivered, judged_by_the_record)
    {
        let entries = (registry.entry.as_ref(), delta.entry.as_ref());
        if let Some(trigger) = event.cascade_after_entry(entries.0, entries.1) {
            cascades.push(trigger).await.map_err(DeliveryError::from)?;
        }
    }
    let result = match (delivered, not_on_main) {
        (Delivered::Published { .. }, _) => "published",
        (Delivered::Spooled, _) => "spooled",
        (Delivered::Dropped(_), Some(reason)) => return Ok(ignored("not_on_main", reason)),
        (Delivered::Dropped(verdict), None) => {
            return Ok(ignored(verdict.reason(), verdict.reason().to_string()))
        }
    };
    tracing::debug!(delta_id = %delta.delta_id, key = %delta.key, "delta delivered");
    Ok(Handled {
        result,
        status: StatusCode::ACCEPTED,
        body: None,
    })
}

/// What to deliver after confirmation: the delta, why main does not show the webhook's change
/// (when it does not), and the cascade main's newer object calls for.
type ToDeliver = (Box<RegistryDelta>, Option<String>, Option<Trigger>);

/// Asks NetBox's main about a webhook that does not say where its change was made: the delta to
/// deliver, or the answer when there is none (not on main; held because NetBox did not answer
/// within `webhook.confirm_timeout`).
async fn confirm(
    app: &AppState,
    event: &WebhookEvent,
    delta: Box<RegistryDelta>,
    body: &VerifiedBody,
) -> Result<Result<ToDeliver, Handled>, WebhookError> {
    let confirmer = &app.confirmer;
    // While NetBox is away (or the type waits), the webhook is held without asking: each would
    // otherwise cost NetBox a request and the sender `webhook.confirm_timeout`.
    let (why, asked) = match confirmer.holds_at_once(event.object_type.name) {
        Some(why) => (why, false),
        None => match tokio::time::timeout(confirmer.timeout(), confirmer.confirm(event, &delta))
            .await
        {
            Ok(Ok(Confirmed::AsSent)) => return Ok(Ok((delta, None, None))),
            Ok(Ok(Confirmed::Main {
                delta,
                differs,
                newer,
            })) => return Ok(Ok((delta, differs, newer))),
            Ok(Ok(Confirmed::NotOnMain(reason))) => return Ok(Err(ignored("not_on_main", reason))),
            Ok(Err(e)) => {
                confirmer.failed(event.object_type.name, &e);
                (e.to_string(), true)
            }
            Err(_) => {
                let e = Unconfirmed::Api(ApiError::Transport {
                    what: event.object_type.name.to_string(),
                    message: format!(
                        "no answer within {:?} (webhook.confirm_timeout)",
                        confirmer.timeout()
                    ),
                });
                confirmer.failed(event.object_type.name, &e);
                (e.to_string(), true)
            }
        },
    };
    // A 202 promises publication: one that could never fit a NATS message is answered 413 now.
    app.delivery.fits(&delta)?;
    confirmer
        .hold(body.bytes())
        .await
        .map_err(WebhookError::NotHeld)?;
    tracing::warn!(reason = %why, "NetBox's main could not confirm the webhook now; held");
    Ok(Err(Handled {
        result: "held",
        status: StatusCode::ACCEPTED,
        body: Some(json!({
            "status": "accepted",
            "deltas": 0,
            "confirm": "held",
            "asked_main": asked,
            "reason": why,
        })),
    }))
}

/// A webhook at the revision the registry already shows, with another entry: the object is read
/// again from NetBox, through the cascade queue (kept before the 202), and what NetBox shows is
/// published.
async fn reread(cascades: &Cascades, delta: &RegistryDelta) -> Result<Handled, WebhookError> {
    let object_type = ObjectType::from_kind(delta.kind);
    let reread = Trigger::reread(object_type.name, delta.object_id);
    cascades.push(reread).await.map_err(DeliveryError::from)?;
    Ok(Handled {
        result: "reread",
        status: StatusCode::ACCEPTED,
        body: Some(json!({"status": "accepted", "deltas": 0, "reread": "queued"})),
    })
}

/// A parent that is only a trigger (device role, platform, tag, IPAM role): 202 when its
/// dependents will be pulled, 200 when there is nothing to do.
async fn cascade_only(app: &AppState, trigger: Option<Trigger>) -> Result<Handled, WebhookError> {
    let (Some(cascades), Some(trigger)) = (&app.cascades, trigger) else {
        let reason = match app.cascades {
            Some(_) => "no value its dependents show changed",
            None => "cascades are off",
        };
        return Ok(ignored("ignored", reason.to_string()));
    };
    cascades.push(trigger).await.map_err(DeliveryError::from)?;
    Ok(Handled {
        result: "cascade",
        status: StatusCode::ACCEPTED,
        body: Some(json!({"status": "accepted", "deltas": 0, "cascade": "queued"})),
    })
}

/// Counts a clamped revision, and logs it once per key (a bounded set of keys: past it, again).
fn clamped(app: &AppState, delta: &RegistryDelta, stated: DateTime<Utc>) {
    telemetry::revision_clamped();
    let mut logged = app.clamped_keys.lock().unwrap_or_else(|e| e.into_inner());
    if logged.len() >= 10_000 {
        logged.clear();
    }
    if logged.insert(delta.key.clone()) {
        tracing::warn!(key = %delta.key, stated = %stated, clamped_to = %delta.revision,
            "a revision ahead of its event or of the relay's clock was clamped (webhook.max_clock_skew)");
    }
}

/// The whole body, within `webhook.max_body_bytes` and `server.request_timeout`. The timeout
/// bounds the whole body: tower-http's body timeout starts again at every frame, so a body sent
/// one byte every second would otherwise hold its connection for ever.
async fn read_body(app: &AppState, body: Body) -> Result<Bytes, WebhookError> {
    let read = axum::body::to_bytes(body, app.max_body_bytes);
    match tokio::time::timeout(app.request_timeout, read).await {
        Err(_) => Err(WebhookError::BodyTimeout(app.request_timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if caused_by::<http_body_util::LengthLimitError>(&e) => {
            Err(WebhookError::TooLarge {
                limit: app.max_body_bytes,
            })
        }
        Ok(Err(e)) if caused_by::<tower_http::timeout::TimeoutError>(&e) => {
            Err(WebhookError::BodyTimeout(app.request_timeout))
        }
        Ok(Err(e)) => Err(WebhookError::Body(e.to_string())),
    }
}

fn caused_by<E: std::error::Error + 'static>(error: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Puts what the webhook is about on its span, and so on every line logged about it.
fn record(event: &WebhookEvent) {
    let span = tracing::Span::current();
    if let Some(request_id) = &event.request_id {
        span.record("request_id", request_id.as_str());
    }
    span.record("object_type", event.object_type.name);
    span.record("id", event.object_id);
    span.record("event", event.event.as_str());
}

fn ignored(result: &'static str, reason: String) -> Handled {
    Handled {
        result,
        status: StatusCode::OK,
        body: Some(json!({"status": "ignored", "reason": reason})),
    }
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
