//! Shared test helpers: a real `nats-server` with JetStream, the relay on a random port, the
//! recorded NetBox webhooks, and a reader for what reached the stream.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbox_relay::app::Relay;
use netbox_relay::config::{Config, Secrets};
use netbox_relay::webhook::signature::sign;
use secrecy::SecretString;
use serde_json::Value;

pub const STREAM: &str = "NETBOX_REGISTRY";

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netbox-webhooks")
}

/// The secret the recorded webhooks were signed with.
pub fn secret() -> String {
    std::fs::read_to_string(fixtures_dir().join("secret.txt"))
        .expect("tests/fixtures/netbox-webhooks/secret.txt")
        .trim()
        .to_string()
}

/// A recorded webhook: the raw body as NetBox sent it, and NetBox's signature header.
pub struct Fixture {
    pub body: Vec<u8>,
    pub signature: String,
}

pub fn fixture(file: &str) -> Fixture {
    fixture_at(&fixtures_dir().join(file))
}

/// A recorded webhook of another recording under `tests/fixtures/` (`netbox-branching`,
/// `netbox-4.7`); signed with the same secret.
pub fn fixture_in(dir: &str, file: &str) -> Fixture {
    fixture_at(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir)
            .join(file),
    )
}

fn fixture_at(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let recorded: Value = serde_json::from_str(&text).expect("fixture is JSON");
    Fixture {
        body: recorded["body"].as_str().expect("body").as_bytes().to_vec(),
        signature: recorded["headers"]["X-Hook-Signature"]
            .as_str()
            .expect("signature")
            .to_string(),
    }
}

/// POSTs a recorded webhook to the relay at `base` as NetBox sends it; answers the status.
pub async fn post_fixture_to(base: &str, f: Fixture) -> u16 {
    let response = reqwest::Client::new()
        .post(format!("{base}/webhooks/netbox"))
        .header("content-type", "application/json")
        .header("x-hook-signature", f.signature)
        .body(f.body)
        .send()
        .await
        .expect("POST");
    response.status().as_u16()
}

/// The fixture's body as a JSON object, to derive other payload generations from.
pub fn fixture_json(file: &str) -> serde_json::Map<String, Value> {
    serde_json::from_slice(&fixture(file).body).expect("fixture body is a JSON object")
}

/// Device `id` as NetBox sends it when saved at `at`: the recorded update, or the recorded
/// delete, with another id, name and time.
pub fn device_change(id: u64, at: chrono::DateTime<chrono::Utc>, deleted: bool) -> Vec<u8> {
    let file = match deleted {
        true => "081_device_deleted.json",
        false => "034_device_updated.json",
    };
    let mut body = fixture_json(file);
    let time = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let data = body["data"].as_object_mut().unwrap();
    data.insert("id".into(), serde_json::json!(id));
    let url = format!("/api/dcim/devices/{id}/");
    data.insert("url".into(), serde_json::json!(url));
    let name = format!("device-{id}-{}", at.timestamp_micros());
    data.insert("name".into(), serde_json::json!(name));
    if !deleted {
        data.insert("last_updated".into(), serde_json::json!(time));
    }
    body.insert("timestamp".into(), serde_json::json!(time));
    body.remove("snapshots");
    serde_json::to_vec(&body).unwrap()
}

pub fn signed(body: &[u8]) -> String {
    sign(&secret(), body)
}

/// Every recorded webhook file, in recording order.
pub fn all_fixture_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.as_bytes()[0].is_ascii_digit() && name.ends_with(".json"))
        .collect();
    files.sort();
    files
}

/// A `nats-server -js` on a free loopback port with a temporary store; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    args: Vec<String>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// With more `nats-server` arguments, e.g. `--user u --pass p`.
    pub fn start_with(args: &[&str]) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A folder that lives as long as this server, for the relay's state file.
    pub fn scratch(&self) -> PathBuf {
        self.store.path().join("relay")
    }

    /// Starts the server again on the same port and store (after [`NatsServer::stop`]).
    pub fn restart(&mut self) {
        let child = Command::new(nats_server_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (run .ci/run, or set NATS_SERVER to its path)");
        self.child = Some(child);
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], self.port)));
    }

    /// Starts the server again with other arguments (e.g. another `-c` file), same port and store.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.stop();
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three `nats-server -js` processes routed into one cluster on loopback, each with a store of
/// its own; killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let name = format!("n{}", i + 1);
                let cluster = format!("nats://127.0.0.1:{route}");
                NatsServer::start_with(&[
                    "--server_name",
                    &name,
                    "--cluster_name",
                    "relay-test",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &route_list,
                ])
            })
            .collect();
        NatsCluster { nodes }
    }

    /// Every node's client URL, separated by commas (`nats.url`).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }
}

/// `$NATS_SERVER`, else the one `.ci/run` installs into `.venv`, else `nats-server` on PATH.
fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A loopback port nothing listens on, never the same twice in this test process: tests start
/// their servers in parallel, and a port handed out twice would join two tests' servers.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The configuration a test relay starts from.
pub fn test_config(nats: &NatsServer) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.nats.url = nats.url();
    config.webhook.secrets = Secrets(vec![SecretString::from(secret())]);
    config.state.path = nats.scratch().join("netbox-relay.redb");
    config.validate().expect("test config is valid");
    config
}

/// The relay running in this process, with an HTTP client aimed at it.
pub struct TestRelay {
    pub relay: Relay,
    pub http: reqwest::Client,
    pub base: String,
}

impl TestRelay {
    /// Starts the relay and waits until it is ready (NATS connected, stream present).
    pub async fn start(config: Config) -> TestRelay {
        let relay = TestRelay::start_unready(config).await;
        relay.wait_ready().await;
        relay
    }

    pub async fn start_unready(config: Config) -> TestRelay {
        let relay = Relay::start(config).await.expect("relay starts");
        let base = format!("http://{}", relay.addr());
        TestRelay {
            relay,
            http: reqwest::Client::new(),
            base,
        }
    }

    /// Waits until ready with NATS connected and the stream present (ready alone holds while
    /// NATS is away, the spool taking the webhooks).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 && publishing(&body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay not ready: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a webhook with the given headers; answers status and JSON body.
    pub async fn post_raw(&self, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/webhooks/netbox", self.base))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a body signed with the fixture secret, as NetBox would.
    pub async fn post_signed(&self, body: &[u8]) -> (u16, Value) {
        let signature = signed(body);
        let headers = [
            ("content-type", "application/json"),
            ("x-hook-signature", signature.as_str()),
        ];
        self.post_raw(body.to_vec(), &headers).await
    }

    /// POSTs a recorded webhook exactly as NetBox sent it.
    pub async fn post_fixture(&self, file: &str) -> (u16, Value) {
        let f = fixture(file);
        let headers = [
            ("content-type", "application/json"),
            ("x-hook-signature", f.signature.as_str()),
        ];
        self.post_raw(f.body, &headers).await
    }
}

/// The relay's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let response = client.get(format!("{base}/metrics")).send().await;
    response
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Triggers a run through `POST /reconcile` on the relay at `base` and waits for its report.
pub async fn reconcile_through_api(base: &str, admin_token: &str) -> Value {
    let http = reqwest::Client::new();
    let started: Value = http
        .post(format!("{base}/reconcile"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reconcile_report(base, &started["run_id"]).await
}

/// Waits for run `id` on the relay at `base` to end; its report.
/// `POST <base>/<path>` (`reconcile`, `reconcile?force=true`) with the admin token if given.
pub async fn trigger_run(base: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}/{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /reconcile");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An unlabelled counter's value in the Prometheus text; it must be exported.
pub fn counter_value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is exported:\n{metrics}"))
}

/// `POST /reconcile` with a JSON body.
pub async fn trigger_run_with_body(base: &str, body: Value, token: &str) -> (u16, Value) {
    let request = reqwest::Client::new()
        .post(format!("{base}/reconcile"))
        .bearer_auth(token)
        .json(&body);
    let response = request.send().await.expect("POST /reconcile");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The sum of `field` (`upserted`, `deleted`, ...) over a run report's object types.
pub fn report_total(report: &Value, field: &str) -> u64 {
    let types = report["object_types"].as_object().expect("object_types");
    types.values().map(|t| t[field].as_u64().unwrap_or(0)).sum()
}

/// Polls a run's report until the run ended.
pub async fn reconcile_report(base: &str, id: &Value) -> Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = format!("{base}/reconcile/runs/{id}");
        let report: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        if report["status"] != "running" {
            return report;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the relay has `count` requests inside a handler besides the scrape that asks.
pub async fn wait_for_requests_in_flight(base: &str, count: u64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(&client, base).await;
        let in_flight = text
            .lines()
            .find_map(|l| l.strip_prefix("netbox_relay_http_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_default() as u64;
        if in_flight > count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{in_flight} requests in flight (this scrape included), waiting for {count} more"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `/readyz` body saying that deltas go straight to JetStream.
pub fn publishing(readyz: &Value) -> bool {
    readyz["nats"] == "connected" && readyz["stream"] == "ready"
}

/// One message read back from the stream.
#[derive(Debug)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub content_type: String,
    pub delta: Value,
}

/// Every message on the stream, in stream order.
pub async fn stream_messages(nats_url: &str) -> Vec<Stored> {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(STREAM).await.expect("stream exists");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut stored = Vec::new();
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        stored.push(Stored {
            subject: message.subject.to_string(),
            msg_id: header("Nats-Msg-Id"),
            content_type: header("Content-Type"),
            delta: serde_json::from_slice(&message.payload).expect("stored delta is JSON"),
        });
    }
    stored
}

/// How many deltas the stream has taken: its last sequence. A delete rolls up its key's earlier
/// messages (compaction), so the messages held can be fewer; these are counted all the same.
pub async fn published_count(nats_url: &str) -> u64 {
    stream_state(nats_url).await.last_sequence
}

/// How many messages the stream holds now (after compaction).
pub async fn held_count(nats_url: &str) -> u64 {
    stream_state(nats_url).await.messages
}

async fn stream_state(nats_url: &str) -> async_nats::jetstream::stream::State {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(STREAM).await.expect("stream exists");
    stream.info().await.expect("stream info").state.clone()
}

/// Polls until the stream has taken `count` deltas (or fails after `limit`).
pub async fn wait_for_published(nats_url: &str, count: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = published_count(nats_url).await;
        if now == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the stream took {now} deltas, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The relay's log into the file at `log`, or nowhere.
fn log_to(log: Option<&Path>) -> Stdio {
    match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::null(),
    }
}

/// The relay binary (`serve`), configured through the environment; killed on drop.
pub struct RelayProcess {
    child: Child,
    pub base: String,
    pub addr: SocketAddr,
}

impl RelayProcess {
    /// Quiet: only warnings, and those discarded.
    pub fn start(nats: &NatsServer, port: u16) -> RelayProcess {
        RelayProcess::start_with(nats, port, &[("NETBOX_RELAY_LOG__LEVEL", "warn")], None)
    }

    /// With more settings (`NETBOX_RELAY_...` variables), its log written to `log` if given.
    pub fn start_with(
        nats: &NatsServer,
        port: u16,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> RelayProcess {
        RelayProcess::spawn(nats, port, env, Stdio::null(), log_to(log))
    }

    /// Standard output and the log into pipes: standard output closed at once, the log's
    /// reading end for the test, which may close it too.
    pub fn start_piped(
        nats: &NatsServer,
        port: u16,
        env: &[(&str, &str)],
    ) -> (RelayProcess, std::process::ChildStderr) {
        let mut relay = RelayProcess::spawn(nats, port, env, Stdio::piped(), Stdio::piped());
        drop(relay.child.stdout.take());
        let log = relay.child.stderr.take().expect("a piped stderr");
        (relay, log)
    }

    /// On `nats_url` (one server, or several separated by commas) with its state file at
    /// `state`, its log written to `log` if given.
    pub fn start_on(
        nats_url: &str,
        state: &Path,
        port: u16,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> RelayProcess {
        let mut env = env.to_vec();
        env.push(("NETBOX_RELAY_STATE__PATH", state.to_str().unwrap()));
        env.push(("NETBOX_RELAY_NATS__URL", nats_url));
        RelayProcess::spawn_with(port, &env, Stdio::null(), log_to(log))
    }

    fn spawn(
        nats: &NatsServer,
        port: u16,
        env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> RelayProcess {
        let (url, state) = (nats.url(), nats.scratch().join("relay.redb"));
        let mut all = vec![
            ("NETBOX_RELAY_NATS__URL", url.as_str()),
            ("NETBOX_RELAY_STATE__PATH", state.to_str().unwrap()),
        ];
        all.extend(env.iter().copied());
        RelayProcess::spawn_with(port, &all, stdout, stderr)
    }

    fn spawn_with(port: u16, env: &[(&str, &str)], stdout: Stdio, stderr: Stdio) -> RelayProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
            .arg("serve")
            .env("NETBOX_RELAY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("NETBOX_RELAY_WEBHOOK__SECRETS", secret())
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start the relay binary");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr);
        RelayProcess {
            child,
            base: format!("http://{addr}"),
            addr,
        }
    }

    /// Waits for `/readyz` to answer 200: NATS connected, stream present.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/readyz", self.base);
        loop {
            let ready = match reqwest::get(&url).await {
                Ok(r) if r.status() == 200 => publishing(&r.json().await.unwrap_or_default()),
                _ => false,
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the relay binary did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; true when it did.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        self.send_sigterm();
        self.wait_exit(limit)
    }

    pub fn send_sigterm(&self) {
        // SAFETY: kill only sends a signal to the child this handle owns.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// Waits up to `limit` for the process to exit; true when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The process's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_memory_mib(&self) -> f64 {
        let kib = self
            .status("VmHWM")
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .expect("VmHWM in kB");
        kib / 1024.0
    }

    /// One field of the process's `/proc/PID/status`, trimmed.
    pub fn status(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the relay's /proc status");
        let prefix = format!("{field}:");
        status
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{field} in /proc status"))
            .trim()
            .to_string()
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().ok();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A TCP proxy on loopback in front of one address that can cut every connection through it and
/// refuse new ones, then let them through again: one relay's way to NATS, cut while the others'
/// stays up.
pub struct Cuttable {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    pub async fn start(upstream: SocketAddr) -> Cuttable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_cut, kept) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        tokio::io::copy_bidirectional(&mut client, &mut server)
                            .await
                            .ok();
                    }
                });
                kept.lock().unwrap().push(link.abort_handle());
            }
        });
        Cuttable { port, cut, links }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
