//! A property-based model of NetBox. Random histories of changes (sites and platforms re-slugged,
//! devices renamed or saved otherwise, primary IPs renumbered and deleted, devices created and
//! deleted, tags deleted) are made on the NetBox stand-in exactly as NetBox makes them: the saved object
//! stamped, the objects that show it changed unstamped, one webhook for the saved object (for a
//! deleted tag, one for each object it is taken off, unstamped, and one for the tag), its
//! snapshots in NetBox's shape (no `last_updated`). Each webhook is delivered, lost,
//! sent twice or delayed past later ones, and the relay restarts between changes. After the
//! webhooks that arrived and one default run, the registry on the stream must equal what a full
//! pass from an empty state would publish, key for key.
//!
//! Failures proptest shrinks are kept in `proptest-regressions/model.txt` and replayed first;
//! the ones found while this was written are tests of their own below.

use std::collections::BTreeMap;
use std::time::Duration;

use netbox_relay::netbox::ObjectType;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::cascade::DEBOUNCE;
use crate::fake_netbox::{device_like, FakeNetbox};
use crate::helpers::{fixture_json, stream_messages, NatsServer, TestRelay};
use crate::reconcile::{config, fake_with_recorded, reconcile};

const SITES: [u64; 2] = [1, 2];
const DEVICES: [u64; 6] = [2, 3, 4, 5, 6, 7];
const IPS: [u64; 6] = [3, 4, 14, 15, 16, 17];
/// The recorded tag `prod`, and `lab` made in its shape.
const TAGS: [u64; 2] = [1, 2];

/// One change made in NetBox.
#[derive(Debug, Clone)]
enum Change {
    RenameSite {
        site: usize,
        to: u8,
    },
    ReslugPlatform {
        to: u8,
    },
    RenameDevice {
        device: usize,
        to: u8,
    },
    /// A save its dependents do not show (the serial).
    TouchDevice {
        device: usize,
        to: u8,
    },
    RenumberIp {
        ip: usize,
        to: u8,
    },
    DeleteIp {
        ip: usize,
    },
    CreateDevice {
        site: usize,
    },
    DeleteCreatedDevice,
    /// NetBox takes the tag off every object it tagged without saving them, with a webhook
    /// each (and one for the tag).
    DeleteTag {
        tag: usize,
    },
}

/// What became of a change's webhook.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Delivered,
    Lost,
    Twice,
    /// Sent after the next change's webhook (or at the end).
    Late,
    /// Sent at the end, after the cascades of the others had time to run: NetBox's worker
    /// delivers some webhooks seconds late.
    Later,
}

#[derive(Debug, Clone)]
struct Step {
    change: Change,
    fate: Fate,
    /// The relay restarts after this step.
    restart: bool,
    /// A pause after this step, past the cascade debounce: its cascades run before the next
    /// change instead of being folded into one.
    settle: bool,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..SITES.len(), 0..4u8).prop_map(|(site, to)| Change::RenameSite { site, to }),
        (0..4u8).prop_map(|to| Change::ReslugPlatform { to }),
        (0..DEVICES.len(), 0..4u8).prop_map(|(device, to)| Change::RenameDevice { device, to }),
        (0..DEVICES.len(), 0..4u8).prop_map(|(device, to)| Change::TouchDevice { device, to }),
        (0..IPS.len(), 0..4u8).prop_map(|(ip, to)| Change::RenumberIp { ip, to }),
        (0..IPS.len()).prop_map(|ip| Change::DeleteIp { ip }),
        (0..SITES.len()).prop_map(|site| Change::CreateDevice { site }),
        Just(Change::DeleteCreatedDevice),
        (0..TAGS.len()).prop_map(|tag| Change::DeleteTag { tag }),
    ]
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => Just(Fate::Delivered),
        2 => Just(Fate::Lost),
        1 => Just(Fate::Twice),
        2 => Just(Fate::Late),
        1 => Just(Fate::Later),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let flags = (prop::bool::weighted(0.15), prop::bool::weighted(0.3));
    (change(), fate(), flags).prop_map(|(change, fate, (restart, settle))| Step {
        change,
        fate,
        restart,
        settle,
    })
}

/// NetBox as the stand-in plays it, with the clock of its saves.
struct Model {
    fake: FakeNetbox,
    clock: chrono::DateTime<chrono::Utc>,
    created: Vec<u64>,
    next_device: u64,
}

impl Model {
    async fn start() -> Model {
        let fake = fake_with_recorded("4.6.8").await;
        complete(&fake);
        fake.list_tags();
        Model {
            fake,
            clock: chrono::Utc::now() - chrono::Duration::hours(1),
            created: Vec::new(),
            next_device: 1000,
        }
    }

    /// The time of the next save: a second after the last.
    fn tick(&mut self) -> String {
        self.clock += chrono::Duration::seconds(1);
        self.clock
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    fn get(&self, endpoint: &str, id: u64) -> Option<Map<String, Value>> {
        self.fake.with(|s| {
            let object = s.objects.get(endpoint)?.get(&id)?;
            object.as_object().cloned()
        })
    }

    /// Saves `fields` of one object (stamped) and shows them wherever it is nested (unstamped);
    /// the webhook NetBox sends for it.
    fn save(&mut self, endpoint: &str, object_type: &str, id: u64, fields: Value) -> Vec<u8> {
        let Some(before) = self.get(endpoint, id) else {
            return Vec::new();
        };
        let at = self.tick();
        let fields = fields.as_object().unwrap().clone();
        self.fake.with(|s| {
            let saved = s.objects.get_mut(endpoint).unwrap().get_mut(&id).unwrap();
            for (field, value) in &fields {
                saved[field] = value.clone();
            }
            saved["last_updated"] = json!(at);
            nested(s, endpoint, id, |shown| {
                for (field, value) in &fields {
                    if shown.contains_key(field) {
                        shown.insert(field.clone(), value.clone());
                    }
                }
            });
        });
        let after = self.get(endpoint, id).unwrap();
        webhook("updated", object_type, &after, Some(&before), &at)
    }

    /// Applies `change` to NetBox; the webhooks it sends, in order.
    fn apply(&mut self, change: &Change) -> Vec<Vec<u8>> {
        let body = match change {
            Change::RenameSite { site, to } => {
                let slug = format!("site-{}-{to}", SITES[*site]);
                let fields = json!({"slug": slug, "name": slug.to_uppercase()});
                self.save("dcim/sites", "dcim.site", SITES[*site], fields)
            }
            Change::ReslugPlatform { to } => {
                let slug = format!("eos-{to}");
                let fields = json!({"slug": slug, "name": slug.to_uppercase()});
                self.save("dcim/platforms", "dcim.platform", 2, fields)
            }
            Change::RenameDevice { device, to } => {
                let name = format!("dev-{}-{to}", DEVICES[*device]);
                let fields = json!({"name": name, "display": name});
                self.save("dcim/devices", "dcim.device", DEVICES[*device], fields)
            }
            Change::TouchDevice { device, to } => {
                let fields = json!({"serial": format!("SN-{}-{to}", DEVICES[*device])});
                self.save("dcim/devices", "dcim.device", DEVICES[*device], fields)
            }
            Change::RenumberIp { ip, to } => {
                let address = format!("192.0.2.{}/24", 10 * to + *ip as u8 + 1);
                let fields = json!({"address": address, "display": address});
                self.save("ipam/ip-addresses", "ipam.ipaddress", IPS[*ip], fields)
            }
            Change::DeleteIp { ip } => self.delete_ip(IPS[*ip]),
            Change::CreateDevice { site } => self.create_device(SITES[*site]),
            Change::DeleteCreatedDevice => self.delete_created_device(),
            Change::DeleteTag { tag } => return self.delete_tag(TAGS[*tag]),
        };
        if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        }
    }

    /// The webhooks NetBox sends for a tag's delete: one for each object it is taken off (its
    /// `last_updated` as it was), then the tag's.
    fn delete_tag(&mut self, id: u64) -> Vec<Vec<u8>> {
        let Some(tag) = self.get("extras/tags", id) else {
            return Vec::new();
        };
        let at = self.tick();
        let untagged = self.fake.delete_tag(id);
        let mut bodies: Vec<Vec<u8>> = untagged
            .iter()
            .map(|(object_type, before)| {
                let before = before.as_object().unwrap();
                let endpoint = ObjectType::from_name(object_type).unwrap().api_path;
                let after = self.get(endpoint, before["id"].as_u64().unwrap()).unwrap();
                webhook("updated", object_type, &after, Some(before), &at)
            })
            .collect();
        bodies.push(webhook("deleted", "extras.tag", &tag, Some(&tag), &at));
        bodies
    }

    /// NetBox clears a deleted address from its host's primary IP without saving the host.
    fn delete_ip(&mut self, id: u64) -> Vec<u8> {
        let Some(ip) = self.get("ipam/ip-addresses", id) else {
            return Vec::new();
        };
        let at = self.tick();
        self.fake.with(|s| {
            s.objects.get_mut("ipam/ip-addresses").unwrap().remove(&id);
            for device in s.objects.get_mut("dcim/devices").unwrap().values_mut() {
                if device["primary_ip4"]["id"] == id {
                    device["primary_ip4"] = Value::Null;
                    device["primary_ip"] = Value::Null;
                }
            }
        });
        webhook("deleted", "ipam.ipaddress", &ip, Some(&ip), &at)
    }

    fn create_device(&mut self, site: u64) -> Vec<u8> {
        let at = self.tick();
        let id = self.next_device;
        self.next_device += 1;
        let site = self.get("dcim/sites", site).unwrap();
        let platform = self.get("dcim/platforms", 2).unwrap();
        let template = Value::Object(self.get("dcim/devices", 4).unwrap());
        let mut device = device_like(&template, id);
        device["site"] = brief(&site);
        device["platform"] = brief(&platform);
        device["created"] = json!(at);
        device["last_updated"] = json!(at);
        self.fake.with(|s| {
            let devices = s.objects.get_mut("dcim/devices").unwrap();
            devices.insert(id, device.clone());
        });
        self.created.push(id);
        webhook(
            "created",
            "dcim.device",
            device.as_object().unwrap(),
            None,
            &at,
        )
    }

    fn delete_created_device(&mut self) -> Vec<u8> {
        let Some(id) = self.created.pop() else {
            return Vec::new();
        };
        let device = self.get("dcim/devices", id).unwrap();
        let at = self.tick();
        self.fake
            .with(|s| s.objects.get_mut("dcim/devices").unwrap().remove(&id));
        webhook("deleted", "dcim.device", &device, Some(&device), &at)
    }

    /// What a full pass from an empty state publishes: every object NetBox serves, translated.
    fn registry(
        &self,
        translator: &netbox_relay::translate::Translator,
    ) -> BTreeMap<String, Value> {
        self.fake.with(|s| {
            let mut registry = BTreeMap::new();
            for (endpoint, objects) in &s.objects {
                let Some(object_type) = ObjectType::from_url(&format!("/api/{endpoint}/1/")) else {
                    continue;
                };
                for object in objects.values() {
                    let object = object.as_object().unwrap();
                    let delta = translator
                        .reconcile_upsert(object_type, object, chrono::Utc::now())
                        .unwrap();
                    registry.insert(delta.key, serde_json::to_value(delta.entry).unwrap());
                }
            }
            registry
        })
    }
}

/// Calls `show` with every nested object (one level below the top, or two) that is object `id`
/// of `endpoint`, as NetBox renders a related object: found by its URL.
fn nested(
    s: &mut crate::fake_netbox::FakeState,
    endpoint: &str,
    id: u64,
    mut show: impl FnMut(&mut Map<String, Value>),
) {
    let url = format!("/api/{endpoint}/{id}/");
    let visit = |value: &mut Value, show: &mut dyn FnMut(&mut Map<String, Value>)| {
        if let Some(map) = value.as_object_mut() {
            if map
                .get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(&url))
            {
                show(map);
            }
        }
    };
    for object in s.objects.values_mut().flat_map(|o| o.values_mut()) {
        for value in object.as_object_mut().unwrap().values_mut() {
            visit(value, &mut show);
            if let Some(map) = value.as_object_mut() {
                for inner in map.values_mut() {
                    visit(inner, &mut show);
                }
            }
        }
    }
}

/// A related object as NetBox nests it.
fn brief(object: &Map<String, Value>) -> Value {
    let keep = ["id", "url", "display", "name", "slug", "description"];
    let brief: Map<String, Value> = object
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(brief)
}

/// The recorded NetBox, completed with what it has and the recording did not page through:
/// the platforms the devices point at, and the interfaces the addresses are assigned to.
fn complete(fake: &FakeNetbox) {
    fake.with(|s| {
        let platforms: Vec<Value> = s.objects["dcim/devices"]
            .values()
            .filter_map(|d| d["platform"].as_object().cloned())
            .map(|mut p| {
                p.insert("last_updated".into(), json!("2026-11-22T10:40:00.000000Z"));
                Value::Object(p)
            })
            .collect();
        let listed = s.objects.entry("dcim/platforms".into()).or_default();
        for p in platforms {
            listed.insert(p["id"].as_u64().unwrap(), p);
        }
        let template = s.objects["dcim/interfaces"]
            .values()
            .next()
            .unwrap()
            .clone();
        let missing: Vec<(u64, Value)> = s.objects["ipam/ip-addresses"]
            .values()
            .filter(|ip| ip["assigned_object_type"] == "dcim.interface")
            .map(|ip| {
                (
                    ip["assigned_object_id"].as_u64().unwrap(),
                    ip["assigned_object"].clone(),
                )
            })
            .collect();
        // `prod` on devices 2-4, `lab` on devices 5-6 and address 3.
        let prod = s.objects["ipam/prefixes"][&1]["tags"][0].clone();
        let mut lab = prod.clone();
        lab["id"] = json!(TAGS[1]);
        for field in ["name", "slug", "display"] {
            lab[field] = json!("lab");
        }
        lab["url"] = json!(prod["url"].as_str().unwrap().replace("/1/", "/2/"));
        for (endpoint, id, tag) in [
            ("dcim/devices", 2, &prod),
            ("dcim/devices", 3, &prod),
            ("dcim/devices", 4, &prod),
            ("dcim/devices", 5, &lab),
            ("dcim/devices", 6, &lab),
            ("ipam/ip-addresses", 3, &lab),
        ] {
            let object = s.objects.get_mut(endpoint).unwrap().get_mut(&id).unwrap();
            object["tags"] = json!([tag]);
        }
        let interfaces = s.objects.get_mut("dcim/interfaces").unwrap();
        for (id, assigned) in missing {
            interfaces.entry(id).or_insert_with(|| {
                let mut interface = template.clone();
                interface["id"] = json!(id);
                interface["url"] = assigned["url"].clone();
                interface["name"] = assigned["name"].clone();
                interface["display"] = assigned["display"].clone();
                interface["device"] = assigned["device"].clone();
                interface
            });
        }
    });
}

/// The body NetBox sends for `event` of `object`, from the recorded envelope of its kind.
fn webhook(
    event: &str,
    object_type: &str,
    object: &Map<String, Value>,
    before: Option<&Map<String, Value>>,
    at: &str,
) -> Vec<u8> {
    let mut body = fixture_json("051_site_updated.json");
    body.insert("event".into(), json!(event));
    body.insert("object_type".into(), json!(object_type));
    body.insert("timestamp".into(), json!(at));
    body.insert("data".into(), Value::Object(object.clone()));
    let after = (event != "deleted").then(|| snapshot(object));
    let before = before.filter(|_| event != "created").map(snapshot);
    body.insert(
        "snapshots".into(),
        json!({"prechange": before, "postchange": after}),
    );
    serde_json::to_vec(&body).unwrap()
}

/// An object as NetBox's snapshots show it (`serialize_object`, as in the recorded webhooks):
/// related objects by id, tags by name, and no `id`, `url`, `display` or `last_updated`.
fn snapshot(object: &Map<String, Value>) -> Value {
    let related = |value: &Value| match value {
        Value::Object(nested) => nested.get("id").cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    let fields = object.iter().filter(|(field, _)| {
        !["id", "url", "display", "display_url", "last_updated"].contains(&field.as_str())
    });
    let snapshot: Map<String, Value> = fields
        .map(|(field, value)| {
            let value = match (field.as_str(), value) {
                ("tags", Value::Array(tags)) => tags.iter().map(|t| t["name"].clone()).collect(),
                ("custom_fields", v) => v.clone(),
                (_, v) => related(v),
            };
            (field.clone(), value)
        })
        .collect();
    Value::Object(snapshot)
}

/// The registry as consumers read it: each key's last message, if an upsert.
async fn on_stream(nats: &NatsServer) -> BTreeMap<String, Value> {
    let mut last = BTreeMap::new();
    for message in stream_messages(&nats.url()).await {
        let key = message.delta["key"].as_str().unwrap().to_string();
        last.insert(key, message.delta);
    }
    last.into_iter()
        .filter(|(_, d)| d["op"] == "upsert")
        .map(|(k, d)| (k, d["entry"].clone()))
        .collect()
}

fn relay_config(nats: &NatsServer, fake: &FakeNetbox) -> netbox_relay::config::Config {
    let mut config = config(nats, fake, 1000);
    config.cascade.debounce = DEBOUNCE;
    config.netbox.concurrency = 2;
    config
}

/// Plays `steps` and judges the registry; Err says how it differs from NetBox.
async fn play(steps: &[Step]) -> Result<(), String> {
    let nats = NatsServer::start();
    let mut model = Model::start().await;
    let config = relay_config(&nats, &model.fake);
    let translator = netbox_relay::app::translator(&config).unwrap();
    let mut relay = TestRelay::start(config.clone()).await;
    let first = reconcile(&relay).await;
    if first["status"] != "succeeded" {
        return Err(format!("the first run: {first}"));
    }
    let mut late: Vec<Vec<u8>> = Vec::new();
    let mut later: Vec<Vec<u8>> = Vec::new();
    for step in steps {
        let bodies = model.apply(&step.change);
        let held_back = std::mem::take(&mut late);
        for body in bodies {
            match step.fate {
                Fate::Delivered => send(&relay, &body).await?,
                Fate::Lost => {}
                Fate::Twice => {
                    send(&relay, &body).await?;
                    send(&relay, &body).await?;
                }
                Fate::Late => late.push(body),
                Fate::Later => later.push(body),
            }
        }
        for body in held_back {
            send(&relay, &body).await?;
        }
        if step.settle {
            tokio::time::sleep(DEBOUNCE * 4).await;
        }
        if step.restart {
            relay.relay.stop().await.map_err(|e| e.to_string())?;
            relay = TestRelay::start(config.clone()).await;
        }
    }
    for body in late {
        send(&relay, &body).await?;
    }
    if !later.is_empty() {
        tokio::time::sleep(DEBOUNCE * 4).await;
        for body in later {
            send(&relay, &body).await?;
        }
    }
    let report = reconcile(&relay).await;
    if report["status"] != "succeeded" {
        return Err(format!("the default run: {report}"));
    }
    let expected = model.registry(&translator);
    // Cascades the last webhooks queued may still be running: what they publish is NetBox's
    // final state, so the registry converges on it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let actual = on_stream(&nats).await;
        if actual == expected {
            relay.relay.stop().await.map_err(|e| e.to_string())?;
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            if std::env::var("MODEL_DEBUG").is_ok() {
                for m in stream_messages(&nats.url()).await {
                    eprintln!(
                        "{} {} {} {} {}",
                        m.delta["key"],
                        m.delta["origin"],
                        m.delta["revision"],
                        m.delta["entry"]["labels"]["site"],
                        m.delta["event"]
                    );
                }
            }
            relay.relay.stop().await.ok();
            return Err(differences(&expected, &actual));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn send(relay: &TestRelay, body: &[u8]) -> Result<(), String> {
    let (status, answer) = relay.post_signed(body).await;
    match status {
        200 | 202 => Ok(()),
        _ => Err(format!("a webhook answered {status}: {answer}")),
    }
}

/// Each key that differs, with both entries.
fn differences(expected: &BTreeMap<String, Value>, actual: &BTreeMap<String, Value>) -> String {
    let mut lines = Vec::new();
    for key in expected.keys().chain(actual.keys()) {
        let (e, a) = (expected.get(key), actual.get(key));
        if e != a && !lines.iter().any(|l: &String| l.starts_with(key.as_str())) {
            lines.push(format!("{key}: NetBox {} / registry {}", show(e), show(a)));
        }
    }
    lines.join("\n")
}

fn show(entry: Option<&Value>) -> String {
    match entry {
        None => "absent".to_string(),
        Some(e) => format!(
            "name={} labels={} addresses={} attributes={}",
            e["name"], e["labels"], e["addresses"], e["attributes"]
        ),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    // MODEL_CASES=1000 for a longer hunt than CI's.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32),
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn after_any_history_and_one_default_run_the_registry_is_netbox(
        steps in prop::collection::vec(step(), 1..10)
    ) {
        let judged = runtime().block_on(play(&steps));
        prop_assert!(judged.is_ok(), "{}", judged.unwrap_err());
    }
}

/// One step of a found history, the relay not restarted.
fn step_of(change: Change, fate: Fate) -> Step {
    Step {
        change,
        fate,
        restart: false,
        settle: false,
    }
}

/// Found by the soak's hour: a device renamed and renamed back, each cascade run before the
/// next change. The dependents' entries go back to ones the stream holds, with the same delta
/// ids, which JetStream drops within its duplicate window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_undone_after_its_cascade_relabels_the_dependents_back() {
    let rename = |to| Step {
        settle: true,
        ..step_of(Change::RenameDevice { device: 0, to }, Fate::Delivered)
    };
    play(&[rename(0), rename(1), rename(0)]).await.unwrap();
}

/// Found by the model: a device renamed twice to the same name, the first webhook lost. The
/// second's snapshots show no rename, while the registry still showed the name before the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_whose_webhook_was_lost_reaches_dependents_through_the_next_update() {
    let rename = Change::RenameDevice { device: 4, to: 3 };
    let steps = [
        step_of(rename.clone(), Fate::Lost),
        step_of(rename, Fate::Delivered),
    ];
    play(&steps).await.unwrap();
}

/// Found by the soak's hour: a device renamed with its webhook lost, then saved with a change
/// its dependents do not show. NetBox's snapshots carry no `last_updated` (as the model's, like
/// the recorded ones): only what the registry shows tells that a save was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_whose_webhook_was_lost_reaches_dependents_through_another_save() {
    let steps = [
        step_of(Change::RenameDevice { device: 2, to: 1 }, Fate::Lost),
        step_of(Change::TouchDevice { device: 2, to: 1 }, Fate::Delivered),
    ];
    play(&steps).await.unwrap();
}

/// Found by the model: a device's create webhook arrives after its site was renamed and the
/// cascade showed the device with the new slug. Same revision, another entry: the relay cannot
/// tell which is newer, publishes the webhook's and reads the device again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_later_than_the_cascade_after_it_leaves_the_registry_as_netbox() {
    let steps = [
        step_of(Change::CreateDevice { site: 0 }, Fate::Later),
        step_of(Change::RenameSite { site: 0, to: 0 }, Fate::Delivered),
    ];
    play(&steps).await.unwrap();
}

/// Found by the model: a device renamed with its webhook lost, then its site renamed twice (the
/// first webhook late, the second showing no rename). The site's cascade publishes the device
/// with its new name; the device's own dependents must follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_that_publishes_a_renamed_parent_cascades_in_turn() {
    let rename = Change::RenameSite { site: 0, to: 0 };
    let steps = [
        step_of(Change::RenameDevice { device: 0, to: 0 }, Fate::Lost),
        step_of(rename.clone(), Fate::Later),
        step_of(rename, Fate::Delivered),
    ];
    play(&steps).await.unwrap();
}

/// Found by the soak's hour (seed 2033): a cascade pulled a device's dependents while NetBox
/// showed a name whose webhook was lost, so they showed a name the device's own entry never
/// did; NetBox then went back to the name the entry shows, with its webhook lost too. Here the
/// first rename's webhook comes late and cascades while NetBox already shows the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_pulled_after_a_lost_rename_follow_the_name_back() {
    let rename = |to, fate| step_of(Change::RenameDevice { device: 1, to }, fate);
    let steps = [
        rename(1, Fate::Late),
        Step {
            settle: true,
            ..rename(2, Fate::Lost)
        },
        rename(1, Fate::Lost),
    ];
    play(&steps).await.unwrap();
}
