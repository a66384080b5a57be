//! Nothing acknowledged is lost: NATS outages, a SIGKILLed relay, stale and duplicate events,
//! a full spool, and racing webhooks of one object. Real nats-server, real relay binary.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{
    counter_value, fixture_json, free_port, metrics_text, published_count, signed, stream_messages,
    test_config, wait_for_published, NatsServer, RelayProcess, TestRelay,
};

/// A signed device update shaped like the recorded ones, for device `id` at revision `rev`
/// (seconds after 11:00).
pub fn device_update(id: u64, rev: u32) -> Vec<u8> {
    let mut body = fixture_json("020_device_created.json");
    body["event"] = json!("updated");
    let data = body["data"].as_object_mut().unwrap();
    data["id"] = json!(id);
    data["url"] = json!(format!("/api/dcim/devices/{id}/"));
    data["name"] = json!(format!("dev-{id}"));
    data["serial"] = json!(format!("SN-{id}-{rev}"));
    let revision = format!(
        "2026-11-22T{:02}:{:02}:{:02}.000000Z",
        11 + rev / 3600,
        rev / 60 % 60,
        rev % 60
    );
    data["last_updated"] = json!(revision);
    // NetBox queues the event after the change: its timestamp is never before last_updated.
    body["timestamp"] = json!(revision);
    serde_json::to_vec(&body).unwrap()
}

fn revision_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    let t: chrono::DateTime<chrono::Utc> =
        v["data"]["last_updated"].as_str().unwrap().parse().unwrap();
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Sends `per_key` increasing revisions for each of `keys` devices, keys in parallel (`lanes`),
/// each key's revisions one after the other. Answers the statuses.
async fn send_updates(base: &str, keys: u64, per_key: u32, lanes: u64) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (client, base) = (client.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for id in (1..=keys).filter(|id| id % lanes == lane) {
                for rev in 1..=per_key {
                    statuses.push(post(&client, &base, device_update(id, rev)).await);
                }
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    statuses
}

async fn post(client: &reqwest::Client, base: &str, body: Vec<u8>) -> u16 {
    let signature = signed(&body);
    let response = client
        .post(format!("{base}/webhooks/netbox"))
        .header("content-type", "application/json")
        .header("x-hook-signature", signature)
        .body(body)
        .send()
        .await;
    response.map_or(0, |r| r.status().as_u16())
}

/// Asserts that no delta is stored twice and that each key's revisions only grow.
fn assert_once_and_in_key_order(stored: &[crate::helpers::Stored]) {
    let ids: HashSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "a delta was stored twice");
    let mut last: HashMap<&str, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for m in stored {
        let key = m.delta["key"].as_str().unwrap();
        let revision = m.delta["revision"].as_str().unwrap().parse().unwrap();
        if let Some(previous) = last.insert(key, revision) {
            assert!(
                previous < revision,
                "{key}: {revision} stored after {previous}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_webhooks_during_an_outage_all_arrive_in_key_order() {
    let mut nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    nats.stop();
    let statuses = send_updates(&relay.base, 500, 4, 25).await;
    assert_eq!(statuses.len(), 2000);
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every webhook is acknowledged while NATS is down"
    );
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 200, "the spool has room: still ready {ready}");
    assert_eq!(ready["spool_depth"], 2000, "{ready}");
    assert_eq!(ready["nats"], "away", "{ready}");

    nats.restart();
    wait_for_published(&nats.url(), 2000, Duration::from_secs(120)).await;
    let stored = stream_messages(&nats.url()).await;
    assert_eq!(stored.len(), 2000);
    assert_once_and_in_key_order(&stored);
    relay.wait_ready().await;
    assert_eq!(relay.get("/readyz").await.1["spool_depth"], 0);
}

const BURST_PER_LANE: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_acknowledged_before_a_sigkill_arrive_after_restart_once_each() {
    let mut nats = NatsServer::start();
    nats.stop();
    let port = free_port();
    let mut relay = RelayProcess::start(&nats, port);

    // A burst in flight when the relay is killed: every 202 must survive, the rest may or may not.
    let client = reqwest::Client::new();
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for lane in 0..8u64 {
        let (client, base, acked) = (client.clone(), relay.base.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for n in 0..BURST_PER_LANE {
                let (id, rev) = (lane * 1000 + n, 1);
                if post(&client, &base, device_update(id, rev)).await == 202 {
                    acked
                        .lock()
                        .unwrap()
                        .push((id, revision_of(&device_update(id, rev))));
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.kill();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < 8 * BURST_PER_LANE as usize,
        "the kill happened mid-burst"
    );

    let restarted = RelayProcess::start(&nats, port);
    let depth = spool_gauge(&client, &restarted.base).await;
    assert!(
        depth >= acked.len() as f64,
        "/metrics spool depth {depth} < {} acknowledged",
        acked.len()
    );
    nats.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stream_messages_or_empty(&nats.url()).await;
        let have: HashSet<(u64, String)> = stored
            .iter()
            .map(|m| {
                (
                    m.delta["object_id"].as_u64().unwrap(),
                    m.delta["revision"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let missing = acked.iter().filter(|a| !have.contains(a)).count();
        if missing == 0 {
            assert_once_and_in_key_order(&stored);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} acknowledged deltas never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `netbox_relay_spool_depth` from `/metrics`, once the drainer has reported a non-empty spool.
async fn spool_gauge(client: &reqwest::Client, base: &str) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics_text(client, base).await;
        let depth = text
            .lines()
            .find_map(|l| l.strip_prefix("netbox_relay_spool_depth "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let oldest = text
            .lines()
            .any(|l| l.starts_with("netbox_relay_spool_oldest_seconds "));
        if let (Some(depth), true) = (depth, oldest) {
            if depth > 0.0 {
                return depth;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spool gauges in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stream's messages, or none while the restarted relay has not created it yet.
async fn stream_messages_or_empty(url: &str) -> Vec<crate::helpers::Stored> {
    let Ok(client) = async_nats::connect(url).await else {
        return Vec::new();
    };
    match async_nats::jetstream::new(client)
        .get_stream(crate::helpers::STREAM)
        .await
    {
        Ok(_) => stream_messages(url).await,
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn stale_and_repeated_events_are_ignored_but_same_revision_changes_are_published() {
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    // Every message kept (no rollup on delete), to read the whole history back.
    config.nats.history_per_key = 0;
    let relay = TestRelay::start(config.clone()).await;
    // B (050, newer) before A (034, older) for device 1: A is stale.
    assert_eq!(relay.post_fixture("050_device_updated.json").await.0, 202);
    let (status, body) = relay.post_fixture("034_device_updated.json").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (200, Some("stale")),
        "{body}"
    );

    // What NetBox sends to every tagged object when a tag is deleted: same last_updated, tag gone.
    let mut untagged = fixture_json("050_device_updated.json");
    untagged["data"]["tags"] = json!([{"id": 2, "url": "/api/extras/tags/2/", "display": "prod", "name": "prod", "slug": "prod", "color": "f44336"}]);
    let (status, body) = relay
        .post_signed(&serde_json::to_vec(&untagged).unwrap())
        .await;
    assert_eq!(
        status, 202,
        "same revision, different entry is a change: {body}"
    );

    // Delete, then a late update of the deleted device: stale.
    assert_eq!(relay.post_fixture("081_device_deleted.json").await.0, 202);
    let (status, body) = relay.post_fixture("055_device_updated.json").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (200, Some("stale")),
        "{body}"
    );
    assert_eq!(published_count(&nats.url()).await, 3);

    // The state survives a restart: the same delete again is a duplicate.
    relay.relay.stop().await.unwrap();
    let relay = TestRelay::start(config).await;
    let (status, body) = relay.post_fixture("081_device_deleted.json").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    let stored = stream_messages(&nats.url()).await;
    let ops: Vec<&str> = stored
        .iter()
        .map(|m| m.delta["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["upsert", "upsert", "delete"]);
    assert_eq!(
        stored[1].delta["entry"]["labels"].get("tag.monitored"),
        None
    );
}

#[tokio::test]
async fn a_full_spool_answers_503_and_keeps_what_it_accepted() {
    let mut nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.spool.max_bytes = 8_000;
    let relay = TestRelay::start(config).await;
    nats.stop();
    let mut accepted = 0;
    let mut refused = None;
    for id in 1..=20 {
        let (status, body) = relay.post_signed(&device_update(id, 1)).await;
        match status {
            202 => accepted += 1,
            503 => {
                assert_eq!(body["error"], "unavailable", "{body}");
                refused = Some(id);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused.is_some(), "the spool never filled");
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert!(
        ready["reason"].as_str().unwrap().contains("spool is full"),
        "{ready}"
    );
    assert!(
        accepted >= 2,
        "the spool took {accepted} deltas before filling"
    );

    nats.restart();
    wait_for_published(&nats.url(), accepted, Duration::from_secs(30)).await;
    let stored = stream_messages(&nats.url()).await;
    let ids: Vec<u64> = stored
        .iter()
        .map(|m| m.delta["object_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=accepted).collect::<Vec<_>>(),
        "the refused webhook left nothing behind"
    );
    relay.wait_ready().await;
    let (status, _) = relay.post_signed(&device_update(refused.unwrap(), 1)).await;
    assert_eq!(
        status, 202,
        "with NATS back the refused webhook can be sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_webhooks_of_one_object_publish_in_revision_order() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let client = reqwest::Client::new();
    for id in 1..=100u64 {
        let (older, newer) = (device_update(id, 10), device_update(id, 20));
        let (a, b) = tokio::join!(
            post(&client, &relay.base, older),
            post(&client, &relay.base, newer)
        );
        assert!(a == 202 || a == 200, "older: {a}");
        assert_eq!(b, 202, "the newer one is always published");
    }
    let stored = stream_messages(&nats.url()).await;
    assert_once_and_in_key_order(&stored);
    let mut newest: HashMap<&str, &str> = HashMap::new();
    for m in &stored {
        newest.insert(
            m.delta["key"].as_str().unwrap(),
            m.delta["revision"].as_str().unwrap(),
        );
    }
    assert_eq!(newest.len(), 100);
    assert!(
        newest
            .values()
            .all(|r| r.starts_with("2026-11-22T11:00:20")),
        "{newest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_spool_reads_no_key_from_the_stream() {
    let mut nats = NatsServer::start();
    let relay = RelayProcess::start(&nats, free_port());
    relay.wait_ready().await;
    let client = reqwest::Client::new();
    // Keys 1-20 published while NATS is there: the relay knows their sequences.
    for id in 1..=20 {
        assert_eq!(post(&client, &relay.base, device_update(id, 1)).await, 202);
    }
    nats.stop();
    // During the outage: three more revisions of the known keys, and keys 21-30 never seen.
    let statuses = send_updates(&relay.base, 30, 4, 5).await;
    let spooled = statuses.iter().filter(|s| **s == 202).count();
    // Revision 1 of keys 1-20 is a duplicate (200); everything else was spooled.
    assert_eq!(spooled, 20 * 3 + 10 * 4, "{statuses:?}");
    nats.restart();
    wait_for_published(&nats.url(), 20 + spooled as u64, Duration::from_secs(60)).await;
    relay.wait_ready().await;
    // Once drained, a key's next delta is published after the sequence the drain learned.
    for id in [1, 25] {
        assert_eq!(post(&client, &relay.base, device_update(id, 5)).await, 202);
    }
    let stored = stream_messages(&nats.url()).await;
    assert_eq!(stored.len(), 20 + spooled + 2);
    assert_once_and_in_key_order(&stored);
    let metrics = metrics_text(&client, &relay.base).await;
    assert_eq!(
        counter_value(&metrics, "netbox_relay_stream_key_reads_total"),
        0,
        "no key read from the stream:\n{metrics}"
    );
    assert_eq!(
        counter_value(&metrics, "netbox_relay_publish_conflicts_total"),
        0
    );
}
