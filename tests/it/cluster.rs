//! Two relays on a real 3-node NATS cluster (three nats-server processes routed on loopback, the
//! stream replicated 3 times) under steady webhook load: one relay is killed, then the stream's
//! leader node, then both come back. Every 202'd delta is on the stream, revisions never go back
//! per key, no delta is stored twice, and a reconcile afterwards publishes nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::fake_netbox::{FakeNetbox, TOKEN};
use crate::helpers::{
    device_change, free_port, published_count, signed, stream_messages, NatsCluster, RelayProcess,
};

const ADMIN: &str = "admin-secret-for-cluster-tests";
const DEVICES: u64 = 50;

/// One webhook sent: the device, its revision, and the relay's answer (None: no answer).
type Sent = (u64, DateTime<Utc>, Option<u16>);

fn relay(
    cluster: &NatsCluster,
    fake: &FakeNetbox,
    state: &std::path::Path,
    port: u16,
) -> RelayProcess {
    let env = [
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
        ("NETBOX_RELAY_NATS__REPLICAS", "3"),
        // Every message kept, to find each accepted delta on the stream.
        ("NETBOX_RELAY_NATS__HISTORY_PER_KEY", "0"),
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", TOKEN),
        ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
        ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
    ];
    RelayProcess::start_on(&cluster.urls(), state, port, &env, None)
}

/// Sends device changes with rising revisions, round robin over the devices, to the two relays
/// by turns, four at a time, until `stop`.
async fn load(bases: [String; 2], stop: CancellationToken, sent: Arc<Mutex<Vec<Sent>>>) {
    let start = Utc::now() - chrono::Duration::hours(1);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers = (0..4).map(|_| {
        let (bases, stop, sent, next) = (bases.clone(), stop.clone(), sent.clone(), next.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            while !stop.is_cancelled() {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (id, at) = (
                    n % DEVICES + 1,
                    start + chrono::Duration::milliseconds(n as i64),
                );
                let body = device_change(id, at, false);
                let answer = http
                    .post(format!("{}/webhooks/netbox", bases[(n % 2) as usize]))
                    .header("content-type", "application/json")
                    .header("x-hook-signature", signed(&body))
                    .body(body)
                    .send()
                    .await;
                let status = answer.ok().map(|r| r.status().as_u16());
                sent.lock().unwrap().push((id, at, status));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    futures::future::join_all(workers.collect::<Vec<_>>()).await;
}

/// The index of the node that leads the stream.
async fn stream_leader(cluster: &NatsCluster) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(cluster.nodes[0].url()).await.unwrap());
    let mut stream = js.get_stream("NETBOX_REGISTRY").await.unwrap();
    let info = stream.info().await.unwrap();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a leader");
    leader.trim_start_matches('n').parse::<usize>().unwrap() - 1
}

/// Waits until the relay answers ready with an empty spool.
async fn drained(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: Value = match reqwest::get(format!("{base}/readyz")).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if body["nats"] == "connected" && body["spool_depth"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{base} did not drain: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_a_three_node_cluster_lose_nothing_through_crashes() {
    let mut cluster = NatsCluster::start();
    let fake = FakeNetbox::start("4.6.8").await;
    let scratch = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let state_a = scratch.path().join("a.redb");
    let mut a = relay(&cluster, &fake, &state_a, port_a);
    let b = relay(&cluster, &fake, &scratch.path().join("b.redb"), port_b);
    a.wait_ready().await;
    b.wait_ready().await;

    let sent = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let load = tokio::spawn(load(
        [a.base.clone(), b.base.clone()],
        stop.clone(),
        sent.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = stream_leader(&cluster).await;
    cluster.nodes[leader].stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = tokio::task::block_in_place(|| relay(&cluster, &fake, &state_a, port_a));
    cluster.nodes[leader].restart();
    a.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    load.await.unwrap();
    drained(&a.base).await;
    drained(&b.base).await;

    let sent = sent.lock().unwrap().clone();
    let accepted: Vec<&Sent> = sent.iter().filter(|(_, _, s)| *s == Some(202)).collect();
    let unanswered = sent.iter().filter(|(_, _, s)| s.is_none()).count();
    assert!(
        accepted.len() > 200,
        "{} accepted of {}",
        accepted.len(),
        sent.len()
    );
    let url = cluster.nodes[(leader + 1) % 3].url();
    let stored = stream_messages(&url).await;
    println!(
        "{} webhooks sent, {} accepted, {unanswered} unanswered (relay killed); {} deltas on the stream",
        sent.len(),
        accepted.len(),
        stored.len()
    );

    let ids: Vec<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a delta stored twice");
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &stored {
        let revision = m.delta["revision"].as_str().unwrap().to_string();
        per_key.entry(m.subject.clone()).or_default().push(revision);
    }
    for (subject, revisions) in &per_key {
        assert!(
            revisions.windows(2).all(|w| w[0] <= w[1]),
            "{subject}: revisions went back: {revisions:?}"
        );
    }
    let time = |at: &DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Micros, true);
    for (id, at, _) in &accepted {
        let subject = format!("netbox.registry.default.device.{id}");
        let on_stream = per_key.get(&subject).is_some_and(|r| r.contains(&time(at)));
        assert!(
            on_stream,
            "device {id} at {} was answered 202 but is not on the stream",
            time(at)
        );
    }

    // NetBox as it is now: each device as its last accepted change left it.
    let mut latest: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    for (id, at, _) in &accepted {
        let entry = latest.entry(*id).or_insert(*at);
        *entry = (*entry).max(*at);
    }
    fake.with(|s| {
        let devices = s.objects.entry("dcim/devices".into()).or_default();
        for (id, at) in &latest {
            let body: Value = serde_json::from_slice(&device_change(*id, *at, false)).unwrap();
            devices.insert(*id, body["data"].clone());
        }
    });
    let before = published_count(&url).await;
    let report = crate::helpers::reconcile_through_api(&a.base, ADMIN).await;
    let devices = &report["object_types"]["dcim.device"];
    assert_eq!(devices["fetched"], latest.len(), "{report}");
    assert_eq!(
        (devices["upserted"].as_u64(), devices["deleted"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
    assert_eq!(
        published_count(&url).await,
        before,
        "the reconcile published nothing"
    );
}
