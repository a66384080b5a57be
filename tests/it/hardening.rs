//! Hostile input and faults against a real nats-server: deltas past `max_payload`, dead letters
//! and the `spool` command, unreadable spool rows, revisions from the future.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{
    fixture_json, metrics_text, stream_messages, test_config, wait_for_published, NatsServer,
    TestRelay,
};

/// A nats-server config file with this `max_payload`, in `dir`.
fn payload_config(dir: &std::path::Path, max_payload: usize) -> String {
    let path = dir.join(format!("max-payload-{max_payload}.conf"));
    std::fs::write(&path, format!("max_payload: {max_payload}\n")).unwrap();
    path.display().to_string()
}

/// A device webhook (recorded device 020) with one more tag whose slug is `slug_len` long.
fn device_with_long_tag(id: u64, slug_len: usize) -> Vec<u8> {
    let mut body = fixture_json("020_device_created.json");
    let data = body["data"].as_object_mut().unwrap();
    data["id"] = json!(id);
    data["url"] = json!(format!("/api/dcim/devices/{id}/"));
    let slug = "x".repeat(slug_len);
    let tags = data["tags"].as_array_mut().unwrap();
    tags.push(
        json!({"id": 99, "url": "/api/extras/tags/99/", "display": "long",
        "name": "long", "slug": slug, "color": "ffffff"}),
    );
    serde_json::to_vec(&body).unwrap()
}

/// The recorded prefix 017 as `cidr`.
fn prefix(id: u64, cidr: &str) -> Vec<u8> {
    let mut body = fixture_json("017_prefix_created.json");
    let data = body["data"].as_object_mut().unwrap();
    data["id"] = json!(id);
    data["url"] = json!(format!("/api/ipam/prefixes/{id}/"));
    data["prefix"] = json!(cidr);
    serde_json::to_vec(&body).unwrap()
}

fn small_device(id: u64) -> Vec<u8> {
    device_with_long_tag(id, 4)
}

async fn metric(relay: &TestRelay, line_start: &str) -> f64 {
    let text = metrics_text(&relay.http, &relay.base).await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

#[tokio::test]
async fn a_delta_past_max_payload_is_refused_with_413_or_made_to_fit_and_blocks_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(&["-c", &payload_config(scratch.path(), 64 * 1024)]);
    let mut config = test_config(&nats);
    config.registry.expand_subnets = true;
    config.registry.max_expanded_hosts = 65536;
    let relay = TestRelay::start(config).await;

    // A device whose tag slug alone is larger than the server takes: nothing to drop, so 413.
    let (status, body) = relay.post_signed(&device_with_long_tag(501, 80_000)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("dcim.device 501"), "{message}");
    assert!(
        message.contains("65536"),
        "names the server's max_payload: {message}"
    );

    // A /16 prefix expanded to 65,534 hosts: the host list goes, the CIDR stays, and it says so.
    let (status, body) = relay.post_signed(&prefix(502, "10.20.0.0/16")).await;
    assert_eq!(status, 202, "{body}");
    // Later deltas are not held up by either.
    let (status, _) = relay.post_signed(&small_device(503)).await;
    assert_eq!(status, 202);

    wait_for_published(&nats.url(), 2, Duration::from_secs(10)).await;
    let stored = stream_messages(&nats.url()).await;
    let sweep = &stored[0].delta["entry"]["sweep"];
    assert_eq!(stored[0].delta["object_id"], 502);
    assert_eq!(sweep["cidr"], "10.20.0.0/16");
    assert_eq!(sweep["hosts"], json!([]));
    assert_eq!(sweep["hosts_omitted"], 65534);
    assert_eq!(stored[1].delta["object_id"], 503);
    relay.relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_spooled_delta_jetstream_refuses_becomes_a_dead_letter_and_the_rest_drains() {
    let scratch = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.registry.expand_subnets = true;
    config.registry.max_expanded_hosts = 16384;
    let state_path = config.state.path.clone();
    let relay = TestRelay::start(config).await;

    // Spooled while NATS is away, under the default max_payload (the /18 is about 200 KB).
    nats.stop();
    for body in [
        small_device(601),
        prefix(602, "10.30.0.0/18"),
        small_device(603),
    ] {
        let (status, answer) = relay.post_signed(&body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["status"], "accepted");
    }
    // NATS comes back taking at most 64 KB a message: the prefix is refused, the others drain.
    nats.restart_with(&["-c", &payload_config(scratch.path(), 64 * 1024)]);
    wait_for_published(&nats.url(), 2, Duration::from_secs(20)).await;
    let stored = stream_messages(&nats.url()).await;
    let ids: Vec<&Value> = stored.iter().map(|m| &m.delta["object_id"]).collect();
    assert_eq!(ids, [&json!(601), &json!(603)]);

    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&relay, "netbox_relay_spool_depth").await != 0.0 {
        assert!(Instant::now() < deadline, "the spool did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = r#"netbox_relay_deltas_dead_lettered_total{reason="refused"}"#;
    assert_eq!(metric(&relay, dead).await, 1.0);
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["dead_letters"], 1);
    relay.relay.stop().await.unwrap();

    // The operator's view: listed with its key and reason, then dropped.
    let spool = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
            .arg("spool")
            .args(args)
            .env("NETBOX_RELAY_STATE__PATH", &state_path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let listed = spool(&[]);
    assert!(listed.contains("spool: 0 delta(s) waiting"), "{listed}");
    assert!(listed.contains("dead letters: 1"), "{listed}");
    assert!(
        listed.contains("netbox/default/ipam.prefix/602"),
        "{listed}"
    );
    assert!(
        listed.contains("max payload"),
        "the reason is shown: {listed}"
    );
    let retried = spool(&["retry", "--all"]);
    assert!(
        retried.contains("1 dead letter(s) back in the spool"),
        "{retried}"
    );
    assert!(spool(&[]).contains("spool: 1 delta(s) waiting"));
    // Refused again by the next relay, it comes back as a dead letter; then it is dropped.
    let relay = TestRelay::start(test_config(&nats)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.get("/readyz").await.1["dead_letters"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the retried delta was not refused again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.relay.stop().await.unwrap();
    assert!(spool(&["drop", "--all"]).contains("1 dead letter(s) dropped"));
    assert!(spool(&[]).contains("dead letters: 0"));
    assert_eq!(stream_messages(&nats.url()).await.len(), 2);
}

#[tokio::test]
async fn an_unreadable_spool_row_is_quarantined_and_counted_not_dropped() {
    let nats = NatsServer::start();
    let config = test_config(&nats);
    // A spool row the relay cannot read, then a good one, written into the state file.
    {
        std::fs::create_dir_all(config.state.path.parent().unwrap()).unwrap();
        let db = redb::Database::create(&config.state.path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let spool: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("spool");
            let mut table = tx.open_table(spool).unwrap();
            table.insert(0, b"{not a delta".as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let relay = TestRelay::start(config).await;
    let (status, _) = relay.post_signed(&small_device(701)).await;
    assert_eq!(status, 202);
    wait_for_published(&nats.url(), 1, Duration::from_secs(10)).await;
    let unreadable = r#"netbox_relay_deltas_dead_lettered_total{reason="unreadable"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&relay, unreadable).await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the unreadable row was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.get("/readyz").await.1["dead_letters"], 1);
    relay.relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_revision_from_the_future_is_clamped_and_later_changes_still_publish() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let mut body = fixture_json("020_device_created.json");
    let timestamp = body["timestamp"].as_str().unwrap().to_string();
    body["data"]["last_updated"] = json!("9999-12-31T23:59:59.000000Z");
    let (status, _) = relay.post_signed(&serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 202);

    // A genuine later change: one second after the event, a new serial.
    let event: chrono::DateTime<chrono::Utc> = timestamp.parse().unwrap();
    let later = event + chrono::Duration::seconds(1);
    body["event"] = json!("updated");
    body["timestamp"] = json!(later.to_rfc3339());
    body["data"]["last_updated"] = json!(later.to_rfc3339());
    body["data"]["serial"] = json!("SN-LATER");
    let (status, answer) = relay.post_signed(&serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 202, "the later change is not stale: {answer}");

    wait_for_published(&nats.url(), 2, Duration::from_secs(10)).await;
    let stored = stream_messages(&nats.url()).await;
    let first: chrono::DateTime<chrono::Utc> = stored[0].delta["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first, event, "clamped to the event's own timestamp");
    assert_eq!(stored[1].delta["entry"]["attributes"]["serial"], "SN-LATER");
    assert_eq!(
        metric(&relay, "netbox_relay_revisions_clamped_total").await,
        1.0
    );
    relay.relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_deleted_stream_is_created_again_and_its_deltas_are_not_dead_letters() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream(crate::helpers::STREAM).await.unwrap();
    for id in [801, 802, 803] {
        let (status, body) = relay.post_signed(&small_device(id)).await;
        assert_eq!(status, 202, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = match js.get_stream(crate::helpers::STREAM).await {
            Ok(mut stream) => stream.info().await.unwrap().state.messages,
            Err(_) => 0,
        };
        if stored == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {stored} of 3 deltas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.get("/readyz").await.1["dead_letters"], 0);
    relay.relay.stop().await.unwrap();
}
