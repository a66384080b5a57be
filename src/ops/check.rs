//! `netbox-relay check`: one line per thing the relay depends on, OK or FAIL with a fix.

use std::fmt;
use std::path::Path;

use crate::config::{Config, Confirm};
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::parents::PARENTS;
use crate::netbox::ObjectType;
use crate::publish;
use crate::state::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    /// Not configured, and not needed for what is configured.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Line {
    pub status: Status,
    pub what: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl Line {
    fn ok(what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            status: Status::Ok,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn skip(what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            status: Status::Skip,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            status: Status::Fail,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        write!(f, "{status:<4}  {:<38}  {}", self.what, self.detail)?;
        match &self.fix {
            Some(fix) => write!(f, "  -> fix: {fix}"),
            None => Ok(()),
        }
    }
}

/// What the configuration's line is called.
pub const CONFIGURATION: &str = "configuration";

/// Runs every check; the configuration was loaded as the commands that take no webhooks load
/// it, and is judged here as `serve` judges it too.
pub async fn run(config: &Config) -> Vec<Line> {
    let mut lines = vec![configuration(config)];
    lines.extend(netbox(config).await);
    lines.push(nats(config).await);
    lines.push(state(&config.state.path));
    lines
}

async fn netbox(config: &Config) -> Vec<Line> {
    let client = match NetboxClient::new(&config.netbox) {
        Ok(client) => client.without_retries(),
        Err(ApiError::NotConfigured) => {
            return vec![
                Line::skip("netbox", "netbox.url / netbox.token not set: no reconciliation"),
                Line::skip("cascade", "netbox.url / netbox.token not set: cascades are off (a renamed site or tag re-labels its dependents at the next reconcile)"),
            ]
        }
        Err(e) => return vec![Line::fail("netbox", e.to_string(), "correct the named key")],
    };
    let url = client.base_url().to_string();
    let (version, branching_plugin) = match client.status().await {
        Ok(status) => (status.version, status.branching),
        Err(ApiError::Forbidden { detail, .. }) => {
            return vec![
                Line::ok("netbox reachable", format!("{url} answers")),
                Line::fail(
                    "netbox token",
                    format!("NetBox answered 403: {detail}"),
                    "set netbox.token (or netbox.token_file) to a valid, enabled API token",
                ),
            ]
        }
        Err(e) => {
            let fix = "check netbox.url, that NetBox is up, and TLS (netbox.ca_file)";
            return vec![Line::fail("netbox reachable", e.to_string(), fix)];
        }
    };
    let mut lines = vec![
        Line::ok(
            "netbox reachable",
            format!("{url}, NetBox {}.{}", version.0, version.1),
        ),
        Line::ok("netbox token", "accepted"),
    ];
    let types = config.object_types().unwrap_or_default();
    for object_type in types {
        lines.push(can_read(&client, object_type, version).await);
    }
    lines.push(cascade(config));
    lines.push(branching(config, branching_plugin.as_deref()));
    lines
}

/// How branch changes (netbox-branching) will be told from main's: what `check` says on its
/// `branching` line and `netbox-setup` after its steps.
pub fn branching(config: &Config, plugin: Option<&str>) -> Line {
    const PIPELINE: &str = "add \"netbox_branching.events.add_branch_context\" to NetBox's EVENTS_PIPELINE (after \"extras.events.process_event_queue\"), so that every webhook says whether it comes from a branch and the relay asks nothing";
    let Some(version) = plugin else {
        return Line::ok(
            "branching",
            "NetBox has no netbox-branching: every webhook describes main",
        );
    };
    let found = format!("NetBox has netbox-branching {version}");
    match config.webhook.confirm {
        Confirm::Never => Line::ok(
            "branching",
            format!("{found}; webhook.confirm = never: webhooks marked as a branch change are refused, unmarked ones trusted, which is right only if {PIPELINE}"),
        ),
        Confirm::Auto | Confirm::Always => Line::ok(
            "branching",
            format!("{found}: webhooks marked as a branch change are refused; the others are confirmed against main (one API request each, with this token) unless their body says they come from main. Recommended: {PIPELINE}"),
        ),
    }
}

/// Cascades pull the dependents of a changed parent with the read permissions checked above;
/// the parents themselves arrive by webhook and are never read.
fn cascade(config: &Config) -> Line {
    if config.cascade.enabled == Some(false) {
        return Line::skip("cascade", "cascade.enabled = false");
    }
    let triggers: Vec<&str> = PARENTS
        .iter()
        .filter(|p| p.trigger_only())
        .map(|p| p.name)
        .collect();
    Line::ok(
        "cascade",
        format!(
            "on: a changed site, tenant, cluster, VRF, VLAN, device or VM, and {} (listed in the event rule by netbox-setup; runs list their slugs with their view permission), pull their dependents with the read permissions above",
            triggers.join(", ")
        ),
    )
}

/// Reads one object of the type, as cheaply as NetBox allows.
async fn can_read(client: &NetboxClient, object_type: ObjectType, version: (u32, u32)) -> Line {
    let what = format!("read {}", object_type.name);
    let permission = format!("{}.view_{}", object_type.app_label(), object_type.model());
    let query = match version >= (4, 0) {
        true => "limit=1&fields=id",
        false => "limit=1&brief=1",
    };
    match client
        .page(object_type, query, crate::netbox::Reads::ALL)
        .await
    {
        Ok(_) => Line::ok(what, format!("permitted ({permission})")),
        Err(ApiError::Forbidden { detail, .. }) => Line::fail(
            what,
            format!("NetBox answered 403: {detail}"),
            format!(
                "grant the token's user {permission} (a permission with action view on {})",
                object_type.name
            ),
        ),
        Err(e) => Line::fail(what, e.to_string(), "see NetBox's log for this endpoint"),
    }
}

async fn nats(config: &Config) -> Line {
    let cfg = &config.nats;
    let expected = format!("{}.>", cfg.subject_prefix);
    let what = format!("nats stream {}", cfg.stream);
    let probe = match publish::probe(cfg).await {
        Ok(probe) => probe,
        Err(e @ publish::PublishError::Connect(_)) => {
            let fix = "start nats-server with JetStream (-js), or correct nats.url and credentials";
            return Line::fail(format!("nats {}", cfg.url), e.to_string(), fix);
        }
        Err(e) => {
            let fix = "enable JetStream on the server (-js, or jetstream {} in its config)";
            return Line::fail(what, e.to_string(), fix);
        }
    };
    match probe.stream_subjects {
        Some(subjects) if subjects.iter().any(|s| s == &expected || s == ">") => Line::ok(
            what,
            format!(
                "present on NATS {}, subjects {subjects:?}",
                probe.server_version
            ),
        ),
        Some(subjects) => Line::fail(
            what,
            format!("captures {subjects:?}, not {expected}"),
            format!("add {expected} to the stream's subjects, or set nats.subject_prefix"),
        ),
        // A fresh setup: `serve` creates the stream at start, so its absence is no fault.
        None => Line::ok(
            what,
            format!(
                "absent on NATS {}; `netbox-relay serve` creates it at start (subjects {expected})",
                probe.server_version
            ),
        ),
    }
}

/// Which commands the configuration is good for; a FAIL when `serve` would refuse it.
fn configuration(config: &Config) -> Line {
    let mut good_for = vec!["tail", "sd", "spool"];
    if config.netbox.url.is_some() && config.netbox.token.is_some() {
        good_for.extend(["reconcile", "netbox-setup"]);
    }
    let mut as_serve = config.clone();
    match as_serve.validate_for(true) {
        Ok(()) => {
            good_for.insert(0, "serve");
            Line::ok(
                CONFIGURATION,
                format!("valid; good for {}", good_for.join(", ")),
            )
        }
        Err(e) => Line::fail(
            CONFIGURATION,
            format!("serve refuses it: {e}; good for {}", good_for.join(", ")),
            "set the named key in the file or its environment variable",
        ),
    }
}

/// Writable: the store opens, or a running relay holds it. A missing file is not created here.
fn state(path: &Path) -> Line {
    let what = format!("state {}", path.display());
    if !path.exists() {
        let detail = "not created yet: serve and reconcile create it (its folder must be writable)";
        return Line::skip(what, detail);
    }
    match Store::open(path) {
        Ok(_) => Line::ok(what, "opens for writing"),
        Err(StoreError::InUse { .. }) => Line::ok(what, "in use by a running netbox-relay"),
        Err(e) => Line::fail(
            what,
            e.to_string(),
            "make state.path's folder writable by the relay's user, or change state.path",
        ),
    }
}
