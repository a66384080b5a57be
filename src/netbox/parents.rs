//! Parents: the NetBox objects whose name, slug or VLAN id other objects' entries show as a label
//! (a device's `site`, an IP address's `vrf`, any entry's `tag.<slug>`). NetBox sends no webhook
//! for the objects pointing at a parent that changed, so the relay pulls them itself, with the
//! filter NetBox's REST API offers for that relation.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::object_type::api_endpoint;
use super::webhook::Changes;
use super::ObjectType;
use crate::delta::Entry;

type Object = Map<String, Value>;

/// 8 bytes of SHA-256 of what a parent's dependents show of it ([`Parent::shown_hash`]).
pub type ShownHash = [u8; 8];

/// How the dependents of one parent are selected in the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `<name>=<parent id>`, e.g. `site_id=3`.
    Id(&'static str),
    /// `<name>=<parent slug>`, e.g. `tag=critical` (the slug after the change).
    Slug(&'static str),
    /// `id=<host id>`: the device or VM (`app_label.model`) an IP address is assigned to.
    Host(&'static str),
    /// `<name>=<host id>`: what belongs to that device or VM, e.g. `device_id=4` for its
    /// services. NetBox removes a deleted IP address from the services that list it without
    /// saving them, and refuses `ip_address_id=` of an address it no longer has: the host's
    /// services are where they are found.
    OfHost(&'static str, &'static str),
}

/// One kind of parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// `app_label.model`, e.g. `dcim.devicerole`.
    pub name: &'static str,
    /// The REST endpoint below `/api/`: what older webhooks that name no type are known by.
    pub api_path: &'static str,
    /// The parent's fields that its dependents' entries show.
    pub shown: &'static [&'static str],
    /// The object types (`app_label.model`) whose entries show it, and how to find them.
    pub dependents: &'static [(&'static str, Filter)],
}

impl Parent {
    pub fn from_name(name: &str) -> Option<&'static Parent> {
        PARENTS.iter().find(|p| p.name == name)
    }

    /// A bare model name (`devicerole`), as NetBox up to 4.3 sends it.
    pub fn from_model(model: &str) -> Option<&'static Parent> {
        PARENTS
            .iter()
            .find(|p| p.name.split_once('.').map(|(_, m)| m) == Some(model))
    }

    /// An object URL such as `/api/dcim/platforms/2/`.
    pub fn from_url(url: &str) -> Option<&'static Parent> {
        let (app, endpoint) = api_endpoint(url)?;
        PARENTS
            .iter()
            .find(|p| p.api_path.split_once('/') == Some((app, endpoint)))
    }

    /// Whether NetBox clears the references to a deleted object of this kind without saving the
    /// objects that held them (a host's primary IP is a one-to-one field NetBox's delete
    /// handler passes over): no webhook, no `last_updated` tells of the change.
    pub fn cleared_unsaved(&self) -> bool {
        self.name == IP
    }

    /// Whether NetBox removes a deleted object of this kind from the objects that showed it
    /// without saving them, with a webhook each but their `last_updated` unchanged (a tag): once
    /// those webhooks are lost, only NetBox's change log tells which objects they were.
    pub fn deleted_unstamped(&self) -> bool {
        self.name == "extras.tag"
    }

    /// What its dependents show of a registry-kind parent, as its own entry has it: two entries
    /// of the parent whose values here differ call for a cascade. `None` for a parent that is
    /// only a trigger.
    pub fn shown_in(&self, entry: &Entry) -> Option<Vec<Option<String>>> {
        let label = |name: &str| entry.labels.get(name).cloned();
        let attribute = |name: &str| entry.attributes.get(name).map(|v| v.to_string());
        Some(match self.name {
            SITE => vec![label("site")],
            "tenancy.tenant" => vec![label("tenant")],
            VLAN => vec![label("vlan")],
            IP => vec![
                Some(entry.name.clone()),
                entry.status.clone(),
                attribute("assigned_object_type"),
                attribute("assigned_object_id"),
            ],
            CLUSTER | VRF | DEVICE | VM => vec![Some(entry.name.clone())],
            _ => return None,
        })
    }

    /// A hash of [`Parent::shown_in`]: what the state keeps of a parent's last entry, so that a
    /// webhook can tell whether the registry shows what its dependents should, without reading
    /// the stream.
    pub fn shown_hash(&self, entry: &Entry) -> Option<ShownHash> {
        let shown = self.shown_in(entry)?;
        let mut digest = Sha256::new();
        for value in shown {
            // A length-prefixed value, or a marker for none: no two lists hash alike.
            match value {
                Some(v) => {
                    digest.update([1]);
                    digest.update((v.len() as u64).to_be_bytes());
                    digest.update(v.as_bytes());
                }
                None => digest.update([0]),
            }
        }
        let mut hash = ShownHash::default();
        hash.copy_from_slice(&digest.finalize()[..8]);
        Some(hash)
    }

    /// Whether the parent is only a trigger, not a registry kind of its own.
    pub fn trigger_only(&self) -> bool {
        super::ObjectType::from_name(self.name).is_none()
    }

    /// The cascade an update of parent `id` calls for: one when the shown field differs between
    /// the snapshots before and after, or when NetBox sent no snapshots to tell.
    pub fn trigger(&'static self, id: u64, data: &Object, changes: &Changes) -> Option<Trigger> {
        let changed = match &changes.fields {
            Some(fields) => self.shown.iter().any(|f| fields.iter().any(|c| c == f)),
            None => true,
        };
        let slug_now = data.get("slug").and_then(Value::as_str).map(String::from);
        changed.then(|| Trigger {
            parent: self,
            id,
            slug: changes.slug_after.clone().or(slug_now),
            hosts: assigned_host(data).into_iter().collect(),
        })
    }
}

impl Parent {
    /// The cascade of a change to parent `id` that is known to have happened but not which
    /// fields it changed: a run that found the parent changed, main's newer object delivered by a
    /// confirmation. `object` is the parent as the REST API serves it now.
    pub fn any_change(&'static self, id: u64, object: &Object) -> Trigger {
        let changes = Changes::default();
        let unknown = self.trigger(id, object, &changes);
        unknown.unwrap_or_else(|| Trigger {
            parent: self,
            id,
            slug: None,
            hosts: Vec::new(),
        })
    }
}

/// A parent whose shown value changed: its dependents are to be pulled again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub parent: &'static Parent,
    pub id: u64,
    /// The slug after the change, for [`Filter::Slug`].
    pub slug: Option<String>,
    /// The device or VM an IP address is assigned to, for [`Filter::Host`].
    pub hosts: Vec<(&'static str, u64)>,
}

impl Trigger {
    /// A read of one object of `object_type` again, as NetBox shows it now.
    pub fn reread(object_type: &'static str, id: u64) -> Trigger {
        Trigger {
            parent: &OBJECT,
            id,
            slug: None,
            hosts: vec![(object_type, id)],
        }
    }

    /// The parent it is about, `dcim.site/3` (`netbox-relay.object/dcim.device/4` for a
    /// re-read): one pending cascade per parent.
    pub fn key(&self) -> String {
        match (self.parent == &OBJECT, self.hosts.first()) {
            (true, Some((object_type, _))) => format!("{}/{object_type}/{}", OBJECT.name, self.id),
            _ => format!("{}/{}", self.parent.name, self.id),
        }
    }

    /// The trigger as the state file keeps it; `token` tells two triggers of one parent apart.
    pub fn encode(&self, token: &str) -> Vec<u8> {
        let hosts: Vec<(&str, u64)> = self.hosts.clone();
        let value = serde_json::json!({"token": token, "slug": self.slug, "hosts": hosts});
        value.to_string().into_bytes()
    }

    /// A trigger [`Trigger::encode`] wrote under `key`; None for one no longer understood.
    pub fn decode(key: &str, bytes: &[u8]) -> Option<Trigger> {
        let (name, id) = key.rsplit_once('/')?;
        let value: Value = serde_json::from_slice(bytes).ok()?;
        if let Some(object_type) = name
            .strip_prefix(OBJECT.name)
            .and_then(|t| t.strip_prefix('/'))
        {
            let object_type = ObjectType::from_name(object_type)?.name;
            return Some(Trigger::reread(object_type, id.parse().ok()?));
        }
        let hosts = value.get("hosts")?.as_array()?.iter().map(|host| {
            let host_type = ObjectType::from_name(host.get(0)?.as_str()?)?.name;
            Some((host_type, host.get(1)?.as_u64()?))
        });
        Some(Trigger {
            parent: Parent::from_name(name)?,
            id: id.parse().ok()?,
            slug: value.get("slug")?.as_str().map(String::from),
            hosts: hosts.collect::<Option<_>>()?,
        })
    }

    /// The query selecting the dependents that `filter` names, or `None` when it cannot be
    /// built (a slug filter for a parent that sent no slug).
    pub fn query(&self, filter: Filter) -> Option<String> {
        match filter {
            Filter::Id(name) => Some(format!("{name}={}", self.id)),
            Filter::Slug(name) => {
                let slug = self.slug.as_deref()?;
                let slug: String = form_urlencoded::byte_serialize(slug.as_bytes()).collect();
                Some(format!("{name}={slug}"))
            }
            Filter::Host(host_type) => self.of_hosts(host_type, "id"),
            Filter::OfHost(host_type, name) => self.of_hosts(host_type, name),
        }
    }
}

impl Trigger {
    /// `<name>=<id>` for each of the trigger's hosts of `host_type`, joined; `None` for none.
    fn of_hosts(&self, host_type: &str, name: &str) -> Option<String> {
        let ids = self.hosts.iter().filter(|(t, _)| *t == host_type);
        let query: Vec<String> = ids.map(|(_, id)| format!("{name}={id}")).collect();
        (!query.is_empty()).then(|| query.join("&"))
    }
}

/// The device or VM of the interface an IP address is assigned to, as the webhook's `data`
/// names it (`assigned_object.device` or `assigned_object.virtual_machine`).
fn assigned_host(data: &Object) -> Option<(&'static str, u64)> {
    let assigned = data.get("assigned_object")?;
    [(DEVICE, "device"), (VM, "virtual_machine")]
        .into_iter()
        .find_map(|(host_type, field)| {
            let id = assigned.get(field)?.get("id")?.as_u64()?;
            Some((host_type, id))
        })
}

const fn by_id(object_type: &'static str, filter: &'static str) -> (&'static str, Filter) {
    (object_type, Filter::Id(filter))
}

const DEVICE: &str = "dcim.device";
const VM: &str = "virtualization.virtualmachine";
const IP: &str = "ipam.ipaddress";
const PREFIX: &str = "ipam.prefix";
const INTERFACE: &str = "dcim.interface";
const VM_INTERFACE: &str = "virtualization.vminterface";
const VLAN: &str = "ipam.vlan";
const VRF: &str = "ipam.vrf";
const CLUSTER: &str = "virtualization.cluster";
const SITE: &str = "dcim.site";

const fn itself(object_type: &'static str) -> (&'static str, Filter) {
    (object_type, Filter::Host(object_type))
}

/// No NetBox type: the object itself, read again ([`Trigger::reread`]) when a webhook could not
/// tell whether it is newer than what the registry shows.
pub const OBJECT: Parent = Parent {
    name: "netbox-relay.object",
    api_path: "",
    shown: &[],
    dependents: &[
        itself(DEVICE),
        itself(VM),
        itself(IP),
        itself(PREFIX),
        itself(INTERFACE),
        itself(VM_INTERFACE),
        itself(VLAN),
        itself(VRF),
        itself(CLUSTER),
        itself(SITE),
        itself("tenancy.tenant"),
        itself("ipam.service"),
    ],
};

/// Every parent, with the dependents whose entries show it (see `translate`'s readers). The
/// filters are those of NetBox's filter sets: a prefix's and a cluster's `site_id` follow their
/// scope; an interface's `vlan_id` matches tagged and untagged VLANs (a superset of the
/// untagged one its entry shows). IP addresses show no site, so a site does not reach them; they
/// show the device or VM of their interface, which NetBox's `device_id` / `virtual_machine_id`
/// filters follow.
pub const PARENTS: [Parent; 12] = [
    Parent {
        name: SITE,
        api_path: "dcim/sites",
        shown: &["slug"],
        dependents: &[
            by_id(DEVICE, "site_id"),
            by_id(VM, "site_id"),
            by_id(PREFIX, "site_id"),
            by_id(VLAN, "site_id"),
            by_id(CLUSTER, "site_id"),
        ],
    },
    Parent {
        name: "tenancy.tenant",
        api_path: "tenancy/tenants",
        shown: &["slug"],
        dependents: &[
            by_id(DEVICE, "tenant_id"),
            by_id(VM, "tenant_id"),
            by_id(IP, "tenant_id"),
            by_id(PREFIX, "tenant_id"),
            by_id(VLAN, "tenant_id"),
            by_id(VRF, "tenant_id"),
            by_id(CLUSTER, "tenant_id"),
            by_id(SITE, "tenant_id"),
        ],
    },
    Parent {
        name: CLUSTER,
        api_path: "virtualization/clusters",
        shown: &["name"],
        dependents: &[by_id(VM, "cluster_id"), by_id(DEVICE, "cluster_id")],
    },
    Parent {
        name: VRF,
        api_path: "ipam/vrfs",
        shown: &["name"],
        dependents: &[
            by_id(IP, "vrf_id"),
            by_id(PREFIX, "vrf_id"),
            by_id(INTERFACE, "vrf_id"),
            by_id(VM_INTERFACE, "vrf_id"),
        ],
    },
    Parent {
        name: VLAN,
        api_path: "ipam/vlans",
        shown: &["vid"],
        dependents: &[
            by_id(PREFIX, "vlan_id"),
            by_id(INTERFACE, "vlan_id"),
            by_id(VM_INTERFACE, "vlan_id"),
        ],
    },
    Parent {
        name: DEVICE,
        api_path: "dcim/devices",
        shown: &["name"],
        dependents: &[
            by_id(INTERFACE, "device_id"),
            by_id(IP, "device_id"),
            by_id("ipam.service", "device_id"),
        ],
    },
    Parent {
        name: VM,
        api_path: "virtualization/virtual-machines",
        shown: &["name"],
        dependents: &[
            by_id(VM_INTERFACE, "virtual_machine_id"),
            by_id(IP, "virtual_machine_id"),
            by_id("ipam.service", "virtual_machine_id"),
        ],
    },
    // A renumbered IP address sends no webhook for the device or VM whose primary or OOB IP it is,
    // nor for the services that list it. Its host is the one it is assigned to after the change:
    // NetBox refuses to reassign or unassign an IP address that is its host's primary or OOB IP.
    Parent {
        name: IP,
        api_path: "ipam/ip-addresses",
        shown: &[
            "address",
            "assigned_object_type",
            "assigned_object_id",
            "status",
        ],
        dependents: &[
            (DEVICE, Filter::Host(DEVICE)),
            (VM, Filter::Host(VM)),
            by_id("ipam.service", "ip_address_id"),
            ("ipam.service", Filter::OfHost(DEVICE, "device_id")),
            ("ipam.service", Filter::OfHost(VM, "virtual_machine_id")),
        ],
    },
    Parent {
        name: "dcim.devicerole",
        api_path: "dcim/device-roles",
        shown: &["slug"],
        dependents: &[by_id(DEVICE, "role_id"), by_id(VM, "role_id")],
    },
    Parent {
        name: "dcim.platform",
        api_path: "dcim/platforms",
        shown: &["slug"],
        dependents: &[by_id(DEVICE, "platform_id"), by_id(VM, "platform_id")],
    },
    Parent {
        name: "ipam.role",
        api_path: "ipam/roles",
        shown: &["slug"],
        dependents: &[by_id(PREFIX, "role_id"), by_id(VLAN, "role_id")],
    },
    Parent {
        name: "extras.tag",
        api_path: "extras/tags",
        shown: &["slug"],
        dependents: &[
            (DEVICE, Filter::Slug("tag")),
            (VM, Filter::Slug("tag")),
            (IP, Filter::Slug("tag")),
            (PREFIX, Filter::Slug("tag")),
            (INTERFACE, Filter::Slug("tag")),
            (VM_INTERFACE, Filter::Slug("tag")),
            (VLAN, Filter::Slug("tag")),
            (VRF, Filter::Slug("tag")),
            (CLUSTER, Filter::Slug("tag")),
            (SITE, Filter::Slug("tag")),
            ("tenancy.tenant", Filter::Slug("tag")),
            ("ipam.service", Filter::Slug("tag")),
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netbox::ObjectType;

    #[test]
    fn every_dependent_is_a_registry_type() {
        for parent in PARENTS {
            for (dependent, _) in parent.dependents {
                assert!(ObjectType::from_name(dependent).is_some(), "{dependent}");
            }
        }
    }

    #[test]
    fn every_registry_kind_parent_says_what_its_entry_shows() {
        let entry = Entry {
            name: "leaf1".into(),
            status: Some("active".into()),
            addresses: Vec::new(),
            labels: Default::default(),
            attributes: Default::default(),
            sweep: None,
            netbox_url: String::new(),
        };
        for parent in PARENTS {
            assert_eq!(
                parent.shown_in(&entry).is_some(),
                !parent.trigger_only(),
                "{}",
                parent.name
            );
        }
        let device = Parent::from_name(DEVICE).unwrap();
        let mut renamed = entry.clone();
        renamed.name = "leaf2".into();
        let mut offline = entry.clone();
        offline.status = Some("offline".into());
        assert_ne!(device.shown_in(&entry), device.shown_in(&renamed));
        assert_eq!(device.shown_in(&entry), device.shown_in(&offline));
        assert_ne!(device.shown_hash(&entry), device.shown_hash(&renamed));
        assert_eq!(device.shown_hash(&entry), device.shown_hash(&offline));
        let ip = Parent::from_name(IP).unwrap();
        let mut unassigned = entry.clone();
        unassigned.status = None;
        assert_ne!(ip.shown_hash(&entry), ip.shown_hash(&unassigned));
    }

    #[test]
    fn a_reread_reads_every_registry_type_and_keeps_its_type_in_its_key() {
        assert_eq!(
            OBJECT.dependents.len(),
            crate::netbox::object_type::ALL.len()
        );
        let reread = Trigger::reread("dcim.interface", 7);
        assert_eq!(reread.key(), "netbox-relay.object/dcim.interface/7");
        assert_eq!(
            reread.query(Filter::Host("dcim.interface")).as_deref(),
            Some("id=7")
        );
        assert_eq!(reread.query(Filter::Host("dcim.device")), None);
        let stored = reread.encode("t");
        assert_eq!(Trigger::decode(&reread.key(), &stored), Some(reread));
        let site = Parent::from_name("dcim.site")
            .unwrap()
            .any_change(3, &Object::new());
        assert_eq!(Trigger::decode(&site.key(), &site.encode("t")), Some(site));
    }

    #[test]
    fn each_generation_names_a_parent_alike() {
        let by_name = Parent::from_name("dcim.platform").unwrap();
        assert_eq!(Parent::from_model("platform"), Some(by_name));
        assert_eq!(Parent::from_url("/api/dcim/platforms/2/"), Some(by_name));
        assert!(by_name.trigger_only());
        assert!(!Parent::from_name("dcim.site").unwrap().trigger_only());
        assert_eq!(Parent::from_name("dcim.manufacturer"), None);
    }
}
