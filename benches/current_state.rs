//! Current-state benchmark: how long, and how much memory, a new consumer takes to load the whole
//! registry from the compacted stream. One run:
//!   setup: N device deltas (translated by the relay from the recorded API device, one key each,
//!          a tenth of the keys with an older delta before the current one) published on the
//!          per-key subjects of a stream with the relay's settings;
//!   (a) baseline: an ordered consumer that reads the whole stream (deliver all) into a registry;
//!   (c) a new consumer with "last per subject": the current registry, one delta per key.
//! Each consumer parses every delta and keeps key -> entry, as `examples/consumer.rs` does.
//! Reports keys/s, c/a, and the memory the loaded registry takes (RSS growth during (c)).
//!
//! `cargo bench --bench current_state -- [--keys 1000000]`

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use netbox_relay::delta::{Entry, RegistryDelta};

mod common;
use common::{device_translator, free_port, nats_binary, recorded_device, wait_for_port};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STREAM: &str = "NETBOX_REGISTRY";

fn main() {
    let keys = std::env::args()
        .skip_while(|a| a != "--keys")
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("--keys N"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(keys));
}

async fn run(keys: u64) {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nats = Command::new(nats_binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (deploy/local/ensure-nats.sh, or NATS_SERVER)");
    wait_for_port(port);
    let url = format!("nats://127.0.0.1:{port}");
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["netbox.registry.>".into()],
        max_messages_per_subject: 16,
        allow_rollup: true,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();

    let started = Instant::now();
    let (messages, bytes) = publish(&js, keys).await;
    println!(
        "current-state benchmark: {keys} keys, {messages} messages ({:.0} MB of deltas) published in {:.1} s; {}",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        machine()
    );

    let rss_before = rss_mb("VmRSS");
    let (current, current_time) = load(&js, DeliverPolicy::LastPerSubject, keys).await;
    let rss_after = rss_mb("VmRSS");
    assert_eq!(current.len() as u64, keys, "one entry per key");
    drop(current);
    let (all, all_time) = load(&js, DeliverPolicy::All, messages).await;
    assert_eq!(all.len() as u64, keys);

    println!();
    println!("| target | messages read | seconds | keys/s | time to (a) |");
    println!("| --- | --- | --- | --- | --- |");
    let row = |name: &str, read: u64, t: Duration| {
        let ratio = t.as_secs_f64() / all_time.as_secs_f64();
        println!(
            "| {name} | {read} | {:.2} | {:.0} | {ratio:.3} |",
            t.as_secs_f64(),
            keys as f64 / t.as_secs_f64()
        );
    };
    row(
        "(a) baseline: the whole stream (deliver all)",
        messages,
        all_time,
    );
    row("(c) new consumer, last per subject", keys, current_time);
    println!();
    println!(
        "ratio c/a (time) = {:.3}; the loaded registry took {:.0} MB ({:.0} bytes per key; RSS {:.0} -> {:.0} MB), peak RSS {:.0} MB",
        current_time.as_secs_f64() / all_time.as_secs_f64(),
        rss_after - rss_before,
        (rss_after - rss_before) * 1e6 / keys as f64,
        rss_before,
        rss_after,
        rss_mb("VmHWM")
    );
    nats.kill().ok();
    nats.wait().ok();
}

/// Publishes one device delta per key, and for every tenth key an older one first; answers the
/// messages and bytes published.
async fn publish(js: &jetstream::Context, keys: u64) -> (u64, u64) {
    let (device, translator) = device_translator();
    let template = recorded_device();
    let now = chrono::Utc::now();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut acks = Vec::with_capacity(4096);
    for id in 1..=keys {
        let versions = if id % 10 == 0 { 2 } else { 1 };
        for version in 0..versions {
            let mut obj = template.clone();
            obj.insert("id".into(), id.into());
            obj.insert("name".into(), format!("device-{id}-v{version}").into());
            obj.insert("url".into(), format!("/api/dcim/devices/{id}/").into());
            let delta = translator.reconcile_upsert(device, &obj, now).unwrap();
            let json = serde_json::to_vec(&delta).unwrap();
            bytes += json.len() as u64;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", delta.delta_id.as_str());
            let subject = format!("netbox.registry.default.device.{id}");
            acks.push(
                js.publish_with_headers(subject, headers, json.into())
                    .await
                    .unwrap(),
            );
            messages += 1;
        }
        if acks.len() >= 4096 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    (messages, bytes)
}

/// Reads `expected` messages with `policy` into key -> entry.
async fn load(
    js: &jetstream::Context,
    policy: DeliverPolicy,
    expected: u64,
) -> (HashMap<String, Entry>, Duration) {
    let started = Instant::now();
    let stream = js.get_stream(STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: "netbox.registry.>".into(),
            deliver_policy: policy,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut registry = HashMap::new();
    for _ in 0..expected {
        let message = messages.next().await.unwrap().unwrap();
        let delta: RegistryDelta = serde_json::from_slice(&message.payload).unwrap();
        if let Some(entry) = delta.entry {
            registry.insert(delta.key, entry);
        }
    }
    (registry, started.elapsed())
}

/// The first device of the recorded API answer.
fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores")
}
