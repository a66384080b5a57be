//! Reconcile benchmark, one run: a fake NetBox API (its own process) serves N/2 generated devices
//! and N/2 IP addresses, honouring `fields=` and repeated `id=` as NetBox does and counting the
//! objects it serializes in full, and
//!   (a) baseline: only downloading every page in full, with the relay's own client and concurrency;
//!   (a') baseline of the cheap pass: only listing ids and `last_updated` (`fields=`);
//!   (b) a first `netbox-relay reconcile` (a full pass; every object upserted and acked);
//!   (c) `reconcile --full` with nothing changed;
//!   (d) `reconcile` (the cheap pass) with nothing changed;
//!   (g) the cheap pass after one site of 10,000 devices was renamed (no webhook), right after
//!       (d): the devices show the new slug unstamped, and the run's cascade must fetch and
//!       publish exactly them;
//!   (e) the cheap pass after 1 % of the objects changed;
//!   (f) a relay with a new state file on the same stream (it learns the registry, then a full
//!       pass that finds nothing to publish);
//!   (h) `netbox-relay audit`: every key's last message read from the stream, NetBox read in
//!       full, compared (it must find them equal).
//! The devices are in sites of 10,000 (`dcim.site` enabled too); each IP address is assigned to
//! the device of its id.
//! Reports seconds, objects/s, the ratio to its baseline, CPU seconds (the relay's, or the
//! downloading client's) and their ratio, objects NetBox serialized in full and the relay's peak
//! RSS. The wall-time ratio moves with the fake NetBox's speed, which shares the cores; the CPU
//! ratio is the relay's own share.
//!
//! `cargo bench --bench reconcile -- [--objects 100000] [--concurrency 4] [--before <relay binary>]`
//! (`--before`: (f) and (c) again with another build, on a state file of its own)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbox_relay::config::NetboxConfig;
use netbox_relay::netbox::client::NetboxClient;
use netbox_relay::netbox::{ObjectType, Reads};
use netbox_relay::translate::fields_read;

mod common;
use common::{cpu_seconds, free_port, nats_binary, wait_for_port};
use serde_json::{json, Value};

/// The relay's allocator, so that baseline and relay are measured alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FAKE_ENV: &str = "NETBOX_RELAY_BENCH_FAKE";
const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
const TYPES: [&str; 2] = ["dcim.device", "ipam.ipaddress"];

fn main() {
    let args = args();
    if let Ok(spec) = std::env::var(FAKE_ENV) {
        let (port, per_type) = spec.split_once(':').expect("port:count");
        return fake_netbox(port.parse().unwrap(), per_type.parse().unwrap());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

struct Args {
    objects: u64,
    concurrency: usize,
    /// Another build of the relay, whose first run with a new state file is measured too.
    before: Option<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        objects: 100_000,
        concurrency: 4,
        before: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--objects" => args.objects = value().parse().expect("--objects N"),
            "--concurrency" => args.concurrency = value().parse().expect("--concurrency N"),
            "--before" => args.before = Some(PathBuf::from(value())),
            _ => {}
        }
    }
    args
}

async fn run(args: Args) {
    let (objects, concurrency) = (args.objects, args.concurrency);
    let per_type = objects / 2;
    let port = free_port();
    let fake = Process::spawn(
        Command::new(std::env::current_exe().unwrap()).env(FAKE_ENV, format!("{port}:{per_type}")),
        port,
    );
    let url = format!("http://127.0.0.1:{port}");
    println!("reconcile benchmark: {objects} objects ({per_type} devices, {per_type} IP addresses), pages of 1000, concurrency {concurrency}");
    let fake_api = FakeApi(url.clone());

    let a = timed(download(&url, concurrency, false, objects)).await;
    let a_listed = timed(download(&url, concurrency, true, objects)).await;
    let a_full = fake_api.served_in_full().await;

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
    let env = |state: &str| {
        vec![
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
                work.path().join(state).display().to_string(),
            ),
            (
                "NETBOX_RELAY_REGISTRY__OBJECT_TYPES",
                format!("[{},dcim.site]", TYPES.join(",")),
            ),
            ("NETBOX_RELAY_LOG__LEVEL", "info".to_string()),
        ]
    };
    let mut rows = vec![
        Row::baseline("(a) download only, in full", a, objects, a_full),
        Row::baseline(
            "(a') listing only (ids, last_updated)",
            a_listed,
            objects,
            0,
        ),
    ];
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_netbox-relay"));
    let phase = |name, state, args, touch_every, binary| Phase {
        name,
        state,
        args,
        touch_every,
        rename_site: false,
        binary,
    };
    let mut phases = vec![
        phase(
            "(b) first reconcile: full pass, all upserts acked",
            "state.redb",
            &[],
            None,
            &relay,
        ),
        phase(
            "(c) full pass, nothing changed",
            "state.redb",
            &["--full"],
            None,
            &relay,
        ),
        phase(
            "(d) cheap pass, nothing changed",
            "state.redb",
            &[],
            None,
            &relay,
        ),
        Phase {
            rename_site: true,
            ..phase(
                "(g) cheap pass after a site of 10,000 devices was renamed",
                "state.redb",
                &[],
                None,
                &relay,
            )
        },
        phase(
            "(e) cheap pass, 1 % changed",
            "state.redb",
            &[],
            Some(100),
            &relay,
        ),
        phase(
            "(f) new state file: registry learned, then a full pass",
            "fresh.redb",
            &[],
            None,
            &relay,
        ),
    ];
    if let Some(before) = &args.before {
        let name = "(f) with --before: new state file, a full pass";
        phases.push(phase(name, "fresh-before.redb", &[], None, before));
        let name = "(c) with --before: full pass, nothing changed";
        phases.push(phase(name, "fresh-before.redb", &["--full"], None, before));
    }
    let mut summaries = Vec::new();
    for Phase {
        name,
        state,
        args,
        touch_every,
        rename_site,
        binary,
    } in phases
    {
        if let Some(every) = touch_every {
            fake_api.touch(every).await;
        }
        if rename_site {
            fake_api.rename_site(1).await;
        }
        let before = fake_api.served_in_full().await;
        let run = reconcile(binary, &env(state), args);
        let full = fake_api.served_in_full().await - before;
        let (cpu, seconds) = if name.contains("cheap") { a_listed } else { a };
        rows.push(Row {
            name,
            seconds: run.elapsed,
            objects,
            ratio: run.elapsed.as_secs_f64() / seconds.as_secs_f64(),
            cpu: run.cpu,
            cpu_ratio: run.cpu / cpu,
            in_full: full,
            rss_mb: Some(run.rss_mb),
        });
        summaries.push((name, run.summary));
    }
    // The registry after (f) is NetBox: the audit must find it equal (exit 0).
    let before = fake_api.served_in_full().await;
    let run = relay_command(&relay, "audit", &env("unused.redb"), &[]);
    rows.push(Row {
        name: "(h) audit: every key read from the stream, NetBox in full, compared",
        seconds: run.elapsed,
        objects,
        ratio: run.elapsed.as_secs_f64() / a.1.as_secs_f64(),
        cpu: run.cpu,
        cpu_ratio: run.cpu / a.0,
        in_full: fake_api.served_in_full().await - before,
        rss_mb: Some(run.rss_mb),
    });
    summaries.push(("(h) audit", run.summary));
    drop(fake);
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let p = timed(publish_only(&nats_url, objects)).await;
    let b = rows.iter().find(|r| r.name.starts_with("(b)")).unwrap();
    let floor = (
        b.seconds.as_secs_f64() / (a.1 + p.1).as_secs_f64(),
        b.cpu / (a.0 + p.0),
    );
    rows.push(Row::baseline(
        "(p) publishing alone: a message of the deltas' mean size per object, each acked",
        p,
        objects,
        0,
    ));

    println!();
    println!("| phase | seconds | objects/s | time / its baseline | CPU s | CPU / its baseline's | objects NetBox serialized in full | relay peak RSS MB |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        row.print();
    }
    println!("\nBaselines: (a) for (b), (c), (f), (h); (a') for (d), (e). CPU: user + system time of the relay, or of the client downloading (the fake NetBox not counted in either).");
    println!(
        "(b) against downloading and publishing alone, (a) + (p): time {:.2}, CPU {:.2}.",
        floor.0, floor.1
    );
    for (name, summary) in summaries {
        println!("\n{name}:\n{summary}");
    }
}

/// What a first run cannot do without: one JetStream publish per object, awaited for its ack, 256
/// in flight as the relay's reconcile has, of the mean size of the deltas the relay published (read
/// from its stream), as the contract asks: each on its own subject of a stream that keeps one
/// message per subject (rollups and message TTLs allowed, as the relay's), with a `Nats-Msg-Id`
/// and the subject's expected last sequence (0: a first run's keys are new). The stream is its
/// own, deleted after.
async fn publish_only(url: &str, objects: u64) {
    use async_nats::jetstream::{self, stream};
    use futures::StreamExt;
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let info = js
        .get_stream("NETBOX_REGISTRY")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    let size = (info.bytes / info.messages.max(1)) as usize;
    let config = stream::Config {
        name: "BENCH_FLOOR".into(),
        subjects: vec!["floor.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        allow_message_ttl: true,
        ..Default::default()
    };
    js.create_stream(config).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut acks = futures::stream::FuturesUnordered::new();
    for id in 0..objects {
        if acks.len() >= 256 {
            acks.next().await.unwrap();
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert("Nats-Msg-Id", format!("floor-{id}").as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let ack = js
            .publish_with_headers(format!("floor.device.{id}"), headers, payload.clone())
            .await
            .unwrap();
        acks.push(async move { ack.await.unwrap() });
    }
    while acks.next().await.is_some() {}
    js.delete_stream("BENCH_FLOOR").await.unwrap();
}

/// One `netbox-relay reconcile` of the run.
struct Phase<'a> {
    name: &'static str,
    state: &'static str,
    args: &'static [&'static str],
    /// Change every N-th object first.
    touch_every: Option<u64>,
    /// Rename site 1 first.
    rename_site: bool,
    binary: &'a PathBuf,
}

struct Row {
    name: &'static str,
    seconds: Duration,
    objects: u64,
    ratio: f64,
    cpu: f64,
    cpu_ratio: f64,
    in_full: u64,
    rss_mb: Option<f64>,
}

impl Row {
    fn baseline(name: &'static str, run: (f64, Duration), objects: u64, in_full: u64) -> Row {
        Row {
            name,
            seconds: run.1,
            objects,
            ratio: 1.0,
            cpu: run.0,
            cpu_ratio: 1.0,
            in_full,
            rss_mb: None,
        }
    }

    fn print(&self) {
        let secs = self.seconds.as_secs_f64();
        let rss = self.rss_mb.map_or("-".to_string(), |r| format!("{r:.0}"));
        println!(
            "| {} | {secs:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {rss} |",
            self.name,
            self.objects as f64 / secs,
            self.ratio,
            self.cpu,
            self.cpu_ratio,
            self.in_full
        );
    }
}

/// Wall time and this process's CPU time (the download runs in it; the fake NetBox does not).
async fn timed(work: impl std::future::Future<Output = ()>) -> (f64, Duration) {
    let (started, cpu) = (Instant::now(), cpu_seconds(std::process::id()));
    work.await;
    (cpu_seconds(std::process::id()) - cpu, started.elapsed())
}

/// The fake NetBox's bench controls.
struct FakeApi(String);

impl FakeApi {
    async fn served_in_full(&self) -> u64 {
        let url = format!("{}/bench/served-in-full", self.0);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    /// Renames site `id`: a new slug and `last_updated`, its devices showing it unstamped.
    async fn rename_site(&self, id: u64) {
        let url = format!("{}/bench/rename-site?id={id}", self.0);
        let answer = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(answer.status().is_success());
    }

    /// Changes every `every`-th object (a new `display` and `last_updated`).
    async fn touch(&self, every: u64) {
        let url = format!("{}/bench/touch?every={every}", self.0);
        let answer = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(answer.status().is_success());
    }
}

/// Downloads every object of every type as any client would (`listing`: ids and revisions
/// only): the relay's HTTP client, the same queries and `concurrency` id ranges at once, each
/// paged by the `start=` cursor, and every page parsed whole into values to find the next
/// cursor. Asserts the count.
async fn download(url: &str, concurrency: usize, listing: bool, objects: u64) {
    let config = NetboxConfig {
        url: Some(url.to_string()),
        token: Some(TOKEN.to_string().into()),
        concurrency,
        ..NetboxConfig::default()
    };
    let client = Arc::new(NetboxClient::new(&config).unwrap());
    let per_type = objects / TYPES.len() as u64;
    let width = per_type.div_ceil(concurrency as u64);
    let mut count = 0;
    for name in TYPES {
        let object_type = ObjectType::from_name(name).unwrap();
        let fields = match listing {
            true => "id,last_updated,created".to_string(),
            false => fields_read(object_type.kind).join(","),
        };
        let ranges = (0..concurrency as u64)
            .map(|k| (k * width + 1, ((k + 1) * width + 1).min(per_type + 1)));
        let segments = ranges.map(|(from, below)| {
            let (client, fields) = (client.clone(), fields.clone());
            tokio::spawn(async move {
                let (mut start, mut count) = (from, 0);
                loop {
                    let query = format!("start={start}&limit=1000&id__lt={below}&fields={fields}");
                    let page = client.page(object_type, &query, Reads::ALL).await.unwrap();
                    let last = page.results.last().and_then(|o| o.get("id")?.as_u64());
                    let Some(last) = last else { return count };
                    count += page.results.len() as u64;
                    start = last + 1;
                }
            })
        });
        for segment in segments.collect::<Vec<_>>() {
            count += segment.await.unwrap();
        }
    }
    assert_eq!(count, objects, "every object downloaded");
}

struct Run {
    elapsed: Duration,
    /// User + system seconds.
    cpu: f64,
    rss_mb: f64,
    summary: String,
}

/// Runs `netbox-relay reconcile <args>` once; answers wall time, peak RSS and its summary (the
/// report and the log lines that say which pass ran and what was learned).
fn reconcile(binary: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    relay_command(binary, "reconcile", env, args)
}

/// `binary command args`, timed by `/usr/bin/time -v`; it must succeed.
fn relay_command(binary: &Path, command: &str, env: &[(&str, String)], args: &[&str]) -> Run {
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(binary)
        .arg(command)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("/usr/bin/time (Debian package time) and the relay binary");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{command} failed:\n{stderr}");
    let reported = |field: &str| -> f64 {
        let value = stderr.lines().find_map(|l| l.trim().strip_prefix(field));
        value
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_default()
    };
    let rss_kb = reported("Maximum resident set size (kbytes): ");
    let cpu = reported("User time (seconds): ") + reported("System time (seconds): ");
    let said = |l: &&str| {
        [
            "a full pass",
            "read from the stream",
            "run ended",
            "cascades:",
        ]
        .iter()
        .any(|m| l.contains(m))
    };
    let mut summary: Vec<&str> = stderr.lines().filter(said).collect();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    summary.extend(stdout.lines().filter(|l| !l.trim().is_empty()));
    Run {
        elapsed,
        cpu,
        rss_mb: rss_kb / 1024.0,
        summary: summary.join("\n"),
    }
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
/// recorded ones and made on the fly (so that a million objects cost no memory), cursor pages,
/// `fields=` and repeated `id=` honoured. `POST /bench/touch?every=N` changes every N-th object
/// (`display` and `last_updated`); `GET /bench/served-in-full` counts the objects served with more
/// than `id`, `last_updated` and `created`.
fn fake_netbox(port: u16, per_type: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let recorded = |file: &str| -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/netbox-api")
            .join(file);
        let page: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let body: Value = serde_json::from_str(page["body"].as_str().unwrap()).unwrap();
        body["results"][0].clone()
    };
    let templates = Arc::new((
        recorded("dcim_devices.json"),
        recorded("ipam_ip-addresses.json"),
        recorded("dcim_sites.json"),
    ));
    let sites = per_type.div_ceil(SITE_SIZE).max(1);
    // The site renamed, 0 for none.
    let renamed = Arc::new(AtomicU64::new(0));
    // Touches so far, and the stride of the last one.
    let touch = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let served = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use axum::extract::{Path, RawQuery};
        use axum::routing::{get, post};
        let (list_touch, list_served) = (touch.clone(), served.clone());
        let list_renamed = renamed.clone();
        let list = move |Path((app, endpoint)): Path<(String, String)>, RawQuery(q): RawQuery| {
            let (templates, touch, served) =
                (templates.clone(), list_touch.clone(), list_served.clone());
            let renamed = list_renamed.load(Ordering::Relaxed);
            async move {
                let query = Query::parse(q.as_deref().unwrap_or(""));
                let range = match (endpoint.as_str(), query.number("site_id")) {
                    ("sites", _) => (1, sites),
                    ("devices", Some(site)) => {
                        let first = (site - 1) * SITE_SIZE + 1;
                        (first, (first + SITE_SIZE - 1).min(per_type))
                    }
                    _ => match query.number("device_id") {
                        Some(device) => (device, device),
                        None => (1, per_type),
                    },
                };
                let ids = query.ids(range);
                let touched = (
                    touch.0.load(Ordering::Relaxed),
                    touch.1.load(Ordering::Relaxed),
                );
                let make = |id: u64| -> Option<Value> {
                    let object = match (app.as_str(), endpoint.as_str()) {
                        ("dcim", "devices") => make_device(&templates.0, id, renamed),
                        ("ipam", "ip-addresses") => make_ip(&templates.1, id),
                        ("dcim", "sites") => {
                            return Some(query.select(make_site(&templates.2, id, renamed)))
                        }
                        _ => return None,
                    };
                    Some(query.select(touched_object(object, id, touched)))
                };
                let results: Vec<Value> = ids.into_iter().filter_map(make).collect();
                if query.in_full() {
                    served.fetch_add(results.len() as u64, Ordering::Relaxed);
                }
                // As NetBox's cursor pagination: a next page when this one is full.
                let next = match results.len() >= query.limit() {
                    true => format!(r#""/api/{app}/{endpoint}/?more""#),
                    false => "null".to_string(),
                };
                let body = format!(
                    r#"{{"count":null,"next":{next},"previous":null,"results":[{}]}}"#,
                    results.iter().map(id_first).collect::<Vec<_>>().join(",")
                );
                ([("content-type", "application/json")], body)
            }
        };
        let touch_now = move |RawQuery(q): RawQuery| {
            let touch = touch.clone();
            async move {
                let every = Query::parse(q.as_deref().unwrap_or(""))
                    .number("every")
                    .unwrap_or(100);
                touch.1.store(every.max(1), Ordering::Relaxed);
                touch.0.fetch_add(1, Ordering::Relaxed);
            }
        };
        let rename = move |RawQuery(q): RawQuery| {
            let renamed = renamed.clone();
            async move {
                let id = Query::parse(q.as_deref().unwrap_or("")).number("id");
                renamed.store(id.unwrap_or(1), Ordering::Relaxed);
            }
        };
        let app = axum::Router::new()
            .route(
                "/api/status/",
                get(|| async { axum::Json(json!({"netbox-version": "4.6.8"})) }),
            )
            .route("/api/{app}/{endpoint}/", get(list))
            .route("/bench/touch", post(touch_now))
            .route("/bench/rename-site", post(rename))
            .route(
                "/bench/served-in-full",
                get(move || {
                    let served = served.clone();
                    async move { axum::Json(served.load(Ordering::Relaxed)) }
                }),
            );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

/// `object` serialized as NetBox writes it: `id` first (every NetBox serializer lists it first).
fn id_first(object: &Value) -> String {
    let mut rest = object.clone();
    let id = rest.as_object_mut().and_then(|o| o.remove("id"));
    let rest = serde_json::to_string(&rest).unwrap();
    match (id, rest.as_str()) {
        (None, _) => rest,
        (Some(id), "{}") => format!(r#"{{"id":{id}}}"#),
        (Some(id), _) => format!(r#"{{"id":{id},{}"#, &rest[1..]),
    }
}

/// A list request's query as the fake reads it: repeated keys kept.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        let pairs = raw.split('&').filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_string(), v.replace("%2C", ",").replace("%2c", ",")))
        });
        Query(pairs.collect())
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.value(key)?.parse().ok()
    }

    /// The ids a request asks for among `first..=last` (what its filter selects): `id=`
    /// repeated, else a page after `start` / `id__gt` below `id__lt`, or the newest with
    /// `ordering=-id`.
    /// The page size NetBox serves for `limit=` (50 when absent, at most 1,000).
    fn limit(&self) -> usize {
        self.number("limit").unwrap_or(50).min(1000) as usize
    }

    fn ids(&self, (first, last): (u64, u64)) -> Vec<u64> {
        let limit = self.limit();
        let listed: Vec<u64> = self
            .0
            .iter()
            .filter(|(k, _)| k == "id")
            .filter_map(|(_, v)| v.parse().ok())
            .filter(|id| (first..=last).contains(id))
            .collect();
        if self.value("id").is_some() {
            return listed;
        }
        let below = self.number("id__lt").unwrap_or(u64::MAX).min(last + 1);
        if self.value("ordering") == Some("-id") {
            return (first..below).rev().take(limit).collect();
        }
        let from = match (self.number("start"), self.number("id__gt")) {
            (Some(start), _) => start,
            (None, Some(after)) => after + 1,
            (None, None) => 0,
        };
        (from.max(first)..below).take(limit).collect()
    }

    /// `object` with only the `fields=` asked for.
    fn select(&self, object: Value) -> Value {
        let Some(fields) = self.value("fields") else {
            return object;
        };
        let Value::Object(mut map) = object else {
            return object;
        };
        let wanted: Vec<&str> = fields.split(',').collect();
        map.retain(|k, _| wanted.contains(&k.as_str()));
        Value::Object(map)
    }

    /// Whether the objects are served with more than ids and revisions (or slugs).
    fn in_full(&self) -> bool {
        let listing = ["id", "last_updated", "created", "slug"];
        self.value("fields")
            .is_none_or(|f| f.split(',').any(|field| !listing.contains(&field)))
    }
}

/// After `touched.0` touches of stride `touched.1`, every stride-th object has a new `display` and
/// `last_updated`.
fn touched_object(mut object: Value, id: u64, touched: (u64, u64)) -> Value {
    let (times, every) = touched;
    if times == 0 || id % every != 0 {
        return object;
    }
    let display = object["display"].as_str().unwrap_or_default().to_string();
    object["display"] = json!(format!("{display} (touched {times})"));
    object["last_updated"] = json!(format!("2026-12-0{}T00:00:00.000000Z", times.min(9)));
    object
}

/// Devices per site.
const SITE_SIZE: u64 = 10_000;

/// Site `id`'s slug: renamed once `renamed` is its id.
fn site_slug(id: u64, renamed: u64) -> String {
    match id == renamed {
        true => format!("site-{id}-renamed"),
        false => format!("site-{id}"),
    }
}

fn make_site(template: &Value, id: u64, renamed: u64) -> Value {
    let mut site = template.clone();
    let slug = site_slug(id, renamed);
    site["id"] = json!(id);
    site["slug"] = json!(slug);
    site["name"] = json!(slug.to_uppercase());
    site["display"] = json!(slug.to_uppercase());
    site["url"] = json!(format!("http://127.0.0.1:8000/api/dcim/sites/{id}/"));
    if id == renamed {
        site["last_updated"] = json!("2026-12-05T00:00:00.000000Z");
    }
    site
}

/// Device `id`, in site `(id - 1) / SITE_SIZE + 1`, which it shows as NetBox nests it.
fn make_device(template: &Value, id: u64, renamed: u64) -> Value {
    let mut d = template.clone();
    d["id"] = json!(id);
    d["name"] = json!(format!("bench-{id:07}"));
    d["url"] = json!(format!("http://127.0.0.1:8000/api/dcim/devices/{id}/"));
    d["serial"] = json!(format!("B{id}"));
    let site = (id - 1) / SITE_SIZE + 1;
    let slug = site_slug(site, renamed);
    d["site"] = json!({"id": site, "url": format!("http://127.0.0.1:8000/api/dcim/sites/{site}/"),
        "display": slug.to_uppercase(), "name": slug.to_uppercase(), "slug": slug, "description": ""});
    d
}

/// IP address `id`, assigned to an interface of device `id`.
fn make_ip(template: &Value, id: u64) -> Value {
    let mut ip = template.clone();
    if let Some(device) = ip.pointer_mut("/assigned_object/device") {
        device["id"] = json!(id);
        device["name"] = json!(format!("bench-{id:07}"));
        device["display"] = json!(format!("bench-{id:07}"));
    }
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
