//! The checked-in JSON Schema is generated from the Rust types; this fails when they drift.

use std::path::Path;

#[test]
fn the_checked_in_schema_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/registry-delta.v1.json");
    let checked_in = std::fs::read_to_string(&path).expect("schemas/registry-delta.v1.json");
    assert!(
        checked_in == netbox_relay::delta::json_schema(),
        "schemas/registry-delta.v1.json is stale: run `cargo run -- schema > schemas/registry-delta.v1.json`"
    );
}

#[test]
fn the_schema_names_every_kind_and_the_schema_id() {
    let schema: serde_json::Value =
        serde_json::from_str(&netbox_relay::delta::json_schema()).unwrap();
    let kinds = &schema["$defs"]["Kind"]["enum"];
    let mut named: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    named.sort();
    let mut every: Vec<&str> = netbox_relay::netbox::object_type::ALL
        .iter()
        .map(|t| t.kind.as_str())
        .collect();
    every.sort();
    assert_eq!(named, every, "the schema names every kind, and only those");
    assert_eq!(every.len(), 12);
    assert_eq!(
        schema["properties"]["schema"]["const"],
        "netbox-relay/registry-delta/v1"
    );
    assert_eq!(schema["properties"]["source"]["const"], "netbox");
}
