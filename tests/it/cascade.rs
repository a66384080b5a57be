//! Cascade re-label against the fake NetBox API: a parent's webhook (built from a recorded one of
//! the same NetBox, with the recorded object's new slug) pulls its dependents with NetBox's
//! filter and publishes what changed, with origin `cascade`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::fake_netbox::{device_like, FakeNetbox, Fault};
use crate::helpers::{
    fixture_json, metrics_text, published_count, stream_messages, wait_for_published, NatsServer,
    TestRelay,
};
use crate::reconcile::{config, fake_with_recorded, reconcile};

pub(crate) const DEBOUNCE: Duration = Duration::from_millis(300);
/// For the burst: long enough that fifty-one webhooks arrive within it on a loaded machine.
const BURST_DEBOUNCE: Duration = Duration::from_secs(3);

/// A relay whose registry holds the recorded NetBox (one reconcile run), cascades on.
async fn relay_with_registry(fake: &FakeNetbox, nats: &NatsServer) -> TestRelay {
    relay_debounced(fake, nats, DEBOUNCE).await
}

async fn relay_debounced(fake: &FakeNetbox, nats: &NatsServer, debounce: Duration) -> TestRelay {
    let mut config = config(nats, fake, 1000);
    config.cascade.debounce = debounce;
    config.netbox.concurrency = 2;
    let relay = TestRelay::start(config).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    relay
}

/// A relay over the recorded NetBox, with how many deltas the stream took before the test acts.
pub(crate) struct Lab {
    pub(crate) nats: NatsServer,
    pub(crate) fake: FakeNetbox,
    pub(crate) relay: TestRelay,
    pub(crate) before: u64,
}

pub(crate) async fn lab() -> Lab {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = relay_with_registry(&fake, &nats).await;
    let before = published_count(&nats.url()).await;
    Lab {
        nats,
        fake,
        relay,
        before,
    }
}

/// Waits until the stream took `count` deltas, lets `quiet` pass, and checks no more came.
pub(crate) async fn published_exactly(nats: &NatsServer, count: u64, quiet: Duration) {
    wait_for_published(&nats.url(), count, Duration::from_secs(30)).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(published_count(&nats.url()).await, count, "nothing more");
}

/// The update webhook of `object` (its API form), NetBox's envelope taken from the recorded
/// update `envelope`, with snapshots saying `field` went from `before` to the object's value.
pub(crate) fn update_webhook(
    envelope: &str,
    object_type: &str,
    object: &Map<String, Value>,
    field: &str,
    before: &Value,
) -> Vec<u8> {
    let mut body = fixture_json(envelope);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut data = object.clone();
    data.insert("last_updated".into(), json!(now));
    // NetBox's snapshots carry no `last_updated`.
    let mut postchange = object.clone();
    postchange.remove("last_updated");
    let mut prechange = postchange.clone();
    prechange.insert(field.into(), before.clone());
    body.insert("object_type".into(), json!(object_type));
    body.insert("timestamp".into(), json!(now));
    body.insert("data".into(), Value::Object(data));
    body.insert(
        "snapshots".into(),
        json!({"prechange": prechange, "postchange": postchange}),
    );
    serde_json::to_vec(&body).unwrap()
}

/// What NetBox shows after renaming `field` (`site`) number `id`: every object pointing at it
/// (directly, or through a site scope) carries the new slug and name.
pub(crate) fn rename_in_fake(fake: &FakeNetbox, field: &str, id: u64, slug: &str, name: &str) {
    fake.with(|s| {
        for object in s.objects.values_mut().flat_map(|o| o.values_mut()) {
            let scope = object["scope_type"] == format!("dcim.{field}");
            for key in [field, "scope"] {
                if key == "scope" && !scope {
                    continue;
                }
                let Some(related) = object.get_mut(key).filter(|r| r.is_object()) else {
                    continue;
                };
                if related["id"].as_u64() == Some(id) {
                    related["slug"] = json!(slug);
                    related["name"] = json!(name);
                    related["display"] = json!(name);
                }
            }
        }
    });
}

/// What NetBox shows after renaming device `id`: its interfaces, and the IP addresses assigned
/// to them, carry the new name (unstamped). The device itself is left to the caller.
pub(crate) fn device_renamed_in_fake(fake: &FakeNetbox, id: u64, name: &str) {
    fake.with(|s| {
        for object in s.objects.values_mut().flat_map(|o| o.values_mut()) {
            for path in ["/device", "/assigned_object/device"] {
                if let Some(related) = object.pointer_mut(path).filter(|r| r["id"] == id) {
                    related["name"] = json!(name);
                    related["display"] = json!(name);
                }
            }
        }
    });
}

pub(crate) fn site(fake: &FakeNetbox, id: u64) -> Map<String, Value> {
    fake.with(|s| s.objects["dcim/sites"][&id].as_object().unwrap().clone())
}

/// Site `id` re-slugged from `old` to `new` (named `name`) in NetBox, and its update webhook.
pub(crate) fn site_reslugged(
    fake: &FakeNetbox,
    id: u64,
    old: &str,
    new: &str,
    name: &str,
) -> Vec<u8> {
    rename_in_fake(fake, "site", id, new, name);
    let mut renamed = site(fake, id);
    renamed.insert("slug".into(), json!(new));
    update_webhook(
        "051_site_updated.json",
        "dcim.site",
        &renamed,
        "slug",
        &json!(old),
    )
}

/// The requests the fake saw that carry `filter`.
pub(crate) fn requests_with(fake: &FakeNetbox, filter: &str) -> Vec<String> {
    fake.with(|s| {
        s.log
            .iter()
            .filter(|r| r.split(['?', '&']).any(|p| p == filter))
            .cloned()
            .collect()
    })
}

/// The cascade deltas published after stream sequence `after`, by key.
pub(crate) async fn cascaded(nats: &NatsServer, after: u64) -> Vec<Value> {
    let messages = stream_messages(&nats.url()).await;
    messages
        .into_iter()
        .skip(after as usize)
        .map(|m| m.delta)
        .filter(|d| d["origin"] == "cascade")
        .collect()
}

pub(crate) fn keys(deltas: &[Value]) -> BTreeSet<String> {
    deltas
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_rename_relabels_exactly_that_sites_dependents() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // FRA1 (site 1) becomes fra9: NetBox renders its dependents with the new slug.
    rename_in_fake(&fake, "site", 1, "fra9", "FRA9");
    fake.with(|s| {
        let site = s
            .objects
            .get_mut("dcim/sites")
            .unwrap()
            .get_mut(&1)
            .unwrap();
        site["slug"] = json!("fra9");
        site["name"] = json!("FRA9");
    });
    let body = update_webhook(
        "051_site_updated.json",
        "dcim.site",
        &site(&fake, 1),
        "slug",
        &json!("fra1"),
    );
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");

    // The site's own delta, then its two devices, its VM, prefix, VLAN and cluster.
    published_exactly(&nats, before + 7, DEBOUNCE * 3).await;
    let deltas = cascaded(&nats, before).await;
    assert_eq!(keys(&deltas), crate::repair::site_1_dependents());
    for delta in &deltas {
        assert_eq!(delta["entry"]["labels"]["site"], "fra9", "{delta}");
        assert_eq!(delta["op"], "upsert");
    }
    // NetBox's version was asked once, for the reconcile; the webhook and its cascade asked no more.
    assert_eq!(fake.with(|s| s.status_requests), 1);
    // Pulled with NetBox's filter, never for the other site; IP addresses show no site.
    let pulled = requests_with(&fake, "site_id=1");
    for endpoint in [
        "dcim/devices",
        "virtualization/virtual-machines",
        "ipam/prefixes",
        "ipam/vlans",
        "virtualization/clusters",
    ] {
        assert!(
            pulled.iter().any(|r| r.starts_with(endpoint)),
            "{endpoint} not pulled: {pulled:?}"
        );
    }
    assert!(requests_with(&fake, "site_id=2").is_empty());
    let metrics = metrics_text(&relay.http, &relay.base).await;
    assert!(
        metrics.contains("netbox_relay_cascades_total{result=\"succeeded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "netbox_relay_deltas_published_total{kind=\"device\",op=\"upsert\",origin=\"cascade\"}"
        ),
        "{metrics}"
    );
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_to_the_same_value_pulls_nothing() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // A new name, the same slug (which is what entries show): the site alone is published.
    let mut renamed = site(&fake, 1);
    renamed.insert("name".into(), json!("Frankfurt 1"));
    let body = update_webhook(
        "051_site_updated.json",
        "dcim.site",
        &renamed,
        "slug",
        &json!("fra1"),
    );
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");
    // A device role renamed (name) with its slug kept: no registry kind, nothing to pull.
    let (_, roles) = crate::consistency::recorded_results("dcim_device-roles.json");
    let role = roles.iter().find(|r| r["id"] == 1).unwrap();
    let mut role = role.clone();
    role.insert("name".into(), json!("Leaf switch"));
    let body = update_webhook(
        "052_vlan_updated.json",
        "dcim.devicerole",
        &role,
        "slug",
        &role["slug"].clone(),
    );
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reason"], "no value its dependents show changed");

    published_exactly(&nats, before + 1, DEBOUNCE * 4).await;
    assert!(requests_with(&fake, "site_id=1").is_empty());
    assert!(requests_with(&fake, "role_id=1").is_empty());
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_reslug_relabels_the_tagged_objects_only() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // The tag as the recorded prefix 1 carries it, re-slugged prod -> production.
    // NetBox up to 4.3 names the type `model: tag`; 4.4+ `object_type: extras.tag`.
    let mut body: Value = serde_json::from_slice(&tag_reslugged(&fake)).unwrap();
    body.as_object_mut().unwrap().remove("object_type");
    body["model"] = json!("tag");
    let (status, answer) = relay.post_signed(&serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["cascade"], "queued");

    published_exactly(&nats, before + 1, DEBOUNCE * 3).await;
    let deltas = cascaded(&nats, before).await;
    assert_eq!(
        keys(&deltas),
        BTreeSet::from(["netbox/default/ipam.prefix/1".to_string()])
    );
    let labels = &deltas[0]["entry"]["labels"];
    assert_eq!(labels["tag.production"], "true", "{labels}");
    assert!(labels.get("tag.prod").is_none(), "{labels}");
    assert!(!requests_with(&fake, "tag=production").is_empty());
    relay.relay.stop().await.unwrap();
}

/// The tag webhook of the recorded tag 1 re-slugged prod -> production, NetBox showing it so.
fn tag_reslugged(fake: &FakeNetbox) -> Vec<u8> {
    let mut tag = fake.with(|s| {
        s.objects["ipam/prefixes"][&1]["tags"][0]
            .as_object()
            .unwrap()
            .clone()
    });
    tag.insert("slug".into(), json!("production"));
    fake.with(|s| {
        for object in s.objects.values_mut().flat_map(|o| o.values_mut()) {
            for t in object["tags"].as_array_mut().into_iter().flatten() {
                if t["id"] == 1 {
                    t["slug"] = json!("production");
                }
            }
        }
    });
    update_webhook(
        "052_vlan_updated.json",
        "extras.tag",
        &tag,
        "slug",
        &json!("prod"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_parent_holds_no_other_parents_cascade() {
    let Lab {
        nats, fake, relay, ..
    } = lab().await;
    // The site's last pull (its clusters) is answered 429, come back in 30 s.
    fake.with(|s| {
        s.requests_reset();
        s.faults.push(Fault {
            endpoint: "virtualization/clusters".into(),
            request: 1,
            times: 1,
            status: 429,
            retry_after: Some(30),
        });
    });
    let body = site_reslugged(&fake, 1, "fra1", "fra9", "FRA9");
    assert_eq!(relay.post_signed(&body).await.0, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !requests_with(&fake, "site_id=1")
        .iter()
        .any(|r| r.starts_with("virtualization/clusters"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the site's cascade never reached its clusters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // While the site waits out its Retry-After, a tag's cascade runs to its end.
    assert_eq!(relay.post_signed(&tag_reslugged(&fake)).await.0, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let relabelled = cascaded(&nats, 0).await.iter().any(|d| {
            d["key"] == "netbox/default/ipam.prefix/1"
                && d["entry"]["labels"]["tag.production"] == "true"
        });
        if relabelled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tag's cascade waited for the site's"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_renames_pulls_each_parent_once() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    // Fifty more sites shaped like FRA1, two devices each.
    let template = Value::Object(site(&fake, 1));
    let (_, devices) = crate::consistency::api_results("dcim_devices.json");
    let device = Value::Object(devices[0].clone());
    fake.with(|s| {
        for k in 0..50u64 {
            let id = 100 + k;
            let mut site = template.clone();
            site["id"] = json!(id);
            site["slug"] = json!(format!("s{id}"));
            site["name"] = json!(format!("S{id}"));
            s.objects.get_mut("dcim/sites").unwrap().insert(id, site);
            for d in [1000 + 2 * k, 1001 + 2 * k] {
                let mut device = device_like(&device, d);
                device["site"] =
                    json!({"id": id, "slug": format!("s{id}"), "name": format!("S{id}")});
                s.objects.get_mut("dcim/devices").unwrap().insert(d, device);
            }
        }
    });
    let relay = relay_debounced(&fake, &nats, BURST_DEBOUNCE).await;
    let before = published_count(&nats.url()).await;

    // One bulk edit renames all fifty; site 100 twice within the same burst.
    let mut bodies = Vec::new();
    for k in 0..50u64 {
        let id = 100 + k;
        rename_in_fake(&fake, "site", id, &format!("t{id}"), &format!("T{id}"));
        let mut renamed = site(&fake, id);
        renamed.insert("slug".into(), json!(format!("t{id}")));
        bodies.push(update_webhook(
            "051_site_updated.json",
            "dcim.site",
            &renamed,
            "slug",
            &json!(format!("s{id}")),
        ));
    }
    rename_in_fake(&fake, "site", 100, "u100", "U100");
    let mut again = site(&fake, 100);
    again.insert("slug".into(), json!("u100"));
    bodies.push(update_webhook(
        "051_site_updated.json",
        "dcim.site",
        &again,
        "slug",
        &json!("t100"),
    ));
    let answers = futures::future::join_all(bodies.iter().map(|b| relay.post_signed(b))).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{answers:?}"
    );

    // 51 site deltas, then each site's two devices once, with the last slug.
    // A second batch, had the burst been split, would pull after another debounce.
    published_exactly(&nats, before + 51 + 100, BURST_DEBOUNCE * 2).await;
    for k in 0..50u64 {
        let id = 100 + k;
        let first_pages: Vec<String> = requests_with(&fake, &format!("site_id={id}"))
            .into_iter()
            .filter(|r| r.starts_with("dcim/devices") && r.contains("start=0"))
            .collect();
        assert_eq!(first_pages.len(), 1, "site {id}: {first_pages:?}");
    }
    let deltas = cascaded(&nats, before).await;
    let site_100 = deltas
        .iter()
        .filter(|d| d["entry"]["labels"]["site"] == "u100")
        .count();
    assert_eq!(site_100, 2);
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cascade_is_retried() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // NetBox fails the devices' pull past the client's retries (5 attempts), then recovers.
    fake.with(|s| {
        s.requests_reset();
        s.faults.push(Fault {
            endpoint: "dcim/devices".into(),
            request: 1,
            times: 5,
            status: 503,
            retry_after: Some(0),
        });
    });
    let body = site_reslugged(&fake, 2, "ams1", "ams9", "AMS9");
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");

    // AMS1's four devices, once the retry (after 4 x debounce) succeeds.
    wait_for_published(&nats.url(), before + 5, Duration::from_secs(20)).await;
    let deltas = cascaded(&nats, before).await;
    assert_eq!(deltas.len(), 4);
    assert!(deltas
        .iter()
        .all(|d| d["entry"]["labels"]["site"] == "ams9"));
    let failed = fake.with(|s| s.log.iter().filter(|r| r.contains("site_id=2")).count());
    assert!(
        failed >= 6,
        "five refused requests and the retry's: {failed}"
    );
    let metrics = metrics_text(&relay.http, &relay.base).await;
    assert!(
        metrics.contains("netbox_relay_cascades_total{result=\"retried\"}"),
        "{metrics}"
    );
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_rename_relabels_its_interfaces_and_addresses() {
    let Lab {
        nats,
        fake,
        relay,
        before,
    } = lab().await;

    // ams1-leaf1 (device 4) is renamed: NetBox shows the new name on its interface and on the
    // IP address assigned to it.
    let mut device = fake.with(|s| s.objects["dcim/devices"][&4].as_object().unwrap().clone());
    let old = device["name"].clone();
    device.insert("name".into(), json!("ams1-leaf1-renamed"));
    device_renamed_in_fake(&fake, 4, "ams1-leaf1-renamed");
    let body = update_webhook(
        "034_device_updated.json",
        "dcim.device",
        &device,
        "name",
        &old,
    );
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");

    published_exactly(&nats, before + 3, DEBOUNCE * 3).await;
    let deltas = cascaded(&nats, before).await;
    let expected = BTreeSet::from([
        "netbox/default/dcim.interface/5".to_string(),
        "netbox/default/ipam.ipaddress/14".to_string(),
    ]);
    assert_eq!(keys(&deltas), expected);
    for delta in &deltas {
        assert_eq!(
            delta["entry"]["attributes"]["device"], "ams1-leaf1-renamed",
            "{delta}"
        );
    }
    assert!(!requests_with(&fake, "device_id=4").is_empty());
    relay.relay.stop().await.unwrap();
}
