//! The registry delta: what netbox-relay publishes, and the contract downstream consumers read.
//! `schemas/registry-delta.v1.json` is generated from these types (`netbox-relay schema`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The value of every delta's `schema` field.
pub const SCHEMA_ID: &str = "netbox-relay/registry-delta/v1";

/// One upsert or delete of one registry entry. Published on its key's own NATS subject,
/// `<prefix>.<partition>.<kind>.<object_id>`, whose last message is the key's current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "RegistryDelta")]
pub struct RegistryDelta {
    /// Always "netbox-relay/registry-delta/v1".
    #[schemars(extend("const" = "netbox-relay/registry-delta/v1"))]
    pub schema: String,
    /// Deterministic: the same change always gets the same id (hash of key, op, revision, entry).
    /// Published as `Nats-Msg-Id`, so JetStream drops repeats.
    pub delta_id: String,
    pub op: Op,
    pub kind: Kind,
    /// Stable registry key: `netbox/<partition>/<object_type>/<id>`.
    pub key: String,
    pub partition: String,
    /// Always "netbox".
    #[schemars(extend("const" = "netbox"))]
    pub source: String,
    pub origin: Origin,
    /// NetBox object type, `app_label.model`, e.g. `dcim.device`.
    pub object_type: String,
    /// NetBox id of the object.
    pub object_id: u64,
    /// The object's `last_updated`; for a delete, the event timestamp.
    pub revision: DateTime<Utc>,
    /// NetBox event name (`created`, `updated`, `deleted`), or null for reconcile.
    pub event: Option<String>,
    /// Id of the NetBox request that made the change, when NetBox sent one.
    pub request_id: Option<String>,
    /// NetBox user who made the change, when NetBox sent one.
    pub user: Option<String>,
    /// For an update with snapshots: the top-level fields whose values differ, sorted.
    pub changed_fields: Option<Vec<String>>,
    /// When the relay produced this delta.
    pub observed_at: DateTime<Utc>,
    /// Null for a delete.
    pub entry: Option<Entry>,
}

/// The registry entry of one NetBox object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Entry {
    /// Object name; for an IP address its address, for a prefix its CIDR.
    pub name: String,
    /// NetBox status value ("active", "planned", ...), where the object has one.
    pub status: Option<String>,
    /// IP addresses without mask: primary IPv4/IPv6 and OOB of a device or VM, the address of an IP.
    pub addresses: Vec<String>,
    /// Flat labels: source=netbox, site, tenant, role, platform, status, cluster, vrf, vlan, region,
    /// tag.<slug>=true; only the ones that apply.
    pub labels: BTreeMap<String, String>,
    /// Kind-specific normalized fields (scalars or lists of scalars).
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Discovery sweep target of IP addresses and prefixes.
    pub sweep: Option<Sweep>,
    /// The object's API path, relative (e.g. /api/dcim/devices/42/).
    pub netbox_url: String,
}

/// What a discovery sweep should probe for an IP address or prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sweep {
    pub cidr: String,
    /// Host addresses, listed only when they are few enough (see `registry.max_expanded_hosts`).
    pub hosts: Vec<String>,
    /// How many host addresses were left out of `hosts` because the delta would not have fit in
    /// one NATS message (`max_payload`); sweep the CIDR instead. Absent when none were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hosts_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RegistryDelta {
    /// The same revision as `other` with another entry: which of the two is newer cannot be told
    /// from the deltas (NetBox did not stamp the change, or a page was pulled before the other).
    pub fn differs_at_same_revision(&self, other: &RegistryDelta) -> bool {
        self.revision == other.revision && self.entry != other.entry
    }

    /// The same delta with its sweep host list dropped (the CIDR kept, the count said in
    /// `hosts_omitted`) and its id computed again; None when it has no host list to drop.
    pub fn without_sweep_hosts(&self) -> Option<RegistryDelta> {
        let mut delta = self.clone();
        let sweep = delta.entry.as_mut()?.sweep.as_mut()?;
        if sweep.hosts.is_empty() {
            return None;
        }
        sweep.hosts_omitted += sweep.hosts.len() as u64;
        sweep.hosts = Vec::new();
        delta.with_new_id()
    }

    /// The same delta at another revision, its id computed again.
    pub fn at_revision(&self, revision: DateTime<Utc>) -> Option<RegistryDelta> {
        let mut delta = self.clone();
        delta.revision = revision;
        delta.with_new_id()
    }

    /// The id of what the delta now says.
    fn with_new_id(mut self) -> Option<RegistryDelta> {
        self.delta_id = delta_id(&self.key, self.op, &self.revision, self.entry.as_ref()).ok()?;
        Some(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Upsert,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Webhook,
    Reconcile,
    // Pulled again because a parent it shows (site, tenant, tag, ...) changed.
    Cascade,
}

/// The kinds of registry entry, one per supported NetBox object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Device,
    VirtualMachine,
    IpAddress,
    Prefix,
    Interface,
    VmInterface,
    Vlan,
    Vrf,
    Cluster,
    Site,
    Tenant,
    Service,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Webhook => "webhook",
            Origin::Reconcile => "reconcile",
            Origin::Cascade => "cascade",
        }
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::VirtualMachine => "virtual_machine",
            Kind::IpAddress => "ip_address",
            Kind::Prefix => "prefix",
            Kind::Interface => "interface",
            Kind::VmInterface => "vm_interface",
            Kind::Vlan => "vlan",
            Kind::Vrf => "vrf",
            Kind::Cluster => "cluster",
            Kind::Site => "site",
            Kind::Tenant => "tenant",
            Kind::Service => "service",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hash behind `delta_id`. Labels and attributes are sorted maps, so the serialization, and
/// with it the id, depends only on the content.
pub fn delta_id(
    key: &str,
    op: Op,
    revision: &DateTime<Utc>,
    entry: Option<&Entry>,
) -> Result<String, serde_json::Error> {
    let canonical = serde_json::to_vec(&(key, op, revision, entry))?;
    let digest = Sha256::digest(&canonical);
    Ok(hex::encode(&digest[..16]))
}

/// A hash of an entry: 16 bytes of SHA-256 of its JSON. The state keeps it beside each key's
/// delta id, so that an entry translated again is compared without the stored entry.
pub type EntryHash = [u8; 16];

pub fn entry_hash(entry: &Entry) -> Result<EntryHash, serde_json::Error> {
    Ok(hash_of(&serde_json::to_vec(entry)?))
}

/// [`entry_hash`] of an entry's JSON.
pub fn hash_of(entry_json: &[u8]) -> EntryHash {
    let digest = Sha256::digest(entry_json);
    let mut hash = EntryHash::default();
    hash.copy_from_slice(&digest[..16]);
    hash
}

/// The JSON Schema of [`RegistryDelta`], pretty-printed, as checked in under `schemas/`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RegistryDelta);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}
