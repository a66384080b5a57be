//! Prometheus HTTP service discovery: `GET /sd/prometheus` on the relay and `netbox-relay sd`
//! alone, both following the stream, and a real Prometheus (`http_sd_configs`) reading them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{
    all_fixture_files, device_change, free_port, stream_messages, test_config, wait_for_port,
    NatsServer, TestRelay,
};

const SD_TOKEN: &str = "sd-token-for-tests";

/// A relay holding every recorded webhook's delta.
async fn relay_with_recorded(nats: &NatsServer, token: Option<&str>) -> TestRelay {
    let mut config = test_config(nats);
    config.sd.token = token.map(SecretString::from);
    let relay = TestRelay::start(config).await;
    for file in all_fixture_files() {
        relay.post_fixture(&file).await;
    }
    relay
}

async fn get_sd(base: &str, query: &str, token: Option<&str>) -> (u16, String, Value) {
    let mut request = reqwest::Client::new().get(format!("{base}/sd/prometheus{query}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// The registry as the stream has it: the last delta of every key.
async fn current_registry(nats: &NatsServer) -> BTreeMap<String, Value> {
    let mut registry = BTreeMap::new();
    for message in stream_messages(&nats.url()).await {
        registry.insert(
            message.delta["key"].as_str().unwrap().to_string(),
            message.delta,
        );
    }
    registry
}

/// What a Prometheus target group must say of a live entry of a target kind with an address.
fn expected_targets(delta: &Value) -> Option<Vec<String>> {
    if delta["op"] != "upsert" {
        return None;
    }
    let addresses: Vec<String> = delta["entry"]["addresses"]
        .as_array()?
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .map(|a| if a.contains(':') { format!("[{a}]") } else { a })
        .collect();
    match delta["kind"].as_str()? {
        "device" | "virtual_machine" => addresses.first().map(|a| vec![a.clone()]),
        "ip_address" => Some(addresses),
        "service" => {
            let ports = delta["entry"]["attributes"]["ports"].as_array()?;
            let targets = addresses
                .iter()
                .flat_map(|a| ports.iter().map(move |p| format!("{a}:{p}")))
                .collect::<Vec<_>>();
            (!targets.is_empty()).then_some(targets)
        }
        _ => None,
    }
    .filter(|t| !t.is_empty())
}

fn groups_by_key(answer: &Value) -> BTreeMap<String, Value> {
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["labels"]["__meta_netbox_key"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                g.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_one_group_per_entry_with_an_address() {
    let nats = NatsServer::start();
    let relay = relay_with_recorded(&nats, None).await;
    let registry = current_registry(&nats).await;

    let (status, content_type, answer) = get_sd(&relay.base, "", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(content_type, "application/json");
    let groups = groups_by_key(&answer);
    let expected: BTreeMap<&String, Vec<String>> = registry
        .iter()
        .filter_map(|(key, delta)| Some((key, expected_targets(delta)?)))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(
        groups.keys().collect::<BTreeSet<_>>(),
        expected.keys().copied().collect::<BTreeSet<_>>(),
        "one group per live entry with an address"
    );
    for (key, group) in &groups {
        let delta = &registry[key];
        let entry = &delta["entry"];
        let labels = &group["labels"];
        assert_eq!(group["targets"], json!(expected[key]), "{key}");
        assert_eq!(labels["__meta_netbox_kind"], delta["kind"], "{key}");
        assert_eq!(labels["__meta_netbox_name"], entry["name"], "{key}");
        assert_eq!(
            labels["__meta_netbox_id"],
            delta["object_id"].to_string(),
            "{key}"
        );
        if let Some(status) = entry["status"].as_str() {
            assert_eq!(labels["__meta_netbox_status"], status, "{key}");
        }
        // The names of the NetBox Prometheus SD plugin, where they mean the same.
        for (label, plugin) in [
            ("site", "site_slug"),
            ("tenant", "tenant_slug"),
            ("role", "role_slug"),
            ("platform", "platform_slug"),
        ] {
            assert_eq!(
                labels[format!("__meta_netbox_{plugin}")],
                entry["labels"][label],
                "{key}: {label}"
            );
        }
        let tags: Vec<&str> = entry["labels"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|k| k.strip_prefix("tag."))
            .collect();
        if !tags.is_empty() {
            assert_eq!(labels["__meta_netbox_tag_slugs"], tags.join(","), "{key}");
        }
        for name in labels.as_object().unwrap().keys() {
            let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(valid && name.starts_with("__meta_netbox_"), "{name}");
        }
    }
    let device = groups
        .values()
        .find(|g| g["labels"]["__meta_netbox_kind"] == "device")
        .unwrap();
    assert_eq!(
        device["labels"]["__meta_netbox_primary_ip"], device["targets"][0],
        "a device's target is its primary IP"
    );
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_filters_by_kind_status_labels_and_sets_the_port() {
    let nats = NatsServer::start();
    let relay = relay_with_recorded(&nats, Some(SD_TOKEN)).await;
    let base = &relay.base;
    let (_, _, all) = get_sd(base, "", Some(SD_TOKEN)).await;
    let all = groups_by_key(&all);
    let count = |f: &dyn Fn(&Value) -> bool| all.values().filter(|g| f(&g["labels"])).count();

    let (status, _, devices) = get_sd(base, "?kind=device,virtual_machine", Some(SD_TOKEN)).await;
    assert_eq!(status, 200);
    let hosts = count(&|l| {
        l["__meta_netbox_kind"] == "device" || l["__meta_netbox_kind"] == "virtual_machine"
    });
    assert!(hosts > 0);
    assert_eq!(devices.as_array().unwrap().len(), hosts);

    let site = all
        .values()
        .find_map(|g| g["labels"]["__meta_netbox_site_slug"].as_str())
        .unwrap();
    let query = format!("?kind=device&status=active&label.site={site}");
    let (_, _, selected) = get_sd(base, &query, Some(SD_TOKEN)).await;
    let expected = count(&|l| {
        l["__meta_netbox_kind"] == "device"
            && l["__meta_netbox_status"] == "active"
            && l["__meta_netbox_site_slug"] == site
    });
    assert!(expected > 0);
    assert_eq!(selected.as_array().unwrap().len(), expected, "{selected}");

    let (_, _, ported) = get_sd(base, "?kind=device&port=9100", Some(SD_TOKEN)).await;
    for group in ported.as_array().unwrap() {
        let target = group["targets"][0].as_str().unwrap();
        assert!(target.ends_with(":9100"), "{target}");
    }

    for (query, error) in [
        ("?kind=prefix", "bad_query"),
        ("?port=x", "bad_query"),
        ("?site=fra1", "bad_query"),
    ] {
        let (status, _, body) = get_sd(base, query, Some(SD_TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{query}: {body}"
        );
    }
    let (status, _, body) = get_sd(base, "", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = get_sd(base, "", Some("wrong")).await;
    assert_eq!(status, 401);
    // The token without a scheme, as Prometheus 2.x sends it when `authorization` has no type.
    let bare = reqwest::Client::new()
        .get(format!("{base}/sd/prometheus"))
        .header("authorization", SD_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 200);
    // The scheme is case-insensitive (RFC 9110).
    let lowercase = reqwest::Client::new()
        .get(format!("{base}/sd/prometheus"))
        .header("authorization", format!("bearer {SD_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lowercase.status().as_u16(), 200);
    relay.relay.stop().await.unwrap();
}

/// What `netbox-relay sd` logs at `level` when it listens on `ip` with an empty token.
fn said_with_an_empty_token(ip: &str, level: &str) -> String {
    let nats = NatsServer::start();
    let port = free_port();
    let mut sd = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .args(["sd", "--listen", &format!("{ip}:{port}")])
        .env("NETBOX_RELAY_NATS__URL", nats.url())
        .env("NETBOX_RELAY_SD__TOKEN", "")
        .env("NETBOX_RELAY_LOG__LEVEL", level)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)));
    sd.kill().unwrap();
    let output = sd.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_empty_sd_token_is_said_to_leave_the_endpoint_open_with_the_fix() {
    let open = said_with_an_empty_token("0.0.0.0", "warn");
    assert!(
        open.contains("sd.token is not set") && open.contains("NETBOX_RELAY_SD__TOKEN"),
        "{open}"
    );
    // On loopback only this host reaches it: a note, not a warning.
    let local = said_with_an_empty_token("127.0.0.1", "warn");
    assert!(!local.contains("sd.token"), "{local}");
    let noted = said_with_an_empty_token("127.0.0.1", "info");
    assert!(noted.contains("any client on this host"), "{noted}");
}

/// `netbox-relay sd` on its own, reading the stream a relay writes.
struct SdProcess {
    server: Server,
}

impl SdProcess {
    fn start(nats: &NatsServer, token: &str) -> SdProcess {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_netbox-relay"));
        command
            .args(["sd", "--listen", &format!("127.0.0.1:{port}")])
            .env("NETBOX_RELAY_NATS__URL", nats.url())
            .env("NETBOX_RELAY_SD__TOKEN", token)
            .env("NETBOX_RELAY_LOG__LEVEL", "warn");
        SdProcess {
            server: Server::spawn(command, port, "netbox-relay sd"),
        }
    }

    async fn wait_loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("{}/readyz", self.server.base))
                .await
                .unwrap();
            if ready.status() == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "sd never loaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A server process the test started, on `port` of loopback; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn spawn(mut command: Command, port: u16, what: &str) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr);
        Server {
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_relay_sd_alone_answers_as_the_relay_and_follows_changes() {
    let nats = NatsServer::start();
    let relay = relay_with_recorded(&nats, Some(SD_TOKEN)).await;
    let sd = SdProcess::start(&nats, SD_TOKEN);
    sd.wait_loaded().await;
    let (status, content_type, alone) = get_sd(&sd.server.base, "", Some(SD_TOKEN)).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let (_, _, served) = get_sd(&relay.base, "", Some(SD_TOKEN)).await;
    assert_eq!(alone, served);
    let metrics = reqwest::get(format!("{}/metrics", sd.server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let groups = alone.as_array().unwrap().len();
    assert!(
        metrics.contains(&format!("netbox_relay_sd_targets {groups}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("netbox_relay_sd_requests_total{result=\"ok\"} 1"),
        "{metrics}"
    );

    // A device is deleted in NetBox: it leaves both answers.
    let device = groups_by_key(&alone)
        .into_values()
        .find(|g| g["labels"]["__meta_netbox_kind"] == "device")
        .unwrap();
    let id: u64 = device["labels"]["__meta_netbox_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, _) = relay
        .post_signed(&device_change(id, chrono::Utc::now(), true))
        .await;
    assert_eq!(status, 202);
    let key = device["labels"]["__meta_netbox_key"]
        .as_str()
        .unwrap()
        .to_string();
    for base in [&sd.server.base, &relay.base] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, now) = get_sd(base, "", Some(SD_TOKEN)).await;
            if !groups_by_key(&now).contains_key(&key) {
                break;
            }
            assert!(Instant::now() < deadline, "{key} still served by {base}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    relay.relay.stop().await.unwrap();
}

/// A real Prometheus, scraping nothing, discovering through `http_sd_configs`.
struct Prometheus {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(sd_url: &str, token: &str) -> Prometheus {
        let binary = std::env::var("PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("prometheus"));
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1m\nscrape_configs:\n  - job_name: netbox\n    http_sd_configs:\n      - url: '{sd_url}'\n        refresh_interval: 1s\n        authorization:\n          type: Bearer\n          credentials: '{token}'\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let mut command = Command::new(&binary);
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let what = format!(
            "{} (run deploy/local/ensure-prometheus.sh)",
            binary.display()
        );
        Prometheus {
            server: Server::spawn(command, port, &what),
            _dir: dir,
        }
    }

    /// The discovered labels of each active target, by `__address__`.
    async fn targets(&self) -> BTreeMap<String, Value> {
        let url = format!("{}/api/v1/targets?state=active", self.server.base);
        let Ok(response) = reqwest::get(url).await else {
            return BTreeMap::new();
        };
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let active = body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        active
            .into_iter()
            .map(|t| {
                (
                    t["discoveredLabels"]["__address__"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    t["discoveredLabels"].clone(),
                )
            })
            .collect()
    }

    /// Waits until `done` holds for the targets; returns them.
    async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let targets = self.targets().await;
            if done(&targets) {
                return targets;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never showed {what}: {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_the_active_devices_and_drops_planned_and_deleted_ones() {
    let nats = NatsServer::start();
    let relay = relay_with_recorded(&nats, Some(SD_TOKEN)).await;
    let (_, _, devices) = get_sd(
        &relay.base,
        "?kind=device&status=active&port=9100",
        Some(SD_TOKEN),
    )
    .await;
    let devices = groups_by_key(&devices);
    assert!(
        devices.len() >= 2,
        "two active devices with a primary IP in the recording: {devices:?}"
    );
    let url = format!(
        "{}/sd/prometheus?kind=device&status=active&port=9100",
        relay.base
    );
    let prometheus = Prometheus::start(&url, SD_TOKEN);

    let expected: BTreeSet<String> = devices
        .values()
        .map(|g| g["targets"][0].as_str().unwrap().to_string())
        .collect();
    let shown = prometheus
        .wait_for("the devices", |t| {
            t.keys().cloned().collect::<BTreeSet<_>>() == expected
        })
        .await;
    for group in devices.values() {
        let labels = &shown[group["targets"][0].as_str().unwrap()];
        for (name, value) in group["labels"].as_object().unwrap() {
            assert_eq!(&labels[name], value, "{name}");
        }
        assert_eq!(labels["job"], "netbox");
    }

    // One device goes planned, another is deleted: both leave at the next refresh.
    let mut groups = devices.values();
    let (planned, deleted) = (groups.next().unwrap(), groups.next().unwrap());
    let id_of = |g: &Value| -> u64 {
        g["labels"]["__meta_netbox_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut body: Value =
        serde_json::from_slice(&device_change(id_of(planned), chrono::Utc::now(), false)).unwrap();
    // The recorded device update with the planned device's own data, its status now planned.
    let (_, recorded) = crate::consistency::api_results("dcim_devices.json");
    let mut data = recorded
        .into_iter()
        .find(|d| d["id"].as_u64() == Some(id_of(planned)))
        .unwrap();
    data.insert(
        "status".into(),
        json!({"value": "planned", "label": "Planned"}),
    );
    data.insert("last_updated".into(), body["data"]["last_updated"].clone());
    body["data"] = Value::Object(data);
    let (status, answer) = relay.post_signed(&serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 202, "{answer}");
    let (status, _) = relay
        .post_signed(&device_change(id_of(deleted), chrono::Utc::now(), true))
        .await;
    assert_eq!(status, 202);
    let gone: BTreeSet<String> = [planned, deleted]
        .iter()
        .map(|g| g["targets"][0].as_str().unwrap().to_string())
        .collect();
    let left = prometheus
        .wait_for("the planned and deleted devices gone", |t| {
            t.keys().all(|a| !gone.contains(a)) && t.len() == expected.len() - 2
        })
        .await;
    assert_eq!(
        left.keys().cloned().collect::<BTreeSet<_>>(),
        expected.difference(&gone).cloned().collect()
    );
    relay.relay.stop().await.unwrap();
}
