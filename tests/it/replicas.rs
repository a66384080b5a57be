//! Several relays on one NATS: each with its own state file, one order per key on the stream.
//! A relay publishes a key's delta only while the key's last message is the one it judged
//! against (`Nats-Expected-Last-Subject-Sequence`); otherwise it reads the key and decides again.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{counter_value, published_count, test_config, NatsServer, TestRelay};

fn update(id: u64, at: DateTime<Utc>) -> Vec<u8> {
    crate::helpers::device_change(id, at, false)
}

/// Two relays, each with a state file of its own, on one NATS; every message kept.
async fn two_relays(nats: &NatsServer) -> (TestRelay, TestRelay) {
    let mut config = test_config(nats);
    config.nats.history_per_key = 0;
    let a = TestRelay::start(config.clone()).await;
    config.state.path = nats.scratch().join("second.redb");
    let b = TestRelay::start(config).await;
    (a, b)
}

/// The revisions of every message on device `id`'s subject, in stream order.
async fn revisions_of(nats: &NatsServer, id: u64) -> Vec<String> {
    crate::helpers::stream_messages(&nats.url())
        .await
        .into_iter()
        .filter(|m| m.subject == format!("netbox.registry.default.device.{id}"))
        .map(|m| m.delta["revision"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_missed_a_change_reads_the_key_and_decides_again() {
    let nats = NatsServer::start();
    let (a, b) = two_relays(&nats).await;
    let start = Utc::now() - chrono::Duration::hours(1);
    let at = |minutes| start + chrono::Duration::minutes(minutes);

    assert_eq!(a.post_signed(&update(1, at(2))).await.0, 202);
    // B never saw that change: its older one loses to the stream's, not to B's empty record.
    let (status, body) = b.post_signed(&update(1, at(1))).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (200, Some("stale")),
        "{body}"
    );
    assert_eq!(b.post_signed(&update(1, at(3))).await.0, 202);
    // A's own record says minute 2 was last; the stream says minute 3.
    assert_eq!(a.post_signed(&update(1, at(4))).await.0, 202);
    let (status, body) = a.post_signed(&update(1, at(3))).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (200, Some("stale")),
        "{body}"
    );
    let rev = |m| at(m).to_rfc3339_opts(SecondsFormat::Micros, true);
    assert_eq!(revisions_of(&nats, 1).await, [rev(2), rev(3), rev(4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_message_on_a_key_is_published_over() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let start = Utc::now() - chrono::Duration::hours(1);
    let (status, _) = relay.post_signed(&update(7, start)).await;
    assert_eq!(status, 202);
    // An operator's tool publishes to the key's subject by hand.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = "netbox.registry.default.device.7";
    js.publish(subject, "not a delta".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let later = start + chrono::Duration::minutes(1);
    let (status, answer) = relay.post_signed(&update(7, later)).await;
    assert_eq!(status, 202, "{answer}");
    let stream = js.get_stream(crate::helpers::STREAM).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap();
    let delta: Value =
        serde_json::from_slice(&last.payload).expect("our delta is the last message");
    assert_eq!(
        delta["revision"],
        later.to_rfc3339_opts(SecondsFormat::Micros, true)
    );
    let (_, ready) = relay.get("/readyz").await;
    assert_eq!(ready["dead_letters"], 0, "{ready}");
    let metrics = crate::helpers::metrics_text(&relay.http, &relay.base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("netbox_relay_foreign_messages_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_relays_keep_each_keys_revisions_rising() {
    let nats = NatsServer::start();
    let (a, b) = two_relays(&nats).await;
    let start = Utc::now() - chrono::Duration::hours(1);
    // 300 changes of 3 devices, in a scrambled order, split between the relays.
    let changes: Vec<(u64, DateTime<Utc>)> = (0..300)
        .map(|n| {
            (
                n % 3 + 1,
                start + chrono::Duration::milliseconds(n as i64 * 10),
            )
        })
        .collect();
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by_key(|n| (n * 7919) % 1009);
    let changes: Vec<(u64, DateTime<Utc>)> = order.into_iter().map(|n| changes[n]).collect();
    let relays = [&a, &b];
    let answers: Vec<(u16, Value)> = futures::stream::iter(changes.iter().enumerate())
        .map(|(n, (id, at))| {
            let (relay, body) = (relays[n % 2], update(*id, *at));
            async move { relay.post_signed(&body).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (status, body) in &answers {
        let ok = *status == 202 || (*status == 200 && body["reason"] == "stale");
        assert!(ok, "{status} {body}");
    }
    let published = answers.iter().filter(|(s, _)| *s == 202).count() as u64;
    assert_eq!(published_count(&nats.url()).await, published);
    for id in 1..=3 {
        let revisions = revisions_of(&nats, id).await;
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "device {id}: revisions not rising on the stream: {revisions:?}"
        );
        let last = changes
            .iter()
            .filter(|(d, _)| *d == id)
            .map(|(_, at)| at)
            .max()
            .unwrap();
        assert_eq!(
            revisions.last().unwrap(),
            &last.to_rfc3339_opts(SecondsFormat::Micros, true),
            "device {id}: the newest change is the key's last message"
        );
    }
}

const ADMIN: &str = "admin-secret-for-replica-tests";

/// A relay that reconciles against `fake` on demand only, sharing `nats` (state file `state`).
fn reconciling(
    nats: &NatsServer,
    fake: &crate::fake_netbox::FakeNetbox,
    state: &str,
) -> netbox_relay::config::Config {
    let mut config = test_config(nats);
    config.state.path = nats.scratch().join(state);
    config.netbox.url = Some(fake.url.clone());
    config.netbox.token = Some(secrecy::SecretString::from(crate::fake_netbox::TOKEN));
    config.api.admin_token = Some(secrecy::SecretString::from(ADMIN));
    config.reconcile.on_start = false;
    config.reconcile.interval = std::time::Duration::ZERO;
    config.reconcile.lease_ttl = std::time::Duration::from_secs(3);
    config
}

async fn trigger(base: &str) -> (u16, Value) {
    crate::helpers::trigger_run(base, "reconcile", Some(ADMIN)).await
}

async fn run_report(base: &str, id: &Value) -> (u16, Value) {
    let answer = reqwest::get(format!("{base}/reconcile/runs/{id}"))
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

/// A fake NetBox slow enough that a run lasts a few seconds.
async fn slow_netbox() -> crate::fake_netbox::FakeNetbox {
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 2_000);
    fake.with(|s| s.delay = std::time::Duration::from_millis(300));
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconcile_at_a_time_whichever_relay_is_asked() {
    let nats = NatsServer::start();
    let fake = slow_netbox().await;
    let a = TestRelay::start(reconciling(&nats, &fake, "a.redb")).await;
    let b = TestRelay::start(reconciling(&nats, &fake, "b.redb")).await;

    let (status, started) = trigger(&a.base).await;
    assert_eq!(status, 202, "{started}");
    let run = started["run_id"].clone();
    let (status, refused) = trigger(&b.base).await;
    assert_eq!((status, &refused["run_id"]), (409, &run), "{refused}");

    // B answers for A's run, to its end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let report = loop {
        let (status, report) = run_report(&b.base, &run).await;
        assert_eq!(status, 200, "{report}");
        if report["status"] != "running" {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["object_types"]["dcim.device"]["upserted"], 2_000);

    let (status, next) = trigger(&b.base).await;
    assert_eq!(status, 202, "B runs once A's run ended: {next}");
    assert!(
        next["run_id"].as_u64() > run.as_u64(),
        "run ids rise across relays: {next}"
    );
    let (status, latest) = reqwest::get(format!("{}/reconcile/runs/latest", a.base))
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    let latest: Value = latest.json().await.unwrap();
    assert_eq!(
        latest["run_id"], next["run_id"],
        "A knows B's run as the latest"
    );
}

/// Relay A (the binary, lease TTL `ttl`) in the middle of a run over a slow NetBox, and relay B
/// (in this process) on the same NATS; with the run's id.
async fn a_running(
    nats: &NatsServer,
    fake: &crate::fake_netbox::FakeNetbox,
    ttl: &str,
) -> (crate::helpers::RelayProcess, TestRelay, Value) {
    let env = [
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", crate::fake_netbox::TOKEN),
        ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
        ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
        ("NETBOX_RELAY_RECONCILE__LEASE_TTL", ttl),
    ];
    let a = crate::helpers::RelayProcess::start_with(nats, crate::helpers::free_port(), &env, None);
    a.wait_ready().await;
    let b = TestRelay::start(reconciling(nats, fake, "b.redb")).await;
    let (status, started) = trigger(&a.base).await;
    assert_eq!(status, 202, "{started}");
    (a, b, started["run_id"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_mid_run_lets_another_run_after_its_lease_expires() {
    let nats = NatsServer::start();
    let fake = slow_netbox().await;
    let (mut a, b, run) = a_running(&nats, &fake, "3s").await;
    a.kill();

    let (status, refused) = trigger(&b.base).await;
    assert_eq!(
        (status, &refused["run_id"]),
        (409, &run),
        "the dead relay's lease holds: {refused}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let next = loop {
        let (status, body) = trigger(&b.base).await;
        if status == 202 {
            break body;
        }
        assert_eq!(status, 409, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(next["run_id"].as_u64() > run.as_u64(), "{next}");
    let (status, dead) = run_report(&b.base, &run).await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["status"], "failed", "{dead}");
    assert!(
        dead["message"]
            .as_str()
            .unwrap_or_default()
            .contains("lease expired"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_mid_run_gives_the_lease_back() {
    let nats = NatsServer::start();
    let fake = slow_netbox().await;
    // Long enough that only a lease given back lets B run at once.
    let (mut a, b, run) = a_running(&nats, &fake, "120s").await;
    let (status, _) = trigger(&b.base).await;
    assert_eq!(status, 409, "A's run holds the lease");

    let exited = tokio::task::block_in_place(|| a.terminate(std::time::Duration::from_secs(20)));
    assert!(exited, "SIGTERM stopped the relay");
    let (status, next) = trigger(&b.base).await;
    assert_eq!(status, 202, "the stopped relay gave the lease back: {next}");
    let (status, stopped) = run_report(&b.base, &run).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert!(
        stopped["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shut down"),
        "{stopped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_expires_by_renewals_seen_not_by_the_holders_clock() {
    use async_nats::jetstream::kv;
    let nats = NatsServer::start();
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    // Lease TTL 3 s.
    let b = TestRelay::start(reconciling(&nats, &fake, "b.redb")).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let config = kv::Config {
        bucket: "NETBOX_RELAY".into(),
        history: 1,
        ..Default::default()
    };
    let bucket = js.create_key_value(config).await.unwrap();
    let lease = |expires_at: chrono::DateTime<Utc>| -> bytes::Bytes {
        let value =
            serde_json::json!({"run_id": 77, "holder": "skewed:1", "expires_at": expires_at});
        serde_json::to_vec(&value).unwrap().into()
    };
    // Another relay, its clock ten minutes behind, renews every second: by B's clock its lease
    // looks expired at once. Once it writes something unreadable: still a renewal.
    let behind = Utc::now() - chrono::Duration::minutes(10);
    let mut revision = bucket
        .create("reconcile.lease", lease(behind))
        .await
        .unwrap();
    for round in 0..5 {
        let (status, body) = trigger(&b.base).await;
        assert_eq!(status, 409, "round {round}: {body}");
        // An unreadable lease names no run.
        let run = if round == 3 { 0 } else { 77 };
        assert_eq!(body["run_id"], run, "round {round}: {body}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let value = match round {
            2 => bytes::Bytes::from_static(b"garbage"),
            _ => lease(behind),
        };
        revision = bucket
            .update("reconcile.lease", value, revision)
            .await
            .unwrap();
    }
    // Then it writes an expiry in 2099 and dies: B runs once it has seen the lease unrenewed for
    // the TTL.
    let far = Utc::now() + chrono::Duration::days(365 * 70);
    bucket
        .update("reconcile.lease", lease(far), revision)
        .await
        .unwrap();
    let (status, _) = trigger(&b.base).await;
    assert_eq!(status, 409, "a renewal just seen holds");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = trigger(&b.base).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 409, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "a lease dated 2099 held for ever"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A device only another relay published, then deleted in NetBox while its webhook was lost: the
/// relay that reconciles has no record of it, and infers its delete from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_deletes_keys_only_another_relay_published() {
    let nats = NatsServer::start();
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    let a = TestRelay::start(reconciling(&nats, &fake, "a.redb")).await;
    let b = TestRelay::start(reconciling(&nats, &fake, "b.redb")).await;
    let created = Utc::now() - chrono::Duration::minutes(10);
    assert_eq!(a.post_signed(&update(900_001, created)).await.0, 202);

    let (status, run) = trigger(&b.base).await;
    assert_eq!(status, 202, "{run}");
    let report = crate::helpers::reconcile_report(&b.base, &run["run_id"]).await;
    assert_eq!(
        report["object_types"]["dcim.device"]["deleted"], 1,
        "{report}"
    );
    let ops: Vec<String> = crate::helpers::stream_messages(&nats.url())
        .await
        .iter()
        .filter(|m| m.delta["object_id"] == 900_001)
        .map(|m| m.delta["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["delete"], "the tombstone replaced the key's history");

    let before = published_count(&nats.url()).await;
    let (_, again) = trigger(&b.base).await;
    let report = crate::helpers::reconcile_report(&b.base, &again["run_id"]).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        published_count(&nats.url()).await,
        before,
        "the next run publishes nothing"
    );
}

/// Found by the soak's hour of seed 2032: a relay whose record of a device is older than the
/// stream's last message (the other relay published the device's next save) runs a cheap pass
/// after the device was deleted in NetBox, its delete webhook lost. The delete, stamped at the
/// record's revision, was judged stale against the other relay's newer upsert and dropped: the
/// device stayed in the registry for good. It is stamped again at that upsert's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_not_lost_to_another_relays_newer_message() {
    let nats = NatsServer::start();
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    let a = TestRelay::start(reconciling(&nats, &fake, "a.redb")).await;
    let b = TestRelay::start(reconciling(&nats, &fake, "b.redb")).await;
    let (_, first) = trigger(&b.base).await;
    let first = crate::helpers::reconcile_report(&b.base, &first["run_id"]).await;
    assert_eq!(first["status"], "succeeded", "{first}");

    // Saved twice, neither save listed by NetBox now (deleted since): b publishes the first,
    // a the second, and b's record stays at the first.
    let saved = Utc::now() - chrono::Duration::minutes(10);
    let resaved = saved + chrono::Duration::minutes(5);
    assert_eq!(b.post_signed(&update(900_001, saved)).await.0, 202);
    assert_eq!(a.post_signed(&update(900_001, resaved)).await.0, 202);
    let stamp = resaved.to_rfc3339_opts(SecondsFormat::Micros, true);
    assert_eq!(
        revisions_of(&nats, 900_001).await.last(),
        Some(&stamp),
        "a published over b's message"
    );

    let (status, run) = trigger(&b.base).await;
    assert_eq!(status, 202, "{run}");
    let report = crate::helpers::reconcile_report(&b.base, &run["run_id"]).await;
    assert_eq!(report["pass"], "cheap", "{report}");
    assert_eq!(
        report["object_types"]["dcim.device"]["deleted"], 1,
        "{report}"
    );
    let last = crate::helpers::stream_messages(&nats.url())
        .await
        .into_iter()
        .rfind(|m| m.delta["object_id"] == 900_001)
        .unwrap();
    assert_eq!(last.delta["op"], "delete", "{:?}", last.delta);
    assert_eq!(last.delta["revision"], stamp, "stamped at the newer save");
}

/// Two relays on a 4 s schedule sharing a real KV bucket: NetBox is pulled once per interval,
/// not once per relay. (The exact timing is pinned on a paused clock in `reconcile::schedule`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_are_shared_between_relays() {
    let nats = NatsServer::start();
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    let scheduled = |state| {
        let mut config = reconciling(&nats, &fake, state);
        config.reconcile.interval = std::time::Duration::from_secs(4);
        config
    };
    let started = std::time::Instant::now();
    let a = TestRelay::start(scheduled("a.redb")).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let b = TestRelay::start(scheduled("b.redb")).await;
    // A ticks at about 4 s and 8 s, B at about 5 s and 9 s: four runs if each relay kept its own
    // schedule; two when B leaves out the ticks that follow a run of A's since its last one.
    tokio::time::sleep(std::time::Duration::from_millis(10_500).saturating_sub(started.elapsed()))
        .await;
    let latest: Value = reqwest::get(format!("{}/reconcile/runs/latest", b.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        latest["run_id"], 2,
        "two runs in 10.5 s on two relays: {latest}"
    );
    let (_, first) = run_report(&b.base, &serde_json::json!(1)).await;
    assert_eq!(first["trigger"], "schedule", "{first}");
    drop(a);
}

/// A run counter at its end (a stranger's write, or 2^53 runs) refuses the run and says what to do,
/// instead of numbering from 0 again over old reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_counter_at_its_end_refuses_runs_instead_of_wrapping() {
    let nats = NatsServer::start();
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    fake.load_recorded("dcim_devices.json");
    let relay = TestRelay::start(reconciling(&nats, &fake, "a.redb")).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let config = async_nats::jetstream::kv::Config {
        bucket: "NETBOX_RELAY".into(),
        history: 1,
        ..Default::default()
    };
    let bucket = js.create_key_value(config).await.unwrap();
    let old = br#"{"run_id":1,"status":"succeeded","trigger":"api"}"#;
    bucket
        .put("reconcile.runs.1", old.as_slice().into())
        .await
        .unwrap();
    for latest in [u64::MAX, (1 << 53) - 1] {
        bucket
            .put("reconcile.latest", latest.to_string().into())
            .await
            .unwrap();
        let (status, body) = trigger(&relay.base).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "run_ids_exhausted", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&latest.to_string())
                && message.contains("nats kv del NETBOX_RELAY reconcile.latest"),
            "{message}"
        );
        let kept = bucket.get("reconcile.runs.1").await.unwrap().unwrap();
        assert_eq!(kept.as_ref(), old, "run 1's report is kept");
    }
    // One below the end: the last id is given.
    let last = (1u64 << 53) - 2;
    bucket
        .put("reconcile.latest", last.to_string().into())
        .await
        .unwrap();
    let (status, body) = trigger(&relay.base).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["run_id"], last + 1, "{body}");
    let report = crate::helpers::reconcile_report(&relay.base, &body["run_id"]).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    // The operator deletes the key and restarts the relays, as told: runs are numbered from 1.
    bucket.delete("reconcile.latest").await.unwrap();
    let (status, body) = trigger(&relay.base).await;
    assert_eq!(
        status, 503,
        "this relay's own counter is at the end too: {body}"
    );
    drop(relay);
    let relay = TestRelay::start(reconciling(&nats, &fake, "b.redb")).await;
    let (status, body) = trigger(&relay.base).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["run_id"], 1, "{body}");
}

/// A relay with a new state file joins a registry another relay built: it reads every key's
/// last message in one pass (no read per key, no publish refused by the per-key check), its
/// first run publishes nothing, and it deletes what NetBox no longer has. Keys another relay
/// publishes later, many at once, are read in one pass too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_new_state_learns_the_registry_in_one_read() {
    let nats = NatsServer::start();
    let fake = crate::fake_netbox::FakeNetbox::start("4.6.8").await;
    fake.generate_devices(1, 300);
    let a = TestRelay::start(reconciling(&nats, &fake, "a.redb")).await;
    let (_, run) = trigger(&a.base).await;
    let report = crate::helpers::reconcile_report(&a.base, &run["run_id"]).await;
    assert_eq!(
        report["object_types"]["dcim.device"]["upserted"], 300,
        "{report}"
    );
    let published = published_count(&nats.url()).await;

    let state = nats.scratch().join("b.redb");
    let env = [
        ("NETBOX_RELAY_NETBOX__URL", fake.url.as_str()),
        ("NETBOX_RELAY_NETBOX__TOKEN", crate::fake_netbox::TOKEN),
        ("NETBOX_RELAY_API__ADMIN_TOKEN", ADMIN),
        ("NETBOX_RELAY_RECONCILE__ON_START", "false"),
        ("NETBOX_RELAY_RECONCILE__INTERVAL", "0"),
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
    ];
    let b = crate::helpers::RelayProcess::start_on(
        &nats.url(),
        &state,
        crate::helpers::free_port(),
        &env,
        None,
    );
    b.wait_ready().await;
    let (_, run) = trigger(&b.base).await;
    let report = crate::helpers::reconcile_report(&b.base, &run["run_id"]).await;
    assert_eq!(report["pass"], "full", "a new state: a full pass {report}");
    let devices = &report["object_types"]["dcim.device"];
    assert_eq!(devices["unchanged"], 300, "{report}");
    assert_eq!(devices["upserted"], 0, "{report}");
    assert_eq!(
        published_count(&nats.url()).await,
        published,
        "nothing published"
    );
    let client = reqwest::Client::new();
    let metrics = crate::helpers::metrics_text(&client, &b.base).await;
    assert_eq!(
        counter_value(&metrics, "netbox_relay_stream_keys_learned_total"),
        300
    );
    assert_eq!(
        counter_value(&metrics, "netbox_relay_stream_key_reads_total"),
        0
    );
    assert_eq!(
        counter_value(&metrics, "netbox_relay_publish_conflicts_total"),
        0
    );

    // Relay A hears of 100 devices NetBox no longer lists: B has no record of them.
    let created = Utc::now() - chrono::Duration::minutes(10);
    for id in 900_001..=900_100 {
        assert_eq!(a.post_signed(&update(id, created)).await.0, 202);
    }
    fake.with(|s| s.objects.get_mut("dcim/devices").unwrap().remove(&7));
    let (_, run) =
        crate::helpers::trigger_run_with_body(&b.base, serde_json::json!({"force": true}), ADMIN)
            .await;
    let report = crate::helpers::reconcile_report(&b.base, &run["run_id"]).await;
    assert_eq!(report["pass"], "cheap", "{report}");
    assert_eq!(
        report["object_types"]["dcim.device"]["deleted"], 101,
        "{report}"
    );
    let metrics = crate::helpers::metrics_text(&client, &b.base).await;
    assert_eq!(
        counter_value(&metrics, "netbox_relay_stream_keys_learned_total"),
        400
    );
    assert_eq!(
        counter_value(&metrics, "netbox_relay_stream_key_reads_total"),
        0
    );
}

/// Before the stream exists (the very first start), reading every key's last message says so
/// as such, and a new relay's first run learns nothing without a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_every_key_before_the_stream_exists_says_there_is_no_stream() {
    use netbox_relay::publish::{PublishError, Publisher};
    let nats = NatsServer::start();
    let publisher = Publisher::connect(&test_config(&nats).nats).await.unwrap();
    assert!(
        publisher
            .connected_within(std::time::Duration::from_secs(10))
            .await
    );
    let read = publisher.last_per_key("default", None).await;
    assert!(
        matches!(read, Err(PublishError::NoStream(_))),
        "{:?}",
        read.err()
    );
}
