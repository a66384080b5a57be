//! The configuration's sections, one struct per TOML table, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{duration, Secrets};
use crate::netbox::object_type;

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
    /// PEM certificate chain and private key: the receiver speaks HTTPS only (both or neither).
    /// The files are read again when they change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
    /// How long NetBox's version and plugins (`/api/status/`) are taken as last said: runs,
    /// cascades and webhook confirmations all read them, and one answer serves them all.
    #[serde(deserialize_with = "duration")]
    pub status_ttl: Duration,
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
    /// Deletes of a type up to this many are never withheld, whatever their fraction: a small
    /// NetBox's last device deleted while the relay was down goes.
    pub delete_floor: u64,
    /// How long the reconcile lease outlives its last renewal: a relay that dies mid-run holds
    /// off the others this long.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// How often a run is a full pass (every object fetched in full) instead of the cheap one
    /// (ids and `last_updated` listed, only new and changed objects fetched); 0: every run.
    #[serde(deserialize_with = "duration")]
    pub full_interval: Duration,
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

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            shutdown_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            tls_cert: None,
            tls_key: None,
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
            status_ttl: Duration::from_secs(300),
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
            delete_floor: 10,
            lease_ttl: Duration::from_secs(30),
            full_interval: Duration::from_secs(24 * 3600),
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
