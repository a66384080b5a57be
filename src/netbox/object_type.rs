//! The NetBox object types netbox-relay translates, and how each generation of NetBox names them:
//! `object_type` (`dcim.device`), bare `model` (`device`), or only the object's API URL.

use crate::delta::Kind;

/// One supported NetBox object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectType {
    pub kind: Kind,
    /// `app_label.model`, e.g. `dcim.device`.
    pub name: &'static str,
    /// The REST endpoint below `/api/`, e.g. `dcim/devices`.
    pub api_path: &'static str,
}

impl ObjectType {
    /// The bare model name that older NetBox versions send as `model`.
    pub fn model(&self) -> &'static str {
        self.name
            .split_once('.')
            .map_or(self.name, |(_, model)| model)
    }

    pub fn app_label(&self) -> &'static str {
        self.name.split_once('.').map_or("", |(app, _)| app)
    }

    /// Looks up `app_label.model`.
    pub fn from_name(name: &str) -> Option<ObjectType> {
        ALL.iter().copied().find(|t| t.name == name)
    }

    /// Looks up a bare model name; `app_label` (from the object's URL) settles a clash if one
    /// ever appears.
    pub fn from_model(model: &str, app_label: Option<&str>) -> Option<ObjectType> {
        ALL.iter()
            .copied()
            .find(|t| t.model() == model && app_label.is_none_or(|app| app == t.app_label()))
    }

    /// Looks up an object URL, relative (`/api/dcim/devices/42/`) or absolute.
    pub fn from_url(url: &str) -> Option<ObjectType> {
        let (app, endpoint) = api_endpoint(url)?;
        ALL.iter()
            .copied()
            .find(|t| t.api_path.split_once('/') == Some((app, endpoint)))
    }

    pub fn from_kind(kind: Kind) -> ObjectType {
        // ALL holds one entry per Kind; the fallback is never taken.
        ALL.iter()
            .copied()
            .find(|t| t.kind == kind)
            .unwrap_or(ALL[0])
    }
}

/// `(app_label, endpoint)` of an API URL: `/api/dcim/devices/42/` -> `("dcim", "devices")`.
pub fn api_endpoint(url: &str) -> Option<(&str, &str)> {
    let (_, rest) = url.split_once("/api/")?;
    let mut parts = rest.split('/');
    Some((parts.next()?, parts.next()?))
}

/// Every supported object type, in the order of the contract.
pub const ALL: [ObjectType; 12] = [
    ot(Kind::Device, "dcim.device", "dcim/devices"),
    ot(
        Kind::VirtualMachine,
        "virtualization.virtualmachine",
        "virtualization/virtual-machines",
    ),
    ot(Kind::IpAddress, "ipam.ipaddress", "ipam/ip-addresses"),
    ot(Kind::Prefix, "ipam.prefix", "ipam/prefixes"),
    ot(Kind::Interface, "dcim.interface", "dcim/interfaces"),
    ot(
        Kind::VmInterface,
        "virtualization.vminterface",
        "virtualization/interfaces",
    ),
    ot(Kind::Vlan, "ipam.vlan", "ipam/vlans"),
    ot(Kind::Vrf, "ipam.vrf", "ipam/vrfs"),
    ot(
        Kind::Cluster,
        "virtualization.cluster",
        "virtualization/clusters",
    ),
    ot(Kind::Site, "dcim.site", "dcim/sites"),
    ot(Kind::Tenant, "tenancy.tenant", "tenancy/tenants"),
    ot(Kind::Service, "ipam.service", "ipam/services"),
];

const fn ot(kind: Kind, name: &'static str, api_path: &'static str) -> ObjectType {
    ObjectType {
        kind,
        name,
        api_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generation_names_the_same_type() {
        let by_name = ObjectType::from_name("virtualization.vminterface").unwrap();
        let by_model = ObjectType::from_model("vminterface", None).unwrap();
        let by_url = ObjectType::from_url("/api/virtualization/interfaces/7/").unwrap();
        assert_eq!(by_name, by_model);
        assert_eq!(by_name, by_url);
        assert_eq!(by_name.kind, Kind::VmInterface);
    }

    #[test]
    fn dcim_interface_is_not_the_vm_interface() {
        let t = ObjectType::from_url("https://netbox.example.net/api/dcim/interfaces/1/").unwrap();
        assert_eq!(t.name, "dcim.interface");
        assert_eq!(ObjectType::from_model("interface", Some("dcim")), Some(t));
    }

    #[test]
    fn unsupported_types_are_not_found() {
        assert_eq!(ObjectType::from_name("dcim.manufacturer"), None);
        assert_eq!(ObjectType::from_model("manufacturer", None), None);
        assert_eq!(ObjectType::from_url("/api/dcim/manufacturers/1/"), None);
        assert_eq!(ObjectType::from_url("/dcim/devices/1/"), None);
    }

    #[test]
    fn every_kind_has_exactly_one_type() {
        for t in ALL {
            assert_eq!(ObjectType::from_kind(t.kind), t);
            assert_eq!(ALL.iter().filter(|o| o.kind == t.kind).count(), 1);
        }
    }
}
