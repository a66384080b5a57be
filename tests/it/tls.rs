//! Native TLS on the receiver (`server.tls_cert`, `server.tls_key`): a client that verifies the
//! certificate is served, plain HTTP on the port is refused, and a rotated certificate is taken
//! up without a restart. Certificates made with `openssl` (Debian package).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{fixture, free_port, NatsServer, RelayProcess};

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, written into `dir`.
fn make_certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // An end-entity certificate (openssl makes a CA by default, which rustls refuses to serve
        // as one).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// A client that trusts only `cert`.
fn trusting(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn healthz(client: &reqwest::Client, base: &str) -> Result<u16, reqwest::Error> {
    let answer = client.get(format!("{base}/healthz")).send().await?;
    Ok(answer.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_verified_and_a_rotated_certificate_is_taken_up() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "first");
    let env = [
        ("NETBOX_RELAY_SERVER__TLS_CERT", cert.to_str().unwrap()),
        ("NETBOX_RELAY_SERVER__TLS_KEY", key.to_str().unwrap()),
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
    ];
    let port = free_port();
    let _relay = RelayProcess::start_with(&nats, port, &env, None);
    let https = format!("https://127.0.0.1:{port}");
    let client = trusting(&cert);
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(&client, &https).await.ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the relay never answered over HTTPS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let webhook = fixture("020_device_created.json");
    let answer = client
        .post(format!("{https}/webhooks/netbox"))
        .header("content-type", "application/json")
        .header("x-hook-signature", webhook.signature.clone())
        .body(webhook.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202, "a webhook over verified HTTPS");

    let plain = reqwest::Client::new();
    let refused = healthz(&plain, &format!("http://127.0.0.1:{port}")).await;
    assert!(refused.is_err(), "plain HTTP is refused: {refused:?}");
    let unverified = trusting(&make_certificate(dir.path(), "stranger").0);
    assert!(
        healthz(&unverified, &https).await.is_err(),
        "a client that does not trust it fails"
    );

    // Rotation: new files moved over the old ones; new connections get the new certificate.
    let (new_cert, new_key) = make_certificate(dir.path(), "second");
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let rotated = trusting(&cert);
    let deadline = Instant::now() + Duration::from_secs(15);
    while healthz(&rotated, &https).await.ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not taken up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = rotated
        .get(format!("{https}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let closed = r#"netbox_relay_http_connections_closed_total{reason="tls_handshake"}"#;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(closed))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        count >= 2,
        "the plain and the unverified attempts were closed: {metrics}"
    );
}

#[test]
fn a_key_that_does_not_match_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = make_certificate(dir.path(), "a");
    let (_, other_key) = make_certificate(dir.path(), "b");
    let output = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("serve")
        .env("NETBOX_RELAY_WEBHOOK__SECRETS", "s")
        .env("NETBOX_RELAY_SERVER__TLS_CERT", &cert)
        .env("NETBOX_RELAY_SERVER__TLS_KEY", &other_key)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("server.tls_cert"), "{said}");
    let half = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("serve")
        .env("NETBOX_RELAY_WEBHOOK__SECRETS", "s")
        .env("NETBOX_RELAY_SERVER__TLS_CERT", &cert)
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr).contains("server.tls_key"));
    // A command that serves nothing does not read the files (its user may not be able to).
    let spool = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("spool")
        .env("NETBOX_RELAY_STATE__PATH", dir.path().join("state.redb"))
        .env("NETBOX_RELAY_SERVER__TLS_CERT", &cert)
        .env("NETBOX_RELAY_SERVER__TLS_KEY", &other_key)
        .output()
        .unwrap();
    assert!(
        spool.status.success(),
        "{}",
        String::from_utf8_lossy(&spool.stderr)
    );
}
