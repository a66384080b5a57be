//! The registry as a compacted per-key stream: one subject per key, a few messages kept per key,
//! a delete's tombstone replacing its key's history. A new consumer with the "last per subject"
//! deliver policy receives the current registry in one step.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{held_count, published_count, test_config, NatsServer, TestRelay};
use netbox_relay::state::Store;

const KEYS: u64 = 1_000;
const ROUNDS: u64 = 10;
const HISTORY: u32 = 4;

fn body(id: u64, at: DateTime<Utc>, deleted: bool) -> Vec<u8> {
    crate::helpers::device_change(id, at, deleted)
}

/// Ten rounds over 1,000 devices, each round one change per device (rounds in order, so that
/// each key's revisions rise); in the last round every tenth device is deleted.
async fn ten_thousand_deltas(relay: &TestRelay) {
    let start = Utc::now() - chrono::Duration::hours(1);
    for round in 0..ROUNDS {
        let bodies: Vec<Vec<u8>> = (1..=KEYS)
            .map(|id| {
                let at = start + chrono::Duration::seconds(round as i64 * 60 + id as i64 / 100);
                body(id, at, round == ROUNDS - 1 && id % 10 == 0)
            })
            .collect();
        let answers: Vec<u16> = futures::stream::iter(bodies)
            .map(|b| async move { relay.post_signed(&b).await.0 })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(
            answers.iter().all(|s| *s == 202),
            "round {round}: {answers:?}"
        );
    }
}

/// What a new consumer with the "last per subject" policy receives before it has caught up:
/// key -> (op, delta id), and every message's headers checked against its delta.
async fn current_view(nats_url: &str) -> BTreeMap<String, (String, String)> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    let stream = js.get_stream("NETBOX_REGISTRY").await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: "netbox.registry.>".into(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut view = BTreeMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let message = next.expect("the current state arrives").unwrap().unwrap();
        let delta: Value = serde_json::from_slice(&message.payload).unwrap();
        let (key, op) = (
            delta["key"].as_str().unwrap(),
            delta["op"].as_str().unwrap(),
        );
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(header("Netbox-Relay-Op").as_deref(), Some(op), "{key}");
        let ttl = header("Nats-TTL");
        assert_eq!(
            ttl.is_some(),
            op == "delete",
            "a TTL on tombstones only: {key}"
        );
        let id = delta["object_id"].as_u64().unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("netbox.registry.default.device.{id}")
        );
        view.insert(
            key.to_string(),
            (
                op.to_string(),
                delta["delta_id"].as_str().unwrap().to_string(),
            ),
        );
        if message.info().unwrap().pending == 0 {
            return view;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_gets_the_current_registry_in_one_step() {
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.nats.history_per_key = HISTORY;
    let relay = TestRelay::start(config.clone()).await;
    ten_thousand_deltas(&relay).await;
    relay.relay.stop().await.unwrap();
    assert_eq!(published_count(&nats.url()).await, KEYS * ROUNDS);

    // Compacted: at most HISTORY messages per live key, and a deleted key's tombstone alone.
    let (deleted, live) = (KEYS / 10, KEYS - KEYS / 10);
    assert_eq!(
        held_count(&nats.url()).await,
        live * u64::from(HISTORY) + deleted,
        "history per key, a tombstone replacing its key's history"
    );

    let view = current_view(&nats.url()).await;
    // The relay's own record of the registry: the head of every key in its state file.
    let store = Store::open(&config.state.path).unwrap();
    let mut record = BTreeMap::new();
    store
        .each_head("", |key, head| {
            let op = if head.deleted() { "delete" } else { "upsert" };
            record.insert(key.to_string(), (op.to_string(), head.delta_id));
        })
        .unwrap();
    assert_eq!(view.len() as u64, KEYS, "one message per key");
    assert_eq!(
        view, record,
        "the consumer's view is the relay's record, key for key"
    );
    let deletes = view.values().filter(|(op, _)| op == "delete").count() as u64;
    assert_eq!(deletes, deleted);
}

#[tokio::test]
async fn a_tombstone_expires_after_its_ttl_and_takes_its_key_along() {
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.nats.tombstone_ttl = Duration::from_secs(1);
    let relay = TestRelay::start(config).await;
    let at = Utc::now() - chrono::Duration::minutes(5);
    for (id, deleted) in [(1, false), (2, false), (2, true)] {
        let at = at + chrono::Duration::seconds(i64::from(deleted));
        assert_eq!(relay.post_signed(&body(id, at, deleted)).await.0, 202);
    }
    assert_eq!(
        held_count(&nats.url()).await,
        2,
        "device 1, and device 2's tombstone"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while held_count(&nats.url()).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tombstone did not expire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view = current_view(&nats.url()).await;
    assert_eq!(
        view.keys().collect::<Vec<_>>(),
        ["netbox/default/dcim.device/1"],
        "the deleted key is gone; nothing older came back"
    );
}

/// A stream made before per-key subjects: created by an older relay (no per-subject limit, no
/// rollups), with deltas on `<kind>.<op>` subjects. The relay sets what it needs and says what
/// the operator must do about the old messages.
#[tokio::test]
async fn an_old_stream_gets_the_new_settings_and_its_old_subjects_are_reported() {
    use async_nats::jetstream::stream::Config as StreamConfig;
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(StreamConfig {
        name: "NETBOX_REGISTRY".into(),
        subjects: vec!["netbox.registry.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("netbox.registry.default.device.upsert", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    std::fs::create_dir_all(nats.scratch()).unwrap();
    let log = nats.scratch().join("relay.log");
    let env = [
        ("NETBOX_RELAY_LOG__LEVEL", "info"),
        ("NETBOX_RELAY_LOG__FORMAT", "json"),
    ];
    let relay = crate::helpers::RelayProcess::start_with(
        &nats,
        crate::helpers::free_port(),
        &env,
        Some(&log),
    );
    relay.wait_ready().await;
    let config = js
        .get_stream("NETBOX_REGISTRY")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(config.max_messages_per_subject, 16);
    assert!(
        config.allow_rollup && config.allow_message_ttl,
        "{config:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let warning = text
        .lines()
        .find(|l| l.contains("old subject layout"))
        .unwrap_or_else(|| panic!("no warning about the old layout in:\n{text}"));
    assert!(
        warning.contains("netbox.registry.default.device.upsert") && warning.contains("README"),
        "{warning}"
    );
}

/// `netbox-relay tail --current --json`: the first `count` lines it prints.
fn tail_current(nats: &NatsServer, count: usize) -> Vec<Value> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .args(["tail", "--current", "--json"])
        .env("NETBOX_RELAY_NATS__URL", nats.url())
        .env("NETBOX_RELAY_WEBHOOK__SECRETS", "unused-here")
        .env("NETBOX_RELAY_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<Value> = stdout
        .lines()
        .take(count)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    child.kill().ok();
    child.wait().ok();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_current_starts_with_the_last_delta_of_every_key() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let at = Utc::now() - chrono::Duration::minutes(5);
    let changes = [
        (1, 0, false),
        (2, 0, false),
        (1, 1, false),
        (2, 2, true),
        (3, 3, false),
    ];
    for (id, second, deleted) in changes {
        let at = at + chrono::Duration::seconds(second);
        assert_eq!(relay.post_signed(&body(id, at, deleted)).await.0, 202);
    }
    let lines = tokio::task::block_in_place(|| tail_current(&nats, 3));
    let seen: Vec<(u64, &str, &str)> = lines
        .iter()
        .map(|d| {
            let name = d["entry"]["name"].as_str().unwrap_or("");
            (
                d["object_id"].as_u64().unwrap(),
                d["op"].as_str().unwrap(),
                name,
            )
        })
        .collect();
    let latest = |id, second: i64| {
        format!(
            "device-{id}-{}",
            (at + chrono::Duration::seconds(second)).timestamp_micros()
        )
    };
    let (one, three) = (latest(1, 1), latest(3, 3));
    assert_eq!(
        seen,
        [
            (1, "upsert", one.as_str()),
            (2, "delete", ""),
            (3, "upsert", three.as_str())
        ],
        "in stream order: device 1 as last changed, device 2's tombstone, device 3"
    );
}
