//! What held webhooks wait for, and until when. A failure to confirm is blamed on what it holds
//! up: NetBox as a whole (down, slow, 5xx: everything waits, and new webhooks are held at once
//! instead of each waiting `webhook.confirm_timeout`), one object type (403: the token may not
//! read it; 404: no such endpoint; an unreadable page), or one webhook (its object does not
//! translate; a 4xx about this request). A type or a webhook that waits never delays the others.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::netbox::client::ApiError;
use crate::telemetry;

/// The first wait after a failure, doubled after each one that follows, up to [`LONGEST`].
const FIRST: Duration = Duration::from_secs(1);
/// NetBox as a whole is asked again at least this often: the back-off of an outage.
const LONGEST_AWAY: Duration = Duration::from_secs(15);
/// A type or webhook that cannot be confirmed is tried again at least this often.
const LONGEST: Duration = Duration::from_secs(300);

/// What a failure to confirm holds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Everything,
    Type,
    Row,
}

/// Why main could not be asked, or could not answer usefully.
#[derive(Debug, thiserror::Error)]
pub enum Unconfirmed {
    /// `/api/status/` (NetBox's version and plugins), before NetBox answered it once.
    #[error("NetBox's status: {0}")]
    Status(ApiError),
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Main's object cannot be published: the relay would otherwise publish the webhook's
    /// (perhaps a branch's) in its place.
    #[error("{what} {id} as NetBox's main serves it does not translate: {message}")]
    Untranslatable {
        what: &'static str,
        id: u64,
        message: String,
    },
}

/// A failure to confirm as the waits see it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub blame: Blame,
    /// The metric's `reason` label.
    pub label: &'static str,
    pub reason: String,
}

impl Unconfirmed {
    pub fn failure(&self) -> Failure {
        Failure {
            blame: self.blame(),
            label: self.label(),
            reason: self.to_string(),
        }
    }

    fn blame(&self) -> Blame {
        match self {
            Unconfirmed::Status(_) => Blame::Everything,
            Unconfirmed::Untranslatable { .. } => Blame::Row,
            Unconfirmed::Api(e) => match e {
                ApiError::Forbidden { .. } | ApiError::Decode { .. } => Blame::Type,
                ApiError::Status { status: 404, .. } => Blame::Type,
                ApiError::Status { status, .. }
                    if (400..500).contains(status) && ![408, 429].contains(status) =>
                {
                    Blame::Row
                }
                _ => Blame::Everything,
            },
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Unconfirmed::Untranslatable { .. } => "untranslatable",
            Unconfirmed::Api(ApiError::Forbidden { .. }) => "forbidden",
            Unconfirmed::Api(ApiError::Status { status: 404, .. }) => "not_found",
            Unconfirmed::Api(ApiError::Decode { .. }) => "unreadable",
            Unconfirmed::Api(ApiError::Status { status, .. }) if *status < 500 => "rejected",
            _ => "unavailable",
        }
    }
}

#[derive(Debug, Clone)]
struct Wait {
    label: &'static str,
    reason: String,
    since: Instant,
    failures: u32,
    until: Instant,
}

impl Wait {
    fn first(label: &'static str, reason: String, now: Instant) -> Wait {
        Wait {
            label,
            reason,
            since: now,
            failures: 0,
            until: now,
        }
    }

    /// One more failure: waits twice as long as after the last one, up to `longest`.
    fn failed(&mut self, label: &'static str, reason: String, now: Instant, longest: Duration) {
        self.failures += 1;
        let wait = FIRST.saturating_mul(1 << (self.failures - 1).min(16));
        self.until = now + wait.min(longest);
        self.label = label;
        self.reason = reason;
    }

    /// Whether this failure is worth a log line: the first, then at each doubling.
    fn worth_saying(&self) -> bool {
        self.failures.is_power_of_two()
    }
}

/// Held webhooks of one type that wait, and why: what `/readyz` and the metric show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stuck {
    pub object_type: &'static str,
    pub reason: String,
    /// The metric's `reason` label: forbidden, not_found, unreadable, rejected, untranslatable.
    #[serde(rename = "cause")]
    pub label: &'static str,
    pub held: usize,
    /// Since the first failure of the type (or of its oldest waiting webhook).
    pub waiting_seconds: u64,
}

#[derive(Default)]
pub struct Waits {
    /// NetBox as a whole, or the state file, or NATS through the spool.
    everything: Option<Wait>,
    types: HashMap<&'static str, Wait>,
    rows: HashMap<u64, (&'static str, Wait)>,
    /// The last round's tally, for `/readyz` and the metric.
    stuck: Vec<Stuck>,
    /// Metric labels set before, to be set to 0 once nothing waits under them.
    shown: Vec<(&'static str, &'static str)>,
}

impl Waits {
    /// Why everything waits, while it does.
    pub fn everything(&self, now: Instant) -> Option<(&str, Instant)> {
        let wait = self.everything.as_ref()?;
        (wait.until > now).then_some((wait.reason.as_str(), wait.until))
    }

    /// Why a new webhook of `object_type` is to be held without asking NetBox: NetBox away, or
    /// its type waiting. Asking would only cost it the wait.
    pub fn holds_at_once(&self, object_type: &str) -> Option<String> {
        if let Some(wait) = &self.everything {
            return Some(wait.reason.clone());
        }
        self.types.get(object_type).map(|w| w.reason.clone())
    }

    /// Whether held webhook `id` of `object_type` is to wait now, and the label it waits under.
    pub fn waiting(&self, id: u64, object_type: &str, now: Instant) -> Option<&'static str> {
        let by_type = self.types.get(object_type).filter(|w| w.until > now);
        let by_row = self.rows.get(&id).map(|(_, w)| w).filter(|w| w.until > now);
        by_type.or(by_row).map(|w| w.label)
    }

    /// NetBox answered a confirmation of `object_type`.
    pub fn answered(&mut self, object_type: &str) {
        if self.everything.take().is_some() {
            tracing::info!("NetBox's main answers again: held webhooks are being confirmed");
        }
        if let Some(wait) = self.types.remove(object_type) {
            tracing::info!(
                object_type,
                after_failures = wait.failures,
                "held webhooks of this type can be confirmed again"
            );
        }
    }

    /// Held webhook `id` was confirmed (or released): it waits for nothing more.
    pub fn settled(&mut self, id: u64) {
        self.rows.remove(&id);
    }

    /// A confirmation failed; `row` is the held webhook's number once it has one. Failures of
    /// one request (a batch of a type) count once.
    pub fn failed(
        &mut self,
        row: Option<u64>,
        object_type: &'static str,
        failure: &Failure,
        now: Instant,
    ) {
        let Failure {
            blame,
            label,
            reason,
        } = failure.clone();
        let (wait, longest) = match (blame, row) {
            (Blame::Everything, _) => (
                self.everything
                    .get_or_insert_with(|| Wait::first(label, reason.clone(), now)),
                LONGEST_AWAY,
            ),
            (Blame::Type, _) => (
                self.types
                    .entry(object_type)
                    .or_insert_with(|| Wait::first(label, reason.clone(), now)),
                LONGEST,
            ),
            (Blame::Row, Some(id)) => (
                &mut self
                    .rows
                    .entry(id)
                    .or_insert_with(|| (object_type, Wait::first(label, reason.clone(), now)))
                    .1,
                LONGEST,
            ),
            // Not held yet: the round that takes it up gives it a wait of its own.
            (Blame::Row, None) => return,
        };
        if wait.failures > 0 && wait.until > now {
            return;
        }
        wait.failed(label, reason, now, longest);
        if !wait.worth_saying() {
            return;
        }
        let (error, failures, retry_in) = (&wait.reason, wait.failures, wait.until - now);
        match blame {
            Blame::Everything => tracing::warn!(%error, ?retry_in,
                "held webhooks cannot be confirmed now; new ones are held at once and all are confirmed, oldest first, once this clears"),
            Blame::Type => tracing::warn!(object_type, %error, failures, ?retry_in,
                "held webhooks of this type cannot be confirmed; the others go on (`netbox-relay held` lists them; README: netbox-branching)"),
            Blame::Row => tracing::warn!(object_type, row, %error, failures, ?retry_in,
                "a held webhook cannot be confirmed; the others go on (`netbox-relay held` lists them)"),
        }
    }

    /// When the next waiting webhook is due, if any waits.
    pub fn next_due(&self) -> Option<Instant> {
        let types = self.types.values();
        let rows = self.rows.values().map(|(_, w)| w);
        types.chain(rows).map(|w| w.until).min()
    }

    /// A round's tally of the held webhooks that wait, by type: shown by `/readyz` and the metric.
    pub fn tally(&mut self, waiting: &HashMap<(&'static str, &'static str), (usize, u64)>) {
        let now = Instant::now();
        let mut stuck: Vec<Stuck> = waiting
            .iter()
            .map(|(&(object_type, label), &(held, row))| {
                let wait = self
                    .types
                    .get(object_type)
                    .or_else(|| self.rows.get(&row).map(|(_, w)| w));
                Stuck {
                    object_type,
                    label,
                    reason: wait.map(|w| w.reason.clone()).unwrap_or_default(),
                    held,
                    waiting_seconds: wait.map_or(0, |w| (now - w.since).as_secs()),
                }
            })
            .collect();
        stuck.sort_by(|a, b| (a.object_type, a.label).cmp(&(b.object_type, b.label)));
        for &(object_type, label) in &self.shown {
            telemetry::unconfirmed(object_type, label, 0);
        }
        self.shown = stuck.iter().map(|s| (s.object_type, s.label)).collect();
        for s in &stuck {
            telemetry::unconfirmed(s.object_type, s.label, s.held);
        }
        self.stuck = stuck;
    }

    pub fn stuck(&self) -> &[Stuck] {
        &self.stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden() -> Failure {
        Unconfirmed::Api(ApiError::Forbidden {
            what: "ipam.service".into(),
            detail: "You do not have permission to perform this action.".into(),
            hint: "if the token is valid, it needs the permission ipam.view_service".into(),
        })
        .failure()
    }

    fn away() -> Failure {
        Unconfirmed::Api(ApiError::Transport {
            what: "dcim.device".into(),
            message: "connection refused".into(),
        })
        .failure()
    }

    #[test]
    fn a_type_that_cannot_be_read_waits_alone_and_a_batch_of_its_failures_counts_once() {
        let (mut waits, now) = (Waits::default(), Instant::now());
        for row in 1..=80 {
            waits.failed(Some(row), "ipam.service", &forbidden(), now);
        }
        assert_eq!(waits.waiting(1, "ipam.service", now), Some("forbidden"));
        assert_eq!(waits.waiting(81, "dcim.device", now), None);
        assert!(waits.holds_at_once("ipam.service").is_some());
        assert!(waits.holds_at_once("dcim.device").is_none());
        // Eighty refusals of one request: the first wait, not the longest.
        assert_eq!(waits.next_due(), Some(now + FIRST));
        waits.answered("ipam.service");
        assert_eq!(waits.waiting(1, "ipam.service", now), None);
    }

    #[test]
    fn netbox_away_holds_everything_and_backs_off_up_to_its_longest() {
        let (mut waits, mut now) = (Waits::default(), Instant::now());
        for _ in 0..10 {
            waits.failed(None, "dcim.device", &away(), now);
            let (_, until) = waits.everything(now).unwrap();
            now = until;
        }
        waits.failed(None, "dcim.device", &away(), now);
        let (reason, until) = waits.everything(now).unwrap();
        assert!(reason.contains("connection refused"), "{reason}");
        assert_eq!(until - now, LONGEST_AWAY);
        assert!(waits.holds_at_once("ipam.prefix").is_some());
        waits.answered("dcim.device");
        assert!(waits.everything(now).is_none());
        assert!(waits.holds_at_once("ipam.prefix").is_none());
    }

    #[test]
    fn an_untranslatable_object_makes_its_row_wait_not_its_type() {
        let (mut waits, now) = (Waits::default(), Instant::now());
        let untranslatable = Unconfirmed::Untranslatable {
            what: "dcim.device",
            id: 5,
            message: "no revision".into(),
        };
        waits.failed(Some(7), "dcim.device", &untranslatable.failure(), now);
        assert_eq!(waits.waiting(7, "dcim.device", now), Some("untranslatable"));
        assert_eq!(waits.waiting(8, "dcim.device", now), None);
        assert!(waits.holds_at_once("dcim.device").is_none());
        waits.settled(7);
        assert_eq!(waits.waiting(7, "dcim.device", now), None);
    }
}
