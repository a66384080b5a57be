//! NetBox 4.7: the nine webhooks recorded from NetBox 4.7.3 (`tests/fixtures/netbox-4.7`), its
//! services' `port_mappings`, and a renumbered primary IP, which sends no webhook for its device.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::fake_netbox::{device_like, FakeNetbox};
use crate::helpers::{
    fixture_in, fixture_json, stream_messages, test_config, wait_for_published, NatsServer,
    TestRelay,
};
use crate::reconcile::{config, reconcile};

const DIR: &str = "netbox-4.7";

fn body(file: &str) -> Map<String, Value> {
    serde_json::from_slice(&fixture_in(DIR, file).body).unwrap()
}

async fn post(relay: &TestRelay, file: &str) -> (u16, Value) {
    let f = fixture_in(DIR, file);
    let headers = [
        ("content-type", "application/json"),
        ("x-hook-signature", f.signature.as_str()),
    ];
    relay.post_raw(f.body, &headers).await
}

/// The last delta of each key on the stream.
async fn registry(nats: &NatsServer) -> Map<String, Value> {
    let mut registry = Map::new();
    for message in stream_messages(&nats.url()).await {
        let key = message.delta["key"].as_str().unwrap().to_string();
        registry.insert(key, message.delta);
    }
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_47_webhook_is_published_and_services_keep_every_port() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let mut files: Vec<String> = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(DIR),
    )
    .unwrap()
    .filter_map(|e| e.ok()?.file_name().into_string().ok())
    .filter(|f| f.as_bytes()[0].is_ascii_digit())
    .collect();
    files.sort();
    assert_eq!(files.len(), 9);
    let mut published = 0;
    let mut services = Map::new();
    for file in &files {
        let (status, answer) = post(&relay, file).await;
        assert_eq!(status, 202, "{file}: {answer}");
        published += 1;
        wait_for_published(&nats.url(), published, Duration::from_secs(5)).await;
        let last = registry(&nats).await;
        let body = body(file);
        let key = format!(
            "netbox/default/{}/{}",
            body["object_type"].as_str().unwrap(),
            body["data"]["id"]
        );
        let delta = &last[&key];
        // 4.7 sends the request's id and user only in `request`.
        assert_eq!(delta["request_id"], body["request"]["id"], "{file}");
        assert_eq!(delta["user"], body["request"]["user"], "{file}");
        if body["object_type"] == "ipam.service" && delta["op"] == "upsert" {
            services.insert(file.clone(), delta["entry"]["attributes"].clone());
        }
    }
    // The multi-protocol service keeps both protocols; single-protocol ones read as 4.6's did.
    let dns = &services["003_ipam.service_created.json"];
    assert_eq!(dns["ports"], json!([53]));
    assert_eq!(dns["port_mappings"], json!(["tcp/53", "udp/53"]));
    assert!(dns.get("protocol").is_none(), "{dns}");
    let ssh = &services["004_ipam.service_updated.json"];
    assert_eq!(ssh["protocol"], "tcp");
    assert_eq!(ssh["ports"], json!([22, 2222]));
    assert!(ssh.get("port_mappings").is_none(), "{ssh}");
    assert_eq!(
        services["005_ipam.service_updated.json"]["ports"],
        json!([443, 8443])
    );
}

/// The recorded 4.7 multi-protocol service, listening on `mappings` at the address of a recorded
/// 4.6 service (the recorded one has none).
fn service_47(mappings: Value) -> Vec<u8> {
    let mut body = body("003_ipam.service_created.json");
    let addresses = fixture_json("101_service_created.json")["data"]["ipaddresses"].clone();
    let data = body["data"].as_object_mut().unwrap();
    data.insert("ipaddresses".into(), addresses);
    data.insert("port_mappings".into(), mappings);
    serde_json::to_vec(&body).unwrap()
}

/// Polls service discovery until it answers `query` with `want` targets.
async fn sd_targets(base: &str, query: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = reqwest::get(format!("{base}/sd/prometheus{query}"))
            .await
            .unwrap();
        if response.status() == 200 {
            let groups: Value = response.json().await.unwrap();
            let mut targets: Vec<String> = groups
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["targets"].as_array().unwrap().clone())
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            targets.sort();
            if targets.len() == want {
                return targets;
            }
        }
        assert!(
            Instant::now() < deadline,
            "service discovery did not show {want} targets"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_protocol_service_is_a_target_per_address_and_port() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let (status, answer) = relay
        .post_signed(&service_47(json!(["tcp/53", "udp/53", "udp/5353"])))
        .await;
    assert_eq!(status, 202, "{answer}");
    let targets = sd_targets(&relay.base, "?kind=service", 2).await;
    assert_eq!(targets, vec!["10.10.0.12:53", "10.10.0.12:5353"]);
    let id = body("003_ipam.service_created.json")["data"]["id"].clone();
    let registry = registry(&nats).await;
    let entry = &registry[&format!("netbox/default/ipam.service/{id}")]["entry"];
    assert_eq!(entry["addresses"], json!(["10.10.0.12"]));
    assert_eq!(entry["attributes"]["ports"], json!([53, 5353]));
    assert_eq!(
        entry["attributes"]["port_mappings"],
        json!(["tcp/53", "udp/53", "udp/5353"])
    );
}

/// The stand-in's NetBox 4.7.3: device 10 (`dev-010`) whose primary IPv4 is IP address 10, as
/// the recorded renumbering found it, and a service listening on that address.
async fn netbox_with_device_10() -> FakeNetbox {
    let fake = FakeNetbox::start("4.7.3").await;
    let renumbered = body("006_ipam.ipaddress_updated.json");
    let mut ip = renumbered["data"].clone();
    ip["address"] = json!("10.10.0.10/24");
    ip["last_updated"] = json!("2026-12-04T18:08:36.733000Z");
    let (_, recorded) = crate::consistency::api_results("dcim_devices.json");
    let mut device = device_like(&Value::Object(recorded[0].clone()), 10);
    device["name"] = json!("dev-010");
    device["primary_ip4"] = json!({"id": 10, "url": "/api/ipam/ip-addresses/10/",
        "display": "10.10.0.10/24", "family": 4, "address": "10.10.0.10/24"});
    device["primary_ip"] = device["primary_ip4"].clone();
    let mut service = body("004_ipam.service_updated.json")["data"].clone();
    service["ipaddresses"] = json!([{"id": 10, "url": "/api/ipam/ip-addresses/10/",
        "display": "10.10.0.10/24", "family": {"value": 4, "label": "IPv4"},
        "address": "10.10.0.10/24", "description": ""}]);
    service["parent"] = json!({"id": 10, "url": "/api/dcim/devices/10/", "display": "dev-010",
        "name": "dev-010", "description": ""});
    fake.with(|s| {
        s.objects
            .entry("ipam/ip-addresses".into())
            .or_default()
            .insert(10, ip);
        s.objects
            .entry("dcim/devices".into())
            .or_default()
            .insert(10, device);
        let id = service["id"].as_u64().unwrap();
        s.objects
            .entry("ipam/services".into())
            .or_default()
            .insert(id, service);
    });
    fake
}

/// What NetBox shows once IP address 10 is renumbered: the IP, its device's primary IPv4 and
/// the service's address all carry the new address; only the IP's `last_updated` moves.
fn renumber(fake: &FakeNetbox) {
    let renumbered = body("006_ipam.ipaddress_updated.json");
    let address = renumbered["data"]["address"].clone();
    fake.with(|s| {
        s.objects
            .get_mut("ipam/ip-addresses")
            .unwrap()
            .insert(10, renumbered["data"].clone());
        let device = s
            .objects
            .get_mut("dcim/devices")
            .unwrap()
            .get_mut(&10)
            .unwrap();
        device["primary_ip4"]["address"] = address.clone();
        device["primary_ip"]["address"] = address.clone();
        for service in s.objects.get_mut("ipam/services").unwrap().values_mut() {
            service["ipaddresses"][0]["address"] = address.clone();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renumbered_primary_ip_moves_its_device_its_services_and_their_targets() {
    let nats = NatsServer::start();
    let fake = netbox_with_device_10().await;
    let mut config = config(&nats, &fake, 1000);
    config.cascade.debounce = Duration::from_millis(200);
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let before = sd_targets(&relay.base, "?kind=device", 1).await;
    assert_eq!(before, vec!["10.10.0.10"]);

    renumber(&fake);
    let (status, answer) = post(&relay, "006_ipam.ipaddress_updated.json").await;
    assert_eq!(status, 202, "{answer}");
    // The IP's own delta, then its device and the service that lists it, pulled by the cascade.
    wait_for_published(&nats.url(), 3 + 3, Duration::from_secs(20)).await;
    let registry = registry(&nats).await;
    let device = &registry["netbox/default/dcim.device/10"];
    assert_eq!(device["origin"], "cascade");
    assert_eq!(device["entry"]["addresses"], json!(["10.10.0.210"]));
    let service = registry.values().find(|d| d["kind"] == "service").unwrap();
    assert_eq!(service["origin"], "cascade");
    assert_eq!(service["entry"]["addresses"], json!(["10.10.0.210"]));
    assert_eq!(
        sd_targets(&relay.base, "?kind=device", 1).await,
        vec!["10.10.0.210"]
    );
    let pulled = fake.with(|s| s.log.clone());
    assert!(
        pulled
            .iter()
            .any(|r| r.starts_with("dcim/devices?") && r.contains("id=10")),
        "{pulled:?}"
    );
    assert!(
        pulled
            .iter()
            .any(|r| r.starts_with("ipam/services?") && r.contains("ip_address_id=10")),
        "{pulled:?}"
    );
}
