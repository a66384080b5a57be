//! The live tier: the relay binary against a real NetBox 4.7 with netbox-branching
//! (`scripts/netbox.sh up`, which `scripts/test.sh` runs first and names in
//! `NETBOX_LIVE_SETTINGS`), as users run it: `netbox-setup` wires the webhook and event rule, and
//! every change made through NetBox's REST API must reach the stream by NetBox's own worker.
//! Where NetBox cannot run, `NETBOX_LIVE=skip` skips this tier, and says so; without either the
//! tier fails, so that it is never skipped silently.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, report_total, secret, NatsServer, RelayProcess};

const ADMIN: &str = "live-admin-token";

/// The settings `scripts/netbox.sh up` wrote, or why the tier does not run.
fn settings() -> Option<HashMap<String, String>> {
    let Ok(path) = std::env::var("NETBOX_LIVE_SETTINGS") else {
        if std::env::var("NETBOX_LIVE").as_deref() == Ok("skip") {
            eprintln!("live tier skipped: NETBOX_LIVE=skip (no NetBox on this machine)");
            return None;
        }
        panic!("the live tier needs a NetBox: run scripts/test.sh (it starts one with scripts/netbox.sh up), or set NETBOX_LIVE=skip to skip it");
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// One NetBox serves every live test: they take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A real NetBox, a relay wired to it, and the NATS it publishes to.
struct Live {
    netbox: String,
    admin_token: String,
    reader_token: String,
    http: reqwest::Client,
    nats: NatsServer,
    relay: RelayProcess,
    /// Makes this run's names unique: the NetBox database outlives a run.
    run: String,
    /// The relay's settings, for a restart.
    env: Vec<(String, String)>,
}

impl Live {
    async fn start(settings: &HashMap<String, String>) -> Live {
        Live::start_reading_with(settings, "NETBOX_READER_TOKEN").await
    }

    /// With the token of `settings`' `token` for the relay's reads.
    async fn start_reading_with(settings: &HashMap<String, String>, token: &str) -> Live {
        let nats = NatsServer::start();
        let port = free_port();
        let reader = settings[token].clone();
        let env: Vec<(String, String)> = [
            ("NETBOX_RELAY_LOG__LEVEL", "warn"),
            ("NETBOX_RELAY_NETBOX__URL", settings["NETBOX_URL"].as_str()),
            ("NETBOX_RELAY_NETBOX__TOKEN", reader.as_str()),
            ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
            ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
            ("NETBOX_RELAY_CASCADE__DEBOUNCE", "300ms"),
            ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let relay = spawn_relay(&nats, port, &env).await;
        let live = Live {
            netbox: settings["NETBOX_URL"].clone(),
            admin_token: settings["NETBOX_ADMIN_TOKEN"].clone(),
            reader_token: reader,
            http: reqwest::Client::new(),
            nats,
            relay,
            run: format!("{}", chrono::Utc::now().timestamp_micros() % 100_000_000),
            env,
        };
        let setup = live.cli(
            &["netbox-setup", "--relay-url", &live.relay.base],
            &live.admin_token,
        );
        assert!(
            setup.status.success(),
            "netbox-setup: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
        live
    }

    /// Stops the relay (SIGTERM); NetBox's deliveries fail until [`Live::start_relay`].
    fn stop_relay(&mut self) {
        assert!(
            self.relay.terminate(Duration::from_secs(20)),
            "the relay did not stop"
        );
    }

    /// Starts the relay again, on the same port, NATS and state file.
    async fn start_relay(&mut self) {
        let port = self.relay.addr.port();
        self.relay = spawn_relay(&self.nats, port, &self.env).await;
    }

    /// `netbox-relay <args>` against this NetBox with `token`.
    fn cli(&self, args: &[&str], token: &str) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netbox-relay"));
        command
            .args(args)
            .env("NETBOX_RELAY_NETBOX__URL", &self.netbox)
            .env("NETBOX_RELAY_NETBOX__TOKEN", token)
            .env("NETBOX_RELAY_NATS__URL", self.nats.url())
            .env("NETBOX_RELAY_WEBHOOK__SECRETS", secret())
            .env(
                "NETBOX_RELAY_STATE__PATH",
                self.nats.scratch().join("cli.redb"),
            )
            .env("NETBOX_RELAY_LOG__LEVEL", "warn");
        tokio::task::block_in_place(|| command.output().expect("run netbox-relay"))
    }

    fn name(&self, what: &str) -> String {
        format!("relay-{what}-{}", self.run)
    }

    /// A REST call as the admin; `headers` such as a branch's.
    async fn api(&self, method: &str, path: &str, body: Value, headers: &[(&str, &str)]) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method.clone(), format!("{}/api/{path}", self.netbox))
            .bearer_auth(&self.admin_token)
            .header("accept", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.json(&body);
        }
        let response = request.send().await.expect("NetBox answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn create(&self, path: &str, body: Value) -> u64 {
        self.api("POST", path, body, &[]).await["id"]
            .as_u64()
            .unwrap()
    }

    /// The registry entry of (kind, id) as the stream's last message has it, once `done` holds.
    async fn wait_for(
        &self,
        kind: &str,
        id: u64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let subject = format!("netbox.registry.default.{kind}.{id}");
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(crate::helpers::STREAM).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await {
                let delta: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                if done(&delta) {
                    return delta;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind} {id}: never {what}; last {delta}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "{kind} {id}: never on the stream ({what})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn upserted(&self, kind: &str, id: u64, name: &str) -> Value {
        self.wait_for(kind, id, &format!("named {name}"), |d| {
            d["op"] == "upsert" && d["entry"]["name"] == name
        })
        .await
    }

    async fn deleted(&self, kind: &str, id: u64) {
        self.wait_for(kind, id, "deleted", |d| d["op"] == "delete")
            .await;
    }

    /// A reconcile through the relay's API, to its report.
    async fn reconcile(&self) -> Value {
        self.reconcile_at("reconcile").await
    }

    /// A forced one: deletes past `reconcile.max_delete_fraction` applied.
    async fn reconcile_forced(&self) -> Value {
        self.reconcile_at("reconcile?force=true").await
    }

    async fn reconcile_at(&self, path: &str) -> Value {
        let (status, started) =
            crate::helpers::trigger_run(&self.relay.base, path, Some(ADMIN)).await;
        assert_eq!(status, 202, "{started}");
        crate::helpers::reconcile_report(&self.relay.base, &started["run_id"]).await
    }

    /// This run's addresses are 10.<octet>.0.0/24.
    fn octet(&self) -> u64 {
        self.run.parse::<u64>().unwrap() % 200 + 20
    }

    /// Makes the IP address the device's primary IPv4 and waits for the device's entry to show
    /// it; answers the address.
    async fn make_primary(&self, made: &Made) -> String {
        let body = json!({"primary_ip4": made.ip});
        let path = format!("dcim/devices/{}/", made.device);
        self.api("PATCH", &path, body, &[]).await;
        let address = format!("10.{}.0.10", self.octet());
        self.wait_for("device", made.device, "with its primary IP", |d| {
            d["entry"]["addresses"] == json!([address])
        })
        .await;
        address
    }

    /// Deletes `objects` (kind, id, path) in NetBox, children first, as listed.
    async fn delete(&self, objects: &[(&str, u64, &str)]) {
        for (_, id, path) in objects {
            let path = format!("{path}/{id}/");
            self.api("DELETE", &path, Value::Null, &[]).await;
        }
    }

    async fn published(&self) -> u64 {
        crate::helpers::published_count(&self.nats.url()).await
    }

    /// The relay's count of webhooks answered with `result`.
    async fn answered(&self, result: &str) -> u64 {
        let text = crate::helpers::metrics_text(&self.http, &self.relay.base).await;
        let line = format!("netbox_relay_webhooks_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn wait_answered(&self, result: &str, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.answered(result).await < count {
            assert!(
                Instant::now() < deadline,
                "NetBox's webhook never came ({result})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn spawn_relay(nats: &NatsServer, port: u16, env: &[(String, String)]) -> RelayProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = RelayProcess::start_with(nats, port, &env, None);
    relay.wait_ready().await;
    relay
}

fn upserted_count(report: &Value) -> u64 {
    crate::helpers::report_total(report, "upserted")
        + crate::helpers::report_total(report, "deleted")
}

/// Objects of all 12 registry kinds, made through the API.
struct Made {
    tenant: u64,
    site: u64,
    device: u64,
    interface: u64,
    vrf: u64,
    vlan: u64,
    prefix: u64,
    ip: u64,
    cluster: u64,
    vm: u64,
    vm_interface: u64,
    service: u64,
}

async fn make_all(live: &Live) -> Made {
    let n = |w: &str| live.name(w);
    let tenant = live
        .create(
            "tenancy/tenants/",
            json!({"name": n("tenant"), "slug": n("tenant")}),
        )
        .await;
    let site = live
        .create(
            "dcim/sites/",
            json!({"name": n("site"), "slug": n("site"), "status": "active", "tenant": tenant}),
        )
        .await;
    let manufacturer = live
        .create(
            "dcim/manufacturers/",
            json!({"name": n("mfr"), "slug": n("mfr")}),
        )
        .await;
    let device_type = live
        .create(
            "dcim/device-types/",
            json!({"manufacturer": manufacturer, "model": n("model"), "slug": n("model")}),
        )
        .await;
    let role = live
        .create(
            "dcim/device-roles/",
            json!({"name": n("role"), "slug": n("role"), "color": "ff0000"}),
        )
        .await;
    let device = live
        .create(
            "dcim/devices/",
            json!({"name": n("device"), "device_type": device_type, "role": role,
            "site": site, "status": "active", "tenant": tenant}),
        )
        .await;
    let interface = live
        .create(
            "dcim/interfaces/",
            json!({"device": device, "name": "eth0", "type": "1000base-t"}),
        )
        .await;
    let vrf = live.create("ipam/vrfs/", json!({"name": n("vrf")})).await;
    let vid = 100 + (live.run.parse::<u64>().unwrap() % 3000);
    let vlan = live
        .create(
            "ipam/vlans/",
            json!({"vid": vid, "name": n("vlan"), "status": "active"}),
        )
        .await;
    let octet = live.octet();
    let prefix = live
        .create(
            "ipam/prefixes/",
            json!({"prefix": format!("10.{octet}.0.0/24"), "vrf": vrf, "status": "active"}),
        )
        .await;
    let ip = live
        .create("ipam/ip-addresses/", json!({"address": format!("10.{octet}.0.10/24"), "vrf": vrf,
            "status": "active", "assigned_object_type": "dcim.interface", "assigned_object_id": interface}))
        .await;
    let cluster_type = live
        .create(
            "virtualization/cluster-types/",
            json!({"name": n("ctype"), "slug": n("ctype")}),
        )
        .await;
    let cluster = live
        .create(
            "virtualization/clusters/",
            json!({"name": n("cluster"), "type": cluster_type, "status": "active"}),
        )
        .await;
    let vm = live
        .create(
            "virtualization/virtual-machines/",
            json!({"name": n("vm"), "cluster": cluster, "status": "active"}),
        )
        .await;
    let vm_interface = live
        .create(
            "virtualization/interfaces/",
            json!({"virtual_machine": vm, "name": "ens3"}),
        )
        .await;
    let service = live
        .create("ipam/services/", json!({"name": "dns", "parent_object_type": "dcim.device",
            "parent_object_id": device, "port_mappings": ["tcp/53", "udp/53"], "ipaddresses": [ip]}))
        .await;
    Made {
        tenant,
        site,
        device,
        interface,
        vrf,
        vlan,
        prefix,
        ip,
        cluster,
        vm,
        vm_interface,
        service,
    }
}

impl Made {
    /// (kind, id, API path) of each, children before parents (the order deletes take).
    fn all(&self) -> Vec<(&'static str, u64, &'static str)> {
        vec![
            ("service", self.service, "ipam/services"),
            ("ip_address", self.ip, "ipam/ip-addresses"),
            (
                "vm_interface",
                self.vm_interface,
                "virtualization/interfaces",
            ),
            (
                "virtual_machine",
                self.vm,
                "virtualization/virtual-machines",
            ),
            ("cluster", self.cluster, "virtualization/clusters"),
            ("interface", self.interface, "dcim/interfaces"),
            ("device", self.device, "dcim/devices"),
            ("prefix", self.prefix, "ipam/prefixes"),
            ("vlan", self.vlan, "ipam/vlans"),
            ("vrf", self.vrf, "ipam/vrfs"),
            ("site", self.site, "dcim/sites"),
            ("tenant", self.tenant, "tenancy/tenants"),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_created_updated_and_deleted_in_netbox_reaches_the_stream() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let live = Live::start(&settings).await;
    // Whatever an earlier run left in NetBox, the registry starts in sync.
    let first = live.reconcile().await;
    assert_eq!(first["status"], "succeeded", "{first}");

    let made = make_all(&live).await;
    for (kind, id, _) in made.all() {
        live.wait_for(kind, id, "created", |d| d["op"] == "upsert")
            .await;
    }
    let device = live
        .upserted("device", made.device, &live.name("device"))
        .await;
    assert_eq!(device["entry"]["labels"]["site"], live.name("site"));
    assert_eq!(device["entry"]["labels"]["tenant"], live.name("tenant"));
    let service = live
        .wait_for("service", made.service, "with its ports", |d| {
            d["op"] == "upsert"
        })
        .await;
    assert_eq!(
        service["entry"]["attributes"]["port_mappings"],
        json!(["tcp/53", "udp/53"])
    );
    assert_eq!(service["entry"]["attributes"]["ports"], json!([53]));

    // An update of each kind: a description, which every one of them has, and a renamed device.
    for (kind, id, path) in made.all() {
        let before = live.published().await;
        live.api(
            "PATCH",
            &format!("{path}/{id}/"),
            json!({"description": "changed by the live tier"}),
            &[],
        )
        .await;
        // The entry shows no description: the change is published with its new revision.
        live.wait_for(kind, id, "updated", |d| d["event"] == "updated")
            .await;
        assert!(live.published().await > before, "{kind}");
    }
    let renamed = live.name("device-renamed");
    live.api(
        "PATCH",
        &format!("dcim/devices/{}/", made.device),
        json!({"name": renamed}),
        &[],
    )
    .await;
    live.upserted("device", made.device, &renamed).await;
    // The rename cascades to its interface, IP address and service (origin cascade).
    let shows = |field: &'static str| {
        let renamed = renamed.clone();
        move |d: &Value| d["entry"]["attributes"][field] == renamed.as_str()
    };
    live.wait_for("interface", made.interface, "re-labelled", shows("device"))
        .await;
    live.wait_for("ip_address", made.ip, "re-labelled", shows("device"))
        .await;
    live.wait_for("service", made.service, "re-labelled", shows("parent"))
        .await;

    // In sync: a reconcile publishes nothing.
    let before = live.published().await;
    let report = live.reconcile().await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(upserted_count(&report), 0, "{report}");
    assert_eq!(live.published().await, before);
    // Two full passes: the second finds NetBox serving every object byte for byte as the first
    // translated it, and parses none.
    for pass in ["first", "second"] {
        let full = live.reconcile_at("reconcile?full=true").await;
        assert_eq!(full["pass"], "full", "{full}");
        assert_eq!(upserted_count(&full), 0, "{pass}: {full}");
        if pass == "second" {
            let (fetched, as_served) = (
                report_total(&full, "fetched"),
                report_total(&full, "unchanged_as_served"),
            );
            assert!(fetched > 0 && as_served == fetched, "{full}");
        }
    }
    assert_eq!(live.published().await, before);

    // Service discovery answers what NetBox holds: the device's primary IP.
    let address = live.make_primary(&made).await;
    let sd: Value = reqwest::get(format!("{}/sd/prometheus?kind=device", live.relay.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        sd.as_array()
            .unwrap()
            .iter()
            .any(|g| g["targets"] == json!([address])),
        "{sd}"
    );

    for (kind, id, path) in made.all() {
        live.api("DELETE", &format!("{path}/{id}/"), Value::Null, &[])
            .await;
        live.deleted(kind, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_what_a_disabled_rule_missed_and_cascades_follow_netbox() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let live = Live::start(&settings).await;
    let made = make_all(&live).await;
    live.wait_for("device", made.device, "created", |d| d["op"] == "upsert")
        .await;
    live.wait_for("service", made.service, "created", |d| d["op"] == "upsert")
        .await;
    let first = live.reconcile().await;
    assert_eq!(first["status"], "succeeded", "{first}");

    // A site re-slugged: NetBox sends no webhook for its devices; the cascade pulls them.
    let slug = live.name("site-reslugged");
    live.api(
        "PATCH",
        &format!("dcim/sites/{}/", made.site),
        json!({"slug": slug}),
        &[],
    )
    .await;
    let device = live
        .wait_for("device", made.device, "re-labelled", |d| {
            d["entry"]["labels"]["site"] == slug.as_str()
        })
        .await;
    assert_eq!(device["origin"], "cascade");

    // A renumbered primary IP: one webhook, for the IP; the device and the service follow.
    live.make_primary(&made).await;
    let new = format!("10.{}.0.210", live.octet());
    live.api(
        "PATCH",
        &format!("ipam/ip-addresses/{}/", made.ip),
        json!({"address": format!("{new}/24")}),
        &[],
    )
    .await;
    let device = live
        .wait_for("device", made.device, "renumbered", |d| {
            d["entry"]["addresses"] == json!([new])
        })
        .await;
    assert_eq!(device["origin"], "cascade");
    live.wait_for("service", made.service, "renumbered", |d| {
        d["entry"]["addresses"] == json!([new])
    })
    .await;

    // The event rule off: NetBox sends nothing; a reconcile repairs it all.
    let rules = live
        .api(
            "GET",
            "extras/event-rules/?name=netbox-relay",
            Value::Null,
            &[],
        )
        .await;
    let rule = rules["results"][0]["id"]
        .as_u64()
        .expect("netbox-setup made the rule");
    live.api(
        "PATCH",
        &format!("extras/event-rules/{rule}/"),
        json!({"enabled": false}),
        &[],
    )
    .await;
    let renamed = live.name("vm-renamed-quietly");
    live.api(
        "PATCH",
        &format!("virtualization/virtual-machines/{}/", made.vm),
        json!({"name": renamed}),
        &[],
    )
    .await;
    live.api(
        "DELETE",
        &format!("ipam/services/{}/", made.service),
        Value::Null,
        &[],
    )
    .await;
    let report = live.reconcile_forced().await;
    live.api(
        "PATCH",
        &format!("extras/event-rules/{rule}/"),
        json!({"enabled": true}),
        &[],
    )
    .await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        report["object_types"]["virtualization.virtualmachine"]["upserted"], 1,
        "{report}"
    );
    assert_eq!(
        report["object_types"]["ipam.service"]["deleted"], 1,
        "{report}"
    );
    live.upserted("virtual_machine", made.vm, &renamed).await;
    live.deleted("service", made.service).await;
    // The service is gone already.
    live.delete(&made.all()[1..]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_a_branch_stay_out_until_the_merge_and_the_merge_arrives() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let live = Live::start(&settings).await;
    let made = make_all(&live).await;
    live.wait_for("device", made.device, "created", |d| d["op"] == "upsert")
        .await;
    live.wait_for("virtual_machine", made.vm, "created", |d| {
        d["op"] == "upsert"
    })
    .await;
    let first = live.reconcile().await;
    assert_eq!(first["status"], "succeeded", "{first}");

    let (id, schema) = branch(&live, "branch").await;
    // Through the REST API with the branch header, and with the branch cookie.
    let in_branch = live.name("device-in-branch");
    let header = [("X-NetBox-Branch", schema.as_str())];
    live.api(
        "PATCH",
        &format!("dcim/devices/{}/", made.device),
        json!({"name": in_branch}),
        &header,
    )
    .await;
    let cookie = format!("active_branch={schema}");
    let vm_in_branch = live.name("vm-in-branch");
    live.api(
        "PATCH",
        &format!("virtualization/virtual-machines/{}/", made.vm),
        json!({"name": vm_in_branch}),
        &[("Cookie", cookie.as_str())],
    )
    .await;
    let created = live
        .api(
            "POST",
            "tenancy/tenants/",
            json!({"name": live.name("branch-tenant"), "slug": live.name("branch-tenant")}),
            &header,
        )
        .await;
    // NetBox sent the three webhooks and the relay kept them out.
    live.wait_answered("not_on_main", 3).await;
    let device = live
        .upserted("device", made.device, &live.name("device"))
        .await;
    assert_eq!(device["entry"]["name"], live.name("device"));
    live.upserted("virtual_machine", made.vm, &live.name("vm"))
        .await;
    let tenant_id = created["id"].as_u64().unwrap();
    let client = async_nats::connect(live.nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(crate::helpers::STREAM)
        .await
        .unwrap();
    let subject = format!("netbox.registry.default.tenant.{tenant_id}");
    assert!(
        stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_err(),
        "a branch's tenant reached the registry"
    );

    live.api(
        "POST",
        &format!("plugins/branching/branches/{id}/merge/"),
        json!({"commit": true}),
        &[],
    )
    .await;
    live.upserted("device", made.device, &in_branch).await;
    live.upserted("virtual_machine", made.vm, &vm_in_branch)
        .await;
    live.upserted("tenant", tenant_id, &live.name("branch-tenant"))
        .await;
    // Right after the merge, main and the registry agree.
    let report = live.reconcile().await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(upserted_count(&report), 0, "{report}");
    live.api(
        "DELETE",
        &format!("tenancy/tenants/{tenant_id}/"),
        Value::Null,
        &[],
    )
    .await;
    live.delete(&made.all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_the_read_only_token_lists_what_it_may_see() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let live = Live::start(&settings).await;
    let output = live.cli(&["check"], &live.reader_token);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{report}");
    assert_eq!(
        report
            .lines()
            .filter(|l| l.starts_with("OK    read "))
            .count(),
        12,
        "{report}"
    );
    assert!(report.contains("NetBox 4.7"), "{report}");
    assert!(report.contains("netbox-branching 1.2.2"), "{report}");
    assert!(
        !report.contains(&live.reader_token),
        "the token is never printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_down_through_a_site_rename_and_a_renumbering_is_right_after_one_default_run() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let mut live = Live::start(&settings).await;
    let made = make_all(&live).await;
    live.wait_for("service", made.service, "created", |d| d["op"] == "upsert")
        .await;
    live.make_primary(&made).await;
    let first = live.reconcile().await;
    assert_eq!(first["status"], "succeeded", "{first}");

    // The relay stopped: NetBox's deliveries of these two changes fail, and are never retried.
    live.stop_relay();
    let slug = live.name("site-while-down");
    let site = format!("dcim/sites/{}/", made.site);
    live.api("PATCH", &site, json!({"slug": slug}), &[]).await;
    let new = format!("10.{}.0.220", live.octet());
    let ip = format!("ipam/ip-addresses/{}/", made.ip);
    live.api("PATCH", &ip, json!({"address": format!("{new}/24")}), &[])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    live.start_relay().await;

    let report = live.reconcile().await;
    assert_eq!(report["pass"], "cheap", "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    // Both changes came through the run, not a late webhook.
    assert_eq!(
        report["object_types"]["dcim.site"]["upserted"], 1,
        "{report}"
    );
    assert_eq!(
        report["object_types"]["ipam.ipaddress"]["upserted"], 1,
        "{report}"
    );
    assert!(
        report["cascades"]["parents"].as_u64() >= Some(2),
        "{report}"
    );
    let device = live
        .wait_for("device", made.device, "repaired", |d| {
            d["entry"]["labels"]["site"] == slug.as_str() && d["entry"]["addresses"] == json!([new])
        })
        .await;
    assert_eq!(device["origin"], "cascade", "{device}");
    live.wait_for("service", made.service, "renumbered", |d| {
        d["entry"]["addresses"] == json!([new])
    })
    .await;
    // Repaired in one run: the next finds nothing, and the registry is NetBox's main.
    let next = live.reconcile().await;
    assert_eq!(upserted_count(&next), 0, "{next}");
    assert_eq!(next["cascades"]["published"], 0, "{next}");
    let audit = live.cli(&["audit", "--json"], &live.reader_token);
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap_or(Value::Null);
    assert_eq!(audit.status.code(), Some(0), "{report} {audit:?}");
    assert_eq!(report["equal"], true, "{report}");
    assert!(report["netbox_objects"].as_u64() >= Some(12), "{report}");
    live.delete(&made.all()).await;
}

/// A tag deleted while the relay is down: NetBox takes it off the device without saving the
/// device (no `last_updated` moves), and the webhook it sends for that is lost. The run finds
/// the device in NetBox's change log, under the tag's delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_deleted_while_the_relay_was_down_leaves_what_it_tagged_after_one_default_run() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let mut live = Live::start(&settings).await;
    let made = make_all(&live).await;
    let slug = live.name("tag");
    let tag = live
        .api(
            "POST",
            "extras/tags/",
            json!({"name": slug, "slug": slug}),
            &[],
        )
        .await;
    let tag_id = tag["id"].as_u64().unwrap();
    let device = format!("dcim/devices/{}/", made.device);
    live.api("PATCH", &device, json!({"tags": [{"slug": slug}]}), &[])
        .await;
    let label = format!("tag.{slug}");
    live.wait_for("device", made.device, "tagged", |d| {
        d["entry"]["labels"][&label] == "true"
    })
    .await;
    let first = live.reconcile().await;
    assert_eq!(first["status"], "succeeded", "{first}");

    live.stop_relay();
    live.api(
        "DELETE",
        &format!("extras/tags/{tag_id}/"),
        Value::Null,
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    live.start_relay().await;

    let report = live.reconcile().await;
    assert_eq!(report["pass"], "cheap", "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    let untagged = live
        .wait_for("device", made.device, "untagged", |d| {
            d["entry"]["labels"].get(&label).is_none()
        })
        .await;
    assert_eq!(untagged["origin"], "cascade", "{untagged}");
    let audit = live.cli(&["audit", "--json"], &live.reader_token);
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap_or(Value::Null);
    assert_eq!(audit.status.code(), Some(0), "{report} {audit:?}");
    live.delete(&made.all()).await;
}

/// A new branch, once provisioned: its id and schema.
async fn branch(live: &Live, name: &str) -> (u64, String) {
    let branch = live
        .api(
            "POST",
            "plugins/branching/branches/",
            json!({"name": live.name(name)}),
            &[],
        )
        .await;
    let id = branch["id"].as_u64().unwrap();
    let path = format!("plugins/branching/branches/{id}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let branch = live.api("GET", &path, Value::Null, &[]).await;
        if branch["status"]["value"] == "ready" {
            return (id, branch["schema_id"].as_str().unwrap().to_string());
        }
        assert!(
            Instant::now() < deadline,
            "the branch was never provisioned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_merged_reverted_and_merged_again_follows_its_sites_rename() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    let live = Live::start(&settings).await;
    let made = make_all(&live).await;
    live.wait_for("device", made.device, "created", |d| d["op"] == "upsert")
        .await;
    let first = live.reconcile().await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let template = live
        .api(
            "GET",
            &format!("dcim/devices/{}/", made.device),
            Value::Null,
            &[],
        )
        .await;

    // A device created in a branch: main shows it after the merge with no `last_updated`.
    let (branch, schema) = branch(&live, "merge-revert").await;
    let name = live.name("merged-device");
    let device = live
        .api(
            "POST",
            "dcim/devices/",
            json!({"name": name, "device_type": template["device_type"]["id"],
                "role": template["role"]["id"], "site": made.site, "status": "active"}),
            &[("X-NetBox-Branch", schema.as_str())],
        )
        .await;
    let id = device["id"].as_u64().unwrap();
    let act = |what: &'static str| {
        let path = format!("plugins/branching/branches/{branch}/{what}/");
        let live = &live;
        async move { live.api("POST", &path, json!({"commit": true}), &[]).await }
    };
    act("merge").await;
    live.upserted("device", id, &name).await;
    let merged = live
        .api("GET", &format!("dcim/devices/{id}/"), Value::Null, &[])
        .await;
    assert!(merged["last_updated"].is_null(), "{merged}");
    act("revert").await;
    live.deleted("device", id).await;
    act("merge").await;
    live.upserted("device", id, &name).await;

    // Its site re-slugged: the cascade's sight of it is not judged older than the merge's.
    let slug = live.name("site-after-merges");
    live.api(
        "PATCH",
        &format!("dcim/sites/{}/", made.site),
        json!({"slug": slug}),
        &[],
    )
    .await;
    live.wait_for("device", id, "re-labelled", |d| {
        d["op"] == "upsert" && d["entry"]["labels"]["site"] == slug.as_str()
    })
    .await;
    let report = live.reconcile().await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(upserted_count(&report), 0, "{report}");
    live.api("DELETE", &format!("dcim/devices/{id}/"), Value::Null, &[])
        .await;
    live.delete(&made.all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_of_a_type_the_token_may_not_read_wait_while_the_others_flow() {
    let Some(settings) = settings() else { return };
    let _turn = TURN.lock().await;
    // A token that may view everything but services (scripts/netbox.sh's "partial" user).
    let live = Live::start_reading_with(&settings, "NETBOX_PARTIAL_TOKEN").await;
    let made = make_all(&live).await;
    live.wait_for("device", made.device, "created", |d| d["op"] == "upsert")
        .await;
    let ready = wait_for_unconfirmed(&live, "ipam.service").await;
    let reason = ready["reason"].as_str().unwrap();
    assert!(reason.contains("ipam.view_service"), "{ready}");
    assert_eq!(ready["cause"], "forbidden", "{ready}");
    // The service waits; a device saved after it goes straight through.
    let renamed = live.name("device-after-service");
    let path = format!("dcim/devices/{}/", made.device);
    live.api("PATCH", &path, json!({"name": renamed}), &[])
        .await;
    live.upserted("device", made.device, &renamed).await;
    let client = async_nats::connect(live.nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(crate::helpers::STREAM)
        .await
        .unwrap();
    let subject = format!("netbox.registry.default.service.{}", made.service);
    assert!(
        stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_err(),
        "a service main could not confirm reached the registry"
    );
    live.delete(&made.all()).await;
}

/// `/readyz`'s entry for held webhooks of `object_type` that cannot be confirmed, once there.
async fn wait_for_unconfirmed(live: &Live, object_type: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Value = live
            .http
            .get(format!("{}/readyz", live.relay.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = ready["unconfirmed"]
            .as_array()
            .and_then(|all| all.iter().find(|u| u["object_type"] == object_type));
        if let Some(found) = found {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
