//! Reconcile benchmark, one run: a fake NetBox API (its own process) serves N generated devices and
//! N/1 IP addresses in pages of 1,000, and
//!   (a) baseline: only downloading every page, with the relay's own HTTP client and concurrency;
//!   (b) a first `netbox-relay reconcile` (every object upserted and acked by JetStream);
//!   (c) a second `netbox-relay reconcile` with nothing changed.
//! Reports objects/s, the ratios b/a and c/a, and the relay's peak RSS.
//!
//! `cargo bench --bench reconcile -- [--objects 100000] [--concurrency 4]`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbox_relay::config::NetboxConfig;
use netbox_relay::netbox::client::NetboxClient;
use netbox_relay::netbox::ObjectType;
use netbox_relay::reconcile::pull::{pages, PullOptions};

mod common;
use common::{free_port, nats_binary, wait_for_port};
use serde_json::{json, Value};

/// The relay's allocator, so that baseline and relay are measured alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FAKE_ENV: &str = "NETBOX_RELAY_BENCH_FAKE";
const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
const TYPES: [&str; 2] = ["dcim.device", "ipam.ipaddress"];

fn main() {
    let (objects, concurrency) = args();
    if let Ok(spec) = std::env::var(FAKE_ENV) {
        let (port, per_type) = spec.split_once(':').expect("port:count");
        return fake_netbox(port.parse().unwrap(), per_type.parse().unwrap());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(objects, concurrency));
}

fn args() -> (u64, usize) {
    let (mut objects, mut concurrency) = (100_000, 4);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--objects" => objects = it.next().and_then(|v| v.parse().ok()).expect("--objects N"),
            "--concurrency" => {
                concurrency = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--concurrency N")
            }
            _ => {}
        }
    }
    (objects, concurrency)
}

async fn run(objects: u64, concurrency: usize) {
    let per_type = objects / 2;
    let port = free_port();
    let fake = Process::spawn(
        Command::new(std::env::current_exe().unwrap()).env(FAKE_ENV, format!("{port}:{per_type}")),
        port,
    );
    let url = format!("http://127.0.0.1:{port}");
    println!("reconcile benchmark: {objects} objects ({per_type} devices, {per_type} IP addresses), pages of 1000, concurrency {concurrency}");

    let started = Instant::now();
    let downloaded = download(&url, concurrency).await;
    let a = started.elapsed();
    assert_eq!(downloaded, objects, "the baseline downloaded every object");

    let work = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let _nats = Process::spawn(
        Command::new(nats_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(work.path().join("nats")),
        nats_port,
    );
    let env = [
        ("NETBOX_RELAY_NETBOX__URL", url.clone()),
        ("NETBOX_RELAY_NETBOX__TOKEN", TOKEN.to_string()),
        ("NETBOX_RELAY_NETBOX__CONCURRENCY", concurrency.to_string()),
        (
            "NETBOX_RELAY_NATS__URL",
            format!("nats://127.0.0.1:{nats_port}"),
        ),
        ("NETBOX_RELAY_WEBHOOK__SECRETS", "unused".to_string()),
        (
            "NETBOX_RELAY_STATE__PATH",
            work.path().join("state.redb").display().to_string(),
        ),
        (
            "NETBOX_RELAY_REGISTRY__OBJECT_TYPES",
            format!("[{}]", TYPES.join(",")),
        ),
        ("NETBOX_RELAY_LOG__LEVEL", "warn".to_string()),
    ];
    let (b, b_rss, b_summary) = reconcile(&env);
    let (c, c_rss, c_summary) = reconcile(&env);
    drop(fake);

    let rate = |t: Duration| objects as f64 / t.as_secs_f64();
    println!();
    println!("| phase | seconds | objects/s | time ratio to (a) | relay peak RSS MB |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| (a) download only | {:.2} | {:.0} | 1.00 | - |",
        a.as_secs_f64(),
        rate(a)
    );
    println!(
        "| (b) first reconcile, all upserts acked | {:.2} | {:.0} | {:.2} | {b_rss:.0} |",
        b.as_secs_f64(),
        rate(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "| (c) second reconcile, nothing changed | {:.2} | {:.0} | {:.2} | {c_rss:.0} |",
        c.as_secs_f64(),
        rate(c),
        c.as_secs_f64() / a.as_secs_f64()
    );
    println!();
    println!("(b) summary:\n{b_summary}");
    println!("(c) summary:\n{c_summary}");
}

/// Downloads every page of every type with the relay's client and segmenting; answers the count.
async fn download(url: &str, concurrency: usize) -> u64 {
    let config = NetboxConfig {
        url: Some(url.to_string()),
        token: Some(TOKEN.to_string().into()),
        concurrency,
        ..NetboxConfig::default()
    };
    let client = Arc::new(NetboxClient::new(&config).unwrap());
    let version = client.version().await.unwrap();
    let mut count = 0;
    for name in TYPES {
        let options = PullOptions {
            version,
            page_size: 1000,
            concurrency,
            listing: false,
        };
        let mut rx = pages(
            client.clone(),
            ObjectType::from_name(name).unwrap(),
            options,
        );
        while let Some(page) = rx.recv().await {
            count += page.unwrap().len() as u64;
        }
    }
    count
}

/// Runs `netbox-relay reconcile` once; answers wall time, peak RSS (MB) and its summary.
fn reconcile(env: &[(&str, String)]) -> (Duration, f64, String) {
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("reconcile")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("/usr/bin/time (Debian package time) and the relay binary");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "reconcile failed:\n{stderr}");
    let rss_kb: f64 = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    let summary = stderr
        .lines()
        .filter(|l| !l.starts_with('\t') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    (elapsed, rss_kb / 1024.0, summary)
}

struct Process(Child);

impl Process {
    fn spawn(command: &mut Command, port: u16) -> Process {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a benchmark process");
        wait_for_port(port);
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// The fake NetBox: `per_type` devices and IP addresses with ids 1..=per_type, shaped like the
/// recorded ones and made on the fly (so that a million objects cost no memory), cursor pages.
fn fake_netbox(port: u16, per_type: u64) {
    let recorded = |file: &str| -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/netbox-api")
            .join(file);
        let page: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let body: Value = serde_json::from_str(page["body"].as_str().unwrap()).unwrap();
        body["results"][0].clone()
    };
    let device = Arc::new(recorded("dcim_devices.json"));
    let ip = Arc::new(recorded("ipam_ip-addresses.json"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use axum::extract::{Path, Query};
        use std::collections::HashMap;
        let list = move |Path((app, endpoint)): Path<(String, String)>,
                         Query(q): Query<HashMap<String, String>>| {
            let (device, ip) = (device.clone(), ip.clone());
            async move {
                let limit: u64 = q
                    .get("limit")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(50)
                    .min(1000);
                let below: u64 = q
                    .get("id__lt")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX)
                    .min(per_type + 1);
                let ids: Vec<u64> = if q.get("ordering").map(String::as_str) == Some("-id") {
                    (1..below).rev().take(limit as usize).collect()
                } else {
                    let from = q
                        .get("start")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0u64)
                        .max(1);
                    (from..below).take(limit as usize).collect()
                };
                let results: Vec<Value> = match (app.as_str(), endpoint.as_str()) {
                    ("dcim", "devices") => ids.iter().map(|id| make_device(&device, *id)).collect(),
                    ("ipam", "ip-addresses") => ids.iter().map(|id| make_ip(&ip, *id)).collect(),
                    _ => Vec::new(),
                };
                axum::Json(
                    json!({"count": null, "next": null, "previous": null, "results": results}),
                )
            }
        };
        let app = axum::Router::new()
            .route(
                "/api/status/",
                axum::routing::get(|| async { axum::Json(json!({"netbox-version": "4.6.8"})) }),
            )
            .route("/api/{app}/{endpoint}/", axum::routing::get(list));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

fn make_device(template: &Value, id: u64) -> Value {
    let mut d = template.clone();
    d["id"] = json!(id);
    d["name"] = json!(format!("bench-{id:07}"));
    d["url"] = json!(format!("http://127.0.0.1:8000/api/dcim/devices/{id}/"));
    d["serial"] = json!(format!("B{id}"));
    d
}

fn make_ip(template: &Value, id: u64) -> Value {
    let mut ip = template.clone();
    let address = format!(
        "10.{}.{}.{}/16",
        (id >> 16) & 255,
        (id >> 8) & 255,
        id & 255
    );
    ip["id"] = json!(id);
    ip["address"] = json!(address);
    ip["display"] = json!(address);
    ip["url"] = json!(format!("http://127.0.0.1:8000/api/ipam/ip-addresses/{id}/"));
    ip
}
