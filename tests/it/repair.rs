//! Every path repairs what a lost webhook would have changed: a default run cascades from the
//! parents it finds changed (registry kinds by their entry, device roles, platforms, tags and
//! IPAM roles by their listed slug), a cascade kept before a restart runs after it, and webhooks
//! held for confirmation, or answered as duplicates, still cascade.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cascade::{
    cascaded, device_renamed_in_fake, keys, lab, published_exactly, rename_in_fake, requests_with,
    site, update_webhook, Lab, DEBOUNCE,
};
use crate::fake_netbox::FakeNetbox;
use crate::helpers::{fixture_json, published_count, NatsServer, TestRelay};
use crate::reconcile::{config, fake_with_recorded, reconcile};

/// A relay whose registry holds the recorded NetBox after one (full) run; cascades on.
async fn relay_over(fake: &FakeNetbox, nats: &NatsServer) -> TestRelay {
    let mut config = config(nats, fake, 1000);
    config.cascade.debounce = DEBOUNCE;
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["pass"], "full", "{report}");
    relay
}

/// NetBox's time of a save made now, as it writes `last_updated`.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn object(fake: &FakeNetbox, endpoint: &str, id: u64) -> Map<String, Value> {
    fake.with(|s| s.objects[endpoint][&id].as_object().unwrap().clone())
}

/// Sets fields of one object of the fake, as NetBox saves it (`last_updated` now).
fn save(fake: &FakeNetbox, endpoint: &str, id: u64, fields: Value) {
    fake.with(|s| {
        let saved = s.objects.get_mut(endpoint).unwrap().get_mut(&id).unwrap();
        for (field, value) in fields.as_object().unwrap() {
            saved[field] = value.clone();
        }
        saved["last_updated"] = json!(now());
    });
}

/// FRA1 (site 1) re-slugged to fra9 in NetBox, with no webhook: its dependents show the new
/// slug, unstamped.
fn site_renamed_quietly(fake: &FakeNetbox) {
    rename_in_fake(fake, "site", 1, "fra9", "FRA9");
    save(
        fake,
        "dcim/sites",
        1,
        json!({"slug": "fra9", "name": "FRA9"}),
    );
}

/// ams1-leaf1's primary IP (14) deleted as NetBox does it: the device cleared, not saved.
fn primary_ip_deleted(fake: &FakeNetbox) {
    fake.with(|s| {
        s.objects.get_mut("ipam/ip-addresses").unwrap().remove(&14);
        let device = s
            .objects
            .get_mut("dcim/devices")
            .unwrap()
            .get_mut(&4)
            .unwrap();
        device["primary_ip4"] = Value::Null;
        device["primary_ip"] = Value::Null;
    });
}

/// What shows site 1 in the recorded NetBox.
pub(crate) fn site_1_dependents() -> BTreeSet<String> {
    [
        "dcim.device/2",
        "dcim.device/3",
        "virtualization.virtualmachine/2",
        "ipam.prefix/1",
        "ipam.vlan/1",
        "virtualization.cluster/1",
    ]
    .iter()
    .map(|k| format!("netbox/default/{k}"))
    .collect()
}

/// The last delta of `key` on the stream.
async fn last_of(nats: &NatsServer, key: &str) -> Value {
    let messages = crate::helpers::stream_messages(&nats.url()).await;
    let last = messages.into_iter().rev().find(|m| m.delta["key"] == key);
    last.map(|m| m.delta).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_relabels_the_dependents_of_a_site_renamed_while_no_webhook_came() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    site_renamed_quietly(&fake);
    let report = reconcile(&relay).await;
    assert_eq!(report["pass"], "cheap", "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        report["object_types"]["dcim.site"]["upserted"], 1,
        "{report}"
    );
    let cascades = &report["cascades"];
    assert_eq!(cascades["parents"], 1, "{report}");
    assert_eq!(cascades["published"], 6, "{report}");
    assert_eq!(cascades["failed"], 0, "{report}");

    // The site, then exactly what shows it, each with the new slug.
    assert_eq!(published_count(&nats.url()).await, before + 7);
    let deltas = cascaded(&nats, before).await;
    assert_eq!(keys(&deltas), site_1_dependents());
    for delta in &deltas {
        assert_eq!(delta["entry"]["labels"]["site"], "fra9", "{delta}");
    }
    // Nothing is left pending: the next run cascades nothing.
    let next = reconcile(&relay).await;
    assert_eq!(next["cascades"]["parents"], 0, "{next}");
    assert_eq!(published_count(&nats.url()).await, before + 7);
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_gives_a_device_its_renumbered_primary_ip() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // IP address 14 (ams1-leaf1's primary) renumbered: NetBox stamps the address, not the device.
    save(
        &fake,
        "ipam/ip-addresses",
        14,
        json!({"address": "198.51.100.110/24"}),
    );
    fake.with(|s| {
        let device = s
            .objects
            .get_mut("dcim/devices")
            .unwrap()
            .get_mut(&4)
            .unwrap();
        device["primary_ip4"]["address"] = json!("198.51.100.110/24");
        device["primary_ip"]["address"] = json!("198.51.100.110/24");
    });
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["object_types"]["ipam.ipaddress"]["upserted"], 1);
    assert_eq!(report["cascades"]["parents"], 1, "{report}");
    let device = last_of(&nats, "netbox/default/dcim.device/4").await;
    assert_eq!(device["origin"], "cascade", "{device}");
    assert_eq!(device["entry"]["addresses"], json!(["198.51.100.110"]));
    assert_eq!(
        published_count(&nats.url()).await,
        before + 2,
        "the address and its device"
    );
    relay.relay.stop().await.unwrap();
}

/// The platforms the recorded devices point at, as NetBox lists them.
fn platforms_from_devices(fake: &FakeNetbox) {
    fake.with(|s| {
        let platforms: Vec<Value> = s.objects["dcim/devices"]
            .values()
            .filter_map(|d| d["platform"].as_object().cloned().map(Value::Object))
            .collect();
        let listed = s.objects.entry("dcim/platforms".into()).or_default();
        for p in platforms {
            let mut platform = p.clone();
            platform["last_updated"] = json!("2026-11-22T10:40:00.000000Z");
            listed.insert(p["id"].as_u64().unwrap(), platform);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_relabels_what_shows_a_platform_reslugged_while_no_webhook_came() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    platforms_from_devices(&fake);
    let eos = fake.with(|s| {
        let platforms = &s.objects["dcim/platforms"];
        let eos = platforms.values().find(|p| p["slug"] == "eos").unwrap();
        eos["id"].as_u64().unwrap()
    });
    let relay = relay_over(&fake, &nats).await;
    let before = published_count(&nats.url()).await;
    // An unchanged run lists the platforms' slugs only: nothing served in full, nothing pulled.
    fake.with(|s| s.served_in_full.clear());
    let unchanged = reconcile(&relay).await;
    assert_eq!(unchanged["cascades"]["parents"], 0, "{unchanged}");
    assert_eq!(fake.with(|s| s.served_in_full_total()), 0);
    let listed = crate::cascade::requests_with(&fake, "fields=id,slug");
    assert!(
        listed.iter().any(|r| r.starts_with("dcim/platforms")),
        "{listed:?}"
    );

    rename_in_fake(&fake, "platform", eos, "arista-eos", "Arista EOS");
    save(
        &fake,
        "dcim/platforms",
        eos,
        json!({"slug": "arista-eos", "name": "Arista EOS"}),
    );
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["cascades"]["parents"], 1, "{report}");
    let deltas = cascaded(&nats, before).await;
    let showing: BTreeSet<String> = fake.with(|s| {
        let devices = s.objects["dcim/devices"].values();
        let devices = devices.filter(|d| d["platform"]["id"].as_u64() == Some(eos));
        let devices = devices.map(|d| format!("netbox/default/dcim.device/{}", d["id"]));
        let vms = s.objects["virtualization/virtual-machines"].values();
        let vms = vms.filter(|d| d["platform"]["id"].as_u64() == Some(eos));
        let vms = vms.map(|d| format!("netbox/default/virtualization.virtualmachine/{}", d["id"]));
        devices.chain(vms).collect()
    });
    assert!(!showing.is_empty());
    assert_eq!(keys(&deltas), showing);
    for delta in &deltas {
        assert_eq!(
            delta["entry"]["labels"]["platform"], "arista-eos",
            "{delta}"
        );
    }
    assert_eq!(report["cascades"]["published"], showing.len() as u64);
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_queued_when_the_relay_stops_runs_when_it_starts_again() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let mut config = config(&nats, &fake, 1000);
    // Long enough that the relay stops before it pulls anything.
    config.cascade.debounce = Duration::from_secs(120);
    let relay = TestRelay::start(config.clone()).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let before = published_count(&nats.url()).await;

    site_renamed_quietly(&fake);
    let body = update_webhook(
        "051_site_updated.json",
        "dcim.site",
        &site(&fake, 1),
        "slug",
        &json!("fra1"),
    );
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");
    relay.relay.stop().await.unwrap();
    assert_eq!(
        published_count(&nats.url()).await,
        before + 1,
        "the site alone"
    );

    config.cascade.debounce = DEBOUNCE;
    let relay = TestRelay::start(config).await;
    published_exactly(&nats, before + 7, DEBOUNCE * 3).await;
    assert_eq!(keys(&cascaded(&nats, before).await), site_1_dependents());
    relay.relay.stop().await.unwrap();
}

/// A relay over the recorded NetBox listing netbox-branching, so that webhooks are confirmed.
async fn confirming_relay(fake: &FakeNetbox, nats: &NatsServer) -> TestRelay {
    fake.with(|s| s.plugins = json!({"netbox_branching": "1.2.2"}));
    let mut config = config(nats, fake, 1000);
    config.cascade.debounce = DEBOUNCE;
    config.webhook.confirm_timeout = Duration::from_millis(300);
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    relay
}

/// The update webhook of site 1 as the fake shows it now, its `last_updated` the fake's.
fn site_webhook(fake: &FakeNetbox, field: &str, before: Value) -> Vec<u8> {
    let site = site(fake, 1);
    let body = update_webhook("051_site_updated.json", "dcim.site", &site, field, &before);
    let mut body: Value = serde_json::from_slice(&body).unwrap();
    body["data"]["last_updated"] = site["last_updated"].clone();
    serde_json::to_vec(&body).unwrap()
}

/// Posts `body` while NetBox is slow to answer: the webhook is held for confirmation.
async fn post_held(relay: &TestRelay, fake: &FakeNetbox, body: &[u8]) {
    fake.with(|s| s.delay = Duration::from_secs(1));
    let (status, answer) = relay.post_signed(body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["confirm"], "held", "{answer}");
    fake.with(|s| s.delay = Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_webhook_of_a_renamed_site_relabels_its_dependents_once_confirmed() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = confirming_relay(&fake, &nats).await;
    let before = published_count(&nats.url()).await;

    site_renamed_quietly(&fake);
    let body = site_webhook(&fake, "slug", json!("fra1"));
    post_held(&relay, &fake, &body).await;

    published_exactly(&nats, before + 7, DEBOUNCE * 3).await;
    let deltas = cascaded(&nats, before).await;
    assert_eq!(keys(&deltas), site_1_dependents());
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quick_updates_of_a_site_relabel_its_dependents_when_the_second_is_a_duplicate() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = confirming_relay(&fake, &nats).await;
    let before = published_count(&nats.url()).await;

    // W1 changed the description; W2 the slug. W1 arrives after both were saved: its
    // confirmation finds main after W2, and publishes that.
    let mut first = site(&fake, 1);
    first.insert("description".into(), json!("Frankfurt"));
    first.insert("last_updated".into(), json!(now()));
    let w1 = update_webhook(
        "051_site_updated.json",
        "dcim.site",
        &first,
        "description",
        &json!(""),
    );
    site_renamed_quietly(&fake);
    save(&fake, "dcim/sites", 1, json!({"description": "Frankfurt"}));
    let w2 = site_webhook(&fake, "slug", json!("fra1"));
    let (status, answer) = relay.post_signed(&w1).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = relay.post_signed(&w2).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reason"], "duplicate", "{answer}");

    published_exactly(&nats, before + 7, DEBOUNCE * 3).await;
    assert_eq!(keys(&cascaded(&nats, before).await), site_1_dependents());
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_primary_ip_leaves_its_device() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // NetBox clears the device's primary IP without saving the device: no webhook, no stamp.
    let ip = object(&fake, "ipam/ip-addresses", 14);
    primary_ip_deleted(&fake);
    let (status, answer) = relay.post_signed(&ip_deleted(&ip)).await;
    assert_eq!(status, 202, "{answer}");

    published_exactly(&nats, before + 2, DEBOUNCE * 3).await;
    let device = last_of(&nats, "netbox/default/dcim.device/4").await;
    assert_eq!(device["origin"], "cascade", "{device}");
    assert_eq!(device["entry"]["addresses"], json!([]), "{device}");
    // Nothing is left pending: NetBox refuses `ip_address_id=` of the deleted address (the
    // soak found it), and no service can list an address NetBox no longer has.
    let report = crate::reconcile::reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["cascades"]["failed"], 0, "{report}");
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_primary_ip_leaves_the_services_that_listed_it() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    // A service of device 4 listing its primary IP (14), as NetBox serves one (the recorded
    // service's data, moved).
    let ip = object(&fake, "ipam/ip-addresses", 14);
    let mut service = fixture_json("101_service_created.json")["data"].clone();
    service["id"] = json!(40);
    service["url"] = json!("/api/ipam/services/40/");
    service["parent_object_id"] = json!(4);
    service["parent"]["id"] = json!(4);
    service["ipaddresses"] = json!([{"id": 14, "address": ip["address"], "family": ip["family"]}]);
    fake.with(|s| {
        let services = s.objects.entry("ipam/services".into()).or_default();
        services.insert(40, service);
    });
    let relay = relay_over(&fake, &nats).await;
    let key = "netbox/default/ipam.service/40";
    let address = ip["address"].as_str().unwrap().split('/').next().unwrap();
    let listed = last_of(&nats, key).await;
    assert_eq!(listed["entry"]["addresses"], json!([address]), "{listed}");

    // NetBox deletes the address: the device and the service lose it, neither saved.
    primary_ip_deleted(&fake);
    fake.with(|s| {
        s.objects
            .get_mut("ipam/services")
            .unwrap()
            .get_mut(&40)
            .unwrap()["ipaddresses"] = json!([])
    });
    let (status, answer) = relay.post_signed(&ip_deleted(&ip)).await;
    assert_eq!(status, 202, "{answer}");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let service = loop {
        let service = last_of(&nats, key).await;
        if service["entry"]["addresses"] != json!([address]) {
            break service;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service kept the address: {service}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(service["origin"], "cascade", "{service}");
    assert_eq!(service["entry"]["addresses"], json!([]), "{service}");
    relay.relay.stop().await.unwrap();
}

/// The delete webhook of IP address `ip` (its API form), sent now.
fn ip_deleted(ip: &Map<String, Value>) -> Vec<u8> {
    let mut body = fixture_json("066_ipaddress_deleted.json");
    body.insert("timestamp".into(), json!(now()));
    body.insert("data".into(), Value::Object(ip.clone()));
    body.insert(
        "snapshots".into(),
        json!({"prechange": ip, "postchange": null}),
    );
    serde_json::to_vec(&body).unwrap()
}

/// NetBox's time `ago` before now.
fn ago(ago: Duration) -> String {
    let at = chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap();
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A webhook of `event` for device `device` (its API form), sent at `at`.
fn device_webhook(event: &str, device: &Value, at: &str) -> Vec<u8> {
    let envelope = match event {
        "created" => "020_device_created.json",
        _ => "081_device_deleted.json",
    };
    let mut body = fixture_json(envelope);
    body.insert("event".into(), json!(event));
    body.insert("object_type".into(), json!("dcim.device"));
    body.insert("timestamp".into(), json!(at));
    body.insert("data".into(), device.clone());
    let snapshots = match event {
        "created" => json!({"prechange": null, "postchange": device}),
        _ => json!({"prechange": device, "postchange": null}),
    };
    body.insert("snapshots".into(), snapshots);
    serde_json::to_vec(&body).unwrap()
}

/// Posts `event` of `device`, sent `at`; asserts the 202 and waits for the key's `op`.
async fn device_event(relay: &TestRelay, nats: &NatsServer, event: &str, device: &Value, at: &str) {
    let (status, answer) = relay.post_signed(&device_webhook(event, device, at)).await;
    assert_eq!(status, 202, "{answer}");
    let key = format!("netbox/default/dcim.device/{}", device["id"]);
    let op = if event == "deleted" {
        "delete"
    } else {
        "upsert"
    };
    wait_for_last(nats, &key, event, |d| d["op"] == op).await;
}

/// Waits until `key`'s last delta satisfies `done`.
async fn wait_for_last(nats: &NatsServer, key: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let last = last_of(nats, key).await;
        if done(&last) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key}: {what}; last {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_a_merge_created_unstamped_follows_cascades_reverts_and_re_merges() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = confirming_relay(&fake, &nats).await;
    const KEY: &str = "netbox/default/dcim.device/900";

    // A device created in a branch an hour ago, merged now: main shows it without a
    // `last_updated` (NetBox 4.7.3, netbox-branching 1.2.2).
    let template = Value::Object(object(&fake, "dcim/devices", 2));
    let mut device = crate::fake_netbox::device_like(&template, 900);
    device["created"] = json!(ago(Duration::from_secs(3600)));
    device["last_updated"] = Value::Null;
    let merged = |fake: &FakeNetbox, device: &Value| {
        fake.with(|s| {
            let devices = s.objects.get_mut("dcim/devices").unwrap();
            devices.insert(900, device.clone());
        })
    };
    merged(&fake, &device);
    device_event(
        &relay,
        &nats,
        "created",
        &device,
        &ago(Duration::from_secs(30)),
    )
    .await;

    // Its site renamed: the cascade's sight of it is no older than the merge's.
    site_renamed_quietly(&fake);
    let (status, answer) = relay
        .post_signed(&site_webhook(&fake, "slug", json!("fra1")))
        .await;
    assert_eq!(status, 202, "{answer}");
    wait_for_last(&nats, KEY, "relabelled by the cascade", |d| {
        d["entry"]["labels"]["site"] == "fra9"
    })
    .await;
    device = Value::Object(object(&fake, "dcim/devices", 900));

    // Reverted (a delete), then merged again: the same id, the same `created`, still unstamped.
    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().remove(&900));
    device_event(
        &relay,
        &nats,
        "deleted",
        &device,
        &ago(Duration::from_secs(20)),
    )
    .await;
    merged(&fake, &device);
    device_event(
        &relay,
        &nats,
        "created",
        &device,
        &ago(Duration::from_secs(10)),
    )
    .await;

    // Reverted once more, and the re-merge's webhook lost: a default run brings it back.
    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().remove(&900));
    device_event(
        &relay,
        &nats,
        "deleted",
        &device,
        &ago(Duration::from_secs(5)),
    )
    .await;
    merged(&fake, &device);
    let report = reconcile(&relay).await;
    assert_eq!(
        report["object_types"]["dcim.device"]["upserted"], 1,
        "{report}"
    );
    wait_for_last(&nats, KEY, "re-merged, found by the run", |d| {
        d["op"] == "upsert" && d["entry"]["labels"]["site"] == "fra9"
    })
    .await;
    // And the run after it finds it unchanged, without fetching it again.
    let next = reconcile(&relay).await;
    assert_eq!(
        next["object_types"]["dcim.device"]["fetched_in_full"], 0,
        "{next}"
    );
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_takes_a_primary_ip_deleted_while_no_webhook_came_off_its_device() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // As NetBox deletes ams1-leaf1's primary IP: the device unsaved, so unstamped.
    primary_ip_deleted(&fake);
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        report["object_types"]["ipam.ipaddress"]["deleted"], 1,
        "{report}"
    );
    assert_eq!(report["cascades"]["parents"], 1, "{report}");
    assert_eq!(report["cascades"]["published"], 1, "{report}");
    let device = last_of(&nats, "netbox/default/dcim.device/4").await;
    assert_eq!(device["origin"], "cascade", "{device}");
    assert_eq!(device["entry"]["addresses"], json!([]), "{device}");
    assert_eq!(published_count(&nats.url()).await, before + 2);
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_pulls_nothing_for_a_parent_saved_without_a_change_its_dependents_show() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // ams1-leaf1 taken offline, and FRA1's time zone changed: saved, entries changed, nothing
    // their dependents show.
    save(
        &fake,
        "dcim/devices",
        4,
        json!({"status": {"value": "offline", "label": "Offline"}}),
    );
    save(&fake, "dcim/sites", 1, json!({"time_zone": "Europe/Paris"}));
    fake.with(|s| s.log.clear());
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        report["object_types"]["dcim.device"]["upserted"], 1,
        "{report}"
    );
    assert_eq!(
        report["object_types"]["dcim.site"]["upserted"], 1,
        "{report}"
    );
    assert_eq!(report["cascades"]["parents"], 0, "{report}");
    assert!(crate::cascade::requests_with(&fake, "device_id=4").is_empty());
    assert!(crate::cascade::requests_with(&fake, "site_id=1").is_empty());
    assert_eq!(published_count(&nats.url()).await, before + 2);
    relay.relay.stop().await.unwrap();
}

/// The keys of what shows device 4 (ams1-leaf1) in the fake: its interfaces and their addresses.
fn device_4_dependents(fake: &FakeNetbox) -> BTreeSet<String> {
    fake.with(|s| {
        let shows_device_4 = |o: &Value| {
            ["/device/id", "/assigned_object/device/id"]
                .iter()
                .any(|p| o.pointer(p) == Some(&json!(4)))
        };
        let mut keys = BTreeSet::new();
        for (endpoint, objects) in &s.objects {
            let url = format!("/api/{endpoint}/1/");
            let Some(t) = netbox_relay::netbox::ObjectType::from_url(&url) else {
                continue;
            };
            for (id, _) in objects.iter().filter(|(_, o)| shows_device_4(o)) {
                keys.insert(format!("netbox/default/{}/{id}", t.name));
            }
        }
        keys
    })
}

/// ams1-leaf1 renamed to ams1-leaf9 with no webhook (its dependents show the new name,
/// unstamped), then saved again with a change they do not show (the serial).
fn device_4_renamed_quietly_then_saved(fake: &FakeNetbox) {
    device_4_renamed_quietly(fake, "ams1-leaf9");
    save(fake, "dcim/devices", 4, json!({"serial": "SN-AMS1-LEAF9"}));
}

/// ams1-leaf1 (device 4) renamed to `name` with no webhook; its dependents show the new name.
fn device_4_renamed_quietly(fake: &FakeNetbox, name: &str) {
    device_renamed_in_fake(fake, 4, name);
    save(fake, "dcim/devices", 4, json!({"name": name}));
}

/// NetBox's recorded update of ams1-leaf1 (device 4; its status and primary IP), as sent for `device`
/// (its API form now): the recorded snapshots, which carry no `last_updated`, showing the
/// device's name now before and after.
fn device_4_updated(device: &Map<String, Value>) -> Vec<u8> {
    let mut body = fixture_json("097_device_updated.json");
    body.insert("timestamp".into(), device["last_updated"].clone());
    body.insert("data".into(), Value::Object(device.clone()));
    for snapshot in ["prechange", "postchange"] {
        body["snapshots"][snapshot]["name"] = device["name"].clone();
    }
    serde_json::to_vec(&body).unwrap()
}

/// Found by the soak's hour: a device renamed while NetBox sent no webhook (its event rule
/// off), then saved with a change its dependents do not show. That webhook's snapshots show no
/// rename, and none tells when the device was saved before: the relay knows the rename was
/// missed because the registry shows another name than the webhook's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_after_a_rename_whose_webhook_was_lost_relabels_the_devices_dependents() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;
    let dependents = device_4_dependents(&fake);
    assert!(dependents.len() >= 2, "{dependents:?}");

    // Renamed with no webhook, then saved again: the update's webhook arrives.
    device_4_renamed_quietly_then_saved(&fake);
    let (status, answer) = relay
        .post_signed(&device_4_updated(&object(&fake, "dcim/devices", 4)))
        .await;
    assert_eq!(status, 202, "{answer}");

    let count = before + 1 + dependents.len() as u64;
    published_exactly(&nats, count, DEBOUNCE * 3).await;
    let deltas = cascaded(&nats, before + 1).await;
    assert_eq!(keys(&deltas), dependents);
    for delta in &deltas {
        assert_eq!(
            delta["entry"]["attributes"]["device"], "ams1-leaf9",
            "{delta}"
        );
    }

    // Saved once more: the registry shows the name the webhook does, and nothing is pulled.
    fake.with(|s| s.log.clear());
    save(
        &fake,
        "dcim/devices",
        4,
        json!({"serial": "SN-AMS1-LEAF10"}),
    );
    let (status, answer) = relay
        .post_signed(&device_4_updated(&object(&fake, "dcim/devices", 4)))
        .await;
    assert_eq!(status, 202, "{answer}");
    published_exactly(&nats, count + 1, DEBOUNCE * 3).await;
    assert!(requests_with(&fake, "device_id=4").is_empty());
    relay.relay.stop().await.unwrap();
}

/// As above, the update held for confirmation (NetBox slow to answer): once main confirms it,
/// the registry's other name for the device tells the rename was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_update_after_a_rename_whose_webhook_was_lost_relabels_once_confirmed() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = confirming_relay(&fake, &nats).await;
    let before = published_count(&nats.url()).await;
    let dependents = device_4_dependents(&fake);

    device_4_renamed_quietly_then_saved(&fake);
    let body = device_4_updated(&object(&fake, "dcim/devices", 4));
    post_held(&relay, &fake, &body).await;

    published_exactly(&nats, before + 1 + dependents.len() as u64, DEBOUNCE * 3).await;
    let deltas = cascaded(&nats, before + 1).await;
    assert_eq!(keys(&deltas), dependents);
    for delta in &deltas {
        assert_eq!(
            delta["entry"]["attributes"]["device"], "ams1-leaf9",
            "{delta}"
        );
    }
    relay.relay.stop().await.unwrap();
}

/// Device 4 renamed to `name` in NetBox (what shows it too), and its update webhook.
fn device_4_renamed(fake: &FakeNetbox, from: &str, name: &str) -> Vec<u8> {
    device_4_renamed_quietly(fake, name);
    crate::cascade::update_webhook(
        "097_device_updated.json",
        "dcim.device",
        &object(fake, "dcim/devices", 4),
        "name",
        &json!(from),
    )
}

/// Waits until every key in `keys` shows device `name` on the stream.
async fn dependents_show(nats: &NatsServer, keys: &BTreeSet<String>, name: &str) {
    for key in keys {
        wait_for_last(nats, key, name, |d| {
            d["entry"]["attributes"]["device"] == name
        })
        .await;
    }
}

/// A rename undone within `nats.duplicate_window`: the dependents' entries go back to ones the
/// stream holds already, with the same delta ids, which JetStream would drop as repeats. Each
/// is published again under an id of its own, and the registry shows the name NetBox has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_undone_at_once_relabels_the_dependents_back() {
    let Lab {
        nats, fake, relay, ..
    } = lab().await;
    let dependents = device_4_dependents(&fake);
    assert!(dependents.len() >= 2, "{dependents:?}");
    let first: Vec<_> = crate::helpers::stream_messages(&nats.url()).await;

    let body = device_4_renamed(&fake, "ams1-leaf1", "ams1-leaf9");
    assert_eq!(relay.post_signed(&body).await.0, 202);
    dependents_show(&nats, &dependents, "ams1-leaf9").await;
    let body = device_4_renamed(&fake, "ams1-leaf9", "ams1-leaf1");
    assert_eq!(relay.post_signed(&body).await.0, 202);
    dependents_show(&nats, &dependents, "ams1-leaf1").await;

    // The same change has the same delta id, whichever message carries it.
    let messages = crate::helpers::stream_messages(&nats.url()).await;
    for key in &dependents {
        let of_key = |m: &&crate::helpers::Stored| m.delta["key"] == key.as_str();
        let before = first.iter().rfind(of_key).unwrap();
        let after = messages.iter().rfind(of_key).unwrap();
        assert_eq!(after.delta["delta_id"], before.delta["delta_id"], "{key}");
        assert_ne!(after.msg_id, before.msg_id, "{key}");
    }
    relay.relay.stop().await.unwrap();
}

/// A second relay on the lab's NATS and NetBox, with a state file of its own; cascades on.
async fn second_relay(nats: &NatsServer, fake: &FakeNetbox) -> TestRelay {
    let mut config = config(nats, fake, 1000);
    config.cascade.debounce = DEBOUNCE;
    config.state.path = nats.scratch().join("second.redb");
    TestRelay::start(config).await
}

/// A lab with a second relay (a state file of its own, cascades on) that took device 4's
/// rename to ams1-leaf9 and relabelled its dependents; the first relay's records still show
/// ams1-leaf1.
struct Renamed {
    nats: NatsServer,
    fake: FakeNetbox,
    relay: TestRelay,
    other: TestRelay,
    dependents: BTreeSet<String>,
}

async fn renamed_through_another_relay() -> Renamed {
    let Lab {
        nats, fake, relay, ..
    } = lab().await;
    let other = second_relay(&nats, &fake).await;
    let dependents = device_4_dependents(&fake);
    assert!(dependents.len() >= 2, "{dependents:?}");
    let body = device_4_renamed(&fake, "ams1-leaf1", "ams1-leaf9");
    let (status, answer) = other.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");
    dependents_show(&nats, &dependents, "ams1-leaf9").await;
    Renamed {
        nats,
        fake,
        relay,
        other,
        dependents,
    }
}

impl Renamed {
    /// Waits until the dependents show device 4 as `name`; stops both relays.
    async fn end_showing(self, name: &str) {
        dependents_show(&self.nats, &self.dependents, name).await;
        self.other.relay.stop().await.unwrap();
        self.relay.relay.stop().await.unwrap();
    }
}

/// Found by the soak's hour with two relays: a relay whose record of a key is older than the
/// stream's last message (another relay published since) judged a cascade's dependent unchanged
/// against its own record, and published nothing, leaving the other relay's entry in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_checks_the_stream_where_another_relay_published_since() {
    let renamed = renamed_through_another_relay().await;
    let (fake, relay) = (&renamed.fake, &renamed.relay);

    // The first relay, whose records still show ams1-leaf1, takes the rename back.
    let body = device_4_renamed(fake, "ams1-leaf9", "ams1-leaf1");
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");
    renamed.end_showing("ams1-leaf1").await;
}

/// As above, the rename undone with no webhook, then the device saved with a change its
/// dependents do not show, through the first relay. Its record shows the device's name as the
/// webhook does, but the key's last message is the other relay's, found on publishing: what
/// that message shows the dependents is what the relay judges by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_published_over_another_relays_rename_relabels_the_dependents() {
    let renamed = renamed_through_another_relay().await;
    let (fake, relay) = (&renamed.fake, &renamed.relay);

    // Renamed back with no webhook, then saved again: the update's webhook reaches the first.
    device_4_renamed_quietly(fake, "ams1-leaf1");
    save(fake, "dcim/devices", 4, json!({"serial": "SN-AMS1-LEAF1"}));
    let (status, answer) = relay
        .post_signed(&device_4_updated(&object(fake, "dcim/devices", 4)))
        .await;
    assert_eq!(status, 202, "{answer}");
    renamed.end_showing("ams1-leaf1").await;
}

/// The rename another relay took undone with no webhook at all: the first relay's default run
/// fetches the device (saved since its record) and finds it as recorded, while the stream shows
/// the other relay's name. The stream's message is what the run judges by, and the device and
/// its dependents are relabelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_repairs_what_another_relay_published_and_no_webhook_undid() {
    let renamed = renamed_through_another_relay().await;
    let (fake, relay) = (&renamed.fake, &renamed.relay);

    device_4_renamed_quietly(fake, "ams1-leaf1");
    let report = reconcile(relay).await;
    assert_eq!(report["pass"], "cheap", "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    let device = last_of(&renamed.nats, "netbox/default/dcim.device/4").await;
    assert_eq!(device["entry"]["name"], "ams1-leaf1", "{device}");
    renamed.end_showing("ams1-leaf1").await;
}

/// A cascade another relay ran late (it pulled before NetBox undid a rename) leaves a dependent
/// with an entry NetBox no longer has, while this relay's records show NetBox's. The full pass
/// reads first the keys whose last message is newer than this relay's record, and publishes
/// NetBox's entry over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pass_repairs_what_another_relay_published_after_this_ones_records() {
    let Lab { nats, relay, .. } = lab().await;
    let key = "netbox/default/dcim.interface/5";
    let mut late = last_of(&nats, key).await;
    assert_eq!(
        late["entry"]["attributes"]["device"], "ams1-leaf1",
        "{late}"
    );
    late["entry"]["attributes"]["device"] = json!("ams1-leaf9");
    late["delta_id"] = json!("0123456789abcdef0123456789abcdef");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "0123456789abcdef0123456789abcdef");
    let subject = "netbox.registry.default.interface.5";
    let payload = serde_json::to_vec(&late).unwrap().into();
    let ack = js.publish_with_headers(subject, headers, payload).await;
    ack.unwrap().await.unwrap();

    let report = crate::reconcile::full_pass(&relay, false).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let last = last_of(&nats, key).await;
    assert_eq!(
        last["entry"]["attributes"]["device"], "ams1-leaf1",
        "{last}"
    );
    relay.relay.stop().await.unwrap();
}

/// Two relays' cascades of one device out of order: the other relay pulls the interfaces while
/// the device is renamed, NetBox undoes the rename, this relay's cascade runs and ends, and only
/// then does the other's page arrive and get published over this relay's entry (the same
/// revision, another entry: which is newer cannot be told). The other relay reads the object
/// again, and the registry shows NetBox's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_whose_page_came_late_reads_again_what_it_published_over() {
    let Lab {
        nats, fake, relay, ..
    } = lab().await;
    let other = second_relay(&nats, &fake).await;
    let interface = "dcim/interfaces?device_id=4";
    fake.with(|s| s.hold_next = Some((interface.into(), Duration::from_secs(3))));

    let body = device_4_renamed(&fake, "ams1-leaf1", "ams1-leaf9");
    assert_eq!(other.post_signed(&body).await.0, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while fake.with(|s| s.hold_next.is_some()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no pull of the interfaces"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = device_4_renamed(&fake, "ams1-leaf9", "ams1-leaf1");
    assert_eq!(relay.post_signed(&body).await.0, 202);

    // The late page is published over this relay's entry, and the object read again after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown: Vec<Value> = crate::helpers::stream_messages(&nats.url())
            .await
            .into_iter()
            .filter(|m| m.delta["key"] == "netbox/default/dcim.interface/5")
            .map(|m| m.delta["entry"]["attributes"]["device"].clone())
            .collect();
        let late = shown.iter().rposition(|d| d == "ams1-leaf9");
        if late.is_some() && shown.last() == Some(&json!("ams1-leaf1")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{shown:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.relay.stop().await.unwrap();
    relay.relay.stop().await.unwrap();
}

/// As the cascade above, with NATS away while it runs: the dependents' last messages cannot be
/// read to tell whether another relay published since. Each is spooled to be judged against the
/// stream when drained, and the registry shows NetBox's name once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_that_cannot_read_the_stream_leaves_the_judgement_to_the_drain() {
    let mut renamed = renamed_through_another_relay().await;
    renamed.nats.stop();
    let body = device_4_renamed(&renamed.fake, "ams1-leaf9", "ams1-leaf1");
    let (status, answer) = renamed.relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");
    // The device and its dependents wait in the spool.
    let count = 1 + renamed.dependents.len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ready) = renamed.relay.get("/readyz").await;
        if ready["spool_depth"].as_u64() >= Some(count) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    renamed.nats.restart();
    renamed.end_showing("ams1-leaf1").await;
}

/// A relay whose way to NATS is cut, its registry holding the recorded NetBox, after it took
/// device 4's rename to ams1-leaf9 (the device and its dependents wait in its spool); a second
/// relay on the same NATS and NetBox.
struct Cut {
    nats: NatsServer,
    fake: FakeNetbox,
    way: crate::helpers::Cuttable,
    relay: TestRelay,
    other: TestRelay,
    dependents: BTreeSet<String>,
}

async fn cut_off_while_renamed() -> Cut {
    let nats = NatsServer::start();
    let fake = crate::reconcile::fake_with_recorded("4.6.8").await;
    let way = crate::helpers::Cuttable::start(nats.addr()).await;
    let mut config = config(&nats, &fake, 1000);
    config.cascade.debounce = DEBOUNCE;
    config.nats.url = way.url();
    let relay = TestRelay::start(config).await;
    assert_eq!(reconcile(&relay).await["status"], "succeeded");
    let other = second_relay(&nats, &fake).await;
    let dependents = device_4_dependents(&fake);
    way.cut();
    let body = device_4_renamed(&fake, "ams1-leaf1", "ams1-leaf9");
    assert_eq!(relay.post_signed(&body).await.0, 202);
    spooled(&relay, 1 + dependents.len() as u64).await;
    Cut {
        nats,
        fake,
        way,
        relay,
        other,
        dependents,
    }
}

impl Cut {
    /// The way to NATS back: once the spool is drained, the dependents show device 4 as `name`.
    /// Stops both relays; the device's last delta.
    async fn back_showing(self, name: &str) -> Value {
        self.way.restore();
        spooled_out(&self.relay).await;
        dependents_show(&self.nats, &self.dependents, name).await;
        self.other.relay.stop().await.unwrap();
        self.relay.relay.stop().await.unwrap();
        last_of(&self.nats, "netbox/default/dcim.device/4").await
    }
}

/// Waits until `relay`'s spool holds at least `depth` deltas.
async fn spooled(relay: &TestRelay, depth: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ready) = relay.get("/readyz").await;
        if ready["spool_depth"].as_u64() >= Some(depth) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Found by the soak's second hour: a relay cut off from NATS spools a cascade's page (the
/// device's first rename); meanwhile NetBox renames it again and the other relay publishes the
/// dependents with the newer name. Once the first relay is back, its spooled page conflicts with
/// that entry at the same revision and is published over it; which is newer cannot be told, so
/// the object is read again and the registry shows NetBox's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_page_published_over_a_newer_entry_reads_its_object_again() {
    let cut = cut_off_while_renamed().await;
    let (nats, fake, other) = (&cut.nats, &cut.fake, &cut.other);
    let body = device_4_renamed(fake, "ams1-leaf9", "ams1-leaf5");
    assert_eq!(other.post_signed(&body).await.0, 202);
    dependents_show(nats, &cut.dependents, "ams1-leaf5").await;
    let device = cut.back_showing("ams1-leaf5").await;
    assert_eq!(device["entry"]["name"], "ams1-leaf5", "{device}");
}

/// Waits until `relay`'s spool is empty.
async fn spooled_out(relay: &TestRelay) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ready) = relay.get("/readyz").await;
        if ready["spool_depth"] == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// As above, with NetBox renamed back to the registry's name: the other relay finds the stream as
/// NetBox has it and publishes nothing, so the spooled page meets no conflict when it is drained.
/// The cascade that spooled it runs again, behind it, and publishes NetBox's name after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_that_spooled_runs_again_behind_its_page() {
    let cut = cut_off_while_renamed().await;
    let (nats, fake, other) = (&cut.nats, &cut.fake, &cut.other);
    let body = device_4_renamed(fake, "ams1-leaf9", "ams1-leaf1");
    assert_eq!(other.post_signed(&body).await.0, 202);
    let device = "netbox/default/dcim.device/4";
    wait_for_last(nats, device, "the rename back", |d| {
        d["entry"]["name"] == "ams1-leaf1"
    })
    .await;
    let device = cut.back_showing("ams1-leaf1").await;
    assert_eq!(device["entry"]["name"], "ams1-leaf1", "{device}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_takes_a_tag_deleted_while_no_webhook_came_off_what_it_tagged() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    // The recorded prefix 1's tag `prod` (id 1), put on device 4 too.
    fake.with(|s| {
        let tag = s.objects["ipam/prefixes"][&1]["tags"][0].clone();
        s.objects
            .get_mut("dcim/devices")
            .unwrap()
            .get_mut(&4)
            .unwrap()["tags"] = json!([tag]);
    });
    fake.list_tags();
    let relay = relay_over(&fake, &nats).await;
    let device = last_of(&nats, "netbox/default/dcim.device/4").await;
    assert_eq!(device["entry"]["labels"]["tag.prod"], "true", "{device}");
    let before = published_count(&nats.url()).await;

    let untagged: BTreeSet<String> = fake
        .delete_tag(1)
        .iter()
        .map(|(object_type, before)| format!("netbox/default/{object_type}/{}", before["id"]))
        .collect();
    assert_eq!(
        untagged,
        BTreeSet::from([
            "netbox/default/dcim.device/4".to_string(),
            "netbox/default/ipam.prefix/1".to_string()
        ])
    );
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["pass"], "cheap", "{report}");
    let deltas = cascaded(&nats, before).await;
    assert_eq!(keys(&deltas), untagged, "{report}");
    for key in &untagged {
        let last = last_of(&nats, key).await;
        assert!(
            last["entry"]["labels"].get("tag.prod").is_none(),
            "{key}: {last}"
        );
    }
    // The next run reads the log from where this one did: nothing more to publish.
    let published = published_count(&nats.url()).await;
    let again = reconcile(&relay).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["cascades"]["published"], 0, "{again}");
    assert_eq!(published_count(&nats.url()).await, published);
    // Read once a run (a first page each), the first run's read only marked.
    let asked = requests_with(&fake, "changed_object_type=extras.tag");
    let reads = asked.iter().filter(|r| r.contains("&id__gt=0&")).count();
    assert_eq!(reads, 2, "{asked:?}");
    relay.relay.stop().await.unwrap();
}

/// A tag this relay's runs never listed (made after its last run, or listed by another relay's
/// only), deleted while no webhook came: the change log still names what it was on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_run_takes_off_a_tag_no_run_of_this_relay_listed() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    // No tags listed: the runs see `prod` only on the recorded prefix 1.
    let relay = relay_over(&fake, &nats).await;
    let key = "netbox/default/ipam.prefix/1";
    assert_eq!(
        last_of(&nats, key).await["entry"]["labels"]["tag.prod"],
        "true"
    );
    let untagged = fake.delete_tag(1);
    assert_eq!(untagged.len(), 1);
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let prefix = last_of(&nats, key).await;
    assert!(
        prefix["entry"]["labels"].get("tag.prod").is_none(),
        "{prefix}"
    );
    assert_eq!(prefix["origin"], "cascade", "{prefix}");
    relay.relay.stop().await.unwrap();
}
