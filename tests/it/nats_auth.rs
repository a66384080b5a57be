//! NATS authentication as deployments set it up: a token, and a `.creds` file (user JWT and
//! seed) against a server in operator mode. The credentials are used, and a wrong one is named
//! without being shown.

use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{test_config, NatsServer, TestRelay};

const NATS_TOKEN: &str = "nats-token-for-tests-7d1e90";

/// `netbox-relay check` with `env`, its report and exit code.
fn check(nats: &NatsServer, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
            .arg("check")
            .env("NETBOX_RELAY_NATS__URL", nats.url())
            .env("NETBOX_RELAY_WEBHOOK__SECRETS", "unused-here")
            .env(
                "NETBOX_RELAY_STATE__PATH",
                nats.scratch().join("check.redb"),
            )
            .env("NETBOX_RELAY_LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .output()
            .expect("run netbox-relay check")
    });
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), report)
}

/// Publishes the recorded device create through `relay`; the stream, read with `options`,
/// holds it.
async fn publishes(relay: &TestRelay, nats: &NatsServer, options: async_nats::ConnectOptions) {
    let (status, body) = relay.post_fixture("020_device_created.json").await;
    assert_eq!(status, 202, "{body}");
    let client = options.connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("NETBOX_REGISTRY").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

/// A `check` report's line about the stream says it is there.
fn stream_checked(report: &str) -> bool {
    report
        .lines()
        .any(|l| l.starts_with("OK") && l.contains("nats stream") && l.contains("present"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_token_is_used_and_a_wrong_one_is_named_not_shown() {
    let nats = NatsServer::start_with(&["--auth", NATS_TOKEN]);
    let mut config = test_config(&nats);
    config.nats.token = Some(SecretString::from(NATS_TOKEN));
    let relay = TestRelay::start(config).await;
    let options = async_nats::ConnectOptions::with_token(NATS_TOKEN.into());
    publishes(&relay, &nats, options).await;

    let (code, report) = check(&nats, &[("NETBOX_RELAY_NATS__TOKEN", "wrong-token-4711")]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.to_lowercase().contains("authorization"),
        "the report says why: {report}"
    );
    assert!(!report.contains("wrong-token-4711"), "{report}");
    let (code, report) = check(&nats, &[("NETBOX_RELAY_NATS__TOKEN", NATS_TOKEN)]);
    assert!(!report.contains(NATS_TOKEN), "{report}");
    assert!(stream_checked(&report), "{code:?} {report}");
}

/// A JWT as NATS signs them: header, claims, ed25519 signature by `issuer`, base64url each.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": "ed25519-nkey"}).to_string());
    let claims = json!({
        "jti": format!("{:X}", rand_id(subject)),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(body.as_bytes()).expect("sign");
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn rand_id(seed: &str) -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    u128::from(state.hash_one(seed)) << 64 | u128::from(state.hash_one(seed.len()))
}

/// An operator, a system account, an account with JetStream and a user of it: the server's
/// configuration (memory resolver) and the user's `.creds` file.
fn operator_setup() -> (String, String) {
    let operator = KeyPair::new_operator();
    let (system, account, user) = (
        KeyPair::new_account(),
        KeyPair::new_account(),
        KeyPair::new_user(),
    );
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let mut with_jetstream = unlimited.clone();
    with_jetstream.as_object_mut().unwrap().extend(
        json!({"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1})
            .as_object()
            .unwrap()
            .clone(),
    );
    let account_claims = |limits: &Value| {
        json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
               "type": "account", "version": 2})
    };
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        account_claims(&unlimited),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "relay",
        account_claims(&with_jetstream),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "netbox-relay",
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
               "type": "user", "version": 2}),
    );
    let config = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: \"{}\"\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{system_jwt}\"\n  {}: \"{account_jwt}\"\n}}\n",
        system.public_key(),
        system.public_key(),
        account.public_key(),
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("seed")
    );
    (config, creds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_creds_file_is_used_and_a_wrong_one_is_named_not_shown() {
    let (server_config, creds) = operator_setup();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("operator.conf");
    std::fs::write(&conf, server_config).unwrap();
    let creds_path = dir.path().join("relay.creds");
    std::fs::write(&creds_path, &creds).unwrap();
    let nats = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);

    let mut config = test_config(&nats);
    config.nats.creds_file = Some(creds_path.clone());
    let relay = TestRelay::start(config).await;
    let options = async_nats::ConnectOptions::with_credentials_file(&creds_path)
        .await
        .unwrap();
    publishes(&relay, &nats, options).await;

    // A creds file of a user the server does not know (another account, never preloaded).
    let (_, stranger) = operator_setup();
    let stranger_path = dir.path().join("stranger.creds");
    std::fs::write(&stranger_path, &stranger).unwrap();
    let (code, report) = check(
        &nats,
        &[(
            "NETBOX_RELAY_NATS__CREDS_FILE",
            stranger_path.to_str().unwrap(),
        )],
    );
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.to_lowercase().contains("authorization"),
        "the report says why: {report}"
    );
    let seed_line = stranger.lines().find(|l| l.starts_with("SU")).unwrap();
    assert!(
        !report.contains(seed_line),
        "the seed is never shown: {report}"
    );
    let (_, report) = check(
        &nats,
        &[(
            "NETBOX_RELAY_NATS__CREDS_FILE",
            creds_path.to_str().unwrap(),
        )],
    );
    assert!(stream_checked(&report), "{report}");
}
