//! Translation of every recorded NetBox 4.6 webhook, and of the older payload generations derived
//! from them. Pure: no NATS, no HTTP.

use chrono::Utc;
use netbox_relay::delta::{Op, RegistryDelta};
use netbox_relay::netbox::webhook::{parse, Parsed};
use netbox_relay::netbox::{object_type, ObjectType};
use netbox_relay::state::{encode, record};
use netbox_relay::translate::{Outcome, SweepOptions, Translator, READS};
use serde_json::{json, Value};

use crate::expected::{DELTAS, IGNORED};
use crate::helpers::{all_fixture_files, fixture, fixture_in, fixture_json, signed};

const HOST_SWEEP: SweepOptions = SweepOptions {
    expand_subnets: false,
    max_expanded_hosts: 4096,
};

fn translator(sweep: SweepOptions) -> Translator {
    Translator::new("default", sweep, &object_type::ALL)
}

fn translate_with(translator: &Translator, body: &[u8]) -> Outcome {
    match parse(body, READS).expect("recorded body parses") {
        Parsed::Change(event) => translator.webhook(&event, Utc::now()).expect("translates"),
        // The recorded parents' webhooks are creates: nothing shows them yet, nothing to pull.
        Parsed::Parent {
            parent, trigger, ..
        } => {
            assert_eq!(trigger, None, "{}", parent.name);
            Outcome::Ignore(format!("{} is a parent only", parent.name))
        }
        Parsed::Ignored(reason) => Outcome::Ignore(reason),
        Parsed::Branch(branch) => panic!("a recorded main webhook read as made in {branch}"),
    }
}

fn delta_of(body: &[u8]) -> RegistryDelta {
    match translate_with(&translator(HOST_SWEEP), body) {
        Outcome::Publish(delta) => *delta,
        Outcome::Ignore(reason) => panic!("expected a delta, got ignored: {reason}"),
    }
}

fn delta_json(file: &str) -> Value {
    serde_json::to_value(delta_of(&fixture(file).body)).unwrap()
}

/// Every recorded body of every recording: (directory, file).
fn every_recorded_body() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = all_fixture_files()
        .iter()
        .map(|f| fixture(f).body)
        .collect();
    for dir in ["netbox-branching", "netbox-4.7"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir);
        let mut files: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.as_bytes()[0].is_ascii_digit() && name.ends_with(".json"))
            .collect();
        files.sort();
        bodies.extend(files.iter().map(|f| fixture_in(dir, f).body));
    }
    bodies
}

/// A webhook's `data` is parsed for the fields translation reads only, and the snapshots are
/// compared as written: for every recorded body the entry equals the one built from the whole
/// `data`, and the changed fields those of the snapshots parsed whole.
#[test]
fn parsing_only_what_is_read_changes_no_delta() {
    let translator = translator(HOST_SWEEP);
    let mut compared = 0;
    for body in every_recorded_body() {
        let Ok(Parsed::Change(event)) = parse(&body, READS) else {
            continue;
        };
        let whole: Value = serde_json::from_slice(&body).unwrap();
        let data = whole["data"].as_object().unwrap();
        let Ok(Outcome::Publish(delta)) = translator.webhook(&event, Utc::now()) else {
            continue;
        };
        let expected = translator.entry(event.object_type, data).ok();
        assert_eq!(delta.entry, expected.filter(|_| delta.op == Op::Upsert));
        let snapshot = |name: &str| whole["snapshots"][name].as_object().cloned();
        let changed = match (snapshot("prechange"), snapshot("postchange")) {
            (Some(pre), Some(post)) if event.event.as_str() == "updated" => {
                let keys: std::collections::BTreeSet<&String> =
                    pre.keys().chain(post.keys()).collect();
                let differ = keys.into_iter().filter(|k| pre.get(*k) != post.get(*k));
                Some(differ.cloned().collect::<Vec<String>>())
            }
            _ => None,
        };
        assert_eq!(delta.changed_fields, changed);
        compared += 1;
    }
    assert!(compared > 100, "only {compared} deltas compared");
}

/// The record's hash of the entry is read off the delta's JSON (the entry serialized once): for
/// every recorded body it is the hash of the entry serialized alone, also when the fields before
/// the entry hold the bytes `"entry":` in their strings.
#[test]
fn the_record_hashes_the_entry_as_published() {
    let translator = translator(HOST_SWEEP);
    let mut compared = 0;
    for body in every_recorded_body() {
        let Ok(Parsed::Change(event)) = parse(&body, READS) else {
            continue;
        };
        let Ok(Outcome::Publish(mut delta)) = translator.webhook(&event, Utc::now()) else {
            continue;
        };
        for user in [None, Some(r#"x","entry":{"name":"y"}}"#.to_string())] {
            delta.user = user;
            let encoded = encode(&delta).unwrap();
            // `record` hashes the entry serialized alone.
            assert_eq!(encoded.record, record(&delta).unwrap(), "{}", delta.key);
            compared += 1;
        }
    }
    assert!(compared > 200, "only {compared} deltas compared");
}

#[test]
fn recorded_signatures_are_hmac_sha512_of_the_raw_body() {
    for file in all_fixture_files() {
        let f = fixture(&file);
        assert_eq!(f.signature, signed(&f.body), "{file}");
    }
}

#[test]
fn every_recorded_webhook_is_translated_or_ignored() {
    assert_eq!(DELTAS.len() + IGNORED.len(), all_fixture_files().len());
    for file in IGNORED {
        match translate_with(&translator(HOST_SWEEP), &fixture(file).body) {
            Outcome::Ignore(reason) => {
                let parent = file.contains("devicerole") || file.contains("platform");
                let expected = if parent {
                    "parent only"
                } else {
                    "not supported"
                };
                assert!(reason.contains(expected), "{file}: {reason}")
            }
            Outcome::Publish(d) => panic!("{file} should be ignored, got {:?}", d.kind),
        }
    }
}

#[test]
fn every_recorded_change_becomes_the_expected_delta() {
    for want in DELTAS {
        let body = fixture(want.file).body;
        let top: Value = serde_json::from_slice(&body).unwrap();
        let d = delta_of(&body);
        let ctx = want.file;
        assert_eq!(d.kind.as_str(), want.kind, "{ctx}");
        assert_eq!(d.op.as_str(), want.op, "{ctx}");
        assert_eq!(d.object_type, want.object_type, "{ctx}");
        assert_eq!(d.object_id, want.id, "{ctx}");
        assert_eq!(
            d.key,
            format!("netbox/default/{}/{}", want.object_type, want.id),
            "{ctx}"
        );
        assert_eq!(d.schema, "netbox-relay/registry-delta/v1");
        assert_eq!(
            (d.source.as_str(), d.partition.as_str()),
            ("netbox", "default")
        );
        assert_eq!(d.event.as_deref(), top["event"].as_str(), "{ctx}");
        assert_eq!(d.request_id.as_deref(), top["request_id"].as_str(), "{ctx}");
        assert_eq!(d.user.as_deref(), Some("admin"), "{ctx}");
        let revision_source = match d.op {
            Op::Delete => &top["timestamp"],
            Op::Upsert => &top["data"]["last_updated"],
        };
        let revision: chrono::DateTime<Utc> = revision_source.as_str().unwrap().parse().unwrap();
        assert_eq!(d.revision, revision, "{ctx}");
        assert_eq!(d.delta_id.len(), 32, "{ctx}");
        let Some(entry) = d.entry else {
            assert_eq!(d.op, Op::Delete, "{ctx}: an upsert needs an entry");
            continue;
        };
        assert_eq!(entry.name, want.name, "{ctx}");
        assert_eq!(entry.addresses, want.addresses, "{ctx}");
        assert_eq!(entry.status.as_deref(), want.status, "{ctx}");
        assert_eq!(
            entry.labels.get("source").map(String::as_str),
            Some("netbox"),
            "{ctx}"
        );
        assert_eq!(
            entry.labels.get("status").map(String::as_str),
            want.status,
            "{ctx}"
        );
        for pair in want.labels.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(
                entry.labels.get(k).map(String::as_str),
                Some(v),
                "{ctx}: label {k}"
            );
        }
        assert_eq!(
            entry.netbox_url,
            top["data"]["url"].as_str().unwrap(),
            "{ctx}"
        );
    }
}

#[test]
fn a_device_entry_carries_every_label_and_attribute() {
    let d = delta_json("050_device_updated.json");
    assert_eq!(
        d["entry"],
        json!({
            "name": "fra1-leaf1",
            "status": "active",
            "addresses": ["10.10.0.11", "2001:db8:10::11"],
            "labels": {
                "source": "netbox", "site": "fra1", "tenant": "acme", "role": "leaf",
                "platform": "junos", "status": "active",
                "tag.monitored": "true", "tag.prod": "true"
            },
            "attributes": {
                "serial": "SN-FRA1-LEAF1", "device_type": "QFX5120-48Y", "manufacturer": "Juniper"
            },
            "sweep": null,
            "netbox_url": "/api/dcim/devices/1/"
        })
    );
    assert_eq!(d["changed_fields"], json!(["custom_fields", "tags"]));
}

#[test]
fn an_ip_address_sweeps_as_a_host_or_with_expansion_as_its_network() {
    let d = delta_json("029_ipaddress_created.json");
    let entry = &d["entry"];
    assert_eq!(
        entry["sweep"],
        json!({"cidr": "10.10.0.11/32", "hosts": ["10.10.0.11"]})
    );
    assert_eq!(entry["labels"]["vrf"], "PROD");
    assert_eq!(entry["attributes"]["device"], "fra1-leaf1");
    assert_eq!(entry["attributes"]["interface"], "em0");
    assert_eq!(
        entry["attributes"]["dns_name"],
        "fra1-leaf1.mgmt.example.net"
    );
    assert_eq!(
        entry["attributes"]["assigned_object_type"],
        "dcim.interface"
    );
    assert_eq!(
        d["changed_fields"],
        Value::Null,
        "a create has no changed fields"
    );

    let expand = SweepOptions {
        expand_subnets: true,
        max_expanded_hosts: 4096,
    };
    let Outcome::Publish(wide) = translate_with(
        &translator(expand),
        &fixture("029_ipaddress_created.json").body,
    ) else {
        panic!("expected a delta")
    };
    let sweep = wide.entry.unwrap().sweep.unwrap();
    assert_eq!(sweep.cidr, "10.10.0.0/24");
    assert_eq!(sweep.hosts.len(), 254);
    assert_eq!(sweep.hosts.first().map(String::as_str), Some("10.10.0.1"));
    let v6 = delta_json("030_ipaddress_created.json");
    assert_eq!(v6["entry"]["sweep"]["cidr"], "2001:db8:10::11/128");
}

#[test]
fn a_prefix_lists_hosts_only_when_expanded_and_small_enough() {
    let body = fixture("017_prefix_created.json").body;
    let prefix = |sweep| match translate_with(&translator(sweep), &body) {
        Outcome::Publish(d) => d.entry.unwrap(),
        Outcome::Ignore(r) => panic!("{r}"),
    };
    let plain = prefix(HOST_SWEEP);
    assert_eq!(plain.sweep.as_ref().unwrap().cidr, "10.10.0.0/24");
    assert!(plain.sweep.unwrap().hosts.is_empty());
    assert_eq!(
        plain.labels["site"], "fra1",
        "scope site becomes the site label"
    );
    assert_eq!(plain.labels["vrf"], "PROD");
    assert_eq!(plain.labels["vlan"], "100");
    let expanded = prefix(SweepOptions {
        expand_subnets: true,
        max_expanded_hosts: 4096,
    });
    assert_eq!(expanded.sweep.unwrap().hosts.len(), 254);
    let capped = prefix(SweepOptions {
        expand_subnets: true,
        max_expanded_hosts: 100,
    });
    assert!(capped.sweep.unwrap().hosts.is_empty());
}

#[test]
fn services_interfaces_and_vms_carry_their_parents() {
    let service = delta_json("103_service_updated.json");
    assert_eq!(service["entry"]["attributes"]["ports"], json!([22, 830]));
    assert_eq!(service["entry"]["attributes"]["protocol"], "tcp");
    assert_eq!(
        service["entry"]["attributes"]["parent_object_type"],
        "dcim.device"
    );
    assert_eq!(service["entry"]["attributes"]["parent"], "fra1-leaf02");
    let vm_if = delta_json("040_vminterface_created.json");
    assert_eq!(vm_if["entry"]["attributes"]["virtual_machine"], "vm-web-01");
    assert_eq!(vm_if["entry"]["labels"]["vlan"], "100");
    let vm = delta_json("039_virtualmachine_created.json");
    assert_eq!(vm["entry"]["labels"]["cluster"], "fra1-pve01");
    assert_eq!(vm["entry"]["attributes"]["vcpus"], json!(4.0));
    assert_eq!(vm["entry"]["attributes"]["memory"], 8192);
}

#[test]
fn deltas_are_deterministic_and_distinguish_real_changes() {
    let a = delta_of(&fixture("034_device_updated.json").body);
    let b = delta_of(&fixture("034_device_updated.json").body);
    assert_eq!(a.delta_id, b.delta_id);
    let other = delta_of(&fixture("050_device_updated.json").body);
    assert_eq!(a.key, other.key);
    assert_ne!(a.delta_id, other.delta_id);
}

/// Rewrites a recorded 4.6 body into what an older NetBox sends for the same change.
fn generation(file: &str, keep: &[&str], add_model: bool) -> Vec<u8> {
    let mut top = fixture_json(file);
    let object_type = top["object_type"].as_str().unwrap().to_string();
    top.retain(|k, _| {
        ["event", "timestamp", "data", "snapshots"].contains(&k.as_str())
            || keep.contains(&k.as_str())
    });
    if add_model {
        let model = object_type.split_once('.').unwrap().1.to_string();
        top.insert("model".into(), Value::String(model));
    }
    serde_json::to_vec(&top).unwrap()
}

#[test]
fn every_payload_generation_yields_the_same_delta() {
    for file in [
        "050_device_updated.json",
        "040_vminterface_created.json",
        "081_device_deleted.json",
    ] {
        let current = delta_of(&fixture(file).body);
        let variants = [
            (
                "3.x/4.0-4.3: model, username, request_id",
                generation(file, &["username", "request_id"], true),
            ),
            (
                "4.4/4.5: object_type, username, request_id",
                generation(file, &["object_type", "username", "request_id"], false),
            ),
            (
                "4.7: object_type and request only",
                generation(file, &["object_type", "request"], false),
            ),
            (
                "no type key at all: data.url only",
                generation(file, &[], false),
            ),
        ];
        for (name, body) in variants {
            let d = delta_of(&body);
            assert_eq!(d.delta_id, current.delta_id, "{file}, {name}");
            assert_eq!(d.key, current.key, "{file}, {name}");
            assert_eq!(d.entry, current.entry, "{file}, {name}");
            if name.contains("username") || name.contains("request only") {
                assert_eq!(d.user, current.user, "{file}, {name}");
                assert_eq!(d.request_id, current.request_id, "{file}, {name}");
            }
        }
    }
}

#[test]
fn the_enabled_object_types_choose_what_is_translated() {
    let only_devices = Translator::new(
        "lab",
        HOST_SWEEP,
        &[ObjectType::from_name("dcim.device").unwrap()],
    );
    let ip = translate_with(&only_devices, &fixture("029_ipaddress_created.json").body);
    assert!(
        matches!(ip, Outcome::Ignore(ref r) if r.contains("not enabled")),
        "{ip:?}"
    );
    let Outcome::Publish(device) =
        translate_with(&only_devices, &fixture("020_device_created.json").body)
    else {
        panic!("device should translate")
    };
    assert_eq!(device.key, "netbox/lab/dcim.device/1");
    assert_eq!(device.partition, "lab");
}

/// The delta id is the `Nats-Msg-Id` that de-duplicates across relays and across versions: a
/// change of the scheme (what is hashed, how) must be a decision, so it is pinned here.
#[test]
fn the_delta_id_of_a_recorded_webhook_is_pinned() {
    let delta = delta_of(&fixture("020_device_created.json").body);
    assert_eq!(delta.delta_id, "872526c92c51fe8260918e57d4b3fae2");
}
