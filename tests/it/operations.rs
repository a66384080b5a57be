//! What an operator sees: `/metrics` after webhooks and a reconcile, and the log of a whole run of
//! the binary holding none of the configured secrets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::Value;

use crate::fake_netbox::{FakeNetbox, TOKEN};
use crate::helpers::{
    fixture, free_port, published_count, signed, wait_for_published, NatsServer, RelayProcess,
};

pub const ADMIN: &str = "operations-admin-token";

pub async fn fake_with_recorded(version: &str) -> FakeNetbox {
    FakeNetbox::with_recorded(version).await
}

/// The relay binary aimed at `fake`, logging at `level` into `log`.
fn relay(nats: &NatsServer, fake: &FakeNetbox, level: &str, log: &std::path::Path) -> RelayProcess {
    let env = [
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", TOKEN),
        ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
        ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
        ("NETBOX_RELAY_LOG__LEVEL", level),
        ("NETBOX_RELAY_LOG__FORMAT", "json"),
    ];
    RelayProcess::start_with(nats, free_port(), &env, Some(log))
}

async fn post(base: &str, body: Vec<u8>, content_type: &str, signature: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/webhooks/netbox"))
        .header("content-type", content_type)
        .header("x-hook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn reconcile(base: &str) -> Value {
    crate::helpers::reconcile_through_api(base, ADMIN).await
}

async fn scrape(base: &str) -> Vec<Sample> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines)
        .expect("/metrics parses as Prometheus text")
        .samples
}

/// The value of one counter, gauge or histogram count with exactly these labels (0 if absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: HashMap<&str, &str> = labels.iter().copied().collect();
    samples
        .iter()
        .filter(|s| s.metric == name && s.labels.len() == wanted.len())
        .filter(|s| wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Metric::Summary(_) => panic!("{name} is a summary, not a histogram"),
        })
        .sum()
}

fn total(report: &Value, field: &str) -> u64 {
    crate::helpers::report_total(report, field)
}

/// The sum over every label set of `name`.
fn sum(samples: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        .map(|s| match s.value {
            Metric::Counter(v) => v,
            _ => panic!("{name} is not a counter"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_webhooks_deltas_reconcile_runs_and_netbox_requests() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    std::fs::create_dir_all(nats.scratch()).unwrap();
    let log = nats.scratch().join("relay.log");
    let relay = tokio::task::block_in_place(|| relay(&nats, &fake, "info", &log));
    relay.wait_ready().await;
    let base = relay.base.clone();

    let created = fixture("020_device_created.json");
    let signature = created.signature.as_str();
    assert_eq!(
        post(&base, created.body.clone(), "application/json", signature).await,
        202
    );
    assert_eq!(
        post(&base, created.body.clone(), "application/json", signature).await,
        200
    );
    let forged = signed(b"{}").replace('a', "b");
    assert_eq!(
        post(&base, created.body.clone(), "application/json", &forged).await,
        401
    );
    assert_eq!(
        post(&base, created.body.clone(), "text/plain", signature).await,
        415
    );

    let report = reconcile(&base).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let upserted = total(&report, "upserted");
    assert!(
        upserted > 20,
        "the recorded pages hold more objects: {report}"
    );
    // The recorded device of the webhook was deleted later in the recording: the run deletes it.
    let deleted = total(&report, "deleted");
    assert_eq!(deleted, 1, "{report}");
    let expected = 1 + upserted + deleted;
    wait_for_published(&nats.url(), expected, Duration::from_secs(10)).await;

    let m = scrape(&base).await;
    let webhooks = "netbox_relay_webhooks_total";
    assert_eq!(value(&m, webhooks, &[("result", "published")]), 1.0);
    assert_eq!(value(&m, webhooks, &[("result", "duplicate")]), 1.0);
    assert_eq!(value(&m, webhooks, &[("result", "bad_signature")]), 1.0);
    assert_eq!(
        value(&m, webhooks, &[("result", "unsupported_media_type")]),
        1.0
    );
    assert_eq!(value(&m, webhooks, &[("result", "spooled")]), 0.0);
    assert_eq!(value(&m, "netbox_relay_webhook_duration_seconds", &[]), 4.0);

    let deltas = "netbox_relay_deltas_published_total";
    let by_webhook = [("kind", "device"), ("op", "upsert"), ("origin", "webhook")];
    assert_eq!(value(&m, deltas, &by_webhook), 1.0);
    let reconciled = (upserted + deleted) as f64;
    assert_eq!(sum(&m, deltas, ("origin", "reconcile")), reconciled);
    let reconcile_delete = [
        ("kind", "device"),
        ("op", "delete"),
        ("origin", "reconcile"),
    ];
    assert_eq!(value(&m, deltas, &reconcile_delete), 1.0);
    let published = published_count(&nats.url()).await as f64;
    assert_eq!(
        value(&m, "netbox_relay_publish_duration_seconds", &[]),
        published
    );
    assert_eq!(value(&m, "netbox_relay_spool_depth", &[]), 0.0);

    let runs = "netbox_relay_reconcile_runs_total";
    assert_eq!(value(&m, runs, &[("result", "succeeded")]), 1.0);
    assert_eq!(value(&m, runs, &[("result", "failed")]), 0.0);
    assert_eq!(
        value(&m, "netbox_relay_reconcile_duration_seconds", &[]),
        1.0
    );
    // One status request (the run's version, and whether NetBox has netbox-branching for the
    // webhook: one answer serves both for 5 minutes), then the pages the fake served.
    let requests = fake.with(|s| s.log.len()) as f64 + 1.0;
    let by_status = [("status", "200")];
    assert_eq!(
        value(&m, "netbox_relay_netbox_requests_total", &by_status),
        requests
    );
}

const NATS_USER: &str = "relay";
const NATS_PASSWORD: &str = "nats-password-7f3a91";

/// Runs a command of the binary with `env`, answering its stdout and stderr together.
fn cli_output(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run netbox-relay");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

/// A command that runs until stopped (`tail`): its output up to the first line holding `until`
/// (20 s at most), then SIGTERM, then whatever else it wrote.
fn cli_output_until(args: &[&str], env: &[(&str, &str)], until: &str) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run netbox-relay");
    let stdout = child.stdout.take().unwrap();
    // Read as it comes, or a trace-level log fills the pipe and blocks the command.
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).ok();
        log
    });
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while let Ok(line) = seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.push_str(&line);
        text.push('\n');
        if line.contains(until) {
            break;
        }
    }
    // SAFETY: kill only sends a signal to the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().unwrap();
    text.push_str(&log.join().unwrap());
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log_line_of_a_whole_run() {
    let nats = NatsServer::start_with(&["--user", NATS_USER, "--pass", NATS_PASSWORD]);
    let fake = fake_with_recorded("4.6.8").await;
    crate::fake_netbox::load_recorded_extras(&fake);
    std::fs::create_dir_all(nats.scratch()).unwrap();
    let log = nats.scratch().join("serve.log");
    let cli_state = nats.scratch().join("cli.redb");
    let env = [
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", TOKEN),
        ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ("NETBOX_RELAY_NATS__URL", &nats.url()),
        ("NETBOX_RELAY_NATS__USER", NATS_USER),
        ("NETBOX_RELAY_NATS__PASSWORD", NATS_PASSWORD),
        ("NETBOX_RELAY_WEBHOOK__SECRETS", &crate::helpers::secret()),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
        ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
        ("NETBOX_RELAY_LOG__FORMAT", "json"),
        // Everything, every library included, at its most talkative.
        ("RUST_LOG", "trace"),
    ];
    let port = free_port();
    let relay =
        tokio::task::block_in_place(|| RelayProcess::start_with(&nats, port, &env, Some(&log)));
    relay.wait_ready().await;
    let base = relay.base.clone();
    let created = fixture("020_device_created.json");
    let signature = created.signature.as_str();
    assert_eq!(
        post(&base, created.body.clone(), "application/json", signature).await,
        202
    );
    let created_id = serde_json::from_slice::<Value>(&created.body).unwrap()["data"]["id"].clone();
    let created_key = format!("\"key\":\"netbox/default/dcim.device/{created_id}\"");
    let forged = signed(b"other");
    assert_eq!(
        post(&base, created.body.clone(), "application/json", &forged).await,
        401
    );
    let wrong = reqwest::Client::new()
        .post(format!("{base}/reconcile"))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(reconcile(&base).await["status"], "succeeded");
    drop(relay);

    let mut cli_env = env.to_vec();
    let state = cli_state.to_str().unwrap();
    cli_env.push(("NETBOX_RELAY_STATE__PATH", state));
    let mut text = std::fs::read_to_string(&log).unwrap();
    let serve_lines = text.lines().count();
    for line in text.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "a log line that is not JSON: {line}");
    }
    tokio::task::block_in_place(|| {
        let setup = ["netbox-setup", "--relay-url", "https://relay.example.net"];
        text.push_str(&cli_output(&setup, &cli_env));
        text.push_str(&cli_output(&["check"], &cli_env));
        text.push_str(&cli_output(&["reconcile", "--dry-run"], &cli_env));
        let tail = ["tail", "--since", "1h"];
        // The webhook's upsert, or the delete reconcile inferred for the same key (the recorded
        // API no longer has that device), which rolled the upsert up.
        let tailed = cli_output_until(&tail, &cli_env, &created_key);
        assert!(
            tailed.contains("\"kind\":\"device\"") && tailed.contains(&created_key),
            "tail printed the created device's key:\n{tailed}"
        );
        text.push_str(&tailed);
    });

    assert!(
        serve_lines > 100,
        "a trace-level run logs plenty: {serve_lines} lines"
    );
    assert!(
        text.contains("\"message\":\"webhook\""),
        "the webhook lines are there"
    );
    assert!(text.contains("created (id 2)"), "netbox-setup ran:\n{text}");
    assert!(text.contains("OK    netbox token"), "check ran");
    let secrets = [
        ("webhook.secrets", crate::helpers::secret()),
        ("netbox.token", TOKEN.to_string()),
        ("api.admin_token", ADMIN.to_string()),
        ("nats.password", NATS_PASSWORD.to_string()),
    ];
    for (key, secret) in secrets {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(&secret)).collect();
        assert!(hits.is_empty(), "{key} appears in the output: {hits:?}");
    }
}

/// Every answer is JSON, a wrong path and a wrong method included; the counters an alert watches
/// exist at zero from the start, so that `increase()` sees their first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_json_and_counters_start_at_zero() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&nats, free_port());
    relay.wait_ready().await;
    let client = reqwest::Client::new();
    let answer = client
        .get(format!("{}/nope", relay.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("/nope"),
        "{body}"
    );
    let answer = client
        .get(format!("{}/webhooks/netbox", relay.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");

    let text = crate::helpers::metrics_text(&client, &relay.base).await;
    for line in [
        r#"netbox_relay_restarts_total{part="spool drainer"} 0"#,
        r#"netbox_relay_restarts_total{part="stream keeper"} 0"#,
        r#"netbox_relay_cascades_total{result="failed"} 0"#,
        r#"netbox_relay_http_connections_closed_total{reason="header_timeout"} 0"#,
        r#"netbox_relay_netbox_requests_total{status="error"} 0"#,
        r#"netbox_relay_webhooks_total{result="timeout"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

/// `promtool` beside `$PROMETHEUS` (Debian's package has both), else on `PATH`.
fn promtool() -> std::path::PathBuf {
    let beside = std::env::var_os("PROMETHEUS")
        .map(std::path::PathBuf::from)
        .and_then(|p| Some(p.parent()?.join("promtool")))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| "promtool".into())
}

/// The alert rules in `deploy/` load in Prometheus, fire as their unit tests say, and name only
/// metrics the relay exports (from its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_load_fire_as_tested_and_name_real_metrics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "netbox-relay-rules.yml"],
        ["test", "rules", "netbox-relay-rules.test.yml"],
    ] {
        let ran = std::process::Command::new(promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus; deploy/local/ensure-prometheus.sh)");
        let said = String::from_utf8_lossy(&ran.stdout).to_string()
            + &String::from_utf8_lossy(&ran.stderr);
        assert!(ran.status.success(), "promtool {args:?}:\n{said}");
    }
    let rules = std::fs::read_to_string(dir.join("netbox-relay-rules.yml")).unwrap();
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&nats, free_port());
    relay.wait_ready().await;
    let exported = crate::helpers::metrics_text(&reqwest::Client::new(), &relay.base).await;
    let named = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.starts_with("netbox_relay_"));
    for metric in named {
        assert!(
            exported.lines().any(|l| l.starts_with(metric)),
            "{metric} is not exported at start:\n{exported}"
        );
    }
}

/// The relay runs without transparent huge pages, whatever the kernel's default: with them its
/// resident memory climbed in 2 MiB steps over an hour (a huge page stays whole while the
/// allocator gives back 4 KiB pages), which the soak's flat-memory judgement caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_opts_out_of_transparent_huge_pages() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&nats, free_port());
    relay.wait_ready().await;
    assert_eq!(relay.status("THP_enabled"), "0");
}
