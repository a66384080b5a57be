//! Entries of devices, virtual machines, their interfaces, clusters, sites and tenants.

use serde_json::Value;

use super::fields::{
    label_value, name, nested, nested_text, scoped_site, text, without_mask, EntryBuilder, Object,
};
use super::TranslateError;

/// A device or virtual machine: the hosts a monitoring system probes.
pub fn host(obj: &Object, builder: &mut EntryBuilder) -> Result<(), TranslateError> {
    for field in ["primary_ip4", "primary_ip6", "oob_ip"] {
        if let Some(address) = nested_text(obj, field, "address") {
            builder.address(without_mask(field, address)?);
        }
    }
    builder
        .label_from("site", obj, "site")
        .label_from("tenant", obj, "tenant")
        .label_from("role", obj, "role")
        .label_from("platform", obj, "platform")
        .label(
            "cluster",
            nested_text(obj, "cluster", "name").map(String::from),
        )
        .label_from("location", obj, "location");
    Ok(())
}

pub fn device(obj: &Object, builder: &mut EntryBuilder) {
    let device_type = nested(obj, "device_type");
    builder
        .attr_from("serial", obj, "serial")
        .attr_from("asset_tag", obj, "asset_tag")
        .text_attr("device_type", device_type.and_then(|t| text(t, "model")))
        .text_attr(
            "manufacturer",
            device_type.and_then(|t| nested_text(t, "manufacturer", "name")),
        )
        .text_attr("rack", nested_text(obj, "rack", "name"));
}

pub fn virtual_machine(obj: &Object, builder: &mut EntryBuilder) {
    builder
        .attr_from("vcpus", obj, "vcpus")
        .attr_from("memory", obj, "memory")
        .attr_from("disk", obj, "disk")
        .text_attr("device", nested_text(obj, "device", "name"));
}

/// A device interface (`parent_key` = "device") or a VM interface ("virtual_machine").
pub fn interface(obj: &Object, builder: &mut EntryBuilder, parent_key: &str) {
    let parent = nested(obj, parent_key);
    builder
        .label("vrf", nested_text(obj, "vrf", "name").map(String::from))
        .label(
            "vlan",
            nested(obj, "untagged_vlan").and_then(|v| label_value(v.get("vid"))),
        )
        .text_attr(parent_key, parent.map(name).as_deref())
        .attr(
            &format!("{parent_key}_id"),
            parent.and_then(|p| p.get("id")).cloned(),
        )
        .attr(
            "type",
            obj.get("type")
                .and_then(|t| label_value(Some(t)))
                .map(Value::String),
        )
        .attr(
            "mode",
            obj.get("mode")
                .and_then(|m| label_value(Some(m)))
                .map(Value::String),
        )
        .attr_from("enabled", obj, "enabled")
        .attr_from("mgmt_only", obj, "mgmt_only")
        .attr_from("mtu", obj, "mtu")
        .text_attr(
            "mac_address",
            nested_text(obj, "primary_mac_address", "mac_address"),
        );
}

pub fn cluster(obj: &Object, builder: &mut EntryBuilder) {
    scoped_site(obj, builder);
    builder
        .label_from("tenant", obj, "tenant")
        .text_attr("type", nested_text(obj, "type", "slug"))
        .text_attr("group", nested_text(obj, "group", "name"));
}

pub fn site(obj: &Object, builder: &mut EntryBuilder) {
    builder
        .label_from("site", obj, "slug")
        .label_from("region", obj, "region")
        .label_from("tenant", obj, "tenant")
        .attr_from("slug", obj, "slug")
        .attr_from("facility", obj, "facility")
        .attr_from("time_zone", obj, "time_zone")
        .text_attr("group", nested_text(obj, "group", "name"));
}

pub fn tenant(obj: &Object, builder: &mut EntryBuilder) {
    builder
        .label_from("tenant", obj, "slug")
        .attr_from("slug", obj, "slug")
        .text_attr("group", nested_text(obj, "group", "slug"));
}
