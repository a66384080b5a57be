//! The registry's NATS subjects, written in one place: one subject per registry key,
//! `<prefix>.<partition>.<kind>.<object_id>`, and the filters that select some of them.

use std::fmt::Display;

/// The subject of one registry key.
pub fn key(prefix: &str, partition: &str, kind: impl Display, id: u64) -> String {
    format!("{prefix}.{partition}.{kind}.{id}")
}

/// Every subject under `prefix`: what the stream captures.
pub fn all(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// The keys of `kind` (every kind when `None`) in `partition` (`*`: every partition).
pub fn keys_of(prefix: &str, partition: &str, kind: Option<&dyn Display>) -> String {
    match kind {
        Some(kind) => format!("{prefix}.{partition}.{kind}.*"),
        None => format!("{prefix}.{partition}.*.*"),
    }
}

/// The subjects of the layout before per-key subjects, `<prefix>.<partition>.<kind>.<op>`.
pub fn old_layout(prefix: &str, op: &str) -> String {
    format!("{prefix}.*.*.{op}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_read_prefix_partition_kind_id() {
        assert_eq!(
            key("netbox.registry", "default", "device", 42),
            "netbox.registry.default.device.42"
        );
        assert_eq!(all("netbox.registry"), "netbox.registry.>");
        assert_eq!(keys_of("p", "*", None), "p.*.*.*");
        assert_eq!(keys_of("p", "lab", Some(&"vlan")), "p.lab.vlan.*");
        assert_eq!(old_layout("p", "upsert"), "p.*.*.upsert");
    }
}
