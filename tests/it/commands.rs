//! The operator commands as a user runs them: `check`, `netbox-setup` and `tail`, against a real
//! nats-server and the fake NetBox API.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::expected::DELTAS;
use crate::fake_netbox::{load_recorded_extras, FakeNetbox, TOKEN};
use crate::helpers::{
    all_fixture_files, free_port, secret, test_config, NatsServer, RelayProcess, TestRelay,
};
use crate::operations::fake_with_recorded;

/// `netbox-relay <args>` configured through the environment for `nats` and `fake`.
fn command(nats: &NatsServer, fake: &FakeNetbox, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_netbox-relay"));
    command
        .args(args)
        .env("NETBOX_RELAY_NETBOX__URL", &fake.url)
        .env("NETBOX_RELAY_NETBOX__TOKEN", TOKEN)
        .env("NETBOX_RELAY_NATS__URL", nats.url())
        .env("NETBOX_RELAY_WEBHOOK__SECRETS", secret())
        .env("NETBOX_RELAY_STATE__PATH", nats.scratch().join("cli.redb"))
        .env("NETBOX_RELAY_LOG__LEVEL", "warn");
    command
}

fn run(nats: &NatsServer, fake: &FakeNetbox, args: &[&str]) -> Output {
    let mut command = command(nats, fake, args);
    tokio::task::block_in_place(|| command.output().expect("run netbox-relay"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The line of `check`'s report about `what`.
fn line<'a>(report: &'a str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l[6..].starts_with(what))
        .unwrap_or_else(|| panic!("no line about {what}:\n{report}"))
}

/// The stream as `serve` creates it, so that `check` finds it.
async fn create_stream(nats: &NatsServer) {
    let relay = TestRelay::start(test_config(nats)).await;
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_dependency_and_names_a_missing_permission() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    create_stream(&nats).await;

    let healthy = run(&nats, &fake, &["check"]);
    let report = stdout(&healthy);
    assert!(healthy.status.success(), "{report}");
    let lines: Vec<&str> = report.lines().collect();
    // configuration, NetBox and its token, 12 types, cascade, branching, NATS, state.
    assert_eq!(lines.len(), 1 + 2 + 12 + 1 + 1 + 1 + 1, "{report}");
    assert!(
        line(&report, "branching").contains("no netbox-branching"),
        "{report}"
    );
    let state = line(&report, "state");
    assert!(
        state.starts_with("SKIP") && state.contains("not created yet"),
        "check creates no state file: {state}"
    );
    assert!(!nats.scratch().join("cli.redb").exists());
    let others = lines.iter().filter(|l| !l[6..].starts_with("state"));
    assert!(others.into_iter().all(|l| l.starts_with("OK ")), "{report}");
    assert!(line(&report, "netbox reachable").contains("NetBox 4.6"));
    assert!(line(&report, "read virtualization.virtualmachine")
        .contains("virtualization.view_virtualmachine"));
    assert!(line(&report, "nats stream NETBOX_REGISTRY").contains("netbox.registry.>"));
    let cascade = line(&report, "cascade");
    assert!(
        cascade.contains("on:") && cascade.contains("extras.tag"),
        "{cascade}"
    );

    fake.with(|s| s.denied.push("ipam/ip-addresses".into()));
    let denied = run(&nats, &fake, &["check"]);
    let report = stdout(&denied);
    assert_eq!(denied.status.code(), Some(1), "{report}");
    let ip = line(&report, "read ipam.ipaddress");
    assert!(ip.starts_with("FAIL"), "{ip}");
    assert!(
        ip.contains("ipam.view_ipaddress") && ip.contains("fix:"),
        "{ip}"
    );
    let fails = report.lines().filter(|l| l.starts_with("FAIL")).count();
    assert_eq!(fails, 1, "only that line fails:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_netbox_setup_say_how_branch_changes_are_told_apart() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    fake.with(|s| s.plugins = json!({"netbox_branching": "1.1.2"}));
    let report = stdout(&run(&nats, &fake, &["check"]));
    let branching = line(&report, "branching");
    assert!(branching.starts_with("OK"), "{branching}");
    for says in [
        "netbox-branching 1.1.2",
        "confirmed against main",
        "add_branch_context",
    ] {
        assert!(branching.contains(says), "{says}: {branching}");
    }
    let mut never = command(&nats, &fake, &["check"]);
    never.env("NETBOX_RELAY_WEBHOOK__CONFIRM", "never");
    let output = tokio::task::block_in_place(|| never.output().unwrap());
    let branching = line(&stdout(&output), "branching").to_string();
    assert!(
        branching.contains("webhook.confirm = never") && branching.contains("right only if"),
        "{branching}"
    );

    let setup = [
        "netbox-setup",
        "--relay-url",
        "https://relay.example.net:8090",
        "--dry-run",
    ];
    let printed = stdout(&run(&nats, &fake, &setup));
    assert!(
        printed.contains("branching: NetBox has netbox-branching 1.1.2"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_a_bad_token_a_missing_stream_and_nats_away() {
    let mut nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let mut bad_token = command(&nats, &fake, &["check"]);
    bad_token.env(
        "NETBOX_RELAY_NETBOX__TOKEN",
        "ffffffffffffffffffffffffffffffffffffffff",
    );
    let output = tokio::task::block_in_place(|| bad_token.output().unwrap());
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1));
    let token = line(&report, "netbox token");
    assert!(
        token.starts_with("FAIL") && token.contains("Invalid v1 token"),
        "{token}"
    );
    assert!(
        !report.contains("ffffffffffffffff"),
        "the token is never printed"
    );
    // An absent stream is a fresh setup, not a fault: `serve` creates it.
    let stream = line(&report, "nats stream");
    assert!(
        stream.starts_with("OK") && stream.contains("absent") && stream.contains("creates it"),
        "{stream}"
    );

    nats.stop();
    let away = run(&nats, &fake, &["check"]);
    let report = stdout(&away);
    let nats_line = line(&report, "nats nats://");
    assert!(
        nats_line.starts_with("FAIL") && nats_line.contains("fix:"),
        "{nats_line}"
    );
}

/// The webhook and event rule bodies `netbox-setup` must send to a NetBox of `version`.
fn expected_bodies(version: &str) -> (Value, Value) {
    let webhook = json!({
        "name": "netbox-relay",
        "payload_url": "https://relay.example.net:8090/webhooks/netbox",
        "http_method": "POST",
        "http_content_type": "application/json",
        "secret": secret(),
        "ssl_verification": true,
    });
    // The registry's types, and the parents that only trigger cascades.
    let types = [
        "dcim.device",
        "dcim.devicerole",
        "dcim.interface",
        "dcim.platform",
        "dcim.site",
        "extras.tag",
        "ipam.ipaddress",
        "ipam.prefix",
        "ipam.role",
        "ipam.service",
        "ipam.vlan",
        "ipam.vrf",
        "tenancy.tenant",
        "virtualization.cluster",
        "virtualization.virtualmachine",
        "virtualization.vminterface",
    ];
    let mut rule = json!({
        "name": "netbox-relay",
        "enabled": true,
        "action_type": "webhook",
        "action_object_type": "extras.webhook",
        "conditions": null,
    });
    let legacy = json!({"type_create": true, "type_update": true, "type_delete": true,
        "type_job_start": false, "type_job_end": false});
    let generation = match version {
        "4.6.8" => json!({"object_types": types,
            "event_types": ["object_created", "object_updated", "object_deleted"]}),
        "4.0.11" => json!({"object_types": types}),
        _ => json!({"content_types": types}),
    };
    let rule_map = rule.as_object_mut().unwrap();
    rule_map.extend(generation.as_object().unwrap().clone());
    if version != "4.6.8" {
        rule_map.extend(legacy.as_object().unwrap().clone());
    }
    (webhook, rule)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_setup_creates_the_webhook_and_rule_once_for_each_api_generation() {
    let nats = NatsServer::start();
    let setup = [
        "netbox-setup",
        "--relay-url",
        "https://relay.example.net:8090",
    ];
    for version in ["4.6.8", "4.0.11", "3.7.8"] {
        let fake = FakeNetbox::start(version).await;
        if version == "4.6.8" {
            load_recorded_extras(&fake);
        }
        let dry = run(&nats, &fake, &[&setup[..], &["--dry-run"]].concat());
        assert!(
            dry.status.success(),
            "{}",
            String::from_utf8_lossy(&dry.stderr)
        );
        assert!(
            fake.with(|s| s.writes.is_empty()),
            "a dry run writes nothing"
        );
        let printed = stdout(&dry);
        assert!(printed.contains("would be created") && printed.contains("<redacted>"));
        assert!(!printed.contains(&secret()), "the secret is never printed");

        let first = run(&nats, &fake, &setup);
        assert!(
            first.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        let writes = fake.with(|s| s.writes.clone());
        assert_eq!(writes.len(), 2, "{version}: {writes:?}");
        let (webhook, mut rule) = expected_bodies(version);
        let webhook_id = if version == "4.6.8" { 2 } else { 1 };
        rule["action_object_id"] = json!(webhook_id);
        assert_eq!(
            writes[0],
            ("POST".into(), "/api/extras/webhooks/".into(), webhook),
            "{version}"
        );
        assert_eq!(
            writes[1],
            ("POST".into(), "/api/extras/event-rules/".into(), rule),
            "{version}"
        );

        let second = run(&nats, &fake, &setup);
        assert!(second.status.success());
        assert_eq!(
            fake.with(|s| s.writes.len()),
            2,
            "{version}: the second run changes nothing"
        );
        assert_eq!(
            stdout(&second).matches("unchanged").count(),
            2,
            "{}",
            stdout(&second)
        );

        // Someone pointed the webhook elsewhere: only that field is put back.
        fake.with(|s| {
            let hooks = s.objects.get_mut("extras/webhooks").unwrap();
            hooks.get_mut(&webhook_id).unwrap()["payload_url"] = json!("http://old:1/");
        });
        let third = run(&nats, &fake, &setup);
        assert!(third.status.success());
        let writes = fake.with(|s| s.writes.clone());
        assert_eq!(writes.len(), 3);
        let path = format!("/api/extras/webhooks/{webhook_id}/");
        let fix = json!({"payload_url": "https://relay.example.net:8090/webhooks/netbox"});
        assert_eq!(writes[2], ("PATCH".into(), path, fix));
    }
    let recorded = FakeNetbox::start("4.6.8").await;
    load_recorded_extras(&recorded);
    run(&nats, &recorded, &setup);
    let untouched = recorded.with(|s| s.objects["extras/webhooks"][&1]["payload_url"].clone());
    assert_eq!(
        untouched, "http://127.0.0.1:9000/hook",
        "other webhooks are left alone"
    );
}

/// A relay that published three recorded webhooks: device 1, IP address 2, device 2.
async fn relay_after_three_webhooks() -> (NatsServer, FakeNetbox, TestRelay) {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(test_config(&nats)).await;
    let sent = [
        "020_device_created.json",
        "030_ipaddress_created.json",
        "021_device_created.json",
    ];
    for file in sent {
        assert_eq!(relay.post_fixture(file).await.0, 202, "{file}");
    }
    (nats, fake, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_deltas_of_webhooks() {
    let (nats, fake, relay) = relay_after_three_webhooks().await;
    let args = ["tail", "--since", "1h", "--kind", "device"];
    let deltas = tail_lines(&nats, &fake, &args, 2).await;
    let keys: Vec<&str> = deltas.iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "netbox/default/dcim.device/1",
            "netbox/default/dcim.device/2"
        ],
        "the IP address is filtered out"
    );
    assert!(deltas
        .iter()
        .all(|d| d["op"] == "upsert" && d["origin"] == "webhook"));
    relay.relay.stop().await.unwrap();
}

/// The first `count` deltas `tail` with `args` prints.
async fn tail_lines(
    nats: &NatsServer,
    fake: &FakeNetbox,
    args: &[&str],
    count: usize,
) -> Vec<Value> {
    let mut tail = command(nats, fake, args);
    let mut child = tail.stdout(Stdio::piped()).spawn().expect("start tail");
    let out = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(out)
            .lines()
            .take(count)
            .collect::<Result<Vec<_>, _>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines).await;
    child.kill().ok();
    child.wait().ok();
    let lines = lines.expect("tail printed the deltas").unwrap().unwrap();
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON lines when not on a terminal"))
        .collect()
}

/// The quickstart sends a test webhook, then runs `tail`: it starts with what was just published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_starts_with_the_last_deltas() {
    let (nats, fake, relay) = relay_after_three_webhooks().await;
    let key = |d: &Value| d["key"].as_str().unwrap().to_string();
    let all = tail_lines(&nats, &fake, &["tail"], 3).await;
    let keys: Vec<String> = all.iter().map(key).collect();
    assert_eq!(
        keys,
        [
            "netbox/default/dcim.device/1",
            "netbox/default/ipam.ipaddress/2",
            "netbox/default/dcim.device/2"
        ]
    );
    let last = tail_lines(&nats, &fake, &["tail", "--last", "1"], 1).await;
    assert_eq!(key(&last[0]), keys[2]);
    relay.relay.stop().await.unwrap();
}

/// `examples/consumer.rs`, which `cargo test` builds beside the test binary.
fn example_consumer() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = target.join("examples").join("consumer");
    assert!(
        path.exists(),
        "{} is missing: run the whole suite with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_consumer_ends_with_the_registry_of_creates_updates_and_deletes() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    for file in all_fixture_files() {
        relay.post_fixture(&file).await;
    }
    // What the registry must hold: the last translated webhook of each object, unless a delete.
    let mut expected = std::collections::BTreeMap::new();
    for want in DELTAS {
        let key = format!("netbox/default/{}/{}", want.object_type, want.id);
        match want.op {
            "delete" => expected.remove(&key),
            _ => expected.insert(key, want.name.to_string()),
        };
    }
    assert!(DELTAS.iter().any(|d| d.op == "delete") && expected.len() > 10);

    let consumer = Command::new(example_consumer())
        .args(["--nats", &nats.url(), "--until-idle", "1s"])
        .output();
    let output = tokio::task::block_in_place(|| consumer.expect("run the example consumer"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let registry: serde_json::Map<String, Value> =
        serde_json::from_slice(&output.stdout).expect("the registry as JSON");
    let names: std::collections::BTreeMap<String, String> = registry
        .iter()
        .map(|(key, entry)| (key.clone(), entry["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(names, expected);

    // Durable: run again, it resumes after what it acknowledged and applies nothing more.
    let again = Command::new(example_consumer())
        .args(["--nats", &nats.url(), "--until-idle", "1s"])
        .output();
    let again = tokio::task::block_in_place(|| again.unwrap());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("applied 0 deltas"), "{stderr}");
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("applied") && !l.contains("applied 0")),
        "{stderr}"
    );
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_netbox_check_and_serve_say_once_what_is_off_and_how_to_turn_it_on() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    create_stream(&nats).await;
    let mut check = command(&nats, &fake, &["check"]);
    check.env("NETBOX_RELAY_NETBOX__URL", "");
    let output = tokio::task::block_in_place(|| check.output().unwrap());
    let report = stdout(&output);
    let cascade = line(&report, "cascade");
    assert!(
        cascade.starts_with("SKIP") && cascade.contains("cascades are off"),
        "{report}"
    );

    let log = nats.scratch().join("relay.log");
    let env = [("NETBOX_RELAY_LOG__LEVEL", "info")];
    let relay = RelayProcess::start_with(&nats, free_port(), &env, Some(&log));
    relay.wait_ready().await;
    drop(relay);
    let text = std::fs::read_to_string(&log).unwrap();
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("not configured") || l.contains(" off"))
        .collect();
    assert_eq!(said.len(), 1, "said once at start:\n{text}");
    for what in [
        "reconciliation",
        "cascades",
        "confirmation",
        "NETBOX_RELAY_NETBOX__URL",
    ] {
        assert!(
            said[0].contains(what),
            "says {what}, and how to turn it on: {}",
            said[0]
        );
    }
}

/// A tail is left running: it follows across a restart of NATS, saying once that it lost the
/// stream and once that it follows again, and prints what came after without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_across_a_restart_of_nats() {
    let mut nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(test_config(&nats)).await;
    assert_eq!(relay.post_fixture("020_device_created.json").await.0, 202);
    let mut tail = command(&nats, &fake, &["tail", "--since", "1h", "--kind", "device"]);
    let mut child = tail
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let line = tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(line) = rx.try_recv() {
                    return Some(line);
                }
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let line = line.expect("tail printed a delta");
        serde_json::from_str::<Value>(&line).unwrap()["key"].clone()
    };
    assert_eq!(next(&mut rx), "netbox/default/dcim.device/1");
    nats.stop();
    // Away longer than the consumer's heartbeat: the consumer on the server is gone too.
    tokio::time::sleep(Duration::from_secs(6)).await;
    nats.restart();
    relay.wait_ready().await;
    assert_eq!(relay.post_fixture("021_device_created.json").await.0, 202);
    assert_eq!(next(&mut rx), "netbox/default/dcim.device/2");
    child.kill().ok();
    child.wait().ok();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(err), &mut said).ok();
    assert_eq!(said.matches("lost NATS").count(), 1, "said once: {said}");
    assert_eq!(
        said.matches("reconnected to NATS").count(),
        1,
        "said once: {said}"
    );
    assert!(
        rx.try_recv().is_err(),
        "nothing printed twice after the restart"
    );
    relay.relay.stop().await.unwrap();
}

/// What a new user meets first: usage errors exit 2 and name the fix; nothing is created in
/// the directory a command is run from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_mistakes_exit_2_naming_the_setting_and_create_nothing() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let cwd = tempfile::tempdir().unwrap();
    let in_cwd = |args: &[&str], unset: &[&str]| {
        let mut command = command(&nats, &fake, args);
        command
            .current_dir(cwd.path())
            .env_remove("NETBOX_RELAY_STATE__PATH");
        for var in unset {
            command.env_remove(var);
        }
        tokio::task::block_in_place(|| command.output().unwrap())
    };
    let typo = in_cwd(&["tail", "--kind", "devices"], &[]);
    let said = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2), "{said}");
    assert!(
        said.contains("--kind devices") && said.contains("device, interface, ip_address"),
        "{said}"
    );

    let no_url = in_cwd(&["reconcile", "--dry-run"], &["NETBOX_RELAY_NETBOX__URL"]);
    let said = String::from_utf8_lossy(&no_url.stderr);
    assert_eq!(no_url.status.code(), Some(2), "{said}");
    assert_eq!(said.lines().count(), 1, "one message: {said}");
    assert!(
        said.contains("netbox.url") && said.contains("NETBOX_RELAY_NETBOX__URL"),
        "{said}"
    );
    let setup = ["netbox-setup", "--relay-url", "http://relay:8090"];
    let no_url = in_cwd(&setup, &["NETBOX_RELAY_NETBOX__URL"]);
    assert_eq!(no_url.status.code(), Some(2));

    let no_secret = in_cwd(&["check"], &["NETBOX_RELAY_WEBHOOK__SECRETS"]);
    let report = stdout(&no_secret);
    assert_eq!(no_secret.status.code(), Some(2), "as serve would: {report}");
    let configuration = line(&report, "configuration");
    assert!(
        configuration.starts_with("FAIL")
            && configuration.contains("NETBOX_RELAY_WEBHOOK__SECRETS")
            && configuration.contains("good for tail, sd, spool, reconcile, netbox-setup"),
        "{configuration}"
    );
    let serve = in_cwd(
        &["serve", "--listen", "127.0.0.1:1"],
        &["NETBOX_RELAY_WEBHOOK__SECRETS"],
    );
    assert_eq!(serve.status.code(), Some(2), "serve judges it the same");
    let good = in_cwd(&["check"], &[]);
    assert!(line(&stdout(&good), "configuration").contains("good for serve, tail"));

    let dry_run = in_cwd(&["reconcile", "--dry-run"], &[]);
    assert!(
        dry_run.status.success(),
        "{}",
        String::from_utf8_lossy(&dry_run.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "check and a dry run create nothing: {left:?}"
    );
}

/// A user tries the relay without NetBox: `send-test-webhook` signs a NetBox-shaped body with
/// the configured secret and sends it, or prints the `curl` line that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_webhook_reaches_the_stream_with_a_valid_signature() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(test_config(&nats)).await;
    let url = format!("{}/webhooks/netbox", relay.base);
    let sent = run(&nats, &fake, &["send-test-webhook", "--url", &url]);
    let answer = stdout(&sent);
    assert!(sent.status.success(), "{answer}");
    assert!(answer.starts_with("202 "), "{answer}");
    let stored = crate::helpers::stream_messages(&nats.url()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].delta["key"],
        "netbox/default/dcim.device/999999999"
    );
    assert_eq!(stored[0].delta["entry"]["name"], "netbox-relay-test");

    let printed = run(
        &nats,
        &fake,
        &["send-test-webhook", "--url", &url, "--curl"],
    );
    let line = stdout(&printed);
    assert!(
        line.starts_with("curl ") && !line.contains(&secret()),
        "{line}"
    );
    let curl = tokio::task::block_in_place(|| {
        Command::new("sh")
            .arg("-c")
            .arg(line.trim())
            .output()
            .unwrap()
    });
    let answered = String::from_utf8_lossy(&curl.stdout);
    assert!(answered.contains(r#""status":"accepted""#), "{answered}");

    let checkout = tempfile::tempdir().unwrap();
    let mut no_secret = command(&nats, &fake, &["send-test-webhook", "--url", &url]);
    no_secret
        .env_remove("NETBOX_RELAY_WEBHOOK__SECRETS")
        .current_dir(checkout.path());
    let refused = tokio::task::block_in_place(|| no_secret.output().unwrap());
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("NETBOX_RELAY_WEBHOOK__SECRET_FILE") && said.contains("data/webhook-secret"),
        "names the quickstart's way: {said}"
    );

    // Run from the quickstart's checkout: its secret (deploy/local/run.sh's) is found.
    std::fs::create_dir(checkout.path().join("data")).unwrap();
    std::fs::write(checkout.path().join("data/webhook-secret"), secret() + "\n").unwrap();
    let found = tokio::task::block_in_place(|| no_secret.output().unwrap());
    let answer = stdout(&found);
    assert!(answer.starts_with("202 "), "{answer}");
    relay.relay.stop().await.unwrap();
}
