//! Every bad input gets its status and a clear error body, and publishes nothing.

use serde_json::{json, Value};

use crate::helpers::{fixture, fixture_json, published_count, test_config, NatsServer, TestRelay};
use netbox_relay::webhook::signature::sign;

const JSON: (&str, &str) = ("content-type", "application/json");

/// A case name, a body, and the request headers.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>);

/// A signed copy of the recorded device create, changed by `edit`.
fn edited(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut body = fixture_json("020_device_created.json");
    edit(&mut body);
    serde_json::to_vec(&body).unwrap()
}

async fn expect(
    relay: &TestRelay,
    case: &str,
    (status, body): (u16, Value),
    want_status: u16,
    want: &str,
) {
    assert_eq!(status, want_status, "{case}: {body}");
    let field = if want_status == 200 {
        "status"
    } else {
        "error"
    };
    assert_eq!(body[field], want, "{case}: {body}");
    let text_field = if want_status == 200 {
        "reason"
    } else {
        "message"
    };
    assert!(
        !body[text_field].as_str().unwrap_or_default().is_empty(),
        "{case}: {body}"
    );
    assert_eq!(
        relay.get("/healthz").await.0,
        200,
        "{case}: the relay survived"
    );
}

#[tokio::test]
async fn bad_signatures_are_rejected_with_401() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let f = fixture("020_device_created.json");
    let other = sign("another-secret", &f.body);
    let mut flipped = f.body.clone();
    flipped[100] ^= 0x01;
    let cases: Vec<Case> = vec![
        ("no signature", f.body.clone(), vec![JSON]),
        (
            "another secret",
            f.body.clone(),
            vec![JSON, ("x-hook-signature", &other)],
        ),
        (
            "not hex",
            f.body.clone(),
            vec![JSON, ("x-hook-signature", "not-hex-at-all")],
        ),
        (
            "truncated",
            f.body.clone(),
            vec![JSON, ("x-hook-signature", &f.signature[..64])],
        ),
        (
            "one flipped byte",
            flipped,
            vec![JSON, ("x-hook-signature", &f.signature)],
        ),
    ];
    for (case, body, headers) in cases {
        let answer = relay.post_raw(body, &headers).await;
        expect(&relay, case, answer, 401, "bad_signature").await;
    }
    assert_eq!(
        published_count(&nats.url()).await,
        0,
        "nothing was published"
    );
}

#[tokio::test]
async fn malformed_payloads_are_rejected_with_400() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"event\": \"created\", ".to_vec()),
        ("not an object", b"[1, 2, 3]".to_vec()),
        ("a string", b"\"created\"".to_vec()),
        ("data missing", edited(|b| drop(b.remove("data")))),
        (
            "data not an object",
            edited(|b| drop(b.insert("data".into(), json!([1])))),
        ),
        (
            "data.id a string",
            edited(|b| {
                drop(
                    b["data"]
                        .as_object_mut()
                        .unwrap()
                        .insert("id".into(), json!("1")),
                )
            }),
        ),
        (
            "data.id negative",
            edited(|b| {
                drop(
                    b["data"]
                        .as_object_mut()
                        .unwrap()
                        .insert("id".into(), json!(-1)),
                )
            }),
        ),
        (
            "data.id past a bigint",
            edited(|b| {
                drop(
                    b["data"]
                        .as_object_mut()
                        .unwrap()
                        .insert("id".into(), json!(9_223_372_036_854_775_808u64)),
                )
            }),
        ),
        ("event missing", edited(|b| drop(b.remove("event")))),
        (
            "event a number",
            edited(|b| drop(b.insert("event".into(), json!(3)))),
        ),
        (
            "object_type a number",
            edited(|b| drop(b.insert("object_type".into(), json!(7)))),
        ),
        (
            "no object type anywhere",
            edited(|b| {
                b.remove("object_type");
                b["data"].as_object_mut().unwrap().remove("url");
            }),
        ),
        (
            "bad timestamp",
            edited(|b| drop(b.insert("timestamp".into(), json!("yesterday")))),
        ),
        ("address not an IP", {
            let mut ip = fixture_json("029_ipaddress_created.json");
            ip["data"]["address"] = json!("not-an-ip");
            serde_json::to_vec(&ip).unwrap()
        }),
        ("deeply nested arrays", deep_arrays.into_bytes()),
        ("deeply nested objects", deep_objects.into_bytes()),
    ];
    for (case, body) in cases {
        let answer = relay.post_signed(&body).await;
        expect(&relay, case, answer, 400, "bad_payload").await;
    }
    assert_eq!(
        published_count(&nats.url()).await,
        0,
        "nothing was published"
    );
}

#[tokio::test]
async fn well_formed_webhooks_without_a_change_to_publish_are_ignored_with_200() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let job = json!({
        "event": "job_started", "timestamp": "2026-11-22T10:46:07.449958+00:00",
        "object_type": "core.job", "data": {"id": 5, "url": "/api/core/jobs/5/", "status": "running"},
    });
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unknown object type",
            edited(|b| drop(b.insert("object_type".into(), json!("extras.journalentry")))),
        ),
        (
            "unknown bare model",
            edited(|b| {
                b.remove("object_type");
                b.insert("model".into(), json!("journalentry"));
            }),
        ),
        ("job event", serde_json::to_vec(&job).unwrap()),
        (
            "recorded manufacturer",
            fixture("005_manufacturer_created.json").body,
        ),
    ];
    for (case, body) in cases {
        let answer = relay.post_signed(&body).await;
        expect(&relay, case, answer, 200, "ignored").await;
    }
    assert_eq!(
        published_count(&nats.url()).await,
        0,
        "nothing was published"
    );
}

#[tokio::test]
async fn wrong_media_types_and_oversized_bodies_are_refused() {
    let nats = NatsServer::start();
    let relay = TestRelay::start(test_config(&nats)).await;
    let f = fixture("020_device_created.json");
    let sig = ("x-hook-signature", f.signature.as_str());
    let answer = relay
        .post_raw(f.body.clone(), &[("content-type", "text/plain"), sig])
        .await;
    expect(&relay, "text/plain", answer, 415, "unsupported_media_type").await;
    let answer = relay.post_raw(f.body.clone(), &[sig]).await;
    expect(
        &relay,
        "no content type",
        answer,
        415,
        "unsupported_media_type",
    )
    .await;

    let just_over = vec![b' '; 4 * 1024 * 1024 + 1];
    let answer = relay.post_signed(&just_over).await;
    expect(&relay, "one byte over the limit", answer, 413, "too_large").await;
    let ten_mb = vec![b'x'; 10 * 1024 * 1024];
    let answer = relay.post_signed(&ten_mb).await;
    expect(&relay, "10 MB", answer, 413, "too_large").await;

    let mut padded = f.body.clone();
    padded.resize(4 * 1024 * 1024, b' ');
    let (status, body) = relay.post_signed(&padded).await;
    assert_eq!(
        status, 202,
        "a body of exactly the limit is accepted: {body}"
    );
    assert_eq!(
        published_count(&nats.url()).await,
        1,
        "only the valid webhook was published"
    );
}

#[tokio::test]
async fn any_of_several_secrets_is_accepted_for_rotation() {
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    let current = config.webhook.secrets.0.remove(0);
    config.webhook.secrets.0 = vec![secrecy::SecretString::from("next-secret"), current];
    let relay = TestRelay::start(config).await;
    let (status, _) = relay.post_fixture("020_device_created.json").await;
    assert_eq!(status, 202, "the old secret still verifies");
    let body = fixture("021_device_created.json").body;
    let next = sign("next-secret", &body);
    let (status, _) = relay
        .post_raw(body, &[JSON, ("x-hook-signature", &next)])
        .await;
    assert_eq!(status, 202, "the new secret verifies");
    let body = fixture("022_device_created.json").body;
    let retired = sign("retired-secret", &body);
    let answer = relay
        .post_raw(body, &[JSON, ("x-hook-signature", &retired)])
        .await;
    expect(
        &relay,
        "a secret not configured",
        answer,
        401,
        "bad_signature",
    )
    .await;
    assert_eq!(published_count(&nats.url()).await, 2);
}
