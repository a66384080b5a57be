//! Confirmation benchmark (issue 36): what confirming webhooks against NetBox's main costs NetBox
//! and the webhooks when netbox-branching is installed. A NetBox stand-in in this process answers
//! `/api/status/` and the device list endpoint with `id=` filters, taking `--netbox-ms` per
//! request plus `--per-object-ms` per object served (NetBox 4.7.3 here served 1,000 devices in
//! full in about 1.9 s), and counts the requests. Two relay binaries on one local `nats-server
//! -js`, each with a stand-in of its own:
//!   (n) NetBox without the plugin: nothing is confirmed (the baseline);
//!   (p) NetBox with the plugin listed: every webhook is confirmed.
//! At each rate (1, 100 and 1,000 webhooks/s, open loop, each webhook a new device as in a bulk
//! edit) both are driven alike, in turns. Reports NetBox list requests per webhook, latency
//! p50/p99, the held answers, and the latency ratios (p)/(n); checks every delta reached the
//! stream.
//!
//! `cargo bench --bench confirm -- [--seconds 5] [--netbox-ms 30] [--per-object-ms 2]`

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use netbox_relay::webhook::signature::sign;
use serde_json::{json, Map, Value};

mod common;
use common::{free_port, wait_for_port};

const SECRET: &str = "bench-secret";
const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
const RATES: [u64; 3] = [1, 100, 1000];

struct Args {
    seconds: u64,
    netbox_ms: u64,
    per_object_ms: u64,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            seconds: 5,
            netbox_ms: 30,
            per_object_ms: 2,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().and_then(|v| v.parse().ok()).expect("a number");
            match flag.as_str() {
                "--seconds" => args.seconds = value(),
                "--netbox-ms" => args.netbox_ms = value(),
                "--per-object-ms" => args.per_object_ms = value(),
                _ => {}
            }
        }
        args
    }
}

/// The NetBox stand-in's objects and counts.
struct Stand {
    branching: bool,
    netbox_ms: u64,
    per_object_ms: u64,
    devices: Mutex<HashMap<u64, Value>>,
    lists: AtomicU64,
    ids_asked: AtomicU64,
}

async fn status(State(stand): State<Arc<Stand>>) -> Json<Value> {
    let plugins = match stand.branching {
        true => json!({"netbox_branching": "1.2.2"}),
        false => json!({}),
    };
    Json(json!({"netbox-version": "4.7.3", "plugins": plugins}))
}

async fn devices(State(stand): State<Arc<Stand>>, RawQuery(query): RawQuery) -> Json<Value> {
    let ids: Vec<u64> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "id")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    stand.lists.fetch_add(1, Ordering::Relaxed);
    stand
        .ids_asked
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    let results: Vec<Value> = {
        let devices = stand.devices.lock().unwrap();
        ids.iter()
            .filter_map(|id| devices.get(id).cloned())
            .collect()
    };
    let took = stand.netbox_ms + stand.per_object_ms * results.len() as u64;
    tokio::time::sleep(Duration::from_millis(took)).await;
    Json(json!({"count": results.len(), "next": null, "previous": null, "results": results}))
}

async fn netbox(branching: bool, args: &Args) -> (Arc<Stand>, String) {
    let stand = Arc::new(Stand {
        branching,
        netbox_ms: args.netbox_ms,
        per_object_ms: args.per_object_ms,
        devices: Mutex::new(HashMap::new()),
        lists: AtomicU64::new(0),
        ids_asked: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/api/status/", get(status))
        .route("/api/dcim/devices/", get(devices))
        .with_state(stand.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (stand, url)
}

/// The recorded device update, as device `id` saved now.
struct Webhooks {
    template: Map<String, Value>,
}

impl Webhooks {
    fn new() -> Webhooks {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/netbox-webhooks/034_device_updated.json");
        let recorded: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let template = serde_json::from_str(recorded["body"].as_str().unwrap()).unwrap();
        Webhooks { template }
    }

    /// The body, and the object main shows once the change is there.
    fn device(&self, id: u64) -> (Vec<u8>, Value) {
        let mut body = self.template.clone();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let data = body["data"].as_object_mut().unwrap();
        data.insert("id".into(), json!(id));
        data.insert("url".into(), json!(format!("/api/dcim/devices/{id}/")));
        data.insert("name".into(), json!(format!("bench-{id}")));
        data.insert("last_updated".into(), json!(now));
        let object = Value::Object(data.clone());
        body.insert("timestamp".into(), json!(now));
        body.remove("snapshots");
        (serde_json::to_vec(&body).unwrap(), object)
    }
}

struct Relay {
    child: Child,
    url: String,
    stream: String,
}

impl Relay {
    fn start(nats: &str, netbox: &str, name: &str, work: &std::path::Path) -> Relay {
        let port = free_port();
        let stream = format!("BENCH_{}", name.to_uppercase());
        let child = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
            .arg("serve")
            .env("NETBOX_RELAY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("NETBOX_RELAY_NATS__URL", nats)
            .env("NETBOX_RELAY_NATS__STREAM", &stream)
            .env("NETBOX_RELAY_NATS__SUBJECT_PREFIX", format!("bench.{name}"))
            .env("NETBOX_RELAY_NETBOX__URL", netbox)
            .env("NETBOX_RELAY_NETBOX__TOKEN", TOKEN)
            .env("NETBOX_RELAY_RECONCILE__ON_START", "false")
            .env("NETBOX_RELAY_RECONCILE__INTERVAL", "0")
            .env("NETBOX_RELAY_WEBHOOK__SECRETS", SECRET)
            .env(
                "NETBOX_RELAY_STATE__PATH",
                work.join(format!("{name}.redb")),
            )
            .env("NETBOX_RELAY_LOG__LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Relay {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stream,
        }
    }
}

/// One phase's figures.
struct Phase {
    sent: usize,
    latencies_ms: Vec<f64>,
    held: usize,
    errors: usize,
    lists: u64,
    ids: u64,
}

impl Phase {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(at).copied().unwrap_or(0.0)
    }
}

/// `rate` webhooks a second for `seconds`, each a new device from `first`, open loop.
async fn drive(
    relay: &Relay,
    stand: &Stand,
    hooks: &Webhooks,
    http: &reqwest::Client,
    rate: u64,
    seconds: u64,
    first: u64,
) -> Phase {
    let count = (rate * seconds).max(5);
    let (lists, ids) = (
        stand.lists.load(Ordering::Relaxed),
        stand.ids_asked.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let (body, object) = hooks.device(first + i);
        stand.devices.lock().unwrap().insert(first + i, object);
        let signature = sign(SECRET, &body);
        let request = http
            .post(format!("{}/webhooks/netbox", relay.url))
            .header("content-type", "application/json")
            .header("x-hook-signature", signature)
            .body(body);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = request.send().await;
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            match answer {
                Ok(r) if r.status().as_u16() == 202 => {
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    Some((ms, body["confirm"] == "held"))
                }
                _ => None,
            }
        }));
    }
    let mut phase = Phase {
        sent: count as usize,
        latencies_ms: Vec::new(),
        held: 0,
        errors: 0,
        lists: 0,
        ids: 0,
    };
    for task in tasks {
        match task.await.unwrap() {
            Some((ms, held)) => {
                phase.latencies_ms.push(ms);
                phase.held += usize::from(held);
            }
            None => phase.errors += 1,
        }
    }
    phase.lists = stand.lists.load(Ordering::Relaxed) - lists;
    phase.ids = stand.ids_asked.load(Ordering::Relaxed) - ids;
    phase
}

/// Waits until the relay's stream holds `count` messages.
async fn wait_published(nats: &str, stream: &str, count: u64) -> u64 {
    let client = async_nats::connect(nats).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut s = js.get_stream(stream).await.unwrap();
        let messages = s.info().await.unwrap().state.messages;
        if messages >= count || Instant::now() > deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let work = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let mut nats = common::nats_command(nats_port, &work.path().join("nats"))
        .spawn()
        .unwrap();
    wait_for_port(nats_port);
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let (plain, plain_url) = netbox(false, &args).await;
    let (branching, branching_url) = netbox(true, &args).await;
    let mut n = Relay::start(&nats_url, &plain_url, "n", work.path());
    let mut p = Relay::start(&nats_url, &branching_url, "p", work.path());
    let http = reqwest::Client::new();
    let hooks = Webhooks::new();
    // Both relays learn NetBox's plugins before the first phase.
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!(
        "NetBox stand-in: {} ms a request + {} ms an object served; {} s a phase",
        args.netbox_ms, args.per_object_ms, args.seconds
    );
    println!();
    println!("| rate /s | relay | webhooks | p50 ms | p99 ms | held | errors | NetBox requests | requests per webhook | ids per request |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut first, mut sent) = (1, HashMap::new());
    let mut ratios = Vec::new();
    for rate in RATES {
        let mut phases = Vec::new();
        for (name, relay, stand) in [("(n)", &n, &plain), ("(p)", &p, &branching)] {
            let phase = drive(relay, stand, &hooks, &http, rate, args.seconds, first).await;
            first += phase.sent as u64;
            *sent.entry(relay.stream.clone()).or_insert(0) += phase.sent as u64;
            println!(
                "| {rate} | {name} | {} | {:.1} | {:.1} | {} | {} | {} | {:.3} | {:.1} |",
                phase.sent,
                phase.percentile(0.5),
                phase.percentile(0.99),
                phase.held,
                phase.errors,
                phase.lists,
                phase.lists as f64 / phase.sent as f64,
                phase.ids as f64 / (phase.lists.max(1)) as f64,
            );
            phases.push(phase);
        }
        ratios.push((
            rate,
            phases[1].percentile(0.5) / phases[0].percentile(0.5),
            phases[1].percentile(0.99) / phases[0].percentile(0.99),
        ));
    }
    println!();
    for (rate, p50, p99) in ratios {
        println!("{rate}/s: (p)/(n) latency p50 {p50:.2}, p99 {p99:.2}");
    }
    for relay in [&n, &p] {
        let expected = sent[&relay.stream];
        let published = wait_published(&nats_url, &relay.stream, expected).await;
        println!(
            "{}: {published} of {expected} deltas on the stream",
            relay.stream
        );
        assert_eq!(
            published, expected,
            "every accepted webhook reached the stream"
        );
    }
    for relay in [&mut n, &mut p] {
        let _ = relay.child.kill();
        let _ = relay.child.wait();
    }
    let _ = nats.kill();
    let _ = nats.wait();
}
