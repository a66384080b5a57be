//! The whole configuration: defaults < TOML file < `NETBOX_RELAY_` environment < CLI flags,
//! validated at load so that a bad value stops the start with a message naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::netbox::{object_type, ObjectType};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub webhook: WebhookConfig,
    pub netbox: NetboxConfig,
    pub nats: NatsConfig,
    pub registry: RegistryConfig,
    pub reconcile: ReconcileConfig,
    pub cascade: CascadeConfig,
    pub state: StateConfig,
    pub spool: SpoolConfig,
    pub api: ApiConfig,
    pub sd: SdConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long in-flight webhooks may take to finish after SIGTERM.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// A request's head (request line and headers) must arrive within this time.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this time.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// A keep-alive connection with no request is closed after this time.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Connections served at once; past it the longest-waiting idle or slow one is closed.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub secrets: Secrets,
    pub secret_file: Option<PathBuf>,
    pub require_signature: bool,
    pub max_body_bytes: usize,
    /// How far a revision may be ahead of the relay's clock before it is clamped.
    #[serde(deserialize_with = "duration")]
    pub max_clock_skew: Duration,
    /// Whether a webhook that does not say where its change was made is first checked against
    /// NetBox's main (netbox-branching sends branch changes through the same event rules).
    pub confirm: Confirm,
    /// How long a webhook waits for NetBox's answer before it is held and confirmed later.
    #[serde(deserialize_with = "duration")]
    pub confirm_timeout: Duration,
    /// Webhooks held for confirmation at most; past it a webhook that needs one gets 503.
    pub max_held: u64,
}

/// `webhook.confirm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// When NetBox has the netbox-branching plugin (its `/api/status/` says so).
    #[default]
    Auto,
    /// Always, whatever NetBox's plugins.
    Always,
    /// Never: every signed webhook not marked as a branch change is trusted.
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetboxConfig {
    pub url: Option<String>,
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    pub page_size: u32,
    pub concurrency: usize,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub insecure_skip_verify: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
    pub tls_ca_file: Option<PathBuf>,
    pub stream: String,
    pub subject_prefix: String,
    #[serde(deserialize_with = "duration")]
    pub duplicate_window: Duration,
    pub replicas: usize,
    /// Messages kept per registry key (subject): the stream is a compacted log. 0 keeps all.
    pub history_per_key: u32,
    /// How long a delete's tombstone stays, where the server supports per-message TTL (2.11+).
    #[serde(deserialize_with = "duration")]
    pub tombstone_ttl: Duration,
    /// The KV bucket relays on the same NATS share: the reconcile lease and the run reports.
    pub kv_bucket: String,
    /// How long to wait for JetStream's ack of one delta.
    #[serde(deserialize_with = "duration")]
    pub ack_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub partition: String,
    pub object_types: Vec<String>,
    pub expand_subnets: bool,
    pub max_expanded_hosts: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// Unset: on whenever NetBox's URL and token are (cascades pull through them).
    pub enabled: Option<bool>,
    /// How long a parent's change waits for others before its dependents are pulled.
    #[serde(deserialize_with = "duration")]
    pub debounce: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    pub on_start: bool,
    pub max_delete_fraction: f64,
    /// How long the reconcile lease outlives its last renewal: a relay that dies mid-run holds
    /// off the others this long.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub path: PathBuf,
    /// redb's page cache: the state file's share of the relay's memory.
    pub cache_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub admin_token: Option<SecretString>,
}

/// Prometheus service discovery: `GET /sd/prometheus` on the relay and `netbox-relay sd`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdConfig {
    /// Where `netbox-relay sd` listens.
    pub listen: SocketAddr,
    /// A bearer token the endpoint requires, when set.
    pub token: Option<SecretString>,
}

impl Default for SdConfig {
    fn default() -> Self {
        SdConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8091)),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, human otherwise.
    #[default]
    Auto,
    Json,
    Human,
}

/// One secret or a list of them: `NETBOX_RELAY_WEBHOOK__SECRETS=s3cret` works as well as a list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct Secrets(pub Vec<SecretString>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(SecretString),
    Many(Vec<SecretString>),
}

impl From<OneOrMany> for Secrets {
    fn from(value: OneOrMany) -> Self {
        match value {
            OneOrMany::One(s) => Secrets(vec![s]),
            OneOrMany::Many(v) => Secrets(v),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// `30s`, `2m`, `1h`; a bare number is seconds, so that `0` (as an environment variable reads)
/// disables the schedule as the contract says.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(u64),
        Text(String),
    }
    match Written::deserialize(d)? {
        Written::Seconds(secs) => Ok(Duration::from_secs(secs)),
        Written::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. 30s, 2m, 1h"
            ))
        }),
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Values given on the command line, the top layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    /// `netbox-relay sd --listen`.
    pub sd_listen: Option<SocketAddr>,
    pub log_level: Option<String>,
    /// The command verifies no webhooks (`tail`, `check`, `spool`, `reconcile`): a missing
    /// `webhook.secrets` is no error for it.
    pub no_webhooks: bool,
}

impl Config {
    /// Loads the layers and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // NETBOX_RELAY_CONFIG names the file; it is not a key.
        figment = figment.merge(
            Env::prefixed("NETBOX_RELAY_")
                .split("__")
                .ignore(&["config"]),
        );
        if let Some(listen) = overrides.sd_listen {
            figment = figment.merge(Serialized::default("sd.listen", listen));
        }
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        if let Some(level) = &overrides.log_level {
            figment = figment.merge(Serialized::default("log.level", level));
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.validate_for(!overrides.no_webhooks)?;
        Ok(config)
    }

    /// Checks every value and reads the secret files.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.validate_for(true)
    }

    /// [`Config::validate`]; a missing webhook secret is an error only when `webhooks`.
    pub fn validate_for(&mut self, webhooks: bool) -> Result<(), ConfigError> {
        self.unset_empty();
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
            let message =
                "at least one secret is required unless webhook.require_signature = false";
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
        self.validate_server()?;
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
    fn validate_server(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// An optional setting given as an empty string counts as not given: deployments template
    /// `NETBOX_RELAY_NETBOX__URL=${NETBOX_URL}` whether or not it is set.
    fn unset_empty(&mut self) {
        let blank =
            |s: &Option<SecretString>| s.as_ref().is_some_and(|s| s.expose_secret().is_empty());
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

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            shutdown_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secrets: Secrets::default(),
            secret_file: None,
            require_signature: true,
            max_body_bytes: 4 * 1024 * 1024,
            max_clock_skew: Duration::from_secs(300),
            confirm: Confirm::Auto,
            confirm_timeout: Duration::from_secs(5),
            max_held: 100_000,
        }
    }
}

impl Default for NetboxConfig {
    fn default() -> Self {
        NetboxConfig {
            url: None,
            token: None,
            token_file: None,
            page_size: 1000,
            concurrency: 4,
            timeout: Duration::from_secs(30),
            insecure_skip_verify: false,
            ca_file: None,
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_string(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            stream: "NETBOX_REGISTRY".to_string(),
            subject_prefix: "netbox.registry".to_string(),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            history_per_key: 16,
            tombstone_ttl: Duration::from_secs(7 * 24 * 3600),
            kv_bucket: "NETBOX_RELAY".to_string(),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            partition: "default".to_string(),
            object_types: object_type::ALL
                .iter()
                .map(|t| t.name.to_string())
                .collect(),
            expand_subnets: false,
            max_expanded_hosts: 4096,
        }
    }
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval: Duration::from_secs(3600),
            on_start: true,
            max_delete_fraction: 0.5,
            lease_ttl: Duration::from_secs(30),
        }
    }
}

impl Default for CascadeConfig {
    fn default() -> Self {
        CascadeConfig {
            enabled: None,
            debounce: Duration::from_secs(2),
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("./data/netbox-relay.redb"),
            cache_bytes: crate::state::CACHE_BYTES,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { max_bytes: 1 << 30 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".to_string(),
        }
    }
}
