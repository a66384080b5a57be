//! `netbox-relay audit`: is the registry NetBox's main? It reads the registry as a consumer does
//! (the last message of every key on the stream), then NetBox as a full pass does (every object
//! of each followed type, read-only), translates each object with the configured settings, and
//! reports every key that differs: missing from the registry, in the registry but not in NetBox,
//! or with another entry (which fields, both values). It changes nothing, and opens no state file.
//!
//! Memory: the registry is kept as one small row per key (its kind, id and entry hash, about 40
//! bytes), NetBox's objects are compared page by page as they arrive. A difference is looked at
//! a second time before it is reported (NetBox's object and the key's last message read again),
//! so that a change made while the audit ran is not reported as one.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::delta::{entry_hash, EntryHash, Kind, Op, RegistryDelta};
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::ObjectType;
use crate::publish::{Last, PublishError, Publisher};
use crate::reconcile::{by_ids, pages, PullOptions};
use crate::translate::{Translator, READS};

/// Differences reported one by one (each looked at twice); past it only counted.
const LISTED: usize = 10_000;
/// Objects read again at once in the second look.
const BATCH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// NetBox has the object; the registry has no entry for it (never published, or deleted).
    Missing,
    /// The registry has an entry; NetBox does not have the object.
    NotInNetbox,
    /// Both have it, with other entries.
    Differs,
    /// NetBox serves an object the relay cannot translate: the registry cannot show it.
    Untranslatable,
    /// The key's last message is not a registry delta (published by another tool).
    Foreign,
}

#[derive(Debug, Serialize)]
pub struct FieldDiff {
    /// `name`, `labels.site`, `attributes.serial`, ...
    pub field: String,
    pub registry: Value,
    pub netbox: Value,
}

#[derive(Debug, Serialize)]
pub struct Difference {
    pub what: What,
    pub key: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDiff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub equal: bool,
    /// Keys with an entry on the stream, of the followed types.
    pub registry_keys: u64,
    pub netbox_objects: u64,
    /// Differences by what they are (all of them, listed or not).
    pub counts: BTreeMap<What, u64>,
    /// Differences the first pass saw that the second look did not (changed while it ran).
    pub settled_on_second_look: u64,
    pub differences: Vec<Difference>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// What the operator must set or grant: exit 2.
    #[error("{0}")]
    Config(String),
    #[error("NATS: {0}")]
    Nats(PublishError),
    #[error("{0}")]
    Netbox(ApiError),
}

impl From<PublishError> for AuditError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::NoStream(message) => AuditError::Config(format!(
                "nats.stream names no stream on this NATS (has the relay run here?): {message}"
            )),
            e => AuditError::Nats(e),
        }
    }
}

impl From<ApiError> for AuditError {
    fn from(e: ApiError) -> Self {
        match e {
            e
            @ (ApiError::Forbidden { .. } | ApiError::Config { .. } | ApiError::NotConfigured) => {
                AuditError::Config(e.to_string())
            }
            e => AuditError::Netbox(e),
        }
    }
}

/// A key as the audit holds it.
type Key = (Kind, u64);

struct Audit<'a> {
    config: &'a Config,
    translator: &'a Translator,
    client: Arc<NetboxClient>,
    publisher: Publisher,
    types: Vec<ObjectType>,
    progress: Progress,
}

/// Audits `types` (every followed one when empty).
pub async fn audit(
    config: &Config,
    translator: &Translator,
    types: Vec<ObjectType>,
) -> Result<Report, AuditError> {
    let started = Instant::now();
    let client = Arc::new(NetboxClient::new(&config.netbox)?);
    let publisher = Publisher::connect(&config.nats).await?;
    if !publisher.connected_within(Duration::from_secs(10)).await {
        return Err(AuditError::Nats(PublishError::Read(format!(
            "no NATS server answered at {} within 10 s",
            config.nats.url
        ))));
    }
    let types = match types.is_empty() {
        true => config
            .object_types()
            .map_err(|e| AuditError::Config(e.to_string()))?,
        false => types,
    };
    let audit = Audit {
        config,
        translator,
        client,
        publisher,
        types,
        progress: Progress::new(),
    };
    let mut found = Found::default();
    let mut registry = audit.registry(&mut found).await?;
    let registry_keys = registry.len() as u64;
    let netbox_objects = audit.netbox(&mut registry, &mut found).await?;
    for ((kind, id), _) in registry {
        found.note(What::NotInNetbox, kind, id);
    }
    audit.progress.done();
    // The listed keys count as the second look finds them.
    let mut counts = found.counts;
    for (what, _, _) in &found.listed {
        counts.entry(*what).and_modify(|n| *n -= 1);
    }
    let looked = found.listed.len() as u64;
    let mut differences = audit.second_look(found.listed).await?;
    for d in &differences {
        *counts.entry(d.what).or_default() += 1;
    }
    let settled = looked - differences.len() as u64;
    differences.extend(found.foreign.iter().map(|seq| Difference {
        what: What::Foreign,
        key: format!("stream sequence {seq}"),
        fields: Vec::new(),
        message: Some("a key's last message is not a registry delta".into()),
    }));
    counts.retain(|_, n| *n > 0);
    Ok(Report {
        equal: counts.is_empty(),
        registry_keys,
        netbox_objects,
        counts,
        settled_on_second_look: settled,
        differences,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the first pass found: counts, and the first [`LISTED`] keys to look at again.
#[derive(Default)]
struct Found {
    counts: BTreeMap<What, u64>,
    listed: Vec<(What, Kind, u64)>,
    foreign: Vec<u64>,
}

impl Found {
    fn note(&mut self, what: What, kind: Kind, id: u64) {
        *self.counts.entry(what).or_default() += 1;
        if self.listed.len() < LISTED {
            self.listed.push((what, kind, id));
        }
    }
}

impl Audit<'_> {
    fn partition(&self) -> &str {
        &self.config.registry.partition
    }

    /// Every followed key with an entry on the stream, and its entry's hash: each type's keys
    /// in one pass, so that a foreign message is one of a followed type's keys.
    async fn registry(&self, found: &mut Found) -> Result<HashMap<Key, EntryHash>, AuditError> {
        let mut registry = HashMap::new();
        let mut read = 0u64;
        for object_type in &self.types {
            let kind = object_type.kind;
            let mut keys = self
                .publisher
                .last_per_key(self.partition(), Some(kind))
                .await?;
            while let Some(last) = keys.next().await {
                read += 1;
                self.progress.say(|| format!("registry: {read} keys read"));
                let delta = match last? {
                    Last::Delta(delta, _) => delta,
                    Last::Foreign(seq) => {
                        *found.counts.entry(What::Foreign).or_default() += 1;
                        found.foreign.push(seq);
                        continue;
                    }
                };
                if delta.op != Op::Upsert {
                    continue;
                }
                if let Some(hash) = delta.entry.as_ref().and_then(|e| entry_hash(e).ok()) {
                    registry.insert((delta.kind, delta.object_id), hash);
                }
            }
        }
        Ok(registry)
    }

    /// Compares NetBox's objects with `registry`, page by page, taking each one it finds out of
    /// it; answers how many objects NetBox served.
    async fn netbox(
        &self,
        registry: &mut HashMap<Key, EntryHash>,
        found: &mut Found,
    ) -> Result<u64, AuditError> {
        let options = PullOptions {
            version: self.client.version().await?,
            page_size: self.config.netbox.page_size,
            concurrency: self.config.netbox.concurrency,
            listing: false,
        };
        let mut served = 0u64;
        for &object_type in &self.types {
            let mut pages = pages(self.client.clone(), object_type, options);
            while let Some(page) = pages.recv().await {
                let objects = page?.parse(READS)?;
                served += objects.len() as u64;
                let name = object_type.name;
                self.progress
                    .say(|| format!("NetBox: {name}, {served} objects compared"));
                for object in objects {
                    self.compare(object_type, &object, registry, found);
                }
            }
        }
        Ok(served)
    }

    fn compare(
        &self,
        object_type: ObjectType,
        object: &crate::translate::Object,
        registry: &mut HashMap<Key, EntryHash>,
        found: &mut Found,
    ) {
        let Some(id) = object.get("id").and_then(Value::as_u64) else {
            return;
        };
        let kind = object_type.kind;
        let Ok(delta) = self
            .translator
            .reconcile_upsert(object_type, object, Utc::now())
        else {
            registry.remove(&(kind, id));
            return found.note(What::Untranslatable, kind, id);
        };
        let hash = delta.entry.as_ref().and_then(|e| entry_hash(e).ok());
        match registry.remove(&(kind, id)) {
            None => found.note(What::Missing, kind, id),
            Some(registered) if Some(registered) != hash => found.note(What::Differs, kind, id),
            Some(_) => {}
        }
    }

    /// Reads each listed key again on both sides: what still differs, with its fields.
    async fn second_look(
        &self,
        listed: Vec<(What, Kind, u64)>,
    ) -> Result<Vec<Difference>, AuditError> {
        let mut by_type: BTreeMap<&'static str, (ObjectType, Vec<u64>)> = BTreeMap::new();
        for (_, kind, id) in listed {
            let object_type = ObjectType::from_kind(kind);
            let entry = by_type.entry(object_type.name);
            entry.or_insert((object_type, Vec::new())).1.push(id);
        }
        let mut differences = Vec::new();
        for (object_type, ids) in by_type.into_values() {
            for batch in ids.chunks(BATCH) {
                let objects = by_ids(&self.client, object_type, batch).await?;
                let netbox: HashMap<u64, _> = objects
                    .iter()
                    .filter_map(|o| Some((o.get("id")?.as_u64()?, o)))
                    .collect();
                for &id in batch {
                    let registered = self.registered(object_type.kind, id).await?;
                    let translated = netbox.get(&id).map(|o| {
                        self.translator
                            .reconcile_upsert(object_type, o, Utc::now())
                            .map_err(|e| e.to_string())
                    });
                    let key = format!("netbox/{}/{}/{id}", self.partition(), object_type.name);
                    differences.extend(judge(translated, registered, key));
                }
            }
        }
        differences.sort_by(|a, b| (a.what, &a.key).cmp(&(b.what, &b.key)));
        Ok(differences)
    }

    /// The key's entry on the stream, if its last message is an upsert.
    async fn registered(&self, kind: Kind, id: u64) -> Result<Option<RegistryDelta>, AuditError> {
        let last = self
            .publisher
            .last_of_key(self.partition(), kind, id)
            .await?;
        Ok(match last {
            Some(Last::Delta(delta, _)) if delta.op == Op::Upsert => Some(*delta),
            _ => None,
        })
    }
}

/// What NetBox's object (translated, or why not) and the key's registry entry say, when they
/// differ.
fn judge(
    netbox: Option<Result<RegistryDelta, String>>,
    registry: Option<RegistryDelta>,
    key: String,
) -> Option<Difference> {
    let difference = |what| Difference {
        what,
        key: key.clone(),
        fields: Vec::new(),
        message: None,
    };
    match (netbox, registry) {
        (None, None) => None,
        (None, Some(_)) => Some(difference(What::NotInNetbox)),
        (Some(Err(message)), _) => Some(Difference {
            message: Some(message),
            ..difference(What::Untranslatable)
        }),
        (Some(Ok(_)), None) => Some(difference(What::Missing)),
        (Some(Ok(n)), Some(r)) if n.entry == r.entry => None,
        (Some(Ok(n)), Some(r)) => Some(Difference {
            fields: fields(&r, &n),
            ..difference(What::Differs)
        }),
    }
}

/// The entry's fields that differ, nested maps (`labels`, `attributes`) one level down.
fn fields(registry: &RegistryDelta, netbox: &RegistryDelta) -> Vec<FieldDiff> {
    let flat = |d: &RegistryDelta| {
        let mut flat = BTreeMap::new();
        if let Ok(Value::Object(entry)) = serde_json::to_value(&d.entry) {
            for (name, value) in entry {
                match value {
                    Value::Object(inner) => {
                        for (k, v) in inner {
                            flat.insert(format!("{name}.{k}"), v);
                        }
                    }
                    value => {
                        flat.insert(name, value);
                    }
                }
            }
        }
        flat
    };
    let (r, n) = (flat(registry), flat(netbox));
    let names: std::collections::BTreeSet<&String> = r.keys().chain(n.keys()).collect();
    names
        .into_iter()
        .filter(|name| r.get(*name) != n.get(*name))
        .map(|name| FieldDiff {
            field: name.clone(),
            registry: r.get(name).cloned().unwrap_or(Value::Null),
            netbox: n.get(name).cloned().unwrap_or(Value::Null),
        })
        .collect()
}

/// A progress line on a terminal, at most a few times a second.
struct Progress {
    terminal: bool,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new(None),
        }
    }

    fn say(&self, line: impl FnOnce() -> String) {
        if !self.terminal {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_millis(250)) {
            return;
        }
        *last = Some(Instant::now());
        eprint!("\r\x1b[Kaudit: {}", line());
    }

    fn done(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// The report for a person: a summary, then one line per difference.
pub fn render(report: &Report) -> Vec<String> {
    let mut lines = vec![format!(
        "audit: {} registry keys, {} NetBox objects, {} in {:.1} s",
        report.registry_keys,
        report.netbox_objects,
        match report.equal {
            true => "equal".to_string(),
            false => format!("{} difference(s)", report.counts.values().sum::<u64>()),
        },
        report.seconds
    )];
    for (what, count) in &report.counts {
        lines.push(format!("  {}: {count}", label(*what)));
    }
    if report.settled_on_second_look > 0 {
        lines.push(format!(
            "  ({} more changed while the audit ran and agreed on a second look)",
            report.settled_on_second_look
        ));
    }
    for d in &report.differences {
        lines.push(format!("{:<15} {}", label(d.what), d.key));
        if let Some(message) = &d.message {
            lines.push(format!("    {message}"));
        }
        for f in &d.fields {
            lines.push(format!(
                "    {}: registry {} | netbox {}",
                f.field, f.registry, f.netbox
            ));
        }
    }
    let listed = report.differences.len() as u64;
    let total: u64 = report.counts.values().sum();
    if total > listed {
        lines.push(format!("... and {} more not listed", total - listed));
    }
    lines
}

fn label(what: What) -> &'static str {
    match what {
        What::Missing => "missing",
        What::NotInNetbox => "not_in_netbox",
        What::Differs => "differs",
        What::Untranslatable => "untranslatable",
        What::Foreign => "foreign",
    }
}
