//! Ingest benchmark, one run, several targets driven by the same load generator:
//!   (a) baseline: a trivial axum server that reads the body and answers 202;
//!   (f) floor of the relay's job: a minimal axum handler that verifies the signature, parses the
//!       body and publishes one JetStream message with the ack awaited, nothing else;
//!   (f+) the floor publishing as the contract asks of the relay (the object's own subject on a
//!       stream of one message per subject, `Nats-Msg-Id`, the expected last subject sequence),
//!       to tell the NATS server's share of the relay's cost from the relay's own;
//!   (b) the relay with a real local `nats-server -js`, every delta acked by JetStream;
//!   (b0) optionally, another relay binary (`--before PATH`, e.g. an older commit) beside (b);
//!   (b2) two relays on the same NATS, each with half the connections (several replicas);
//!   (c) the relay with NATS stopped: every delta fsynced into the spool.
//! (f), (f+), (b) and (b0) run in turns for `--rounds` rounds so that drift of the machine hits each
//! alike. Reports requests/s, latency p50/p99/p999, errors, the server's CPU time, the ratios to
//! (a) and to (f), and checks that every accepted delta reached the stream.
//!
//!
//! With `--sd-devices N` it measures instead what service discovery costs the webhooks: one relay
//! holding N devices (each with a primary IP: an SD target), webhooks at an open-loop `--rate`
//! on 4 connections with SD idle, then with 16 clients asking `/sd/prometheus` in a loop, then
//! idle again; latency ratios busy/idle. Then 80 clients that ask and never read: the relay's
//! memory while they hang and after `server.request_timeout`, against the answer's size.
//!
//! `cargo bench --bench ingest -- [--seconds 10] [--concurrency 32] [--rate 1000] [--rounds 1]
//!  [--before PATH] [--sd-devices 20000]`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbox_relay::webhook::signature::sign;

mod common;
use common::{cpu_seconds, free_port, wait_for_port};
use serde_json::{json, Value};

/// The relay's allocator, so that baseline and relay are measured alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret";
const BASELINE_ENV: &str = "NETBOX_RELAY_BENCH_BASELINE_PORT";
const FLOOR_ENV: &str = "NETBOX_RELAY_BENCH_FLOOR";
const FLOOR_STREAM: &str = "BENCH_FLOOR";
const KEYED_STREAM: &str = "BENCH_FLOOR_KEYED";
const ID: &str = "987654321";
const REVISION: &str = "2099-01-01T00:00:00.000000Z";

fn main() {
    if let Ok(port) = std::env::var(BASELINE_ENV) {
        return baseline_server(port.parse().expect("baseline port"));
    }
    if let Ok(target) = std::env::var(FLOOR_ENV) {
        let mut parts = target.split(' ');
        let (port, nats) = (parts.next().unwrap(), parts.next().expect("NATS url"));
        let keyed = parts.next() == Some("keyed");
        return floor_server(port.parse().expect("floor port"), nats.to_string(), keyed);
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.sd_devices {
        0 => rt.block_on(run(args)),
        _ => rt.block_on(sd_busy(args)),
    }
}

struct Args {
    seconds: u64,
    concurrency: usize,
    rate: u64,
    rounds: usize,
    before: Option<PathBuf>,
    sd_devices: u64,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            seconds: 10,
            concurrency: 32,
            rate: 1000,
            rounds: 1,
            before: None,
            sd_devices: 0,
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
                "--rounds" => args.rounds = value().max(1) as usize,
                "--before" => args.before = it.next().map(PathBuf::from),
                "--sd-devices" => args.sd_devices = value(),
                _ => {} // cargo bench passes --bench
            }
        }
        args
    }
}

async fn run(args: Args) {
    let gen = Arc::new(Generator::new());
    println!(
        "ingest benchmark: {}s per target, {} connections, {}",
        args.seconds,
        args.concurrency,
        machine()
    );

    let baseline = Server::baseline();
    let duration = Duration::from_secs(args.seconds);
    let a = load(&baseline.url, &gen, args.concurrency, duration, None)
        .await
        .with_server(&baseline);
    drop(baseline);

    let work = tempfile::tempdir().unwrap();
    let mut nats = Nats::launch(work.path().join("nats"));
    let floor = Server::floor(&nats, "plain");
    let keyed = Server::floor(&nats, "keyed");
    let relay = Server::relay(
        env!("CARGO_BIN_EXE_netbox-relay").as_ref(),
        &nats,
        &work,
        "relay",
    );
    let before = args
        .before
        .as_ref()
        .map(|bin| Server::relay(bin, &nats, &work, "before"));
    let second = Server::relay(
        env!("CARGO_BIN_EXE_netbox-relay").as_ref(),
        &nats,
        &work,
        "second",
    );
    wait_ready(&relay.url).await;
    wait_ready(&second.url).await;
    if let Some(before) = &before {
        wait_ready(&before.url).await;
    }
    let (mut f, mut fk, mut b, mut b0) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        f.push(measure(&floor, &nats, &gen, &args, None).await);
        fk.push(measure(&keyed, &nats, &gen, &args, None).await);
        b.push(measure(&relay, &nats, &gen, &args, None).await);
        if let Some(before) = &before {
            b0.push(measure(before, &nats, &gen, &args, None).await);
        }
        let ratio = |x: &Vec<Outcome>| x.last().map_or(0.0, Outcome::rps) / f[round - 1].rps();
        println!(
            "round {round}: b/f = {:.3}{}",
            ratio(&b),
            if before.is_some() {
                format!(", b0/f = {:.3}", ratio(&b0))
            } else {
                String::new()
            }
        );
    }
    let b2 = measure_pair([&relay, &second], &nats, &gen, &args).await;
    let b_rate = measure(&relay, &nats, &gen, &args, Some(args.rate)).await;
    nats.stop();
    let c = measure(&relay, &nats, &gen, &args, None).await;
    let per_round =
        |x: &[Outcome]| -> Vec<f64> { x.iter().zip(&f).map(|(x, f)| x.rps() / f.rps()).collect() };
    let (b_per_round, b0_per_round) = (per_round(&b), per_round(&b0));
    let fk_per_round = per_round(&fk);
    let (f, fk) = (Outcome::merge(f), Outcome::merge(fk));
    let (b, b0) = (Outcome::merge(b), Outcome::merge(b0));
    let accepted = b.ok + b0.ok + b2.ok + b_rate.ok + c.ok;
    nats.restart();
    let stored = wait_for_stream(&nats.url(), accepted).await;
    let rss = relay.peak_rss_mb();
    drop((relay, before, second, floor, keyed));

    println!();
    println!(
        "| target | req/s | p50 ms | p99 ms | p999 ms | errors | server CPU s | server CPU us/req | NATS CPU s | to (a) | to (f) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let row = |name: &str, o: &Outcome| o.row(name, a.rps(), f.rps());
    row("(a) trivial axum, read body, 202", &a);
    row("(f) floor: verify, parse, one acked JetStream publish", &f);
    row("(f+) the floor, publishing as the contract asks", &fk);
    row("(b) relay, JetStream ack", &b);
    if b0.ok > 0 {
        row("(b0) --before relay, JetStream ack", &b0);
    }
    row(
        "(b2) two relays on one NATS, half the connections each",
        &b2,
    );
    row(
        &format!("(b') relay, JetStream ack, open loop {} req/s", args.rate),
        &b_rate,
    );
    row("(c) relay, NATS stopped: spool", &c);
    println!();
    println!(
        "ratio b/a = {:.3}, c/a = {:.3}, b/f = {:.3} (per round {}){}",
        b.rps() / a.rps(),
        c.rps() / a.rps(),
        b.rps() / f.rps(),
        listed(&b_per_round),
        if b0.ok > 0 {
            format!(
                ", b0/f = {:.3} (per round {}), b/b0 = {:.3}",
                b0.rps() / f.rps(),
                listed(&b0_per_round),
                b.rps() / b0.rps()
            )
        } else {
            String::new()
        }
    );
    let cpu = |o: &Outcome| o.cpu_per_request();
    println!(
        "CPU per request: b/f = {:.3}{}",
        cpu(&b) / cpu(&f),
        if b0.ok > 0 {
            format!(", b/b0 = {:.3}", cpu(&b) / cpu(&b0))
        } else {
            String::new()
        }
    );
    let nats_us = |o: &Outcome| o.nats_cpu_seconds * 1e6 / o.ok.max(1) as f64;
    println!(
        "the contract's publishing: f+/f = {:.3} (per round {}), b/f+ = {:.3}; NATS CPU per \
         message: f {:.1} us, f+ {:.1} us, b {:.1} us",
        fk.rps() / f.rps(),
        listed(&fk_per_round),
        b.rps() / fk.rps(),
        nats_us(&f),
        nats_us(&fk),
        nats_us(&b)
    );
    println!(
        "two relays: b2/b = {:.3} (both relays' CPU per request to one relay's: {:.3})",
        b2.rps() / b.rps(),
        cpu(&b2) / cpu(&b)
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

/// Webhook latency with service discovery idle and busy, and the memory of stalled SD clients.
async fn sd_busy(args: Args) {
    println!(
        "webhooks while service discovery is busy: {} devices, {}s per phase, {} req/s, {}",
        args.sd_devices,
        args.seconds,
        args.rate,
        machine()
    );
    let work = tempfile::tempdir().unwrap();
    let _nats = Nats::launch(work.path().join("nats"));
    let relay = Server::relay(
        env!("CARGO_BIN_EXE_netbox-relay").as_ref(),
        &_nats,
        &work,
        "relay",
    );
    wait_ready(&relay.url).await;
    fill_devices(&relay.url, args.sd_devices).await;
    let answer = wait_for_targets(&relay.url, args.sd_devices).await;
    println!(
        "registry: {} SD targets, answer {:.1} MB",
        args.sd_devices,
        answer as f64 / 1e6
    );

    let gen = Arc::new(Generator::new());
    let duration = Duration::from_secs(args.seconds);
    let phase = || load(&relay.url, &gen, 4, duration, Some(args.rate));
    let idle = phase().await;
    let (paced, paced_answers) =
        with_askers(&relay.url, Some(Duration::from_secs(1)), phase()).await;
    let (busy, answers) = with_askers(&relay.url, None, phase()).await;
    let idle_again = phase().await;

    println!();
    println!("| phase | req/s | p50 ms | p99 ms | p999 ms | max ms | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, o) in [
        ("SD idle", &idle),
        ("16 SD clients, one answer a second each", &paced),
        ("16 SD clients looping", &busy),
        ("SD idle again", &idle_again),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            o.rps(),
            o.percentile(0.50),
            o.percentile(0.99),
            o.percentile(0.999),
            o.percentile(1.0),
            o.errors
        );
    }
    let base = |p| idle.percentile(p).max(idle_again.percentile(p));
    println!(
        "SD answers while paced: {paced_answers} ({:.1}/s); paced/idle p50 = {:.2}, p99 = {:.2}, p999 = {:.2}",
        paced_answers as f64 / args.seconds as f64,
        paced.percentile(0.50) / base(0.50),
        paced.percentile(0.99) / base(0.99),
        paced.percentile(0.999) / base(0.999)
    );
    println!(
        "SD answers during the busy phase: {answers} ({:.1}/s); busy/idle p50 = {:.2}, p99 = {:.2}, p999 = {:.2}",
        answers as f64 / args.seconds as f64,
        busy.percentile(0.50) / base(0.50),
        busy.percentile(0.99) / base(0.99),
        busy.percentile(0.999) / base(0.999)
    );

    stalled_clients(&relay, answer).await;
}

/// `count` devices, each with a primary IPv4 of its own, from the recorded device update.
async fn fill_devices(url: &str, count: u64) {
    let recorded = recorded_body("034_device_updated.json");
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(1));
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    let lanes: Vec<_> = (0..32)
        .map(|_| {
            let (client, next, recorded) = (client.clone(), next.clone(), recorded.clone());
            let url = format!("{url}/webhooks/netbox");
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n > count {
                        return;
                    }
                    let body = numbered_device(&recorded, n, start);
                    let signature = sign(SECRET, &body);
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-hook-signature", signature)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status().as_u16(), 202, "filling the registry");
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await.unwrap();
    }
}

fn recorded_body(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/netbox-webhooks")
        .join(file);
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_str(recorded["body"].as_str().unwrap()).unwrap()
}

/// The recorded device as device `n`: its own id, name, primary IP and revision.
fn numbered_device(recorded: &Value, n: u64, start: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let mut body = recorded.clone();
    let revision = (start + chrono::Duration::microseconds(n as i64))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let data = &mut body["data"];
    data["id"] = json!(n);
    data["url"] = json!(format!("/api/dcim/devices/{n}/"));
    data["name"] = json!(format!("sd-bench-{n}"));
    let address = format!("10.{}.{}.{}/32", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    data["primary_ip4"]["id"] = json!(n);
    data["primary_ip4"]["address"] = json!(address);
    data["primary_ip"] = data["primary_ip4"].clone();
    data["last_updated"] = json!(revision);
    body["timestamp"] = json!(revision);
    serde_json::to_vec(&body).unwrap()
}

/// Asks until the answer lists `count` targets; answers its size.
async fn wait_for_targets(url: &str, count: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = reqwest::get(format!("{url}/sd/prometheus")).await.unwrap();
        if answer.status().as_u16() == 200 {
            let body = answer.bytes().await.unwrap();
            let groups: Vec<Value> = serde_json::from_slice(&body).unwrap();
            if groups.len() as u64 >= count {
                return body.len();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the SD answer never listed {count} targets"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `phase` while 16 clients ask `/sd/prometheus`, each pausing `pause` between answers
/// (none: in a loop); answers the phase's outcome and how many answers were read whole.
async fn with_askers(
    url: &str,
    pause: Option<Duration>,
    phase: impl std::future::Future<Output = Outcome>,
) -> (Outcome, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let askers: Vec<_> = (0..16)
        .map(|_| tokio::spawn(ask_in_a_loop(url.to_string(), pause, stop.clone())))
        .collect();
    let outcome = phase.await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = 0;
    for asker in askers {
        answers += asker.await.unwrap();
    }
    (outcome, answers)
}

/// Asks `/sd/prometheus` and reads every answer until `stop`; answers how many were whole.
async fn ask_in_a_loop(
    url: String,
    pause: Option<Duration>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let client = reqwest::Client::new();
    let mut whole = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let Ok(answer) = client.get(format!("{url}/sd/prometheus")).send().await else {
            continue;
        };
        let ok = answer.status().as_u16() == 200;
        if answer.bytes().await.is_ok() && ok {
            whole += 1;
        }
    }
    whole
}

/// 80 clients ask and never read: the relay's resident memory before, while they hang, and once
/// `server.request_timeout` (30 s) has passed.
async fn stalled_clients(relay: &Server, answer: usize) {
    use tokio::io::AsyncWriteExt;
    let before = relay.rss_mb();
    let port = relay.url.rsplit(':').next().unwrap().to_string();
    let mut stalled = Vec::new();
    for _ in 0..80 {
        let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let request = "GET /sd/prometheus HTTP/1.1\r\nhost: relay\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    let mut hanging: f64 = 0.0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        hanging = hanging.max(relay.rss_mb());
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = relay.rss_mb();
    let healthz = reqwest::get(format!("{}/healthz", relay.url))
        .await
        .unwrap();
    println!(
        "80 SD clients that never read ({:.1} MB answer each, {:.0} MB if all were held): RSS {before:.0} MB before, at most {hanging:.0} MB while they hang (+{:.0} MB), {after:.0} MB after the write timeout; /healthz {}",
        answer as f64 / 1e6,
        answer as f64 * 80.0 / 1e6,
        hanging - before,
        healthz.status().as_u16()
    );
    drop(stalled);
}

fn listed(ratios: &[f64]) -> String {
    let parts: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    parts.join(", ")
}

/// One phase of load against `server`, with the CPU time the server and NATS spent during it.
async fn measure(
    server: &Server,
    nats: &Nats,
    gen: &Arc<Generator>,
    args: &Args,
    rate: Option<u64>,
) -> Outcome {
    let (before, nats_before) = (server.cpu_seconds(), nats.cpu_seconds());
    let duration = Duration::from_secs(args.seconds);
    let mut outcome = load(&server.url, gen, args.concurrency, duration, rate)
        .await
        .with_cpu(server, before);
    outcome.nats_cpu_seconds = nats.cpu_seconds() - nats_before;
    outcome
}

/// One phase of load split between two relays on the same NATS, half the connections each.
async fn measure_pair(
    servers: [&Server; 2],
    nats: &Nats,
    gen: &Arc<Generator>,
    args: &Args,
) -> Outcome {
    let before: Vec<f64> = servers.iter().map(|s| s.cpu_seconds()).collect();
    let nats_before = nats.cpu_seconds();
    let duration = Duration::from_secs(args.seconds);
    let half = (args.concurrency / 2).max(1);
    let (one, two) = tokio::join!(
        load(&servers[0].url, gen, half, duration, None),
        load(&servers[1].url, gen, half, duration, None),
    );
    let mut outcome = Outcome {
        ok: one.ok + two.ok,
        errors: one.errors + two.errors,
        elapsed: one.elapsed.max(two.elapsed),
        ..Outcome::default()
    };
    outcome.latencies_us = [one.latencies_us, two.latencies_us].concat();
    outcome.latencies_us.sort_unstable();
    outcome.cpu_seconds = servers
        .iter()
        .zip(before)
        .map(|(s, b)| s.cpu_seconds() - b)
        .sum();
    outcome.nats_cpu_seconds = nats.cpu_seconds() - nats_before;
    outcome
}

/// Realistic webhooks: recorded device, IP address, VM and prefix bodies with a fresh id and
/// revision each, signed as NetBox signs them.
struct Generator {
    templates: Vec<String>,
    next: AtomicU64,
    start_micros: i64,
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
        // Revisions from an hour ago on, 1 µs apart: in the past, as NetBox's are, so that none
        // is clamped to the relay's clock.
        let start = chrono::Utc::now() - chrono::Duration::hours(1);
        Generator {
            templates,
            next: AtomicU64::new(1),
            start_micros: start.timestamp_micros(),
        }
    }

    /// The next body and its signature.
    fn next(&self) -> (Vec<u8>, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = 1_000_000 + n;
        let revision =
            chrono::DateTime::from_timestamp_micros(self.start_micros + n as i64).unwrap();
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
    // NetBox queues the event when the change is saved: its timestamp is the revision's.
    body["timestamp"] = json!(REVISION);
    serde_json::to_string(&body).unwrap()
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
    cpu_seconds: f64,
    nats_cpu_seconds: f64,
    rss_mb: f64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The server's CPU seconds per answered request: steadier than req/s on a shared machine.
    fn cpu_per_request(&self) -> f64 {
        self.cpu_seconds / (self.ok + self.errors).max(1) as f64
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

    /// Several phases as one: their requests, time and CPU added up.
    fn merge(parts: Vec<Outcome>) -> Outcome {
        let mut total = Outcome::default();
        for part in parts {
            total.ok += part.ok;
            total.errors += part.errors;
            total.latencies_us.extend(part.latencies_us);
            total.elapsed += part.elapsed;
            total.cpu_seconds += part.cpu_seconds;
            total.nats_cpu_seconds += part.nats_cpu_seconds;
        }
        total.latencies_us.sort_unstable();
        total
    }

    fn row(&self, name: &str, baseline_rps: f64, floor_rps: f64) {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} |",
            self.rps(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(0.999),
            self.errors,
            self.cpu_seconds,
            self.cpu_per_request() * 1e6,
            self.nats_cpu_seconds,
            self.rps() / baseline_rps,
            self.rps() / floor_rps
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

    fn floor(nats: &Nats, mode: &str) -> Server {
        let port = free_port();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(FLOOR_ENV, format!("{port} {} {mode}", nats.url()))
            .spawn()
            .unwrap();
        Server::wait(child, port)
    }

    fn relay(
        binary: &std::path::Path,
        nats: &Nats,
        work: &tempfile::TempDir,
        name: &str,
    ) -> Server {
        let port = free_port();
        let state = work.path().join(format!("{name}.redb"));
        let child = Command::new(binary)
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

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS:") / 1024.0
    }

    fn peak_rss_mb(&self) -> f64 {
        self.status_kb("VmHWM:") / 1024.0
    }

    fn status_kb(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        kb.unwrap_or_default()
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

    /// CPU time of the running server so far; 0 while it is stopped.
    fn cpu_seconds(&self) -> f64 {
        self.child.as_ref().map_or(0.0, |c| cpu_seconds(c.id()))
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

/// The floor of the relay's job: verify the signature, parse the body, publish one JetStream
/// message and await its ack. No translation, no de-duplication, no state, no metrics.
///
/// `keyed` (f+) publishes as the contract asks of the relay, so that what the NATS server spends on
/// it is told apart from what the relay spends: to the object's own subject on a stream that keeps
/// one message per subject (rollups and message TTLs allowed, as the relay's), with a `Nats-Msg-Id`
/// and the subject's expected last sequence (kept in a map; no per-key order, no state file).
fn floor_server(port: u16, nats: String, keyed: bool) {
    use axum::http::{HeaderMap, StatusCode};
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::Mutex;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = match keyed {
            false => async_nats::jetstream::stream::Config {
                name: FLOOR_STREAM.to_string(),
                subjects: vec!["bench.floor".to_string()],
                ..Default::default()
            },
            true => async_nats::jetstream::stream::Config {
                name: KEYED_STREAM.to_string(),
                subjects: vec!["bench.keyed.>".to_string()],
                max_messages_per_subject: 1,
                allow_rollup: true,
                allow_message_ttl: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            },
        };
        js.get_or_create_stream(stream).await.unwrap();
        let verifier = Arc::new(netbox_relay::webhook::signature::Verifier::new(
            vec![SECRET.to_string().into()],
            true,
        ));
        let last_seqs = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
        let handler = move |headers: HeaderMap, body: bytes::Bytes| {
            let (js, verifier, last_seqs) = (js.clone(), verifier.clone(), last_seqs.clone());
            async move {
                let signature = headers.get("x-hook-signature").map(|v| v.as_bytes());
                let Ok(verified) = verifier.verify(signature, body.clone()) else {
                    return StatusCode::UNAUTHORIZED;
                };
                let Ok(parsed) = serde_json::from_slice::<Value>(verified.as_bytes()) else {
                    return StatusCode::BAD_REQUEST;
                };
                if !keyed {
                    let Ok(ack) = js.publish("bench.floor", body).await else {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    };
                    return match ack.await {
                        Ok(_) => StatusCode::ACCEPTED,
                        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                    };
                }
                let (object_type, data) = (&parsed["object_type"], &parsed["data"]);
                let kind = object_type.as_str().unwrap_or("none").replace('.', "_");
                let subject = format!("bench.keyed.default.{kind}.{}", data["id"]);
                let expected = last_seqs
                    .lock()
                    .unwrap()
                    .get(&subject)
                    .copied()
                    .unwrap_or(0);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Content-Type", "application/json");
                // 32 hex characters, as the relay's delta ids.
                let change = format!("{subject}@{}", data["last_updated"]);
                let msg_id = hex::encode(&Sha256::digest(change.as_bytes())[..16]);
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    expected.to_string().as_str(),
                );
                let Ok(ack) = js
                    .publish_with_headers(subject.clone(), headers, body)
                    .await
                else {
                    return StatusCode::SERVICE_UNAVAILABLE;
                };
                match ack.await {
                    Ok(ack) => {
                        last_seqs.lock().unwrap().insert(subject, ack.sequence);
                        StatusCode::ACCEPTED
                    }
                    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        };
        let app = axum::Router::new().route("/webhooks/netbox", axum::routing::post(handler));
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
