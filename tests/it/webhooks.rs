//! End to end: recorded webhooks over real HTTP to the relay, deltas read back from a real
//! JetStream stream.

use crate::expected::{DELTAS, IGNORED};
use crate::helpers::{
    all_fixture_files, published_count, stream_messages, test_config, wait_for_published,
    NatsServer, TestRelay,
};

#[tokio::test]
async fn every_recorded_webhook_reaches_jetstream_as_its_delta() {
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    // Every message kept (no rollup on delete), to compare each with the webhook it came from.
    config.nats.history_per_key = 0;
    let relay = TestRelay::start(config).await;
    for file in all_fixture_files() {
        let (status, body) = relay.post_fixture(&file).await;
        if IGNORED.contains(&file.as_str()) {
            assert_eq!(status, 200, "{file}: {body}");
            assert_eq!(body["status"], "ignored", "{file}");
            // Device roles and platforms only trigger cascades, off without netbox.url.
            let parent = file.contains("devicerole") || file.contains("platform");
            let reason = if parent {
                "cascades are off"
            } else {
                "not supported"
            };
            assert!(
                body["reason"].as_str().unwrap().contains(reason),
                "{file}: {body}"
            );
        } else {
            assert_eq!(status, 202, "{file}: {body}");
            assert_eq!(
                body,
                serde_json::json!({"status": "accepted", "deltas": 1}),
                "{file}"
            );
        }
    }

    let stored = stream_messages(&nats.url()).await;
    assert_eq!(
        stored.len(),
        DELTAS.len(),
        "one stored message per translated webhook"
    );
    for (message, want) in stored.iter().zip(DELTAS) {
        let d = &message.delta;
        let ctx = want.file;
        assert_eq!(
            message.subject,
            format!("netbox.registry.default.{}.{}", want.kind, want.id),
            "{ctx}"
        );
        assert_eq!(message.msg_id, d["delta_id"].as_str().unwrap(), "{ctx}");
        assert_eq!(message.content_type, "application/json", "{ctx}");
        assert_eq!(d["kind"], want.kind, "{ctx}");
        assert_eq!(d["op"], want.op, "{ctx}");
        assert_eq!(
            d["key"],
            format!("netbox/default/{}/{}", want.object_type, want.id),
            "{ctx}"
        );
        assert_eq!(d["origin"], "webhook", "{ctx}");
        let sent = crate::helpers::fixture_json(ctx);
        if want.op == "upsert" {
            let time = |v: &serde_json::Value| {
                v.as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap()
            };
            assert_eq!(
                time(&d["revision"]),
                time(&sent["data"]["last_updated"]),
                "{ctx}: the revision is the object's last_updated"
            );
        }
        if want.op == "delete" {
            assert!(d["entry"].is_null(), "{ctx}");
        } else {
            assert_eq!(d["entry"]["name"], want.name, "{ctx}");
            assert_eq!(
                d["entry"]["addresses"],
                serde_json::json!(want.addresses),
                "{ctx}"
            );
            assert_eq!(d["entry"]["labels"]["source"], "netbox", "{ctx}");
        }
    }
    relay.relay.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_webhook_twice_is_published_once() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let (status, _) = relay.post_fixture("034_device_updated.json").await;
    assert_eq!(status, 202);
    let (status, body) = relay.post_fixture("034_device_updated.json").await;
    assert_eq!(
        (status, &body["reason"]),
        (200, &serde_json::json!("duplicate")),
        "{body}"
    );
    assert_eq!(published_count(&nats.url()).await, 1);
    let (status, _) = relay.post_fixture("035_device_updated.json").await;
    assert_eq!(status, 202);
    assert_eq!(published_count(&nats.url()).await, 2);
}

#[tokio::test]
async fn webhooks_are_spooled_while_nats_is_unreachable_and_arrive_once_it_is_back() {
    let mut nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    nats.stop();
    let (status, body) = relay.post_fixture("020_device_created.json").await;
    assert_eq!(status, 202, "{body}");
    // Still ready: a webhook sent now is made durable in the spool. The body says why.
    let (ready, body) = relay.get("/readyz").await;
    assert_eq!(ready, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["nats"], "away");
    assert_eq!(body["spool_depth"], 1);

    nats.restart();
    relay.wait_ready().await;
    wait_for_published(&nats.url(), 1, std::time::Duration::from_secs(20)).await;
    let (status, body) = relay.post_fixture("021_device_created.json").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(published_count(&nats.url()).await, 2);
}

#[tokio::test]
async fn health_answers_while_readiness_waits_for_nats() {
    let mut nats = NatsServer::start();
    nats.stop();
    let relay = TestRelay::start_unready(test_config(&nats)).await;
    assert_eq!(
        relay.get("/healthz").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (status, body) = relay.get("/readyz").await;
    assert_eq!(
        status, 200,
        "the spool takes webhooks while NATS is away: {body}"
    );
    assert_eq!(body["nats"], "away");
    assert_eq!(body["stream"], "not_ready");
    nats.restart();
    relay.wait_ready().await;
    let (status, _) = relay.post_fixture("020_device_created.json").await;
    assert_eq!(status, 202, "the stream was created once NATS came up");
}
