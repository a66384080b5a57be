//! netbox-branching: changes made in a branch stay out of the registry; merges and reverts reach
//! it. The 62 webhooks recorded from NetBox 4.6.8 with netbox-branching 1.1.2
//! (`tests/fixtures/netbox-branching`, its README says what was done when) are replayed in order
//! against the NetBox stand-in playing main as it was at each moment.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_netbox::{FakeNetbox, TOKEN};
use crate::helpers::{
    fixture_in, free_port, metrics_text, post_fixture_to, published_count, wait_for_published,
    NatsServer, RelayProcess, TestRelay,
};
use crate::reconcile::{config, reconcile};

const DIR: &str = "netbox-branching";
const PLUGIN: &str = "1.1.2";
/// main as it was before the recording began: older than every recorded change.
const BEFORE: &str = "2026-12-04T16:00:00.000000Z";

/// One recorded webhook, as `index.jsonl` describes it, with its body.
struct Recorded {
    file: String,
    phase: String,
    event: String,
    object_type: String,
    id: u64,
    /// The body says it comes from a branch (`context.active_branch` or `data.active_branch`).
    marked: bool,
    body: Value,
}

impl Recorded {
    fn is_change(&self) -> bool {
        matches!(self.event.as_str(), "created" | "updated" | "deleted")
            && !self.object_type.starts_with("netbox_branching.")
    }

    /// Made on main: main itself, a merge or a revert (what the README's phases say).
    fn on_main(&self) -> bool {
        [
            "P1",
            "P4",
            "P5",
            "P6-main",
            "P7-pipeline:main",
            "P7-pipeline:merge",
            "P7-pipeline:revert",
        ]
        .iter()
        .any(|p| self.phase.starts_with(p))
    }

    fn is_merge(&self) -> bool {
        self.phase.contains("merge")
    }

    fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// `dcim/devices`, from the object's URL.
    fn endpoint(&self) -> String {
        let url = self.data()["url"].as_str().unwrap();
        let path = url.trim_start_matches("/api/").trim_end_matches('/');
        let (endpoint, _id) = path.rsplit_once('/').unwrap();
        endpoint.to_string()
    }

    fn key(&self) -> String {
        format!("netbox/default/{}/{}", self.object_type, self.id)
    }

    /// The object as main shows it after this change, as NetBox 4.7.3 with netbox-branching
    /// 1.2.2 does: an object a merge updated carries the time of the merge, one a merge created
    /// no `last_updated` at all (while the webhook carries the branch-time `last_updated` or
    /// none).
    fn as_main(&self) -> Value {
        let mut object = self.data().clone();
        if self.is_merge() && self.event == "created" {
            object["last_updated"] = Value::Null;
        } else if self.is_merge() || object["last_updated"].is_null() {
            object["last_updated"] = self.body["timestamp"].clone();
        }
        object
    }

    async fn post(&self, relay: &TestRelay) -> (u16, Value) {
        let f = fixture_in(DIR, &self.file);
        let headers = [
            ("content-type", "application/json"),
            ("x-hook-signature", f.signature.as_str()),
        ];
        relay.post_raw(f.body, &headers).await
    }
}

fn recorded() -> Vec<Recorded> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(DIR);
    let index = std::fs::read_to_string(dir.join("index.jsonl")).unwrap();
    index
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let file = row["file"].as_str().unwrap().to_string();
            let body: Value = serde_json::from_slice(&fixture_in(DIR, &file).body).unwrap();
            Recorded {
                phase: row["phase"].as_str().unwrap().to_string(),
                event: row["event"].as_str().unwrap().to_string(),
                object_type: row["object_type"].as_str().unwrap().to_string(),
                id: row["id"].as_u64().unwrap(),
                marked: !row["active_branch"].is_null() || !row["data_active_branch"].is_null(),
                file,
                body,
            }
        })
        .collect()
}

/// main before the branches: the objects the branches change, as the first revert restored
/// them (a revert puts back what main had), dated before the recording.
fn originals(all: &[Recorded]) -> Vec<(String, u64, Value)> {
    let mut originals: Vec<(String, u64, Value)> = Vec::new();
    let reverts = all
        .iter()
        .filter(|r| r.phase.contains("revert") && r.is_change() && r.event != "deleted");
    for r in reverts.filter(|r| r.id < 5000) {
        if originals
            .iter()
            .any(|(e, id, _)| *e == r.endpoint() && *id == r.id)
        {
            continue;
        }
        let mut object = r.data().clone();
        object["last_updated"] = json!(BEFORE);
        originals.push((r.endpoint(), r.id, object));
    }
    originals
}

async fn stand_in(all: &[Recorded]) -> FakeNetbox {
    let fake = FakeNetbox::start("4.6.8").await;
    fake.with(|s| {
        s.plugins = json!({"netbox_branching": PLUGIN});
        for (endpoint, id, object) in originals(all) {
            s.objects.entry(endpoint).or_default().insert(id, object);
        }
    });
    fake
}

/// The change `r` made on main, now visible on the stand-in.
fn apply(fake: &FakeNetbox, r: &Recorded) {
    fake.with(|s| {
        let objects = s.objects.entry(r.endpoint()).or_default();
        match r.event.as_str() {
            "deleted" => objects.remove(&r.id),
            _ => objects.insert(r.id, r.as_main()),
        };
    });
}

/// The delta at the stream's last sequence.
async fn last_delta(nats: &NatsServer) -> Value {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(crate::helpers::STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let message = stream.get_raw_message(last).await.unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

/// A reconcile that publishes nothing: main and the registry agree.
async fn reconcile_publishes_nothing(relay: &TestRelay, nats: &NatsServer, after: &str) {
    let before = published_count(&nats.url()).await;
    let report = reconcile(relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    for (object_type, counts) in report["object_types"].as_object().unwrap() {
        for field in ["upserted", "deleted"] {
            assert_eq!(counts[field], 0, "after {after}: {object_type} {report}");
        }
    }
    assert_eq!(published_count(&nats.url()).await, before, "after {after}");
}

fn counter(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_branching_webhook_in_order_leaves_exactly_mains_changes() {
    let all = recorded();
    assert_eq!(all.len(), 62);
    let nats = NatsServer::start();
    let fake = stand_in(&all).await;
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    // The registry starts as main was.
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let mut expected = published_count(&nats.url()).await;
    assert_eq!(expected, originals(&all).len() as u64);

    let (mut branch, mut not_on_main) = (0, 0);
    for r in &all {
        if r.is_change() && r.on_main() {
            apply(&fake, r);
        }
        let (status, answer) = r.post(&relay).await;
        let what = format!("{} ({}): {status} {answer}", r.file, r.phase);
        if !r.is_change() {
            assert_eq!(
                (status, answer["status"].as_str()),
                (200, Some("ignored")),
                "{what}"
            );
        } else if r.marked {
            branch += 1;
            assert_eq!(status, 200, "{what}");
            let reason = answer["reason"].as_str().unwrap();
            assert!(reason.contains("fixture-branch-1"), "{what}");
        } else if r.on_main() {
            expected += 1;
            assert_eq!(status, 202, "{what}");
            let delta = last_delta(&nats).await;
            assert_eq!(delta["key"], r.key(), "{what}");
            let op = if r.event == "deleted" {
                "delete"
            } else {
                "upsert"
            };
            assert_eq!(delta["op"], op, "{what}");
            if op == "upsert" {
                // Confirmed: main's object is published. Marked as main (`data.active_branch:
                // null`): the webhook's own, asked nothing.
                let source = match r.data().get("active_branch") {
                    Some(_) => r.data().clone(),
                    None => r.as_main(),
                };
                let revision = source["last_updated"]
                    .as_str()
                    .or(r.body["timestamp"].as_str());
                assert_eq!(
                    delta["revision"].as_str().map(parse),
                    revision.map(parse),
                    "{what}"
                );
            }
        } else {
            not_on_main += 1;
            assert_eq!(status, 200, "{what}");
            assert_eq!(answer["status"], "ignored", "{what}");
            assert!(
                answer["reason"].as_str().unwrap().contains("branch"),
                "{what}"
            );
        }
        assert_eq!(published_count(&nats.url()).await, expected, "{what}");
        // Right after each merge and revert, a reconcile finds main and the registry alike.
        if r.event.starts_with("branch_merged") || r.event.starts_with("branch_reverted") {
            reconcile_publishes_nothing(&relay, &nats, &r.file).await;
        }
    }
    assert_eq!((branch, not_on_main), (3, 8));
    // The recorder is the process's: other tests running at once count too.
    let metrics = metrics_text(&relay.http, &relay.base).await;
    assert!(counter(&metrics, "netbox_relay_webhooks_total{result=\"branch\"}") >= 3);
    assert!(
        counter(
            &metrics,
            "netbox_relay_webhooks_total{result=\"not_on_main\"}"
        ) >= 8
    );
    let confirmed = counter(
        &metrics,
        "netbox_relay_confirmations_total{result=\"on_main\"}",
    );
    assert!(confirmed >= 19, "{metrics}");
    // Branch 2's device, never merged, never reached the registry; main's own did and went.
    let devices_asked = fake.with(|s| {
        s.log
            .iter()
            .filter(|l| l.starts_with("dcim/devices?") && l.contains("id=5004"))
            .count()
    });
    assert_eq!(devices_asked, 1, "branch 2's device was asked about once");
}

fn parse(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_branch_webhooks_are_refused_without_asking_netbox() {
    let nats = NatsServer::start();
    let fake = FakeNetbox::start("4.6.8").await;
    fake.with(|s| s.plugins = json!({"netbox_branching": PLUGIN}));
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    // The relay asks NetBox's status at start, off any webhook's path; then NetBox goes away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.with(|s| s.status_requests) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the status was never asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked_at_start = fake.with(|s| {
        s.down = true;
        s.status_requests
    });
    let marked = recorded().into_iter().filter(|r| r.marked && r.is_change());
    let mut count = 0;
    for r in marked {
        let (status, answer) = r.post(&relay).await;
        assert_eq!(status, 200, "{}: {answer}", r.file);
        assert_eq!(answer["status"], "ignored");
        let reason = answer["reason"].as_str().unwrap();
        assert!(
            reason.contains("made in branch fixture-branch-1 (id 1)"),
            "{reason}"
        );
        count += 1;
    }
    assert_eq!(count, 3);
    assert!(fake.with(|s| s.log.is_empty()), "NetBox was asked");
    assert_eq!(
        fake.with(|s| s.status_requests),
        asked_at_start,
        "NetBox's status was asked"
    );
    assert_eq!(published_count(&nats.url()).await, 0);
}

/// A relay of main's changes after a merge, NetBox down while they arrive.
fn merged(all: &[Recorded]) -> (&Recorded, &Recorded) {
    let find = |file: &str| all.iter().find(|r| r.file.starts_with(file)).unwrap();
    // Device 2 renamed, device 4 deleted: both merged into main, neither marked.
    (find("013_"), find("014_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_netbox_cannot_confirm_now_is_held_and_confirmed_when_it_answers() {
    let all = recorded();
    let nats = NatsServer::start();
    let fake = stand_in(&all).await;
    let mut config = config(&nats, &fake, 1000);
    config.webhook.confirm_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(config).await;
    let (rename, delete) = merged(&all);
    fake.with(|s| s.down = true);
    for r in [rename, delete] {
        apply(&fake, r);
        let (status, answer) = r.post(&relay).await;
        assert_eq!(status, 202, "{answer}");
        let fields = ["status", "deltas", "confirm"].map(|f| answer[f].clone());
        assert_eq!(
            fields,
            [json!("accepted"), json!(0), json!("held")],
            "{answer}"
        );
    }
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(
        (status, &ready["held_webhooks"]),
        (200, &json!(2)),
        "{ready}"
    );
    assert_eq!(published_count(&nats.url()).await, 0);

    fake.with(|s| s.down = false);
    wait_for_published(&nats.url(), 2, Duration::from_secs(30)).await;
    assert_eq!(outcome(&nats).await, expected_outcome(rename, delete));
    wait_until_released(&relay.base).await;
    // The recorder is the process's: other tests running at once count too.
    let metrics = metrics_text(&relay.http, &relay.base).await;
    assert!(counter(&metrics, "netbox_relay_webhooks_total{result=\"held\"}") >= 2);
    assert!(
        metrics.contains("netbox_relay_webhooks_held "),
        "the gauge is exported"
    );
}

async fn readyz(base: &str) -> Value {
    let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
    response.json().await.unwrap()
}

async fn wait_until_released(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = readyz(base).await;
        if ready["held_webhooks"] == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_webhooks_survive_a_crash_and_are_confirmed_after_the_restart() {
    let all = recorded();
    let nats = NatsServer::start();
    let fake = stand_in(&all).await;
    fake.with(|s| s.down = true);
    let env = [
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", TOKEN),
        ("NETBOX_RELAY_WEBHOOK__CONFIRM_TIMEOUT", "300ms"),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
    ];
    let port = free_port();
    let mut relay = RelayProcess::start_with(&nats, port, &env, None);
    relay.wait_ready().await;
    let client = reqwest::Client::new();
    let (rename, delete) = merged(&all);
    for r in [rename, delete] {
        apply(&fake, r);
        assert_eq!(
            post_fixture_to(&relay.base, fixture_in(DIR, &r.file)).await,
            202
        );
    }
    relay.kill();

    let relay = RelayProcess::start_with(&nats, port, &env, None);
    relay.wait_ready().await;
    let ready = readyz(&relay.base).await;
    assert_eq!(ready["held_webhooks"], 2, "{ready}");
    let metrics = metrics_text(&client, &relay.base).await;
    assert_eq!(
        counter(&metrics, "netbox_relay_webhooks_held "),
        2,
        "{metrics}"
    );
    assert_eq!(published_count(&nats.url()).await, 0);
    fake.with(|s| s.down = false);
    wait_for_published(&nats.url(), 2, Duration::from_secs(60)).await;
    wait_until_released(&relay.base).await;
    assert_eq!(outcome(&nats).await, expected_outcome(rename, delete));
}

/// Each key's last delta on the stream: (key, op, name).
async fn outcome(nats: &NatsServer) -> Vec<(String, String, String)> {
    let mut found: Vec<_> = crate::helpers::stream_messages(&nats.url())
        .await
        .into_iter()
        .map(|m| {
            let d = m.delta;
            let name = d["entry"]["name"].as_str().unwrap_or_default().to_string();
            (
                d["key"].as_str().unwrap().to_string(),
                d["op"].as_str().unwrap().to_string(),
                name,
            )
        })
        .collect();
    found.sort();
    found
}

/// Device 2 as main has it after the merge, device 4 gone.
fn expected_outcome(rename: &Recorded, delete: &Recorded) -> Vec<(String, String, String)> {
    let name = rename.data()["name"].as_str().unwrap().to_string();
    let mut expected = vec![
        (rename.key(), "upsert".to_string(), name),
        (delete.key(), "delete".to_string(), String::new()),
    ];
    expected.sort();
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_confirmed_side_by_side_not_one_after_another() {
    let all = recorded();
    let nats = NatsServer::start();
    let fake = stand_in(&all).await;
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    // Four merged changes of four objects, NetBox slow to answer each.
    let merged: Vec<&Recorded> = ["013_", "016_", "017_", "018_"]
        .iter()
        .map(|f| all.iter().find(|r| r.file.starts_with(f)).unwrap())
        .collect();
    for r in &merged {
        apply(&fake, r);
    }
    fake.with(|s| s.delay = Duration::from_millis(400));
    let answers = futures::future::join_all(merged.iter().map(|r| r.post(&relay))).await;
    for (status, answer) in answers {
        assert_eq!(status, 202, "{answer}");
    }
    assert_eq!(published_count(&nats.url()).await, 4);
    let most = fake.with(|s| s.max_in_flight);
    assert!(most >= 2, "NetBox was asked one webhook at a time");
}
