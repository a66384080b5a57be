//! `netbox-relay send-test-webhook`: a device "created" webhook shaped like NetBox's (a recorded
//! body, stamped now, for a device id no NetBox uses), signed with the configured secret as
//! NetBox signs it, sent to the relay; or printed as a `curl` command line.

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::config::Config;
use crate::webhook::signature::sign;

/// The recorded body of a device created in NetBox 4.6.
const RECORDED: &str = include_str!("test_webhook.json");
/// The device's id: far above what a NetBox has, so the next reconcile deletes it.
pub const TEST_DEVICE_ID: u64 = 999_999_999;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("webhook.secrets is empty: set it (NETBOX_RELAY_WEBHOOK__SECRETS) to the secret NetBox signs with")]
    NoSecret,
    #[error("sending to {url}: {message}")]
    Send { url: String, message: String },
}

/// The body and its `X-Hook-Signature`.
pub fn signed_body(config: &Config) -> Result<(String, String), SendError> {
    let secret = config
        .webhook
        .secrets
        .0
        .first()
        .ok_or(SendError::NoSecret)?;
    let mut body: Value = serde_json::from_str(RECORDED).expect("the embedded body is JSON");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let id = TEST_DEVICE_ID;
    body["timestamp"] = json!(now);
    body["request_id"] = json!(uuid::Uuid::new_v4().to_string());
    let data = &mut body["data"];
    data["id"] = json!(id);
    data["url"] = json!(format!("/api/dcim/devices/{id}/"));
    data["display_url"] = json!(format!("/dcim/devices/{id}/"));
    data["name"] = json!("netbox-relay-test");
    data["display"] = json!("netbox-relay-test");
    data["created"] = json!(now);
    data["last_updated"] = json!(now);
    let body = body.to_string();
    let signature = sign(secret.expose_secret(), body.as_bytes());
    Ok((body, signature))
}

/// Where the relay listens, as this host reaches it.
pub fn default_url(config: &Config) -> String {
    let mut listen = config.server.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = match config.server.tls_cert.is_some() {
        true => "https",
        false => "http",
    };
    format!("{scheme}://{listen}/webhooks/netbox")
}

/// The `curl` command line that sends the body (the signature, not the secret, is in it).
pub fn curl(url: &str, body: &str, signature: &str) -> String {
    let quoted = body.replace('\'', r"'\''");
    format!(
        "curl -sS -H 'Content-Type: application/json' -H 'X-Hook-Signature: {signature}' --data-binary '{quoted}' {url}"
    )
}

/// Sends it; answers the relay's status and body.
pub async fn send(url: &str, body: String, signature: &str) -> Result<(u16, String), SendError> {
    let failed = |e: reqwest::Error| SendError::Send {
        url: url.to_string(),
        message: e.to_string(),
    };
    let answer = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Hook-Signature", signature)
        .body(body)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(failed)?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await.map_err(failed)?))
}
