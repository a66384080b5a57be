//! Validation at load: every value checked and named by its key when wrong, empty values taken
//! as unset, secret files read.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{invalid, Config, ConfigError, Confirm};
use crate::netbox::{object_type, ObjectType};

/// The quickstart's webhook secret (`deploy/local/run.sh` makes it), read when no other secret
/// is configured: the commands run from the checkout find it as the relay does.
pub const QUICKSTART_SECRET: &str = "./data/webhook-secret";

impl Config {
    /// Checks every value and reads the secret files.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.validate_for(true)
    }

    /// [`Config::validate`]; a missing webhook secret is an error only when `webhooks`.
    pub fn validate_for(&mut self, webhooks: bool) -> Result<(), ConfigError> {
        self.unset_empty();
        let quickstart = std::path::Path::new(QUICKSTART_SECRET);
        if self.webhook.secrets.0.is_empty()
            && self.webhook.secret_file.is_none()
            && quickstart.is_file()
        {
            self.webhook.secret_file = Some(quickstart.to_path_buf());
        }
        if let Some(path) = &self.webhook.secret_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("webhook.secret_file", format!("{}: {e}", path.display())))?;
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            self.webhook
                .secrets
                .0
                .extend(lines.map(|l| SecretString::from(l.to_string())));
        }
        if let Some(path) = &self.netbox.token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| invalid("netbox.token_file", format!("{}: {e}", path.display())))?;
            self.netbox.token = Some(SecretString::from(token.trim().to_string()));
        }
        if self
            .webhook
            .secrets
            .0
            .iter()
            .any(|s| s.expose_secret().is_empty())
        {
            return Err(invalid("webhook.secrets", "a secret is empty"));
        }
        if webhooks && self.webhook.require_signature && self.webhook.secrets.0.is_empty() {
            let message = "at least one secret is required: set it, or webhook.secret_file \
                (NETBOX_RELAY_WEBHOOK__SECRET_FILE) to a file that holds it; ./data/webhook-secret \
                (what deploy/local/run.sh makes) is read when it exists. Or set \
                webhook.require_signature = false";
            return Err(invalid("webhook.secrets", message));
        }
        if webhooks && self.webhook.confirm == Confirm::Always && self.netbox.url.is_none() {
            return Err(invalid(
                "webhook.confirm",
                "`always` asks NetBox: set netbox.url and netbox.token (or use auto)",
            ));
        }
        if self.webhook.confirm_timeout.is_zero() {
            return Err(invalid("webhook.confirm_timeout", "must be greater than 0"));
        }
        if self.webhook.max_body_bytes == 0 {
            return Err(invalid("webhook.max_body_bytes", "must be greater than 0"));
        }
        if self.registry.max_expanded_hosts > MAX_EXPANDED_HOSTS {
            return Err(invalid(
                "registry.max_expanded_hosts",
                format!("must be at most {MAX_EXPANDED_HOSTS} (one prefix's host list is bounded so that one webhook stays cheap)"),
            ));
        }
        self.validate_server(webhooks)?;
        subject_token("registry.partition", &self.registry.partition)?;
        for token in self.nats.subject_prefix.split('.') {
            subject_token("nats.subject_prefix", token)?;
        }
        subject_token("nats.stream", &self.nats.stream)?;
        subject_token("nats.kv_bucket", &self.nats.kv_bucket)?;
        if self.reconcile.lease_ttl < Duration::from_secs(3) {
            return Err(invalid("reconcile.lease_ttl", "must be at least 3s"));
        }
        if !(1..=5).contains(&self.nats.replicas) {
            return Err(invalid("nats.replicas", "must be between 1 and 5"));
        }
        if self.nats.tombstone_ttl.as_secs() < 1 {
            // NATS counts message TTLs in whole seconds.
            return Err(invalid("nats.tombstone_ttl", "must be at least 1s"));
        }
        if self.nats.ack_timeout.is_zero() {
            return Err(invalid("nats.ack_timeout", "must be greater than 0"));
        }
        self.object_types()?;
        if !(0.0..=1.0).contains(&self.reconcile.max_delete_fraction) {
            return Err(invalid(
                "reconcile.max_delete_fraction",
                "must be between 0 and 1",
            ));
        }
        if self.netbox.page_size == 0 {
            return Err(invalid("netbox.page_size", "must be at least 1"));
        }
        if self.netbox.status_ttl.is_zero() {
            return Err(invalid("netbox.status_ttl", "must be greater than 0"));
        }
        if self.netbox.concurrency == 0 {
            return Err(invalid("netbox.concurrency", "must be at least 1"));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(invalid(
                "log.level",
                "must be error, warn, info, debug or trace",
            ));
        }
        Ok(())
    }

    /// The enabled object types (`registry.object_types`).
    pub fn object_types(&self) -> Result<Vec<ObjectType>, ConfigError> {
        self.registry
            .object_types
            .iter()
            .map(|name| {
                ObjectType::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = object_type::ALL.iter().map(|t| t.name).collect();
                    invalid(
                        "registry.object_types",
                        format!(
                            "unknown object type {name:?}; supported: {}",
                            known.join(", ")
                        ),
                    )
                })
            })
            .collect()
    }
}

/// The ceiling of `registry.max_expanded_hosts`: a /16's hosts, about 1 MB of JSON for IPv4.
pub const MAX_EXPANDED_HOSTS: usize = 65536;

impl Config {
    /// `serving`: the command receives webhooks, so its TLS files are read now too (a command
    /// that does not, such as `tail` run by another user, need not be able to read the key).
    fn validate_server(&self, serving: bool) -> Result<(), ConfigError> {
        let s = &self.server;
        let timeouts = [
            ("server.header_timeout", s.header_timeout),
            ("server.request_timeout", s.request_timeout),
            ("server.idle_timeout", s.idle_timeout),
        ];
        for (key, value) in timeouts {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if s.max_connections < 8 {
            return Err(invalid("server.max_connections", "must be at least 8"));
        }
        match (&s.tls_cert, &s.tls_key) {
            (Some(_), None) => Err(invalid(
                "server.tls_key",
                "server.tls_cert is set: set both or neither",
            )),
            (None, Some(_)) => Err(invalid(
                "server.tls_cert",
                "server.tls_key is set: set both or neither",
            )),
            // Read now, so that a wrong file is a configuration error (exit 2) before anything
            // starts; the server reads them again.
            (Some(cert), Some(key)) if serving => match crate::webhook::tls::Tls::load(cert, key) {
                Ok(_) => Ok(()),
                Err(e) => Err(invalid("server.tls_cert", e.to_string())),
            },
            _ => Ok(()),
        }
    }

    /// An optional setting given as an empty string counts as not given: deployments template
    /// `NETBOX_RELAY_NETBOX__URL=${NETBOX_URL}` whether or not it is set.
    fn unset_empty(&mut self) {
        let blank =
            |s: &Option<SecretString>| s.as_ref().is_some_and(|s| s.expose_secret().is_empty());
        for path in [&mut self.server.tls_cert, &mut self.server.tls_key] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
        if self.netbox.url.as_deref().is_some_and(str::is_empty) {
            self.netbox.url = None;
        }
        if blank(&self.netbox.token) {
            self.netbox.token = None;
        }
        if blank(&self.api.admin_token) {
            self.api.admin_token = None;
        }
        if blank(&self.sd.token) {
            self.sd.token = None;
        }
        if blank(&self.nats.token) {
            self.nats.token = None;
        }
        if blank(&self.nats.password) {
            self.nats.password = None;
        }
        if self.nats.user.as_deref().is_some_and(str::is_empty) {
            self.nats.user = None;
        }
    }
}

/// A NATS subject token or stream name: no dots, wildcards or white space.
fn subject_token(key: &'static str, token: &str) -> Result<(), ConfigError> {
    let bad = |c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control();
    if token.is_empty() || token.chars().any(bad) {
        return Err(invalid(
            key,
            format!("{token:?} is not a valid NATS name (no dots, *, > or spaces)"),
        ));
    }
    Ok(())
}
