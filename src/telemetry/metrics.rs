//! The relay's Prometheus metrics: one function per thing that happened, so that names, labels
//! and units are written in one place. Names follow Prometheus conventions: `netbox_relay_`
//! prefix, the unit in the name, `_total` on counters.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::delta::RegistryDelta;

pub const WEBHOOKS: &str = "netbox_relay_webhooks_total";
pub const WEBHOOK_DURATION: &str = "netbox_relay_webhook_duration_seconds";
pub const DELTAS: &str = "netbox_relay_deltas_published_total";
pub const PUBLISH_DURATION: &str = "netbox_relay_publish_duration_seconds";
pub const SPOOL_DEPTH: &str = "netbox_relay_spool_depth";
pub const SPOOL_OLDEST: &str = "netbox_relay_spool_oldest_seconds";
pub const RECONCILE_RUNS: &str = "netbox_relay_reconcile_runs_total";
pub const RECONCILE_DURATION: &str = "netbox_relay_reconcile_duration_seconds";
pub const NETBOX_REQUESTS: &str = "netbox_relay_netbox_requests_total";

/// Webhook answers, by the `result` label: the 202s, the 200s and the errors.
pub const WEBHOOK_RESULTS: [&str; 10] = [
    "published",
    "spooled",
    "ignored",
    "stale",
    "duplicate",
    "bad_signature",
    "bad_payload",
    "too_large",
    "unsupported_media_type",
    "unavailable",
];

/// A webhook's whole handling: from the request to the answer, JetStream ack included.
const FAST_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const RUN_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(WEBHOOK_DURATION.into()), &FAST_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(PUBLISH_DURATION.into()), &FAST_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(RECONCILE_DURATION.into()), &RUN_BUCKETS)
        });
    let handle = builder
        .and_then(|b| b.install_recorder())
        .map_err(|e| tracing::warn!(error = %e, "no /metrics: the recorder could not be installed"))
        .ok()?;
    describe();
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(WEBHOOKS, Unit::Count, "Webhooks answered, by result");
    describe_histogram!(
        WEBHOOK_DURATION,
        Unit::Seconds,
        "Time from a webhook's arrival to its answer (JetStream ack or spool fsync included)"
    );
    describe_counter!(
        DELTAS,
        Unit::Count,
        "Deltas acknowledged by JetStream, by kind, op and origin"
    );
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time for JetStream to acknowledge one delta"
    );
    describe_gauge!(
        SPOOL_DEPTH,
        Unit::Count,
        "Deltas in the spool, waiting for NATS"
    );
    describe_gauge!(
        SPOOL_OLDEST,
        Unit::Seconds,
        "Age of the oldest spooled delta"
    );
    describe_counter!(
        RECONCILE_RUNS,
        Unit::Count,
        "Reconcile runs ended, by result"
    );
    describe_histogram!(
        RECONCILE_DURATION,
        Unit::Seconds,
        "Duration of reconcile runs"
    );
    describe_counter!(
        NETBOX_REQUESTS,
        Unit::Count,
        "NetBox REST API requests, by status code"
    );
    // Known label values start at zero, so that rate() and alerts see them from the start.
    for result in WEBHOOK_RESULTS {
        counter!(WEBHOOKS, "result" => result).absolute(0);
    }
    for result in ["succeeded", "partial", "failed"] {
        counter!(RECONCILE_RUNS, "result" => result).absolute(0);
    }
    gauge!(SPOOL_DEPTH).set(0.0);
}

pub fn webhook_answered(result: &'static str, elapsed: Duration) {
    counter!(WEBHOOKS, "result" => result).increment(1);
    histogram!(WEBHOOK_DURATION).record(elapsed.as_secs_f64());
}

pub fn delta_published(delta: &RegistryDelta, elapsed: Duration) {
    let (kind, op, origin) = (
        delta.kind.as_str(),
        delta.op.as_str(),
        delta.origin.as_str(),
    );
    counter!(DELTAS, "kind" => kind, "op" => op, "origin" => origin).increment(1);
    histogram!(PUBLISH_DURATION).record(elapsed.as_secs_f64());
}

pub fn spool(depth: u64, oldest_seconds: f64) {
    gauge!(SPOOL_DEPTH).set(depth as f64);
    gauge!(SPOOL_OLDEST).set(oldest_seconds);
}

pub fn reconcile_ended(result: &'static str, elapsed: Duration) {
    counter!(RECONCILE_RUNS, "result" => result).increment(1);
    histogram!(RECONCILE_DURATION).record(elapsed.as_secs_f64());
}

/// `status` is the HTTP status code, or `error` when NetBox did not answer.
pub fn netbox_request(status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!(NETBOX_REQUESTS, "status" => status).increment(1);
}
