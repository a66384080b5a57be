//! Confirmation against main never stalls the relay: webhooks main cannot confirm (a type the
//! token may not read, an object main cannot serve) wait on their own while the others flow; a
//! NetBox without netbox-branching is never waited on, outage or not; with the plugin and NetBox
//! down, webhooks are held at once and released when it answers; a burst is asked about many
//! ids to a request.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::fake_netbox::FakeNetbox;
use crate::helpers::{
    device_change, fixture_json, metrics_text, published_count, stream_messages,
    wait_for_published, NatsServer, TestRelay,
};
use crate::reconcile::config;

const PLUGIN: &str = "1.2.2";

/// A NetBox 4.6 stand-in, with netbox-branching listed or not.
async fn netbox(branching: bool) -> FakeNetbox {
    let fake = FakeNetbox::start("4.6.8").await;
    if branching {
        fake.with(|s| s.plugins = json!({"netbox_branching": PLUGIN}));
    }
    fake
}

async fn relay(nats: &NatsServer, fake: &FakeNetbox) -> TestRelay {
    let mut config = config(nats, fake, 1000);
    config.webhook.confirm_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(config).await;
    // The plugin question is asked at start, off any webhook's path.
    wait_until("NetBox's status is asked", || {
        fake.with(|s| s.status_requests) > 0
    })
    .await;
    relay
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(relay: &TestRelay) -> Value {
    relay.get("/readyz").await.1
}

async fn wait_for_held(relay: &TestRelay, held: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = readyz(relay).await;
        if ready["held_webhooks"] == held {
            return ready;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z")
        .unwrap()
        .to_utc()
        + chrono::Duration::seconds(seconds)
}

/// Service `id` created at `at`, as NetBox sends it: the recorded create with another id.
fn service_created(id: u64, at: DateTime<Utc>) -> Vec<u8> {
    let mut body = fixture_json("101_service_created.json");
    let time = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let data = body["data"].as_object_mut().unwrap();
    data.insert("id".into(), json!(id));
    data.insert("url".into(), json!(format!("/api/ipam/services/{id}/")));
    data.insert("last_updated".into(), json!(time));
    body.insert("timestamp".into(), json!(time));
    serde_json::to_vec(&body).unwrap()
}

/// What a webhook body says of its object: what main shows once the change is there.
fn object_of(body: &[u8]) -> (u64, Value) {
    let body: Value = serde_json::from_slice(body).unwrap();
    (body["data"]["id"].as_u64().unwrap(), body["data"].clone())
}

fn on_main(fake: &FakeNetbox, endpoint: &str, body: &[u8]) {
    let (id, object) = object_of(body);
    fake.with(|s| {
        s.objects
            .entry(endpoint.into())
            .or_default()
            .insert(id, object)
    });
}

/// Requests for objects of `endpoint` in full so far: confirmations ask for what translation
/// reads. A cascade's listing of its parent (`fields=id,last_updated,created`) is no question.
fn asked(fake: &FakeNetbox, endpoint: &str) -> usize {
    let prefix = format!("{endpoint}?");
    let listing = "fields=id,last_updated,created";
    fake.with(|s| {
        let asks = s.log.iter().filter(|l| l.starts_with(&prefix));
        asks.filter(|l| !l.contains(listing)).count()
    })
}

/// The name each key's last delta shows.
async fn names(nats: &NatsServer) -> std::collections::BTreeMap<String, String> {
    stream_messages(&nats.url())
        .await
        .into_iter()
        .map(|m| {
            let name = m.delta["entry"]["name"].as_str().unwrap_or_default();
            (
                m.delta["key"].as_str().unwrap().to_string(),
                name.to_string(),
            )
        })
        .collect()
}

fn device_key(id: u64) -> String {
    format!("netbox/default/dcim.device/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_of_a_type_the_token_may_not_read_never_hold_up_the_others() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    fake.with(|s| s.denied.push("ipam/services".into()));
    let relay = relay(&nats, &fake).await;

    let services: Vec<Vec<u8>> = (1..=80)
        .map(|id| service_created(id, at(id as i64)))
        .collect();
    for body in &services {
        on_main(&fake, "ipam/services", body);
        let (status, answer) = relay.post_signed(body).await;
        assert_eq!(
            (status, &answer["confirm"]),
            (202, &json!("held")),
            "{answer}"
        );
    }
    // One refusal is enough: the others are held without asking.
    assert!(
        asked(&fake, "ipam/services") <= 2,
        "{:?}",
        fake.with(|s| s.log.clone())
    );

    // NetBox is slow for a moment: device webhooks are held too.
    fake.with(|s| s.down = true);
    let devices: Vec<Vec<u8>> = (1..=10)
        .map(|id| device_change(id, at(100 + id as i64), false))
        .collect();
    for (i, body) in devices.iter().enumerate() {
        on_main(&fake, "dcim/devices", body);
        let asked_before = asked(&fake, "dcim/devices");
        let (status, answer) = relay.post_signed(body).await;
        assert_eq!(
            (status, &answer["confirm"]),
            (202, &json!("held")),
            "{answer}"
        );
        if i > 0 {
            // NetBox known away: held at once, nothing asked.
            assert_eq!(
                asked(&fake, "dcim/devices"),
                asked_before,
                "device {}",
                i + 1
            );
        }
    }
    assert_eq!(readyz(&relay).await["held_webhooks"], 90);

    fake.with(|s| s.down = false);
    wait_for_published(&nats.url(), 10, Duration::from_secs(60)).await;
    let ready = wait_for_held(&relay, 80).await;
    let shown = names(&nats).await;
    for (id, body) in (1..=10).zip(&devices) {
        let name = object_of(body).1["name"].as_str().unwrap().to_string();
        assert_eq!(shown.get(&device_key(id)), Some(&name));
    }
    assert_eq!(
        shown.len(),
        10,
        "no service published unconfirmed: {shown:?}"
    );
    assert_eq!(ready["ready"], true, "{ready}");
    let unconfirmed = &ready["unconfirmed"][0];
    assert_eq!(unconfirmed["object_type"], "ipam.service", "{ready}");
    assert_eq!(unconfirmed["held"], 80, "{ready}");
    let reason = unconfirmed["reason"].as_str().unwrap();
    assert!(reason.contains("ipam.view_service"), "{reason}");
    let metrics = metrics_text(&relay.http, &relay.base).await;
    assert!(
        metrics.contains(
            "netbox_relay_webhooks_unconfirmed{object_type=\"ipam.service\",reason=\"forbidden\"} 80"
        ),
        "{metrics}"
    );

    // The permission is granted: the services are confirmed at their type's next try.
    fake.with(|s| s.denied.clear());
    wait_for_held(&relay, 0).await;
    assert_eq!(published_count(&nats.url()).await, 90);
    let requests = asked(&fake, "ipam/services");
    assert!(requests <= 20, "80 services cost {requests} requests");
    let ready = readyz(&relay).await;
    assert_eq!(ready["unconfirmed"], json!([]), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_netbox_without_branching_is_never_waited_on_through_an_outage() {
    let nats = NatsServer::start();
    let fake = netbox(false).await;
    let mut config = config(&nats, &fake, 1000);
    config.webhook.confirm_timeout = Duration::from_millis(500);
    // The status is old at once: every webhook finds it due for a refresh.
    config.netbox.status_ttl = Duration::from_millis(50);
    let relay = TestRelay::start(config).await;
    wait_until("NetBox's status is asked", || {
        fake.with(|s| s.status_requests) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    fake.with(|s| s.down = true);
    let before = fake.with(|s| s.status_requests);
    for id in 1..=30 {
        let body = device_change(id, at(id as i64), false);
        let (status, answer) = relay.post_signed(&body).await;
        assert_eq!(
            (status, answer),
            (202, json!({"status": "accepted", "deltas": 1})),
            "device {id}: published, neither held nor waiting"
        );
    }
    assert_eq!(published_count(&nats.url()).await, 30);
    assert_eq!(asked(&fake, "dcim/devices"), 0);
    // Refreshed in the background, one at a time: not one per webhook.
    let refreshes = fake.with(|s| s.status_requests) - before;
    assert!(
        refreshes < 30,
        "{refreshes} status requests for 30 webhooks"
    );
    assert_eq!(readyz(&relay).await["held_webhooks"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_branching_and_netbox_down_webhooks_are_held_at_once_and_released_in_order() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    let relay = relay(&nats, &fake).await;
    fake.with(|s| s.down = true);
    // Ten saves of one device, then one of another: main ends with the last of each.
    let mut bodies: Vec<Vec<u8>> = (1..=10).map(|n| device_change(7, at(n), false)).collect();
    bodies.push(device_change(8, at(11), false));
    for (i, body) in bodies.iter().enumerate() {
        on_main(&fake, "dcim/devices", body);
        let (status, answer) = relay.post_signed(body).await;
        assert_eq!(
            (status, &answer["confirm"]),
            (202, &json!("held")),
            "{answer}"
        );
        // The first finds NetBox away; the later ones are held without asking it. (A count of
        // requests cannot tell: the held webhooks' own retries run meanwhile.)
        assert_eq!(answer["asked_main"], json!(i == 0), "webhook {i}: {answer}");
        assert!(
            answer["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{answer}"
        );
    }
    assert!(readyz(&relay).await["confirmation_waits_for"].is_string());

    fake.with(|s| s.down = false);
    wait_for_held(&relay, 0).await;
    let last_of_7 = object_of(&bodies[9]).1["name"].clone();
    let shown = names(&nats).await;
    assert_eq!(json!(shown[&device_key(7)]), last_of_7);
    assert_eq!(shown.len(), 2);
    // Revisions never go backwards on a key.
    let mut last = std::collections::HashMap::new();
    for m in stream_messages(&nats.url()).await {
        let revision = m.delta["revision"].as_str().unwrap().to_string();
        let key = m.delta["key"].as_str().unwrap().to_string();
        if let Some(before) = last.insert(key.clone(), revision.clone()) {
            assert!(before <= revision, "{key}: {before} then {revision}");
        }
    }
    assert!(readyz(&relay).await["confirmation_waits_for"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_webhooks_is_confirmed_many_ids_to_a_request() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    let relay = relay(&nats, &fake).await;
    let bodies: Vec<Vec<u8>> = (1..=200)
        .map(|id| device_change(id, at(id as i64), false))
        .collect();
    for body in &bodies {
        on_main(&fake, "dcim/devices", body);
    }
    fake.with(|s| s.delay = Duration::from_millis(50));
    let answers = futures::future::join_all(bodies.iter().map(|b| relay.post_signed(b))).await;
    for (status, answer) in answers {
        assert_eq!(status, 202, "{answer}");
    }
    wait_for_held(&relay, 0).await;
    assert_eq!(published_count(&nats.url()).await, 200);
    let requests = asked(&fake, "dcim/devices");
    assert!(requests <= 40, "200 webhooks cost {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_main_serves_that_does_not_translate_is_held_not_replaced_by_the_webhooks() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    let relay = relay(&nats, &fake).await;
    let body = device_change(5, at(1), false);
    let (_, mut object) = object_of(&body);
    // What no translation accepts: a device NetBox serves with no date at all.
    let fields = object.as_object_mut().unwrap();
    fields.remove("last_updated");
    fields.remove("created");
    fake.with(|s| {
        s.objects
            .entry("dcim/devices".into())
            .or_default()
            .insert(5, object)
    });
    let (status, answer) = relay.post_signed(&body).await;
    assert_eq!(
        (status, &answer["confirm"]),
        (202, &json!("held")),
        "{answer}"
    );
    // Another device goes through meanwhile.
    let other = device_change(6, at(2), false);
    on_main(&fake, "dcim/devices", &other);
    let (status, answer) = relay.post_signed(&other).await;
    assert_eq!((status, &answer["deltas"]), (202, &json!(1)), "{answer}");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let ready = readyz(&relay).await;
        if ready["unconfirmed"][0]["held"] == 1 {
            break ready;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = ready["unconfirmed"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("does not translate"), "{reason}");
    assert_eq!(
        published_count(&nats.url()).await,
        1,
        "the webhook's own delta is not published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_main_change_overtaken_by_a_later_save_is_not_called_a_branch_change() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    let relay = relay(&nats, &fake).await;
    let first = device_change(3, at(1), false);
    let later = device_change(3, at(2), false);
    on_main(&fake, "dcim/devices", &later);
    // The later save's webhook lands first, then the first save's.
    for body in [&later, &first] {
        let (status, answer) = relay.post_signed(body).await;
        assert!(status == 200 || status == 202, "{answer}");
        let reason = answer["reason"].as_str().unwrap_or_default();
        assert!(!reason.contains("branch"), "{answer}");
    }
    let shown = names(&nats).await;
    assert_eq!(json!(shown[&device_key(3)]), object_of(&later).1["name"]);
    let metrics = metrics_text(&relay.http, &relay.base).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("netbox_relay_confirmations_total{result=\"newer_on_main\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_held_webhooks_get_503_and_readyz_says_why() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    let mut config = config(&nats, &fake, 1000);
    config.webhook.confirm_timeout = Duration::from_millis(300);
    config.webhook.max_held = 3;
    let relay = TestRelay::start(config).await;
    fake.with(|s| s.down = true);
    for id in 1..=4 {
        let body = device_change(id, at(id as i64), false);
        on_main(&fake, "dcim/devices", &body);
        let (status, answer) = relay.post_signed(&body).await;
        match id {
            4 => assert_eq!(status, 503, "{answer}"),
            _ => assert_eq!(
                (status, &answer["confirm"]),
                (202, &json!("held")),
                "{answer}"
            ),
        }
    }
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .contains("webhook.max_held"),
        "{ready}"
    );
    fake.with(|s| s.down = false);
    wait_for_held(&relay, 0).await;
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(published_count(&nats.url()).await, 3);
}

/// `netbox-relay held <args>` on the state file at `state`.
fn held_command(state: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("held")
        .args(args)
        .env("NETBOX_RELAY_STATE__PATH", state)
        .env("NETBOX_RELAY_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_releases_and_drops_held_webhooks_with_the_relay_stopped() {
    let nats = NatsServer::start();
    let fake = netbox(true).await;
    fake.with(|s| {
        s.denied.push("ipam/services".into());
        s.denied.push("dcim/devices".into());
    });
    let mut config = config(&nats, &fake, 1000);
    config.webhook.confirm_timeout = Duration::from_millis(500);
    let state = config.state.path.clone();
    let relay = TestRelay::start(config.clone()).await;
    let services: Vec<Vec<u8>> = (1..=3)
        .map(|id| service_created(id, at(id as i64)))
        .collect();
    let devices: Vec<Vec<u8>> = (1..=2)
        .map(|id| device_change(id, at(10 + id as i64), false))
        .collect();
    for body in services.iter().chain(&devices) {
        let (status, answer) = relay.post_signed(body).await;
        assert_eq!(
            (status, &answer["confirm"]),
            (202, &json!("held")),
            "{answer}"
        );
    }
    relay.relay.stop().await.unwrap();

    let listed = held_command(&state, &[]);
    assert!(listed.contains("held: 5 webhook(s)"), "{listed}");
    assert!(listed.contains("ipam.service: 3"), "{listed}");
    assert!(listed.contains("dcim.device: 2"), "{listed}");
    assert!(listed.contains("ipam.service 2 created"), "{listed}");
    let released = held_command(&state, &["release", "--object-type", "ipam.service"]);
    assert!(
        released.contains("3 held webhook(s) released"),
        "{released}"
    );
    let dropped = held_command(&state, &["drop", "--object-type", "dcim.device"]);
    assert!(dropped.contains("2 held webhook(s) dropped"), "{dropped}");
    assert!(held_command(&state, &[]).contains("held: 0 webhook(s)"));

    // The released ones are published as sent at the next start; nothing else.
    let relay = TestRelay::start(config).await;
    wait_for_published(&nats.url(), 3, Duration::from_secs(30)).await;
    let keys: Vec<String> = names(&nats).await.into_keys().collect();
    let expected: Vec<String> = (1..=3)
        .map(|id| format!("netbox/default/ipam.service/{id}"))
        .collect();
    assert_eq!(keys, expected);
    assert_eq!(readyz(&relay).await["held_webhooks"], 0);
}
