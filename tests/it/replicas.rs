//! Several relays on one NATS: each with its own state file, one order per key on the stream.
//! A relay publishes a key's delta only while the key's last message is the one it judged
//! against (`Nats-Expected-Last-Subject-Sequence`); otherwise it reads the key and decides again.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{published_count, test_config, NatsServer, TestRelay};

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
