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
pub const RECONCILE_PASSES: &str = "netbox_relay_reconcile_passes_total";
pub const RECONCILE_LISTED: &str = "netbox_relay_reconcile_objects_listed_total";
pub const RECONCILE_FETCHED_IN_FULL: &str = "netbox_relay_reconcile_objects_fetched_in_full_total";
pub const NETBOX_REQUESTS: &str = "netbox_relay_netbox_requests_total";
pub const REVISIONS_CLAMPED: &str = "netbox_relay_revisions_clamped_total";
pub const DEAD_LETTERED: &str = "netbox_relay_deltas_dead_lettered_total";
pub const DEAD_LETTERS: &str = "netbox_relay_dead_letters";
pub const STORE_FAULTS: &str = "netbox_relay_state_write_failures_total";
pub const STORE_OK: &str = "netbox_relay_state_writable";
pub const NATS_CONNECTED: &str = "netbox_relay_nats_connected";
pub const CONNECTIONS: &str = "netbox_relay_http_connections";
pub const REQUESTS_IN_FLIGHT: &str = "netbox_relay_http_requests_in_flight";
pub const CONNECTIONS_CLOSED: &str = "netbox_relay_http_connections_closed_total";
pub const RESTARTS: &str = "netbox_relay_restarts_total";
pub const CONFLICTS: &str = "netbox_relay_publish_conflicts_total";
pub const CASCADES: &str = "netbox_relay_cascades_total";
pub const CASCADES_WAITING: &str = "netbox_relay_cascades_waiting";
pub const SD_REQUESTS: &str = "netbox_relay_sd_requests_total";
pub const SD_TARGETS: &str = "netbox_relay_sd_targets";
pub const CASCADE_PULLED: &str = "netbox_relay_cascade_objects_pulled_total";
pub const CONFIRMATIONS: &str = "netbox_relay_confirmations_total";
pub const HELD: &str = "netbox_relay_webhooks_held";
pub const UNCONFIRMED: &str = "netbox_relay_webhooks_unconfirmed";
pub const FOREIGN: &str = "netbox_relay_foreign_messages_total";
pub const DELETES_WITHHELD: &str = "netbox_relay_reconcile_deletes_withheld_total";
pub const KEY_READS: &str = "netbox_relay_stream_key_reads_total";
pub const KEYS_LEARNED: &str = "netbox_relay_stream_keys_learned_total";

/// Webhook answers, by the `result` label: the 202s, the 200s and the errors.
pub const WEBHOOK_RESULTS: [&str; 15] = [
    "published",
    "spooled",
    "cascade",
    "held",
    "ignored",
    "branch",
    "not_on_main",
    "stale",
    "duplicate",
    "bad_signature",
    "bad_payload",
    "too_large",
    "unsupported_media_type",
    "unavailable",
    "timeout",
];

/// The background parts that are started again when they panic (`part` of [`RESTARTS`]): each
/// is supervised under its name here, so that its counter is the one exported from the start.
pub mod part {
    pub const STREAM_KEEPER: &str = "stream keeper";
    pub const CONFIRMER: &str = "confirmer";
    pub const CASCADES: &str = "cascades";
    pub const SCHEDULE: &str = "reconcile schedule";
    pub const DRAINER: &str = "spool drainer";
    pub const SERVICE_DISCOVERY: &str = "service discovery";
}

pub const PARTS: [&str; 6] = [
    part::STREAM_KEEPER,
    part::CONFIRMER,
    part::CASCADES,
    part::SCHEDULE,
    part::DRAINER,
    part::SERVICE_DISCOVERY,
];
/// Why the server closed a connection (`reason` of [`CONNECTIONS_CLOSED`]).
pub const CLOSE_REASONS: [&str; 5] = [
    "refused",
    "evicted",
    "header_timeout",
    "idle_timeout",
    "tls_handshake",
];
/// How a cascade ended (`result` of [`CASCADES`]).
pub const CASCADE_RESULTS: [&str; 3] = ["succeeded", "retried", "failed"];

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
    keep_up(handle.clone());
    Some(handle)
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample until something folds it into the buckets: a
/// scrape of `/metrics` does, and so does this thread, so that a relay nobody scrapes does not
/// hold one sample per webhook for ever. A thread rather than a task: the recorder may be
/// installed before (or without) a runtime.
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "histograms are folded only when /metrics is scraped: no upkeep thread");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(WEBHOOKS, Unit::Count, "Webhooks answered, by result");
    describe_counter!(
        RESTARTS,
        Unit::Count,
        "Background parts that panicked and were started again, by part"
    );
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
        SD_REQUESTS,
        Unit::Count,
        "GET /sd/prometheus requests, by result (ok, bad_query, unauthorized, loading, busy), and answers abandoned because the client did not read them (write_timeout)"
    );
    describe_gauge!(
        SD_TARGETS,
        Unit::Count,
        "Target groups service discovery holds (entries with an address)"
    );
    describe_counter!(
        CASCADES,
        Unit::Count,
        "Cascade pulls of a changed parent's dependents, by result (succeeded, retried, failed)"
    );
    describe_counter!(
        CASCADE_PULLED,
        Unit::Count,
        "Objects pulled by cascades (their deltas count in netbox_relay_deltas_published_total{origin=\"cascade\"})"
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
        RECONCILE_PASSES,
        Unit::Count,
        "Reconcile runs started, by pass (full: every object fetched in full; cheap: ids and last_updated listed)"
    );
    describe_counter!(
        RECONCILE_LISTED,
        Unit::Count,
        "Objects NetBox listed to reconcile runs"
    );
    describe_counter!(
        RECONCILE_FETCHED_IN_FULL,
        Unit::Count,
        "Objects NetBox serialized in full for reconcile runs (all listed ones in a full pass)"
    );
    describe_counter!(
        NETBOX_REQUESTS,
        Unit::Count,
        "NetBox REST API requests, by status code"
    );
    describe_counter!(
        REVISIONS_CLAMPED,
        Unit::Count,
        "Revisions later than their event or the relay's clock plus webhook.max_clock_skew, clamped"
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Spooled deltas JetStream refused (too large, no stream, bad request) or unreadable rows, moved to the dead letters, by reason"
    );
    describe_gauge!(DEAD_LETTERS, Unit::Count, "Deltas in the dead letters");
    describe_counter!(
        STORE_FAULTS,
        Unit::Count,
        "Failed writes to the state file (disk full, I/O error)"
    );
    describe_gauge!(
        STORE_OK,
        Unit::Count,
        "1 while the state file takes writes, 0 after a failed write until it recovers"
    );
    describe_gauge!(NATS_CONNECTED, Unit::Count, "1 while connected to NATS");
    describe_gauge!(
        CASCADES_WAITING,
        Unit::Count,
        "Parents whose cascade waits for its turn or its retry (one each, however often queued)"
    );
    describe_gauge!(CONNECTIONS, Unit::Count, "Open HTTP connections");
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        Unit::Count,
        "HTTP requests inside a handler (a scrape of /metrics counts itself)"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "HTTP connections closed by the relay, by reason (header_timeout, idle_timeout, evicted, refused)"
    );
    // Known label values start at zero, so that rate() and alerts see them from the start.
    for result in WEBHOOK_RESULTS {
        counter!(WEBHOOKS, "result" => result).absolute(0);
    }
    for result in ["succeeded", "partial", "failed"] {
        counter!(RECONCILE_RUNS, "result" => result).absolute(0);
    }
    for pass in ["full", "cheap"] {
        counter!(RECONCILE_PASSES, "pass" => pass).absolute(0);
    }
    counter!(RECONCILE_LISTED).absolute(0);
    counter!(RECONCILE_FETCHED_IN_FULL).absolute(0);
    gauge!(SPOOL_DEPTH).set(0.0);
    counter!(REVISIONS_CLAMPED).absolute(0);
    for reason in DEAD_LETTER_REASONS {
        counter!(DEAD_LETTERED, "reason" => reason).absolute(0);
    }
    counter!(STORE_FAULTS).absolute(0);
    gauge!(STORE_OK).set(1.0);
    gauge!(REQUESTS_IN_FLIGHT).set(0.0);
    describe_counter!(
        CONFLICTS,
        Unit::Count,
        "Publishes JetStream refused because the key's last message had changed (another relay published to it); each is re-read and decided again"
    );
    counter!(CONFLICTS).absolute(0);
    describe_counter!(
        CONFIRMATIONS,
        Unit::Count,
        "Webhooks checked against NetBox's main (webhook.confirm), by result (on_main; newer_on_main: main has a later save, published in its place; not_on_main; failed)"
    );
    for result in CONFIRMATION_RESULTS {
        counter!(CONFIRMATIONS, "result" => result).absolute(0);
    }
    describe_gauge!(
        HELD,
        Unit::Count,
        "Webhooks held until NetBox's main can confirm them (NetBox did not answer in time)"
    );
    gauge!(HELD).set(0.0);
    describe_gauge!(
        UNCONFIRMED,
        Unit::Count,
        "Held webhooks NetBox's main could not confirm at their last try, by object type and reason (forbidden, not_found, unreadable, rejected, untranslatable); they wait while the others go on"
    );
    // The likeliest reason is there from the start for every type; the others when they happen.
    for object_type in crate::netbox::object_type::ALL {
        gauge!(UNCONFIRMED, "object_type" => object_type.name, "reason" => "forbidden").set(0.0);
    }
    describe_counter!(
        FOREIGN,
        Unit::Count,
        "Keys whose last message on the stream was no delta (published by hand or by another tool), published over"
    );
    counter!(FOREIGN).absolute(0);
    describe_counter!(
        KEY_READS,
        Unit::Count,
        "Reads of one key's last message from the stream (after a conflict, a spooled delta whose key's sequence is not known, a key another relay published)"
    );
    counter!(KEY_READS).absolute(0);
    describe_counter!(
        KEYS_LEARNED,
        Unit::Count,
        "Keys read from the stream in one pass (last message per subject) and remembered: a relay with a new state file, or many keys another relay published"
    );
    counter!(KEYS_LEARNED).absolute(0);
    describe_counter!(
        DELETES_WITHHELD,
        Unit::Count,
        "Deletes a reconcile run withheld (more than reconcile.max_delete_fraction of a type); a forced run applies them"
    );
    counter!(DELETES_WITHHELD).absolute(0);
    for part in PARTS {
        counter!(RESTARTS, "part" => part).absolute(0);
    }
    for reason in CLOSE_REASONS {
        counter!(CONNECTIONS_CLOSED, "reason" => reason).absolute(0);
    }
    for result in CASCADE_RESULTS {
        counter!(CASCADES, "result" => result).absolute(0);
    }
    // NetBox not answering is what an alert watches; HTTP codes appear as they come.
    counter!(NETBOX_REQUESTS, "status" => "error").absolute(0);
}

pub fn deletes_withheld(count: u64) {
    counter!(DELETES_WITHHELD).increment(count);
}

pub fn key_read() {
    counter!(KEY_READS).increment(1);
}

pub fn keys_learned(count: u64) {
    counter!(KEYS_LEARNED).increment(count);
}

pub fn foreign_message() {
    counter!(FOREIGN).increment(1);
}

/// The `result` label of [`CONFIRMATIONS`].
pub const CONFIRMATION_RESULTS: [&str; 4] = ["on_main", "newer_on_main", "not_on_main", "failed"];

pub fn confirmed(result: &'static str) {
    counter!(CONFIRMATIONS, "result" => result).increment(1);
}

pub fn held(count: u64) {
    gauge!(HELD).set(count as f64);
}

/// Held webhooks of `object_type` that could not be confirmed for `reason`.
pub fn unconfirmed(object_type: &'static str, reason: &'static str, count: usize) {
    gauge!(UNCONFIRMED, "object_type" => object_type, "reason" => reason).set(count as f64);
}

/// The `reason` label of [`DEAD_LETTERED`].
pub const DEAD_LETTER_REASONS: [&str; 2] = ["refused", "unreadable"];

pub fn publish_conflict() {
    counter!(CONFLICTS).increment(1);
}

pub fn revision_clamped() {
    counter!(REVISIONS_CLAMPED).increment(1);
}

pub fn dead_lettered(reason: &'static str) {
    counter!(DEAD_LETTERED, "reason" => reason).increment(1);
}

pub fn dead_letters(count: u64) {
    gauge!(DEAD_LETTERS).set(count as f64);
}

pub fn store_fault() {
    counter!(STORE_FAULTS).increment(1);
    gauge!(STORE_OK).set(0.0);
}

pub fn store_recovered() {
    gauge!(STORE_OK).set(1.0);
}

pub fn nats_connected(up: bool) {
    gauge!(NATS_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

pub fn connections(open: usize) {
    gauge!(CONNECTIONS).set(open as f64);
}

/// Counts a request in [`REQUESTS_IN_FLIGHT`] while it lives, however its handler ends.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        gauge!(REQUESTS_IN_FLIGHT).increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(REQUESTS_IN_FLIGHT).decrement(1.0);
    }
}

pub fn connection_closed(reason: &'static str) {
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
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

/// A background part (`part`: spool drainer, stream keeper, reconcile schedule) panicked and was
/// started again.
pub fn restarted(part: &'static str) {
    counter!(RESTARTS, "part" => part).increment(1);
}

pub fn sd_answered(result: &'static str) {
    counter!(SD_REQUESTS, "result" => result).increment(1);
}

pub fn sd_targets(count: usize) {
    gauge!(SD_TARGETS).set(count as f64);
}

pub fn cascades_waiting(count: usize) {
    gauge!(CASCADES_WAITING).set(count as f64);
}

pub fn cascade_ran(result: &'static str, pulled: u64) {
    counter!(CASCADES, "result" => result).increment(1);
    counter!(CASCADE_PULLED).increment(pulled);
}

pub fn reconcile_pass(pass: &'static str) {
    counter!(RECONCILE_PASSES, "pass" => pass).increment(1);
}

/// One object type's objects listed, and of them fetched in full.
pub fn reconcile_objects(listed: u64, in_full: u64) {
    counter!(RECONCILE_LISTED).increment(listed);
    counter!(RECONCILE_FETCHED_IN_FULL).increment(in_full);
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
