//! Reconciliation against the fake NetBox API (recorded pages and generated objects), publishing to
//! a real JetStream, triggered through the real `POST /reconcile`.

use std::time::{Duration, Instant};

use netbox_relay::config::Config;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::fake_netbox::{device_like, FakeNetbox, Fault, TOKEN};
use crate::helpers::{
    free_port, published_count, stream_messages, test_config, NatsServer, RelayProcess, TestRelay,
};

const ADMIN: &str = "admin-secret-for-tests";

pub(crate) async fn fake_with_recorded(version: &str) -> FakeNetbox {
    FakeNetbox::with_recorded(version).await
}

pub(crate) fn config(nats: &NatsServer, fake: &FakeNetbox, page_size: u32) -> Config {
    let mut config = test_config(nats);
    config.netbox.url = Some(fake.url.clone());
    config.netbox.token = Some(SecretString::from(TOKEN));
    config.netbox.page_size = page_size;
    // One page at a time keeps the request log of most tests exact; other tests set more.
    config.netbox.concurrency = 1;
    config.reconcile.on_start = false;
    config.reconcile.interval = Duration::ZERO;
    config.api.admin_token = Some(SecretString::from(ADMIN));
    config
}

async fn trigger(relay: &TestRelay, token: Option<&str>) -> (u16, Value) {
    crate::helpers::trigger_run(&relay.base, "reconcile", token).await
}

/// Starts a run and waits for its report.
pub(crate) async fn reconcile(relay: &TestRelay) -> Value {
    let (status, body) = trigger(relay, Some(ADMIN)).await;
    assert_eq!(status, 202, "{body}");
    run_report(relay, body).await
}

/// A forced run (deletes past `max_delete_fraction` applied), to its report.
async fn reconcile_forced(relay: &TestRelay) -> Value {
    let (status, body) =
        crate::helpers::trigger_run(&relay.base, "reconcile?force=true", Some(ADMIN)).await;
    assert_eq!(status, 202, "{body}");
    run_report(relay, body).await
}

async fn run_report(relay: &TestRelay, body: Value) -> Value {
    crate::helpers::reconcile_report(&relay.base, &body["run_id"]).await
}

fn total(report: &Value, field: &str) -> u64 {
    crate::helpers::report_total(report, field)
}

#[tokio::test]
async fn a_first_run_publishes_every_object_and_a_second_run_nothing() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(config(&nats, &fake, 2)).await;
    let objects: usize = [
        "dcim/devices",
        "ipam/ip-addresses",
        "ipam/prefixes",
        "virtualization/virtual-machines",
        "dcim/sites",
        "tenancy/tenants",
        "ipam/vlans",
        "ipam/vrfs",
        "virtualization/clusters",
        "virtualization/interfaces",
        "dcim/interfaces",
    ]
    .iter()
    .map(|e| fake.count(e))
    .sum();
    assert_eq!(
        objects, 25,
        "6 devices, 6 IPs, 2 prefixes, 2 sites, 3 interfaces, one of each other type"
    );

    let first = reconcile(&relay).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["trigger"], "api");
    assert_eq!(total(&first, "fetched"), 25);
    assert_eq!(total(&first, "upserted"), 25);
    let stored = stream_messages(&nats.url()).await;
    assert_eq!(stored.len(), 25);
    assert!(stored.iter().all(|m| m.delta["origin"] == "reconcile"
        && m.delta["op"] == "upsert"
        && m.delta["event"].is_null()));
    let device = stored
        .iter()
        .find(|m| m.delta["key"] == "netbox/default/dcim.device/4")
        .unwrap();
    assert_eq!(device.subject, "netbox.registry.default.device.4");
    assert_eq!(
        device.delta["entry"]["netbox_url"], "/api/dcim/devices/4/",
        "API URLs become relative"
    );

    let second = reconcile(&relay).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(
        (total(&second, "upserted"), total(&second, "deleted")),
        (0, 0),
        "{second}"
    );
    assert_eq!(total(&second, "unchanged"), 25);
    assert_eq!(published_count(&nats.url()).await, 25);

    // Cursor pagination in id order, never offsets; the pull ends on an empty page.
    let log = fake.with(|s| s.log.clone());
    let devices: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("dcim/devices?"))
        .take(5)
        .collect();
    let fields = netbox_relay::translate::fields_read(netbox_relay::delta::Kind::Device).join(",");
    let first_two = [
        format!("dcim/devices?fields={fields}&limit=2&start=0"),
        format!("dcim/devices?fields={fields}&limit=2&start=4"),
    ];
    assert_eq!(
        devices[..2],
        first_two.iter().collect::<Vec<_>>(),
        "only the fields translation reads"
    );
    assert!(log.iter().all(|l| !l.contains("offset")), "{log:?}");
}

#[tokio::test]
async fn a_change_a_removal_and_an_addition_publish_exactly_three_deltas() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let mut config = config(&nats, &fake, 1000);
    // Every message kept (no rollup on delete), to read the three new ones back in order.
    config.nats.history_per_key = 0;
    let relay = TestRelay::start(config).await;
    reconcile(&relay).await;
    let before = published_count(&nats.url()).await;

    fake.with(|s| {
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        let changed = devices.get_mut(&4).unwrap();
        changed["status"] = json!({"value": "offline", "label": "Offline"});
        changed["last_updated"] = json!("2026-11-22T12:00:00.000000Z");
        devices.remove(&5);
        let added = device_like(&devices[&6], 99);
        devices.insert(99, added);
        // Saved again with nothing the registry shows changed: a new revision, the same entry
        // (compared by the hash its record keeps), so nothing to publish.
        let touched = devices.get_mut(&6).unwrap();
        touched["last_updated"] = json!("2026-11-22T12:00:01.000000Z");
    });
    let report = reconcile(&relay).await;
    assert_eq!(
        report["object_types"]["dcim.device"]["upserted"], 2,
        "{report}"
    );
    assert_eq!(
        report["object_types"]["dcim.device"]["fetched_in_full"], 3,
        "4, 6 and 99: {report}"
    );
    assert_eq!(
        report["object_types"]["dcim.device"]["deleted"], 1,
        "{report}"
    );
    let stored = stream_messages(&nats.url()).await;
    let new: Vec<(&str, &str)> = stored[before as usize..]
        .iter()
        .map(|m| {
            (
                m.delta["key"].as_str().unwrap(),
                m.delta["op"].as_str().unwrap(),
            )
        })
        .collect();
    // Upserts of one page may reach the stream in any order (order is per key); deletes follow
    // the complete pull.
    let mut upserts = new[..2].to_vec();
    upserts.sort();
    let device = |id: u32| format!("netbox/default/dcim.device/{id}");
    assert_eq!(
        upserts,
        [
            (device(4).as_str(), "upsert"),
            (device(99).as_str(), "upsert")
        ],
        "{new:?}"
    );
    assert_eq!(new[2..], [(device(5).as_str(), "delete")], "{new:?}");
    let changed = stored
        .iter()
        .find(|m| m.delta["key"] == device(4) && m.delta["entry"]["status"] == "offline");
    assert!(changed.is_some(), "device 4's new status was published");
}

#[tokio::test]
async fn a_failed_page_publishes_no_deletes_and_429_is_retried() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(config(&nats, &fake, 1)).await;
    reconcile(&relay).await;
    let before = published_count(&nats.url()).await;
    fake.with(|s| {
        s.objects.get_mut("dcim/devices").unwrap().remove(&7);
        s.requests_reset();
        s.faults.push(Fault {
            endpoint: "dcim/devices".into(),
            request: 3,
            times: 100,
            status: 500,
            retry_after: None,
        });
        s.faults.push(Fault {
            endpoint: "ipam/ip-addresses".into(),
            request: 2,
            times: 1,
            status: 429,
            retry_after: Some(1),
        });
    });
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "failed", "{report}");
    let devices = &report["object_types"]["dcim.device"];
    assert_eq!(devices["status"], "failed", "{report}");
    assert!(
        devices["message"].as_str().unwrap().contains("500"),
        "{devices}"
    );
    assert_eq!(devices["deleted"], 0);
    let ips = &report["object_types"]["ipam.ipaddress"];
    assert_eq!(
        ips["status"], "succeeded",
        "429 with Retry-After is retried: {report}"
    );
    assert_eq!(ips["fetched"], 6);
    for (name, t) in report["object_types"].as_object().unwrap() {
        if name != "dcim.device" {
            assert_eq!(t["status"], "succeeded", "{name}: {t}");
        }
    }
    assert_eq!(
        published_count(&nats.url()).await,
        before,
        "no device delete after a failed pull"
    );
}

#[tokio::test]
async fn deleting_most_of_a_type_is_withheld_unless_forced() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 100);
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    assert_eq!(total(&reconcile(&relay).await, "upserted"), 100);
    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().clear());

    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "partial", "{report}");
    let devices = &report["object_types"]["dcim.device"];
    assert_eq!(
        (
            devices["withheld_deletes"].as_u64(),
            devices["deleted"].as_u64()
        ),
        (Some(100), Some(0)),
        "{devices}"
    );
    assert_eq!(published_count(&nats.url()).await, 100, "nothing deleted");

    let forced = reconcile_forced(&relay).await;
    assert_eq!(forced["object_types"]["dcim.device"]["deleted"], 100);
    assert_eq!(published_count(&nats.url()).await, 200);
}

/// A small NetBox: its only devices deleted while the relay was down go at the next run, though
/// they are all of the type (`reconcile.delete_floor`).
#[tokio::test]
async fn a_few_deletes_are_never_withheld() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 10);
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    assert_eq!(total(&reconcile(&relay).await, "upserted"), 10);
    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().clear());

    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let devices = &report["object_types"]["dcim.device"];
    assert_eq!(devices["deleted"], 10, "{devices}");
    assert_eq!(devices["withheld_deletes"], 0, "{devices}");
    assert_eq!(published_count(&nats.url()).await, 20);
}

#[tokio::test]
async fn the_reconcile_endpoint_wants_the_admin_token_and_one_run_at_a_time() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    fake.with(|s| s.delay = Duration::from_millis(200));
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    assert_eq!(trigger(&relay, None).await.0, 401);
    assert_eq!(trigger(&relay, Some("wrong")).await.0, 401);
    let (first, body) = trigger(&relay, Some(ADMIN)).await;
    assert_eq!(first, 202, "{body}");
    let (second, conflict) = trigger(&relay, Some(ADMIN)).await;
    assert_eq!(second, 409, "{conflict}");
    assert_eq!(conflict["run_id"], body["run_id"]);
    assert_eq!(
        relay.get("/reconcile/runs/latest").await.1["status"],
        "running"
    );
    assert_eq!(relay.get("/reconcile/runs/999").await.0, 404);

    let mut no_admin = config(&nats, &fake, 1000);
    no_admin.api.admin_token = None;
    no_admin.state.path = nats.scratch().join("other.redb");
    let other = TestRelay::start(no_admin).await;
    assert_eq!(
        trigger(&other, Some(ADMIN)).await.0,
        403,
        "no admin token configured"
    );
}

#[tokio::test]
async fn older_netbox_is_paged_by_id_and_a_missing_permission_is_named() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("3.7.8").await;
    fake.with(|s| s.denied.push("ipam/ip-addresses".into()));
    let relay = TestRelay::start(config(&nats, &fake, 2)).await;
    let report = reconcile(&relay).await;
    // NetBox refused one type; the others were pulled completely: partial, not failed.
    assert_eq!(report["status"], "partial", "{report}");
    let ips = &report["object_types"]["ipam.ipaddress"];
    assert_eq!(ips["status"], "partial");
    let message = ips["message"].as_str().unwrap();
    assert!(
        message.contains("ipam.view_ipaddress") && message.contains("permission"),
        "{message}"
    );
    assert_eq!(
        report["object_types"]["dcim.device"]["fetched"], 6,
        "{report}"
    );
    let log = fake.with(|s| s.log.clone());
    let devices: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("dcim/devices?"))
        .collect();
    assert_eq!(
        devices[0],
        "dcim/devices?exclude=config_context&limit=2&ordering=id"
    );
    assert_eq!(
        devices[1],
        "dcim/devices?exclude=config_context&id__gt=3&limit=2&ordering=id"
    );
    assert!(log.iter().all(|l| !l.contains("start=")), "{log:?}");
}

#[tokio::test]
async fn a_webhook_newer_than_the_pull_is_not_overwritten() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    // Device 2 as the API still shows it is older than this webhook (renamed at 10:46:24.81).
    fake.with(|s| {
        let device = s
            .objects
            .get_mut("dcim/devices")
            .unwrap()
            .get_mut(&2)
            .unwrap();
        device["last_updated"] = json!("2026-11-22T10:46:18.511967Z");
        device["status"] = json!({"value": "planned", "label": "Planned"});
    });
    assert_eq!(relay.post_fixture("048_device_updated.json").await.0, 202);
    reconcile(&relay).await;
    let stored = stream_messages(&nats.url()).await;
    let device2: Vec<&Value> = stored
        .iter()
        .filter(|m| m.delta["object_id"] == 2)
        .map(|m| &m.delta)
        .collect();
    assert_eq!(
        device2.len(),
        1,
        "the older API view was not published: {device2:?}"
    );
    assert_eq!(device2[0]["origin"], "webhook");
    assert_eq!(device2[0]["entry"]["status"], "active");
}

#[tokio::test]
async fn a_bad_token_fails_the_run_with_netboxs_reason() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let mut config = config(&nats, &fake, 1000);
    config.netbox.token = Some(SecretString::from("nbt_AbCdEf.not-a-real-secret-value"));
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "failed");
    let message = report["object_types"]["dcim.device"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("Invalid v2 token") && message.contains("netbox.token"),
        "{message}"
    );
    assert!(
        !message.contains("not-a-real-secret-value"),
        "the token never appears in errors"
    );
    assert_eq!(published_count(&nats.url()).await, 0);
}

/// `netbox-relay reconcile` as a user runs it, configured through the environment.
fn cli(nats: &NatsServer, fake: &FakeNetbox, args: &[&str]) -> std::process::Output {
    cli_command(nats, fake, args)
        .output()
        .expect("run netbox-relay reconcile")
}

fn cli_command(nats: &NatsServer, fake: &FakeNetbox, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netbox-relay"));
    command
        .arg("reconcile")
        .args(args)
        .env("NETBOX_RELAY_NETBOX__URL", &fake.url)
        .env("NETBOX_RELAY_NETBOX__TOKEN", TOKEN)
        .env("NETBOX_RELAY_NATS__URL", nats.url())
        .env("NETBOX_RELAY_WEBHOOK__SECRETS", "unused-here")
        .env("NETBOX_RELAY_STATE__PATH", nats.scratch().join("cli.redb"))
        .env("NETBOX_RELAY_LOG__LEVEL", "warn");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_dry_run_prints_deltas_and_a_real_run_publishes_them() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let (n, f) = (&nats, &fake);
    let dry =
        tokio::task::block_in_place(|| cli(n, f, &["--dry-run", "--object-type", "dcim.device"]));
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(dry.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "one delta per device");
    assert!(lines
        .iter()
        .all(|d| d["kind"] == "device" && d["origin"] == "reconcile"));
    let summary = String::from_utf8_lossy(&dry.stderr);
    assert!(
        summary.contains("dcim.device") && summary.contains("Succeeded"),
        "{summary}"
    );

    let real = tokio::task::block_in_place(|| cli(n, f, &["--object-type", "dcim.device"]));
    assert!(
        real.status.success(),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert!(real.stdout.is_empty(), "a real run prints no deltas");
    assert_eq!(published_count(&nats.url()).await, 6);
    let again = tokio::task::block_in_place(|| cli(n, f, &["--object-type", "dcim.device"]));
    assert!(again.status.success());
    assert_eq!(
        published_count(&nats.url()).await,
        6,
        "the second run found nothing to publish"
    );
}

/// The relay's memory during a pull does not grow with the number of objects: pages stream
/// through, only ids and record heads are kept per object (for the delete check). Measured on
/// the relay's own process (`serve`, its `VmHWM` once the run has ended), so that the fake API's
/// objects do not count. The state file's page cache, bounded by `state.cache_bytes`, is set
/// small here so that it is full at both sizes and what is left to grow is what scales.
///
/// Each size runs twice and counts with its lower peak: a peak also catches a moment's spike of
/// pages and deltas in flight, whose height depends on timing (20-30 MiB either way between two
/// runs of one size on a busy machine), while growth with the count shows in every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_sixty_thousand_devices_completes_in_bounded_memory() {
    let mut peaks = Vec::new();
    for count in [20_000, 60_000] {
        let first = reconcile_peak_mib(count).await;
        let second = reconcile_peak_mib(count).await;
        println!("{count} devices: peaks {first:.1} and {second:.1} MiB");
        peaks.push(first.min(second));
    }
    let (small, large) = (peaks[0], peaks[1]);
    println!("peak memory of the relay (debug build) reconciling 20,000 devices: {small:.1} MiB, 60,000 devices: {large:.1} MiB");
    // Holding the 40,000 more devices would take 60 MiB as JSON text (about 1.5 KiB each in the
    // fake's answer) and several times that parsed. What may grow: the ids seen and known (about
    // 50 bytes a device) and the stream's subject listing while it is read, a few MiB; the rest
    // is the allocator's noise between two processes (up to 15 MiB seen).
    assert!(
        large - small < 32.0,
        "memory grows with the object count: {small:.1} MiB for 20,000 devices, {large:.1} MiB for 60,000"
    );
}

/// The relay's peak memory (MiB) over a first reconcile of `count` generated devices.
async fn reconcile_peak_mib(count: u64) -> f64 {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, count);
    let env = [
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", TOKEN),
        ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
        ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
        ("NETBOX_RELAY_STATE__CACHE_BYTES", "4194304"),
    ];
    let relay = RelayProcess::start_with(&nats, free_port(), &env, None);
    relay.wait_ready().await;
    let report = crate::helpers::reconcile_through_api(&relay.base, ADMIN).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(published_count(&nats.url()).await, count);
    relay.peak_memory_mib()
}

/// Scripts and cron jobs branch on the exit code: 0 succeeded, 1 failed, 2 bad usage or
/// configuration, 3 partial (here: deletes withheld past `reconcile.max_delete_fraction`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exit_code_tells_each_outcome_apart() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    let (n, f) = (&nats, &fake);
    // The recorded NetBox is small: with no floor of deletes never withheld, clearing it is
    // withheld.
    let code = |args: &[&str]| {
        let output = tokio::task::block_in_place(|| {
            let mut command = cli_command(n, f, args);
            command.env("NETBOX_RELAY_RECONCILE__DELETE_FLOOR", "0");
            command.output().unwrap()
        });
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let device = ["--object-type", "dcim.device"];

    let (status, stderr) = code(&["--object-type", "dcim.nonsense"]);
    assert_eq!(status, Some(2), "an unknown object type: {stderr}");
    let (status, stderr) = code(&["--frobnicate"]);
    assert_eq!(status, Some(2), "an unknown flag: {stderr}");
    let bad_config = std::process::Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .args(["reconcile"])
        .env("NETBOX_RELAY_NETBOX__PAGE_SIZE", "not-a-number")
        .output()
        .unwrap();
    assert_eq!(bad_config.status.code(), Some(2), "bad configuration");

    let (status, stderr) = code(&device);
    assert_eq!(status, Some(0), "a run that succeeded: {stderr}");
    assert!(stderr.contains("Succeeded"), "{stderr}");

    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().clear());
    let (status, stderr) = code(&device);
    assert_eq!(
        status,
        Some(3),
        "deletes withheld make a partial run: {stderr}"
    );
    assert!(stderr.contains("withheld"), "{stderr}");

    let refused = tokio::task::block_in_place(|| {
        cli_command(n, f, &device)
            .env("NETBOX_RELAY_NETBOX__TOKEN", "not-the-token")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "NetBox refused the token: {stderr}"
    );
    assert!(stderr.contains("Invalid v1 token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_segments_in_flight_fetch_every_object_exactly_once() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 2_000);
    fake.generate_devices(5_000, 1_001);
    let mut config = config(&nats, &fake, 100);
    config.netbox.concurrency = 3;
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    let devices = &report["object_types"]["dcim.device"];
    assert_eq!(
        (devices["fetched"].as_u64(), devices["upserted"].as_u64()),
        (Some(3_001), Some(3_001)),
        "{devices}"
    );
    let stored = stream_messages(&nats.url()).await;
    let ids: std::collections::HashSet<u64> = stored
        .iter()
        .map(|m| m.delta["object_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (stored.len(), ids.len()),
        (3_001, 3_001),
        "every device once"
    );
    let log = fake.with(|s| s.log.clone());
    let device_requests: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("dcim/devices?"))
        .collect();
    assert!(
        device_requests[0].contains("start=0") && !device_requests[0].contains("id__lt"),
        "the first page alone: {device_requests:?}"
    );
    assert_eq!(
        device_requests[1], "dcim/devices?fields=id&limit=1&ordering=-id",
        "the highest id (alone serialized) bounds the segments of the rest"
    );
    // Ids 101 to 6000 in three: 1,967 wide.
    for bound in ["id__lt=2068", "id__lt=4035", "id__lt=6001"] {
        assert!(
            device_requests.iter().any(|l| l.contains(bound)),
            "segment up to {bound}: {device_requests:?}"
        );
    }
}

/// A cheap pass spends `netbox.concurrency` on types, not on segments: several types are listed
/// at once, each by one cursor (no highest-id request, no `id__lt` bound), so that NetBox has at
/// most that many listings in flight, plus the parents' listing beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheap_pass_lists_several_types_at_once_each_by_one_cursor() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    fake.generate_devices(1000, 450);
    let mut config = config(&nats, &fake, 100);
    config.netbox.concurrency = 3;
    let relay = TestRelay::start(config).await;
    assert_eq!(reconcile(&relay).await["pass"], "full");

    fake.with(|s| {
        s.log.clear();
        s.max_in_flight = 0;
        s.delay = Duration::from_millis(40);
    });
    let cheap = reconcile(&relay).await;
    assert_eq!(cheap["pass"], "cheap", "{cheap}");
    assert_eq!(cheap["status"], "succeeded", "{cheap}");
    let (log, max_in_flight) = fake.with(|s| (s.log.clone(), s.max_in_flight));
    let devices: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("dcim/devices?"))
        .collect();
    assert!(devices.len() >= 5, "pages of 100: {devices:?}");
    assert!(
        devices
            .iter()
            .all(|l| !l.contains("id__lt") && !l.contains("ordering=-id")),
        "one cursor, no segments: {devices:?}"
    );
    assert!(
        (3..=4).contains(&max_in_flight),
        "3 types at once (and a parent listed beside them): {max_in_flight} in flight"
    );
}
/// NetBox says which page is the last (`next: null` when it served fewer objects than the page
/// holds), and a segment ends with its highest possible id: a type that fits one page costs one
/// request, a longer one no empty page at the end of a segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_asks_no_page_it_can_tell_is_empty() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 500);
    let requests = |fake: &FakeNetbox, endpoint: &str| {
        let log = fake.with(|s| s.log.clone());
        log.into_iter()
            .filter(|l| l.starts_with(&format!("{endpoint}?")))
            .collect::<Vec<_>>()
    };
    let mut config = config(&nats, &fake, 100);
    config.netbox.concurrency = 4;
    config.registry.object_types = vec!["dcim.device".into(), "dcim.site".into()];
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(requests(&fake, "dcim/sites").len(), 1, "one page of sites");
    let devices = requests(&fake, "dcim/devices");
    // The first page (ids 1-100, full), the highest id, then ids 101 to 500 in four segments
    // of 100: one full page each, which ends with the segment's last id.
    assert_eq!(devices.len(), 2 + 4, "{devices:?}");
    assert_eq!(report["object_types"]["dcim.device"]["upserted"], 500);
    relay.relay.stop().await.unwrap();
}

/// A fake NetBox with the recorded devices, device 2 as the API showed it before webhook 048
/// renamed it (at 10:46:24.81).
async fn devices_before_the_rename() -> FakeNetbox {
    let fake = FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    fake.with(|s| {
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        devices.get_mut(&2).unwrap()["last_updated"] = json!("2026-11-22T10:46:18.511967Z");
    });
    fake
}

/// A delete reconcile inferred is not a fact: objects hidden from the token (permissions
/// narrowed) and shown again are all back after the next complete pull, whatever their
/// `last_updated`, and a webhook that came in between is not lost.
#[tokio::test]
async fn objects_hidden_from_a_pull_and_shown_again_are_back_after_the_next() {
    let nats = NatsServer::start();
    let fake = devices_before_the_rename().await;
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    let devices = fake.with(|s| s.objects["dcim/devices"].clone());
    assert_eq!(
        reconcile(&relay).await["object_types"]["dcim.device"]["upserted"],
        devices.len()
    );

    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().clear());
    let hidden = reconcile_forced(&relay).await;
    assert_eq!(
        hidden["object_types"]["dcim.device"]["deleted"],
        devices.len(),
        "{hidden}"
    );
    assert_eq!(relay.post_fixture("048_device_updated.json").await.0, 202);
    fake.with(|s| *s.objects.get_mut("dcim/devices").unwrap() = devices.clone());
    let shown = reconcile(&relay).await;
    assert_eq!(shown["status"], "succeeded", "{shown}");
    let shown = &shown["object_types"]["dcim.device"];
    assert_eq!(
        (shown["upserted"].as_u64(), shown["unchanged"].as_u64()),
        (Some(devices.len() as u64 - 1), Some(1)),
        "every device but the one the webhook brought back: {shown}"
    );

    // The registry a consumer builds from the stream: the last delta of each key.
    let mut registry = std::collections::HashMap::new();
    let mut revisions = std::collections::HashMap::<String, String>::new();
    for m in stream_messages(&nats.url()).await {
        let key = m.delta["key"].as_str().unwrap().to_string();
        let revision = m.delta["revision"].as_str().unwrap().to_string();
        if let Some(before) = revisions.insert(key.clone(), revision.clone()) {
            assert!(before <= revision, "{key}: {revision} after {before}");
        }
        registry.insert(key, m.delta);
    }
    for id in devices.keys() {
        let delta = &registry[&format!("netbox/default/dcim.device/{id}")];
        assert_eq!(delta["op"], "upsert", "device {id} is back: {delta}");
    }
    let device2 = &registry["netbox/default/dcim.device/2"];
    assert_eq!(device2["origin"], "webhook", "{device2}");
    assert_eq!(device2["revision"], "2026-11-22T10:46:24.812343Z");
    // A second sight changes nothing.
    let again = reconcile(&relay).await;
    assert_eq!(
        total(&again, "upserted") + total(&again, "deleted"),
        0,
        "{again}"
    );
}

/// NetBox creates a device while a run pulls: the webhook arrives mid-run, after the pull fixed
/// its id range. The run did not see the device, and must not delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_created_during_a_run_is_not_deleted_by_it() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 3_000);
    fake.with(|s| s.delay = Duration::from_millis(150));
    let relay = TestRelay::start(config(&nats, &fake, 500)).await;
    let (status, run) = trigger(&relay, Some(ADMIN)).await;
    assert_eq!(status, 202, "{run}");
    let pulled_a_page = || {
        fake.with(|s| {
            s.log
                .iter()
                .filter(|l| l.starts_with("dcim/devices?"))
                .count()
        }) >= 2
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pulled_a_page() {
        assert!(Instant::now() < deadline, "the run pulled no page");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The recorded create as NetBox sends it for a device saved now.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut created = crate::helpers::fixture_json("020_device_created.json");
    created["data"]["id"] = json!(900_001);
    created["data"]["url"] = json!("/api/dcim/devices/900001/");
    created["data"]["name"] = json!("created-mid-run");
    created["data"]["last_updated"] = json!(now);
    created["timestamp"] = json!(now);
    let device = created["data"].clone();
    fake.with(|s| {
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        devices.insert(900_001, device);
    });
    let (status, body) = relay
        .post_signed(&serde_json::to_vec(&created).unwrap())
        .await;
    assert_eq!(status, 202, "{body}");
    let answered = chrono::Utc::now();
    let report = run_report(&relay, run).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let ended: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(report["ended_at"].clone()).unwrap();
    assert!(
        ended > answered,
        "the webhook came before the run ended: {report}"
    );
    assert_eq!(
        report["object_types"]["dcim.device"]["deleted"], 0,
        "{report}"
    );

    let ops: Vec<String> = stream_messages(&nats.url())
        .await
        .iter()
        .filter(|m| m.delta["object_id"] == 900_001)
        .map(|m| m.delta["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["upsert"], "the device created mid-run stays");
}

/// The cheap pass: after the first (full) run, an unchanged run has NetBox serialize nothing in full
/// and publishes nothing; after creates, updates and deletes it fetches and publishes exactly them;
/// a change NetBox did not stamp in `last_updated` waits for the full pass, asked with `{"full": true}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cheap_pass_fetches_only_what_changed_and_the_full_pass_the_rest() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    fake.generate_devices(1000, 300);
    let relay = TestRelay::start(config(&nats, &fake, 100)).await;
    let first = reconcile(&relay).await;
    assert_eq!(first["pass"], "full", "the state was new: {first}");
    let listed = total(&first, "fetched");
    assert_eq!(total(&first, "fetched_in_full"), listed, "{first}");
    let published = published_count(&nats.url()).await;

    fake.with(|s| s.served_in_full.clear());
    let unchanged = reconcile(&relay).await;
    assert_eq!(unchanged["pass"], "cheap", "{unchanged}");
    assert_eq!(
        total(&unchanged, "fetched"),
        listed,
        "every object listed: {unchanged}"
    );
    assert_eq!(total(&unchanged, "fetched_in_full"), 0, "{unchanged}");
    assert_eq!(
        fake.with(|s| s.served_in_full_total()),
        0,
        "NetBox serialized nothing in full"
    );
    assert_eq!(
        published_count(&nats.url()).await,
        published,
        "nothing published"
    );

    // 2 updated (one stamped later by NetBox, one only re-stamped), 3 created, 2 deleted.
    fake.with(|s| {
        s.served_in_full.clear();
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        let renamed = devices.get_mut(&1010).unwrap();
        renamed["name"] = json!("renamed-1010");
        renamed["last_updated"] = json!("2026-12-01T10:00:00.000000Z");
        devices.get_mut(&1011).unwrap()["last_updated"] = json!("2026-12-01T10:00:01.000000Z");
        for id in [5000, 5001, 5002] {
            let added = device_like(&devices[&1000], id);
            devices.insert(id, added);
        }
        devices.remove(&1020);
        devices.remove(&1021);
    });
    let changed = reconcile(&relay).await;
    assert_eq!(changed["pass"], "cheap", "{changed}");
    let devices = &changed["object_types"]["dcim.device"];
    assert_eq!(
        devices["fetched_in_full"], 5,
        "2 updated + 3 created: {changed}"
    );
    assert_eq!(
        fake.with(|s| s.served_in_full.get("dcim/devices").copied()),
        Some(5)
    );
    assert_eq!(fake.with(|s| s.served_in_full_total()), 5);
    // The re-stamped one is unchanged once fetched: 1 + 3 upserts, 2 deletes.
    assert_eq!(devices["upserted"], 4, "{changed}");
    assert_eq!(devices["deleted"], 2, "{changed}");
    assert_eq!(
        published_count(&nats.url()).await,
        published + 6,
        "exactly the six changes"
    );

    // A change without a new last_updated (as a nested value NetBox does not stamp): the cheap
    // pass does not see it, the full pass does.
    fake.with(|s| {
        let device = s
            .objects
            .get_mut("dcim/devices")
            .unwrap()
            .get_mut(&1030)
            .unwrap();
        device["name"] = json!("renamed-quietly");
    });
    let cheap = reconcile(&relay).await;
    assert_eq!(cheap["pass"], "cheap");
    assert_eq!(total(&cheap, "upserted"), 0, "{cheap}");
    let (status, body) =
        crate::helpers::trigger_run_with_body(&relay.base, json!({"full": true}), ADMIN).await;
    assert_eq!(status, 202, "{body}");
    let full = run_report(&relay, body).await;
    assert_eq!(full["pass"], "full", "{full}");
    assert_eq!(total(&full, "upserted"), 1, "the quiet rename: {full}");
    assert_eq!(
        total(&full, "unchanged_as_served"),
        total(&full, "fetched") - 6,
        "all but the renamed, the re-stamped, the three created and the quietly renamed: {full}"
    );
    // In-process relays of other tests share the metrics recorder: at least this test's runs.
    let metrics = crate::helpers::metrics_text(&reqwest::Client::new(), &relay.base).await;
    let passes = |pass: &str| -> u64 {
        let line = format!("netbox_relay_reconcile_passes_total{{pass=\"{pass}\"}} ");
        let found = metrics.lines().find_map(|l| l.strip_prefix(line.as_str()));
        found.and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(passes("cheap") >= 3 && passes("full") >= 2, "{metrics}");
}

/// `reconcile.full_interval` elapsed makes the next run full; a malformed body is refused.
#[tokio::test]
async fn a_full_pass_comes_when_full_interval_has_passed() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let mut config = config(&nats, &fake, 1000);
    config.reconcile.full_interval = Duration::from_secs(3);
    let relay = TestRelay::start(config).await;
    assert_eq!(reconcile(&relay).await["pass"], "full");
    assert_eq!(reconcile(&relay).await["pass"], "cheap");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reconcile(&relay).await["pass"], "full");
    let (status, body) =
        crate::helpers::trigger_run_with_body(&relay.base, json!({"ful": true}), ADMIN).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("ful"), "{body}");
}

/// Whether a full pass is due is judged by the NATS server's clock alone: a record of the last
/// full pass written by a relay whose clock is decades ahead or days behind changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pass_is_due_by_the_servers_clock_not_the_writers() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let mut config = config(&nats, &fake, 1000);
    config.reconcile.full_interval = Duration::from_secs(3);
    let relay = TestRelay::start(config.clone()).await;
    assert_eq!(reconcile(&relay).await["pass"], "full");
    relay.relay.stop().await.unwrap();

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js.get_key_value("NETBOX_RELAY").await.unwrap();
    // Restarted (nothing kept in memory): only the bucket says when the last full pass was.
    let relay = TestRelay::start(config).await;
    for written_at in ["2099-01-01T00:00:00+00:00", "2020-01-01T00:00:00+00:00"] {
        bucket
            .put("reconcile.last_full", written_at.into())
            .await
            .unwrap();
        assert_eq!(
            reconcile(&relay).await["pass"],
            "cheap",
            "a full pass recorded just now, whatever its writer's clock said ({written_at})"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reconcile(&relay).await["pass"], "full");
}

/// A full pass on demand, to its report.
pub(crate) async fn full_pass(relay: &TestRelay, force: bool) -> Value {
    let body = json!({"full": true, "force": force});
    let (status, body) = crate::helpers::trigger_run_with_body(&relay.base, body, ADMIN).await;
    assert_eq!(status, 202, "{body}");
    let report = run_report(relay, body).await;
    assert_eq!(report["pass"], "full", "{report}");
    report
}

/// A full pass passes over an object NetBox serves byte for byte as when a full pass last
/// translated it, only while the key's record is still the one that translation matched or made;
/// what is served otherwise, or whose record moved (a webhook, an inferred delete), is read again.
#[tokio::test]
async fn a_full_pass_reads_again_only_what_is_served_otherwise_or_whose_record_moved() {
    let nats = NatsServer::start();
    let fake = devices_before_the_rename().await;
    let relay = TestRelay::start(config(&nats, &fake, 2)).await;
    let devices = fake.with(|s| s.objects["dcim/devices"].clone());
    let n = devices.len() as u64;
    let of = |report: &Value, field: &str| report["object_types"]["dcim.device"][field].as_u64();

    let first = full_pass(&relay, false).await;
    assert_eq!(of(&first, "upserted"), Some(n), "{first}");
    assert_eq!(of(&first, "unchanged_as_served"), Some(0), "{first}");
    let published = published_count(&nats.url()).await;

    let unchanged = full_pass(&relay, false).await;
    assert_eq!(of(&unchanged, "fetched_in_full"), Some(n), "{unchanged}");
    assert_eq!(of(&unchanged, "unchanged"), Some(n), "{unchanged}");
    assert_eq!(
        of(&unchanged, "unchanged_as_served"),
        Some(n),
        "nothing parsed: {unchanged}"
    );
    assert_eq!(published_count(&nats.url()).await, published);

    // A webhook moves device 2's record; device 3 is renamed without a new last_updated.
    assert_eq!(relay.post_fixture("048_device_updated.json").await.0, 202);
    fake.with(|s| {
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        devices.get_mut(&3).unwrap()["name"] = json!("renamed-quietly");
    });
    let published = published_count(&nats.url()).await;
    let moved = full_pass(&relay, false).await;
    assert_eq!(moved["status"], "succeeded", "{moved}");
    assert_eq!(of(&moved, "upserted"), Some(1), "the quiet rename: {moved}");
    assert_eq!(
        of(&moved, "unchanged_as_served"),
        Some(n - 2),
        "all but device 2 (its record moved) and device 3 (served otherwise): {moved}"
    );
    assert_eq!(published_count(&nats.url()).await, published + 1);
    let last = stream_messages(&nats.url()).await;
    let device3 = last
        .iter()
        .rev()
        .find(|m| m.delta["key"] == "netbox/default/dcim.device/3")
        .unwrap();
    assert_eq!(device3.delta["entry"]["name"], "renamed-quietly");

    // Hidden (deletes inferred), then served again exactly as before: every record moved, so
    // every device is read again and comes back (device 2 as NetBox serves it after the webhook).
    let devices = fake.with(|s| {
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        devices.get_mut(&2).unwrap()["last_updated"] = json!("2026-11-22T10:46:24.812343Z");
        std::mem::take(devices)
    });
    let hidden = full_pass(&relay, true).await;
    assert_eq!(of(&hidden, "deleted"), Some(n), "{hidden}");
    fake.with(|s| *s.objects.get_mut("dcim/devices").unwrap() = devices.clone());
    let shown = full_pass(&relay, false).await;
    assert_eq!(of(&shown, "unchanged_as_served"), Some(0), "{shown}");
    let mut registry = std::collections::HashMap::new();
    for m in stream_messages(&nats.url()).await {
        registry.insert(m.delta["key"].as_str().unwrap().to_string(), m.delta);
    }
    for id in devices.keys() {
        let delta = &registry[&format!("netbox/default/dcim.device/{id}")];
        assert_eq!(delta["op"], "upsert", "device {id} is back: {delta}");
    }
    // They came back one microsecond after their inferred deletes (revisions per key keep
    // rising), so their records are not the deltas translation made: the next pass reads them
    // again and finds them equal, and the one after passes over them.
    let again = full_pass(&relay, false).await;
    assert_eq!(total(&again, "upserted") + total(&again, "deleted"), 0);
    assert_eq!(of(&again, "unchanged_as_served"), Some(0), "{again}");
    let settled = full_pass(&relay, false).await;
    assert_eq!(of(&settled, "unchanged_as_served"), Some(n), "{settled}");
}

/// Other translation settings make the same served objects translate otherwise: a full pass after
/// a restart with `registry.expand_subnets` turned on reads the prefixes and addresses again.
#[tokio::test]
async fn a_full_pass_after_a_settings_change_translates_again() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let config = config(&nats, &fake, 100);
    let relay = TestRelay::start(config.clone()).await;
    full_pass(&relay, false).await;
    let unchanged = full_pass(&relay, false).await;
    let fetched = total(&unchanged, "fetched");
    assert_eq!(
        total(&unchanged, "unchanged_as_served"),
        fetched,
        "{unchanged}"
    );
    relay.relay.stop().await.unwrap();

    let mut expanding = config;
    expanding.registry.expand_subnets = true;
    let relay = TestRelay::start(expanding).await;
    let published = published_count(&nats.url()).await;
    let changed = full_pass(&relay, false).await;
    let read_again = |t: &str| {
        let report = &changed["object_types"][t];
        report["fetched"].as_u64().unwrap() - report["unchanged_as_served"].as_u64().unwrap()
    };
    assert!(read_again("ipam.prefix") > 0, "{changed}");
    assert_eq!(
        total(&changed, "unchanged_as_served"),
        0,
        "a setting of translation changed: every object read again: {changed}"
    );
    let upserted = total(&changed, "upserted");
    assert!(upserted > 0, "prefixes now carry their hosts: {changed}");
    assert_eq!(published_count(&nats.url()).await, published + upserted);
}
