//! NetBox object or event -> registry delta. Pure functions: no I/O, no async, no clock (the
//! caller passes `now`). Webhooks and reconciliation share [`Translator::entry`], so the same
//! object always yields the same entry.

mod fields;
mod inventory;
mod ipam;

use std::collections::BTreeSet;
use std::sync::LazyLock;

use rustc_hash::FxHashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::delta::{self, Entry, Kind, Op, Origin, RegistryDelta, SCHEMA_ID};
use crate::netbox::webhook::{parse_timestamp, ChangeEvent, Reads, WebhookEvent};
use crate::netbox::ObjectType;
pub use fields::Object;

/// The source of translation and of the entry it builds: see [`Translator::fingerprint`].
const TRANSLATION: [&str; 5] = [
    include_str!("mod.rs"),
    include_str!("fields.rs"),
    include_str!("inventory.rs"),
    include_str!("ipam.rs"),
    include_str!("../delta.rs"),
];

/// Prefix host expansion (`registry.expand_subnets`, `registry.max_expanded_hosts`).
#[derive(Debug, Clone, Copy)]
pub struct SweepOptions {
    pub expand_subnets: bool,
    pub max_expanded_hosts: usize,
}

/// What to do with one webhook.
#[derive(Debug)]
pub enum Outcome {
    Publish(Box<RegistryDelta>),
    /// Nothing to publish; the reason goes into the 200 answer.
    Ignore(String),
}

/// Why an object cannot be translated. Field names are those of the object (`data.*`).
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("`data.{0}` is missing")]
    MissingField(&'static str),
    #[error("`data.{field}` must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("the revision is unknown: neither `data.last_updated` nor `timestamp` is usable")]
    NoRevision,
    #[error("`timestamp` is required for a delete")]
    NoDeleteTimestamp,
    #[error("cannot compute the delta id: {0}")]
    DeltaId(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct Translator {
    partition: String,
    sweep: SweepOptions,
    enabled: BTreeSet<&'static str>,
    max_clock_skew: chrono::Duration,
}

impl Translator {
    /// `enabled` are the object types to translate (`registry.object_types`).
    pub fn new(partition: &str, sweep: SweepOptions, enabled: &[ObjectType]) -> Self {
        Translator {
            partition: partition.to_string(),
            sweep,
            enabled: enabled.iter().map(|t| t.name).collect(),
            max_clock_skew: chrono::Duration::minutes(5),
        }
    }

    /// How far ahead of `now` a revision may be (`webhook.max_clock_skew`); see [`Self::clamp`].
    pub fn with_max_clock_skew(mut self, skew: std::time::Duration) -> Self {
        self.max_clock_skew = chrono::Duration::from_std(skew).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// A revision is never later than the event that carried it nor than `now` plus the allowed
    /// skew: one signed event dated 9999 would otherwise make every later change of its object
    /// stale.
    pub fn clamp(
        &self,
        revision: DateTime<Utc>,
        event_timestamp: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let horizon = now
            .checked_add_signed(self.max_clock_skew)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        revision
            .min(horizon)
            .min(event_timestamp.unwrap_or(horizon))
    }

    pub fn is_enabled(&self, object_type: ObjectType) -> bool {
        self.enabled.contains(object_type.name)
    }

    /// `netbox/<partition>/<object_type>/<id>`.
    pub fn key(&self, object_type: ObjectType, id: u64) -> String {
        format!("netbox/{}/{}/{id}", self.partition, object_type.name)
    }

    /// The registry entry of one object, as a webhook's `data` or the REST API serializes it.
    pub fn entry(&self, object_type: ObjectType, obj: &Object) -> Result<Entry, TranslateError> {
        let mut b = fields::EntryBuilder::new(obj);
        let mut name = fields::name(obj);
        let mut sweep = None;
        match object_type.kind {
            Kind::Device => {
                inventory::host(obj, &mut b)?;
                inventory::device(obj, &mut b);
            }
            Kind::VirtualMachine => {
                inventory::host(obj, &mut b)?;
                inventory::virtual_machine(obj, &mut b);
            }
            Kind::Interface => inventory::interface(obj, &mut b, "device"),
            Kind::VmInterface => inventory::interface(obj, &mut b, "virtual_machine"),
            Kind::Cluster => inventory::cluster(obj, &mut b),
            Kind::Site => inventory::site(obj, &mut b),
            Kind::Tenant => inventory::tenant(obj, &mut b),
            Kind::IpAddress => {
                sweep = Some(ipam::ip_address(obj, &mut b, &self.sweep)?);
                name = fields::text(obj, "address").unwrap_or_default().to_string();
            }
            Kind::Prefix => {
                sweep = Some(ipam::prefix(obj, &mut b, &self.sweep)?);
                name = fields::text(obj, "prefix").unwrap_or_default().to_string();
            }
            Kind::Vlan => ipam::vlan(obj, &mut b),
            Kind::Vrf => ipam::vrf(obj, &mut b),
            Kind::Service => ipam::service(obj, &mut b)?,
        }
        let id = obj.get("id").and_then(Value::as_u64).unwrap_or_default();
        let url = match fields::text(obj, "url") {
            Some(url) => fields::relative_url(url).to_string(),
            None => format!("/api/{}/{id}/", object_type.api_path),
        };
        let mut entry = b.build(obj, name, url);
        entry.sweep = sweep;
        Ok(entry)
    }

    /// The delta of one webhook, or why there is none.
    pub fn webhook(
        &self,
        ev: &WebhookEvent,
        now: DateTime<Utc>,
    ) -> Result<Outcome, TranslateError> {
        if !self.is_enabled(ev.object_type) {
            let reason = format!("object type {} is not enabled", ev.object_type.name);
            return Ok(Outcome::Ignore(reason));
        }
        let (op, revision, entry) = match ev.event {
            ChangeEvent::Deleted => {
                let revision = ev.timestamp.ok_or(TranslateError::NoDeleteTimestamp)?;
                (Op::Delete, self.clamp(revision, None, now), None)
            }
            ChangeEvent::Created | ChangeEvent::Updated => {
                let revision = revision(&ev.data)
                    .or(ev.timestamp)
                    .ok_or(TranslateError::NoRevision)?;
                let revision = self.clamp(revision, ev.timestamp, now);
                (
                    Op::Upsert,
                    revision,
                    Some(self.entry(ev.object_type, &ev.data)?),
                )
            }
        };
        let mut delta = self.assemble(ev.object_type, ev.object_id, op, revision, entry, now)?;
        delta.origin = Origin::Webhook;
        delta.event = Some(ev.event.as_str().to_string());
        delta.request_id = ev.request_id.clone();
        delta.user = ev.user.clone();
        delta.changed_fields = match ev.event {
            ChangeEvent::Updated => ev.changes.fields.clone(),
            ChangeEvent::Created | ChangeEvent::Deleted => None,
        };
        Ok(Outcome::Publish(Box::new(delta)))
    }

    /// The upsert for an object as the REST API returned it during a reconcile.
    pub fn reconcile_upsert(
        &self,
        object_type: ObjectType,
        obj: &Object,
        now: DateTime<Utc>,
    ) -> Result<RegistryDelta, TranslateError> {
        let id = obj
            .get("id")
            .and_then(Value::as_u64)
            .ok_or(TranslateError::MissingField("id"))?;
        let revision = listed_revision(obj).ok_or(TranslateError::NoRevision)?;
        let revision = self.clamp(revision, None, now);
        let entry = self.entry(object_type, obj)?;
        self.assemble(object_type, id, Op::Upsert, revision, Some(entry), now)
    }

    /// The delete for an object a complete pull no longer returned. Its revision is that of the
    /// object as last seen: the delete is inferred, not reported, so any later sight of the
    /// object (a pull, a webhook) must be able to undo it.
    pub fn reconcile_delete(
        &self,
        object_type: ObjectType,
        id: u64,
        last_seen: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<RegistryDelta, TranslateError> {
        self.assemble(object_type, id, Op::Delete, last_seen, None, now)
    }

    /// A delta with reconcile provenance; webhooks overwrite theirs.
    fn assemble(
        &self,
        object_type: ObjectType,
        id: u64,
        op: Op,
        revision: DateTime<Utc>,
        entry: Option<Entry>,
        now: DateTime<Utc>,
    ) -> Result<RegistryDelta, TranslateError> {
        let key = self.key(object_type, id);
        Ok(RegistryDelta {
            schema: SCHEMA_ID.to_string(),
            delta_id: delta::delta_id(&key, op, &revision, entry.as_ref())?,
            op,
            kind: object_type.kind,
            key,
            partition: self.partition.clone(),
            source: "netbox".to_string(),
            origin: Origin::Reconcile,
            object_type: object_type.name.to_string(),
            object_id: id,
            revision,
            event: None,
            request_id: None,
            user: None,
            changed_fields: None,
            observed_at: now,
            entry,
        })
    }

    /// What an entry of `object_type` depends on besides the object: this build's translation
    /// (its source, so that any change to it counts, and the release, for its dependencies) and
    /// its settings.
    pub fn fingerprint(&self, object_type: ObjectType) -> String {
        let source = TRANSLATION.iter().map(|file| file.len()).sum::<usize>();
        let mut fingerprint = String::with_capacity(source + 128);
        for file in TRANSLATION {
            fingerprint.push_str(file);
        }
        fingerprint.push_str(&format!(
            "\0{}\0{}\0{:?}\0{}",
            env!("CARGO_PKG_VERSION"),
            self.partition,
            self.sweep,
            object_type.name
        ));
        fingerprint
    }

    /// The partition every key of this relay is in (`registry.partition`).
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The key prefix of every entry of `object_type`.
    pub fn key_prefix(&self, object_type: ObjectType) -> String {
        format!("netbox/{}/{}/", self.partition, object_type.name)
    }
}

/// The top-level fields translation reads from an object of `kind`, for the REST API's `fields=`
/// (NetBox ignores names a version does not have, so the lists span versions). A test checks that
/// an entry built from only these fields equals one built from the whole object.
pub fn fields_read(kind: Kind) -> Vec<&'static str> {
    let common = [
        "id",
        "url",
        "display",
        "name",
        "last_updated",
        "created",
        "status",
        "tags",
    ];
    let host = [
        "primary_ip4",
        "primary_ip6",
        "site",
        "tenant",
        "role",
        "platform",
        "cluster",
    ];
    let interface = [
        "vrf",
        "untagged_vlan",
        "mode",
        "enabled",
        "mtu",
        "primary_mac_address",
    ];
    let own: &[&'static str] = match kind {
        Kind::Device => &[
            "oob_ip",
            "location",
            "serial",
            "asset_tag",
            "device_type",
            "rack",
        ],
        Kind::VirtualMachine => &["location", "vcpus", "memory", "disk", "device"],
        Kind::Interface => &["device", "type", "mgmt_only"],
        Kind::VmInterface => &["virtual_machine"],
        Kind::Cluster => &["scope_type", "scope", "site", "tenant", "type", "group"],
        Kind::Site => &["slug", "region", "tenant", "facility", "time_zone", "group"],
        Kind::Tenant => &["slug", "group"],
        Kind::IpAddress => &[
            "address",
            "tenant",
            "role",
            "vrf",
            "dns_name",
            "assigned_object_type",
            "assigned_object_id",
            "assigned_object",
        ],
        Kind::Prefix => &[
            "prefix",
            "scope_type",
            "scope",
            "site",
            "tenant",
            "role",
            "vrf",
            "vlan",
            "is_pool",
        ],
        Kind::Vlan => &["site", "tenant", "role", "vid", "group"],
        Kind::Vrf => &["tenant", "rd", "enforce_unique"],
        Kind::Service => &[
            "ipaddresses",
            "parent_object_type",
            "parent",
            "device",
            "virtual_machine",
            "protocol",
            "ports",
            "port_mappings",
        ],
    };
    let shared: &[&'static str] = match kind {
        Kind::Device | Kind::VirtualMachine => &host,
        Kind::Interface | Kind::VmInterface => &interface,
        _ => &[],
    };
    common.iter().chain(shared).chain(own).copied().collect()
}

/// What translation reads of a webhook's `data`: what it is parsed for.
pub const READS: Reads = Reads {
    fields: reads_field,
    nested: |name| NESTED_READ.contains(&name),
};

/// The fields translation reads of a related object, a choice or a tag (at any depth): labels
/// take `slug`, `value` or `name`; names fall back to `display`; and the few nested values it
/// shows (`vid`, `address`, `model`, `manufacturer.name`, `mac_address`, an IP address's
/// `assigned_object.device`).
const NESTED_READ: [&str; 12] = [
    "id",
    "name",
    "display",
    "slug",
    "value",
    "vid",
    "address",
    "model",
    "manufacturer",
    "mac_address",
    "device",
    "virtual_machine",
];

/// Whether translation reads top-level field `name` of an object of some kind. Asked for every
/// field of every webhook's `data`, hence the quick hash.
pub fn reads_field(name: &str) -> bool {
    static READ: LazyLock<FxHashSet<&'static str>> = LazyLock::new(|| {
        crate::netbox::object_type::ALL
            .iter()
            .flat_map(|t| fields_read(t.kind))
            .collect()
    });
    READ.contains(name)
}

/// The revision a webhook stated before [`Translator::clamp`], when the delta carries an earlier
/// one: what the handler counts and logs. Only a revision equal to a bound can have been clamped,
/// so the common case (`last_updated` before the event) reads nothing again.
pub fn clamped_from(
    translator: &Translator,
    ev: &WebhookEvent,
    delta: &RegistryDelta,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let horizon = now.checked_add_signed(translator.max_clock_skew);
    if ev.timestamp != Some(delta.revision) && horizon != Some(delta.revision) {
        return None;
    }
    let stated = match ev.event {
        ChangeEvent::Deleted => ev.timestamp,
        ChangeEvent::Created | ChangeEvent::Updated => revision(&ev.data).or(ev.timestamp),
    }?;
    (stated > delta.revision).then_some(stated)
}

/// The object's revision: its `last_updated`.
pub fn revision(obj: &Object) -> Option<DateTime<Utc>> {
    fields::text(obj, "last_updated").and_then(parse_timestamp)
}

/// The revision reconcile gives an object of the API: its `last_updated`, or its `created` for an
/// object a netbox-branching merge created (it has no `last_updated` on main, NetBox 4.7.3 with
/// netbox-branching 1.2.2), which [`dated_unstamped`] then dates. The cheap pass compares it with
/// the stored revision.
pub fn listed_revision(obj: &Object) -> Option<DateTime<Utc>> {
    revision(obj).or_else(|| fields::text(obj, "created").and_then(parse_timestamp))
}

/// Whether NetBox never stamped the object: `last_updated` null, as a merge leaves what it
/// created.
pub fn is_unstamped(obj: &Object) -> bool {
    revision(obj).is_none()
}

/// The one rule for an object NetBox never stamped, on every path. NetBox stamps every save, so
/// such an object has not been saved since it was made, and what any sight of it shows is no
/// older than what came before: it is dated no earlier than `floor`, the newest sight of it (a
/// webhook: its event's time, which the webhook path uses anyway; confirmation: the webhook it
/// confirms; reconcile and cascades: the key's record). A merge, revert and re-merge of one id is
/// so accepted again, while a webhook's reordered create stays older than the delete after it.
pub fn dated_unstamped(delta: RegistryDelta, floor: DateTime<Utc>) -> RegistryDelta {
    if floor <= delta.revision {
        return delta;
    }
    delta.at_revision(floor).unwrap_or(delta)
}
