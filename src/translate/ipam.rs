//! Entries of IP addresses, prefixes, VLANs, VRFs and services, and the discovery sweep targets.

use ipnet::IpNet;
use serde_json::Value;

use super::fields::{
    cidr, label_value, name, nested, nested_text, scoped_site, text, without_mask, EntryBuilder,
    Object,
};
use super::{SweepOptions, TranslateError};
use crate::delta::Sweep;

pub fn ip_address(
    obj: &Object,
    builder: &mut EntryBuilder,
    sweep: &SweepOptions,
) -> Result<Sweep, TranslateError> {
    let net = cidr("address", text(obj, "address"))?;
    builder.address(net.addr().to_string());
    let assigned = nested(obj, "assigned_object");
    builder
        .label_from("tenant", obj, "tenant")
        .label_from("role", obj, "role")
        .label("vrf", nested_text(obj, "vrf", "name").map(String::from))
        .attr_from("dns_name", obj, "dns_name")
        .attr_from("assigned_object_type", obj, "assigned_object_type")
        .attr_from("assigned_object_id", obj, "assigned_object_id")
        .text_attr("interface", assigned.and_then(|a| text(a, "name")))
        .text_attr(
            "device",
            assigned.and_then(|a| nested_text(a, "device", "name")),
        )
        .text_attr(
            "virtual_machine",
            assigned.and_then(|a| nested_text(a, "virtual_machine", "name")),
        );
    let host = IpNet::from(net.addr());
    Ok(match sweep.expand_subnets {
        true => sweep_of(net.trunc(), sweep.max_expanded_hosts),
        false => sweep_of(host, 1),
    })
}

pub fn prefix(
    obj: &Object,
    builder: &mut EntryBuilder,
    sweep: &SweepOptions,
) -> Result<Sweep, TranslateError> {
    let net = cidr("prefix", text(obj, "prefix"))?;
    scoped_site(obj, builder);
    builder
        .label_from("tenant", obj, "tenant")
        .label_from("role", obj, "role")
        .label("vrf", nested_text(obj, "vrf", "name").map(String::from))
        .label(
            "vlan",
            nested(obj, "vlan").and_then(|v| label_value(v.get("vid"))),
        )
        .attr_from("is_pool", obj, "is_pool")
        .attr_from("scope_type", obj, "scope_type")
        .text_attr("scope", nested(obj, "scope").map(name).as_deref());
    let max_hosts = if sweep.expand_subnets {
        sweep.max_expanded_hosts
    } else {
        0
    };
    Ok(sweep_of(net.trunc(), max_hosts))
}

pub fn vlan(obj: &Object, builder: &mut EntryBuilder) {
    builder
        .label_from("site", obj, "site")
        .label_from("tenant", obj, "tenant")
        .label_from("role", obj, "role")
        .label("vlan", label_value(obj.get("vid")))
        .attr_from("vid", obj, "vid")
        .text_attr("group", nested_text(obj, "group", "slug"));
}

pub fn vrf(obj: &Object, builder: &mut EntryBuilder) {
    builder
        .label_from("tenant", obj, "tenant")
        .label("vrf", text(obj, "name").map(String::from))
        .attr_from("rd", obj, "rd")
        .attr_from("enforce_unique", obj, "enforce_unique");
}

/// A service hangs off a device or VM: `parent` since NetBox 4.3, `device` / `virtual_machine`
/// before.
pub fn service(obj: &Object, builder: &mut EntryBuilder) -> Result<(), TranslateError> {
    let addresses = obj
        .get("ipaddresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for address in addresses
        .filter_map(Value::as_object)
        .filter_map(|a| text(a, "address"))
    {
        builder.address(without_mask("ipaddresses", address)?);
    }
    let (parent_type, parent) = match text(obj, "parent_object_type") {
        Some(t) => (Some(t), nested(obj, "parent")),
        None if nested(obj, "device").is_some() => (Some("dcim.device"), nested(obj, "device")),
        None => (
            nested(obj, "virtual_machine").map(|_| "virtualization.virtualmachine"),
            nested(obj, "virtual_machine"),
        ),
    };
    ports(obj, builder);
    builder
        .text_attr("parent_object_type", parent_type)
        .attr(
            "parent_object_id",
            parent.and_then(|p| p.get("id")).cloned(),
        )
        .text_attr("parent", parent.map(name).as_deref());
    Ok(())
}

/// A service's `protocol` and `ports`. NetBox 4.7 lists `port_mappings` (`["tcp/53", "udp/53"]`)
/// and leaves `protocol` and `ports` null when they span several protocols: then `ports` are
/// those of every mapping and `port_mappings` says which protocol each has. A single-protocol
/// service has the same entry in every version.
fn ports(obj: &Object, builder: &mut EntryBuilder) {
    let protocol = label_value(obj.get("protocol"));
    let mappings = obj.get("port_mappings").and_then(Value::as_array);
    let (Some(mappings), None) = (mappings, &protocol) else {
        builder
            .attr("protocol", protocol.map(Value::String))
            .attr_from("ports", obj, "ports");
        return;
    };
    let mut protocols = Vec::new();
    let mut ports = Vec::new();
    for (proto, port) in mappings.iter().filter_map(|m| port_mapping(m.as_str()?)) {
        if !protocols.contains(&proto) {
            protocols.push(proto);
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let single = (protocols.len() == 1).then(|| Value::String(protocols[0].to_string()));
    let listed = (protocols.len() > 1).then(|| mappings.clone());
    builder
        .attr("protocol", single)
        .attr("ports", (!ports.is_empty()).then(|| Value::from(ports)))
        .attr("port_mappings", listed.map(Value::Array));
}

/// `tcp/53` -> ("tcp", 53).
fn port_mapping(text: &str) -> Option<(&str, u64)> {
    let (protocol, port) = text.split_once('/')?;
    Some((protocol, port.trim().parse().ok()?))
}

/// The sweep of `net`, listing its hosts only when there are at most `max_hosts` of them.
fn sweep_of(net: IpNet, max_hosts: usize) -> Sweep {
    let hosts: Vec<String> = net
        .hosts()
        .take(max_hosts.saturating_add(1))
        .map(|h| h.to_string())
        .collect();
    Sweep {
        cidr: net.to_string(),
        hosts: if hosts.len() <= max_hosts {
            hosts
        } else {
            Vec::new()
        },
        hosts_omitted: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn a_host_sweeps_as_itself() {
        let sweep = sweep_of(IpNet::from("10.0.0.5".parse::<IpAddr>().unwrap()), 1);
        assert_eq!(sweep.cidr, "10.0.0.5/32");
        assert_eq!(sweep.hosts, vec!["10.0.0.5"]);
        let sweep = sweep_of(IpNet::from("2001:db8::5".parse::<IpAddr>().unwrap()), 1);
        assert_eq!(sweep.cidr, "2001:db8::5/128");
    }

    #[test]
    fn small_networks_list_their_hosts_and_large_ones_do_not() {
        let net: IpNet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(sweep_of(net, 4096).hosts, vec!["10.0.0.1", "10.0.0.2"]);
        let net: IpNet = "10.0.0.0/16".parse().unwrap();
        assert!(sweep_of(net, 4096).hosts.is_empty());
        let net: IpNet = "2001:db8::/64".parse().unwrap();
        assert!(sweep_of(net, 4096).hosts.is_empty());
    }
}
