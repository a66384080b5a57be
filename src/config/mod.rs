//! The whole configuration: defaults < TOML file < `NETBOX_RELAY_` environment < CLI flags,
//! validated at load so that a bad value stops the start with a message naming its key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

mod sections;
mod validate;

pub use sections::*;
pub use validate::MAX_EXPANDED_HOSTS;

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
    #[error("configuration key `{key}`{}: {message}", env_hint(key))]
    Invalid { key: &'static str, message: String },
}

/// ` (NETBOX_RELAY_...)` after a key that has an environment variable.
fn env_hint(key: &str) -> String {
    match key.starts_with('-') {
        true => String::new(),
        false => format!(" ({})", env_var(key)),
    }
}

/// The environment variable that sets a configuration key: `netbox.url` is
/// `NETBOX_RELAY_NETBOX__URL` (a double underscore between section and key).
pub fn env_var(key: &str) -> String {
    format!("NETBOX_RELAY_{}", key.replace('.', "__").to_uppercase())
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
}
