//! The registry as Prometheus targets: one target group per entry with an address, kept in memory
//! and rendered to `http_sd` JSON. Each group's labels are rendered once, when its delta arrives,
//! so that an answer is mostly copying.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use serde_json::Value;

use crate::delta::{Kind, Op, RegistryDelta};

/// The kinds that become targets: devices and VMs by their primary IP, IP addresses, services by
/// their IPs and ports.
pub const TARGET_KINDS: [Kind; 4] = [
    Kind::Device,
    Kind::VirtualMachine,
    Kind::IpAddress,
    Kind::Service,
];

/// Entry labels whose meaning is the slug of a related object: named as the NetBox Prometheus SD
/// plugin names them, so that relabel rules written for it keep working.
const SLUG_LABELS: [(&str, &str); 4] = [
    ("site", "site_slug"),
    ("tenant", "tenant_slug"),
    ("role", "role_slug"),
    ("platform", "platform_slug"),
];

/// One entry's target group.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub kind: Kind,
    pub status: Option<String>,
    /// The entry's labels, for `label.<name>=` filters.
    pub labels: BTreeMap<String, String>,
    /// Hosts: bare IPv4, bracketed IPv6.
    pub hosts: Vec<String>,
    /// A service's ports; empty for the rest.
    pub ports: Vec<u16>,
    /// The `labels` object of the group, rendered.
    meta: String,
    /// The whole group as answered without `port=`, rendered.
    group: String,
}

/// What an answer selects: all given conditions hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Any of these kinds; all target kinds when empty.
    pub kinds: Vec<Kind>,
    /// Any of these statuses; all when empty.
    pub statuses: Vec<String>,
    /// Every one of these entry labels, with this value.
    pub labels: Vec<(String, String)>,
    /// The port of every target: appended to hosts; a service keeps only this port.
    pub port: Option<u16>,
}

/// The current targets, by registry key.
#[derive(Default)]
pub struct Targets {
    by_key: RwLock<BTreeMap<String, Target>>,
    /// Moves with every change of the targets, so that a rendered answer knows it is current.
    version: AtomicU64,
}

impl Targets {
    /// Follows one delta: an upsert with an address sets its key's group, anything else removes
    /// it.
    pub fn apply(&self, delta: &RegistryDelta) {
        // Rendered before the lock: answers wait for a swap, not for JSON.
        let target = Target::of(delta);
        let mut by_key = self.by_key.write().unwrap_or_else(|e| e.into_inner());
        if Targets::apply_to(&mut by_key, delta, target) {
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    /// [`Targets::apply`] on a map being built, with `target` = [`Target::of`] the delta;
    /// whether the map changed.
    pub fn apply_to(
        map: &mut BTreeMap<String, Target>,
        delta: &RegistryDelta,
        target: Option<Target>,
    ) -> bool {
        match target {
            Some(target) if map.get(&delta.key) == Some(&target) => false,
            Some(target) => {
                map.insert(delta.key.clone(), target);
                true
            }
            None => map.remove(&delta.key).is_some(),
        }
    }

    /// Serves `map` from now on.
    pub fn replace(&self, map: BTreeMap<String, Target>) {
        *self.by_key.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.version.fetch_add(1, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.by_key.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `http_sd` answer: a JSON array of the selected groups.
    pub fn render(&self, selection: &Selection) -> String {
        self.render_versioned(selection).1
    }

    /// [`Targets::render`], with the version of the targets it shows.
    pub fn render_versioned(&self, selection: &Selection) -> (u64, String) {
        let by_key = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        let version = self.version.load(Ordering::Acquire);
        let mut out = String::with_capacity(by_key.len() * 256);
        out.push('[');
        for target in by_key.values().filter(|t| t.selected(selection)) {
            target.write(&mut out, selection.port);
        }
        if out.ends_with(',') {
            out.pop();
        }
        out.push(']');
        (version, out)
    }

    /// The targets' version now.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

impl Target {
    /// The group of an upserted entry, if it has an address; none for a delete.
    pub fn of(delta: &RegistryDelta) -> Option<Target> {
        if delta.op == Op::Delete {
            return None;
        }
        let entry = delta.entry.as_ref()?;
        if !TARGET_KINDS.contains(&delta.kind) {
            return None;
        }
        let addresses: Vec<&String> = match delta.kind {
            // A host's first address is its primary (IPv4 before IPv6); the OOB one only without.
            Kind::Device | Kind::VirtualMachine => entry.addresses.iter().take(1).collect(),
            _ => entry.addresses.iter().collect(),
        };
        let hosts: Vec<String> = addresses.iter().map(|a| host(a)).collect();
        if hosts.is_empty() {
            return None;
        }
        let ports = match delta.kind {
            Kind::Service => ports(entry.attributes.get("ports")),
            _ => Vec::new(),
        };
        if delta.kind == Kind::Service && ports.is_empty() {
            return None;
        }
        let mut meta = BTreeMap::new();
        for (name, value) in &entry.attributes {
            if let Some(text) = attribute_text(value) {
                meta.insert(label_name(name), text);
            }
        }
        let mut tags = Vec::new();
        for (name, value) in &entry.labels {
            if let Some(tag) = name.strip_prefix("tag.") {
                tags.push(tag.to_string());
                continue;
            }
            if name == "source" {
                continue;
            }
            let renamed = SLUG_LABELS.iter().find(|(label, _)| label == name);
            let name = renamed.map_or(name.as_str(), |(_, plugin)| plugin);
            meta.insert(label_name(name), value.clone());
        }
        if !tags.is_empty() {
            meta.insert(label_name("tag_slugs"), tags.join(","));
        }
        let own = [
            ("kind", delta.kind.as_str().to_string()),
            ("id", delta.object_id.to_string()),
            ("key", delta.key.clone()),
            ("name", entry.name.clone()),
            ("url", entry.netbox_url.clone()),
        ];
        for (name, value) in own {
            meta.insert(label_name(name), value);
        }
        if let Some(status) = &entry.status {
            meta.insert(label_name("status"), status.clone());
        }
        if matches!(delta.kind, Kind::Device | Kind::VirtualMachine) {
            meta.insert(label_name("primary_ip"), addresses[0].clone());
        }
        let mut target = Target {
            kind: delta.kind,
            status: entry.status.clone(),
            labels: entry.labels.clone(),
            hosts,
            ports,
            meta: serde_json::to_string(&meta).unwrap_or_else(|_| "{}".into()),
            group: String::new(),
        };
        target.group = target.rendered(None);
        Some(target)
    }

    fn selected(&self, selection: &Selection) -> bool {
        let kind = selection.kinds.is_empty() || selection.kinds.contains(&self.kind);
        let status = selection.statuses.is_empty()
            || self
                .status
                .as_ref()
                .is_some_and(|s| selection.statuses.contains(s));
        let labels = selection
            .labels
            .iter()
            .all(|(name, value)| self.labels.get(name) == Some(value));
        let port = match (selection.port, self.kind) {
            (Some(port), Kind::Service) => self.ports.contains(&port),
            _ => true,
        };
        kind && status && labels && port
    }

    /// Appends the group and a comma.
    fn write(&self, out: &mut String, port: Option<u16>) {
        match port {
            None => out.push_str(&self.group),
            Some(_) => out.push_str(&self.rendered(port)),
        }
        out.push(',');
    }

    fn rendered(&self, port: Option<u16>) -> String {
        let targets: Vec<String> = match (self.kind, port) {
            (_, Some(port)) => self.hosts.iter().map(|h| format!("{h}:{port}")).collect(),
            (Kind::Service, None) => self
                .hosts
                .iter()
                .flat_map(|h| self.ports.iter().map(move |p| format!("{h}:{p}")))
                .collect(),
            (_, None) => self.hosts.clone(),
        };
        let targets = serde_json::to_string(&targets).unwrap_or_else(|_| "[]".into());
        format!("{{\"targets\":{targets},\"labels\":{}}}", self.meta)
    }
}

/// An address as a Prometheus host: IPv6 in brackets, so that a port can follow.
fn host(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => address.to_string(),
    }
}

fn ports(value: Option<&Value>) -> Vec<u16> {
    let ports = value.and_then(Value::as_array).into_iter().flatten();
    ports
        .filter_map(Value::as_u64)
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .collect()
}

/// A scalar, or a list of scalars joined with commas.
fn attribute_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let items: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::Array(_) | Value::Object(_) => None,
                    scalar => attribute_text(scalar),
                })
                .collect();
            items.map(|i| i.join(","))
        }
        Value::Null | Value::Object(_) => None,
    }
}

/// `__meta_netbox_<name>`, with what a Prometheus label name cannot hold made `_`.
fn label_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_netbox_{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(kind: &str, id: u64, op: &str, entry: Value) -> RegistryDelta {
        serde_json::from_value(serde_json::json!({
            "schema": "netbox-relay/registry-delta/v1", "delta_id": format!("d{id}{op}"),
            "op": op, "kind": kind, "key": format!("netbox/default/x/{id}"),
            "partition": "default", "source": "netbox", "origin": "webhook",
            "object_type": "x", "object_id": id, "revision": "2026-11-22T10:45:01Z",
            "observed_at": "2026-11-22T10:45:01Z", "entry": entry,
        }))
        .unwrap()
    }

    fn entry(addresses: &[&str], attributes: Value) -> Value {
        serde_json::json!({"name": "n", "status": "active", "addresses": addresses,
            "labels": {"source": "netbox", "site": "fra1", "tag.prod": "true", "tag.edge": "true"},
            "attributes": attributes, "netbox_url": "/api/x/1/"})
    }

    fn answer(targets: &Targets, query: &str) -> Value {
        let selection = super::super::parse_query(Some(query)).unwrap();
        serde_json::from_str(&targets.render(&selection)).unwrap()
    }

    #[test]
    fn services_pair_each_address_with_each_port_and_ipv6_is_bracketed() {
        let targets = Targets::default();
        let ports = serde_json::json!({"ports": [22, 443], "protocol": "tcp"});
        targets.apply(&delta(
            "service",
            1,
            "upsert",
            entry(&["10.0.0.1", "2001:db8::1"], ports),
        ));
        targets.apply(&delta(
            "device",
            2,
            "upsert",
            entry(&["2001:db8::2", "10.0.0.9"], serde_json::json!({})),
        ));
        let all = answer(&targets, "");
        assert_eq!(
            all[0]["targets"],
            serde_json::json!([
                "10.0.0.1:22",
                "10.0.0.1:443",
                "[2001:db8::1]:22",
                "[2001:db8::1]:443"
            ])
        );
        assert_eq!(all[0]["labels"]["__meta_netbox_ports"], "22,443");
        assert_eq!(all[0]["labels"]["__meta_netbox_site_slug"], "fra1");
        assert_eq!(all[0]["labels"]["__meta_netbox_tag_slugs"], "edge,prod");
        assert_eq!(all[1]["targets"], serde_json::json!(["[2001:db8::2]"]));
        let on_443 = answer(&targets, "port=443");
        assert_eq!(
            on_443[0]["targets"],
            serde_json::json!(["10.0.0.1:443", "[2001:db8::1]:443"])
        );
        assert_eq!(
            on_443[1]["targets"],
            serde_json::json!(["[2001:db8::2]:443"])
        );
        assert_eq!(
            answer(&targets, "port=80&kind=service"),
            serde_json::json!([])
        );
    }

    #[test]
    fn a_delete_or_an_entry_without_address_leaves_no_group() {
        let targets = Targets::default();
        targets.apply(&delta(
            "device",
            1,
            "upsert",
            entry(&["10.0.0.1"], serde_json::json!({})),
        ));
        targets.apply(&delta(
            "prefix",
            2,
            "upsert",
            entry(&["10.0.0.0"], serde_json::json!({})),
        ));
        assert_eq!(targets.len(), 1, "prefixes are no targets");
        targets.apply(&delta(
            "device",
            1,
            "upsert",
            entry(&[], serde_json::json!({})),
        ));
        assert!(
            targets.is_empty(),
            "an address removed takes the group along"
        );
        targets.apply(&delta(
            "device",
            1,
            "upsert",
            entry(&["10.0.0.1"], serde_json::json!({})),
        ));
        targets.apply(&delta("device", 1, "delete", Value::Null));
        assert!(targets.is_empty());
        assert_eq!(answer(&targets, ""), serde_json::json!([]));
    }
}
