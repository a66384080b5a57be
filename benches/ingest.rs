//! Ingest benchmark, one run, three targets driven by the same load generator:
//!   (a) baseline: a trivial axum server that reads the body and answers 202;
//!   (b) the relay with a real local `nats-server -js`, every delta acked by JetStream;
//!   (c) the relay with NATS stopped: every delta fsynced into the spool.
//! Reports requests/s, latency p50/p99/p999, errors, the server's CPU time and peak RSS, the
//! ratios b/a and c/a, and checks that every accepted delta reached the stream.
//!
//! `cargo bench --bench ingest -- [--seconds 10] [--concurrency 32] [--rate 1000]`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbox_relay::webhook::signature::sign;

mod common;
use common::{free_port, wait_for_port};
use serde_json::{json, Value};

/// The relay's allocator, so that baseline and relay are measured alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret";
const BASELINE_ENV: &str = "NETBOX_RELAY_BENCH_BASELINE_PORT";
const ID: &str = "987654321";
const REVISION: &str = "2099-01-01T00:00:00.000000Z";

fn main() {
    if let Ok(port) = std::env::var(BASELINE_ENV) {
        return baseline_server(port.parse().expect("baseline port"));
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

struct Args {
    seconds: u64,
    concurrency: usize,
    rate: u64,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            seconds: 10,
            concurrency: 32,
            rate: 1000,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .expect("a number after the flag")
            };
            match flag.as_str() {
                "--seconds" => args.seconds = value(),
                "--concurrency" => args.concurrency = value() as usize,
                "--rate" => args.rate = value(),
                _ => {} // cargo bench passes --bench
            }
        }
        args
    }
}

async fn run(args: Args) {
    let gen = Arc::new(Generator::new());
    let duration = Duration::from_secs(args.seconds);
    println!(
        "ingest benchmark: {}s per target, {} connections, {}",
        args.seconds,
        args.concurrency,
        machine()
    );

    let baseline = Server::baseline();
    let a = load(&baseline.url, &gen, args.concurrency, duration, None)
        .await
        .with_server(&baseline);
    drop(baseline);

    let work = tempfile::tempdir().unwrap();
    let mut nats = Nats::launch(work.path().join("nats"));
    let relay = Server::relay(&nats, work.path().join("relay.redb"));
    wait_ready(&relay.url).await;
    let before = relay.cpu_seconds();
    let b = load(&relay.url, &gen, args.concurrency, duration, None)
        .await
        .with_cpu(&relay, before);
    let before = relay.cpu_seconds();
    let b_rate = load(
        &relay.url,
        &gen,
        args.concurrency,
        duration,
        Some(args.rate),
    )
    .await
    .with_cpu(&relay, before);
    nats.stop();
    let before = relay.cpu_seconds();
    let c = load(&relay.url, &gen, args.concurrency, duration, None)
        .await
        .with_cpu(&relay, before);
    let accepted = b.ok + b_rate.ok + c.ok;
    nats.restart();
    let stored = wait_for_stream(&nats.url(), accepted).await;
    let rss = relay.peak_rss_mb();
    drop(relay);

    println!();
    println!(
        "| target | req/s | p50 ms | p99 ms | p999 ms | errors | server CPU s | ratio to (a) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    a.row("(a) trivial axum, read body, 202", a.rps());
    b.row("(b) relay, JetStream ack", a.rps());
    b_rate.row(
        &format!("(b') relay, JetStream ack, open loop {} req/s", args.rate),
        a.rps(),
    );
    c.row("(c) relay, NATS stopped: spool", a.rps());
    println!();
    println!(
        "ratio b/a = {:.3}, c/a = {:.3}",
        b.rps() / a.rps(),
        c.rps() / a.rps()
    );
    println!(
        "relay peak RSS {rss:.1} MB; baseline peak RSS {:.1} MB",
        a.rss_mb
    );
    println!(
        "accepted deltas {accepted}, on the stream after draining {stored}, missing {}",
        accepted.saturating_sub(stored)
    );
    assert_eq!(
        stored, accepted,
        "every accepted delta must reach the stream"
    );
}

/// Realistic webhooks: recorded device, IP address, VM and prefix bodies with a fresh id and
/// revision each, signed as NetBox signs them.
struct Generator {
    templates: Vec<String>,
    next: AtomicU64,
}

impl Generator {
    fn new() -> Generator {
        let files = [
            "020_device_created.json",
            "029_ipaddress_created.json",
            "039_virtualmachine_created.json",
            "017_prefix_created.json",
        ];
        let templates = files.iter().map(|f| template(f)).collect();
        Generator {
            templates,
            next: AtomicU64::new(1),
        }
    }

    /// The next body and its signature.
    fn next(&self) -> (Vec<u8>, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = 1_000_000 + n;
        let revision =
            chrono::DateTime::from_timestamp_micros(1_800_000_000_000_000 + n as i64).unwrap();
        let body = self.templates[(n % 4) as usize]
            .replace(ID, &id.to_string())
            .replace(
                REVISION,
                &revision.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            )
            .into_bytes();
        let signature = sign(SECRET, &body);
        (body, signature)
    }
}

fn template(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/netbox-webhooks")
        .join(file);
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut body: Value = serde_json::from_str(recorded["body"].as_str().unwrap()).unwrap();
    let data = &mut body["data"];
    let url = data["url"].as_str().unwrap().to_string();
    let old_id = data["id"].to_string();
    data["url"] = json!(url.replace(&format!("/{old_id}/"), &format!("/{ID}/")));
    data["id"] = json!(ID.parse::<u64>().unwrap());
    data["last_updated"] = json!(REVISION);
    serde_json::to_string(&body).unwrap()
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
    cpu_seconds: f64,
    rss_mb: f64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 * p) as usize)
            .min(self.latencies_us.len().saturating_sub(1));
        self.latencies_us.get(i).copied().unwrap_or_default() as f64 / 1000.0
    }

    fn with_server(mut self, server: &Server) -> Outcome {
        self.cpu_seconds = server.cpu_seconds();
        self.rss_mb = server.peak_rss_mb();
        self
    }

    fn with_cpu(mut self, server: &Server, before: f64) -> Outcome {
        self.cpu_seconds = server.cpu_seconds() - before;
        self
    }

    fn row(&self, name: &str, baseline_rps: f64) {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.3} |",
            self.rps(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(0.999),
            self.errors,
            self.cpu_seconds,
            self.rps() / baseline_rps
        );
    }
}

/// `concurrency` keep-alive connections for `duration`; closed loop, or open loop at `rate`.
async fn load(
    url: &str,
    gen: &Arc<Generator>,
    concurrency: usize,
    duration: Duration,
    rate: Option<u64>,
) -> Outcome {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for lane in 0..concurrency {
        let (client, url, gen) = (
            client.clone(),
            format!("{url}/webhooks/netbox"),
            gen.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            for k in 0u64.. {
                if let Some(rate) = rate {
                    let due = start
                        + Duration::from_secs_f64(
                            (k * concurrency as u64 + lane as u64) as f64 / rate as f64,
                        );
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() >= deadline {
                    break;
                }
                let (body, signature) = gen.next();
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hook-signature", signature)
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().as_u16() == 202 => {
                        r.bytes().await.ok();
                        out.ok += 1;
                        out.latencies_us.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => out.errors += 1,
                }
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        let out = task.await.unwrap();
        total.ok += out.ok;
        total.errors += out.errors;
        total.latencies_us.extend(out.latencies_us);
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}

/// A server process under test; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn baseline() -> Server {
        let port = free_port();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(BASELINE_ENV, port.to_string())
            .spawn()
            .unwrap();
        Server::wait(child, port)
    }

    fn relay(nats: &Nats, state: PathBuf) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
            .arg("serve")
            .env("NETBOX_RELAY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("NETBOX_RELAY_NATS__URL", nats.url())
            .env("NETBOX_RELAY_WEBHOOK__SECRETS", SECRET)
            .env("NETBOX_RELAY_STATE__PATH", state)
            .env("NETBOX_RELAY_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server::wait(child, port)
    }

    fn wait(child: Child, port: u16) -> Server {
        wait_for_port(port);
        Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// User + system CPU time of the process so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
            .sum();
        ticks / 100.0
    }

    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        kb.unwrap_or_default() / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

struct Nats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn launch(store: PathBuf) -> Nats {
        let mut nats = Nats {
            child: None,
            port: free_port(),
            store,
        };
        nats.restart();
        nats
    }

    fn restart(&mut self) {
        let binary = common::nats_binary();
        let child = Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (run deploy/local/ensure-nats.sh or set NATS_SERVER)");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "the relay did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stream holds `expected` messages (or stops growing); answers the count.
async fn wait_for_stream(url: &str, expected: u64) -> u64 {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let (mut last, mut still) = (0, Instant::now());
    loop {
        let count = match js.get_stream("NETBOX_REGISTRY").await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if count >= expected || still.elapsed() > Duration::from_secs(30) {
            return count;
        }
        if count != last {
            (last, still) = (count, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The trivial baseline: read the body, answer 202.
fn baseline_server(port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = axum::Router::new().route(
            "/webhooks/netbox",
            axum::routing::post(|body: bytes::Bytes| async move {
                std::hint::black_box(body);
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(json!({"status": "accepted", "deltas": 1})),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}
