//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;

/// Where settings come from, shown under every `--help`.
const CONFIGURATION_HELP: &str = "\
Configuration, each layer over the one before: built-in defaults, the TOML file (--config or
NETBOX_RELAY_CONFIG; deploy/netbox-relay.example.toml lists every key), environment variables,
then flags. A key `section.key` is the variable NETBOX_RELAY_SECTION__KEY (two underscores):
  webhook.secrets   NETBOX_RELAY_WEBHOOK__SECRETS=s3cret       (serve; the secret NetBox signs with)
  netbox.url        NETBOX_RELAY_NETBOX__URL=https://netbox.example.net
  netbox.token      NETBOX_RELAY_NETBOX__TOKEN=...             (or netbox.token_file)
  nats.url          NETBOX_RELAY_NATS__URL=nats://127.0.0.1:4222
  state.path        NETBOX_RELAY_STATE__PATH=/var/lib/netbox-relay/state.redb
`netbox-relay check` says which commands a configuration is good for.
Exit codes: 0 success, 1 failure, 2 bad configuration or usage, 3 partial reconcile run.";

#[derive(Debug, Parser)]
#[command(
    name = "netbox-relay",
    version,
    about = "Relays NetBox changes to NATS JetStream as registry deltas",
    after_help = CONFIGURATION_HELP
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "NETBOX_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); overrides log.level.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive NetBox webhooks and publish their deltas.
    Serve {
        /// Listen address; overrides server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Pull the full inventory from the NetBox API once, publish what differs, print a summary.
    ///
    /// Exit codes: 0 succeeded, 1 failed, 2 bad configuration or usage, 3 partial (deletes
    /// withheld, objects not translated, or object types NetBox refused to show).
    Reconcile {
        /// Print the deltas it would publish (JSON lines on stdout); publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this object type (e.g. dcim.device); repeatable. Default: all enabled ones.
        #[arg(long = "object-type", value_name = "TYPE")]
        object_types: Vec<String>,
        /// Apply deletes even when they exceed reconcile.max_delete_fraction.
        #[arg(long)]
        force: bool,
        /// A full pass (every object fetched in full), whether or not reconcile.full_interval
        /// has passed.
        #[arg(long)]
        full: bool,
    },
    /// Compare the registry on the stream (what consumers read) with NetBox's main, read as a full
    /// pass does, and list every key that differs: missing, not in NetBox, or another entry (its
    /// fields, both values). Changes nothing.
    ///
    /// Exit codes: 0 equal, 1 a difference (or NATS or NetBox failed), 2 bad configuration (a
    /// token that may not read a type included).
    Audit {
        /// Only this object type (e.g. dcim.device); repeatable. Default: all enabled ones.
        #[arg(long = "object-type", value_name = "TYPE")]
        object_types: Vec<String>,
        /// The report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Serve Prometheus HTTP service discovery (`GET /sd/prometheus`) from the registry on the
    /// stream, without NetBox or a state file: any number may run beside Prometheus.
    Sd {
        /// Listen address; overrides sd.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the JSON Schema of the registry delta.
    Schema,
    /// Check the configuration, NetBox (version, token, read permission per object type), NATS
    /// (stream and subjects) and the state file; one OK/FAIL line each. The configuration is
    /// judged as `serve` judges it (a webhook secret included). Exit 1 on any FAIL, 2 when the
    /// configuration itself fails.
    Check,
    /// Create or update (by name) the NetBox webhook and event rule that send changes here.
    NetboxSetup {
        /// The relay's URL as NetBox reaches it, e.g. https://relay.example.net:8090
        #[arg(long)]
        relay_url: String,
        /// Name of the webhook and of the event rule.
        #[arg(long, default_value = "netbox-relay")]
        name: String,
        /// Print what would be created or changed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the deltas waiting in the spool and the dead letters (deltas JetStream refused, rows
    /// that could not be read); retry or drop dead letters. Works on the state file, so the
    /// relay must be stopped (it holds the file).
    Spool {
        #[command(subcommand)]
        action: Option<SpoolAction>,
    },
    /// List the webhooks held for NetBox's main to confirm (netbox-branching), by object type;
    /// release them (publish as sent) or drop them (the next reconcile publishes main's
    /// objects). Works on the state file, so the relay must be stopped (it holds the file).
    Held {
        #[command(subcommand)]
        action: Option<HeldAction>,
    },
    /// Send the relay a test webhook signed with the first secret of webhook.secrets (or of
    /// webhook.secret_file; ./data/webhook-secret, the quickstart's, when neither is set), as NetBox would:
    /// a device "created" shaped like NetBox's, id 999999999, named netbox-relay-test (the next
    /// reconcile deletes it). Prints the relay's answer.
    SendTestWebhook {
        /// The relay's webhook URL; default: server.listen's /webhooks/netbox on this host.
        #[arg(long)]
        url: Option<String>,
        /// Print a `curl` command line that sends it instead.
        #[arg(long)]
        curl: bool,
    },
    /// Follow the deltas on the stream and print them (JSON lines; readable lines on a terminal),
    /// starting with the stream's last 10 messages.
    Tail {
        /// Only this kind (device, ip_address, ...); repeatable.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// Only this partition.
        #[arg(long)]
        partition: Option<String>,
        /// Start this far back (e.g. 10m, 1h) instead of with the last messages.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "current")]
        since: Option<std::time::Duration>,
        /// Start with the stream's last N messages (those that match --kind and --partition
        /// are printed); 0: only new deltas.
        #[arg(long, value_name = "N", default_value_t = 10, conflicts_with_all = ["since", "current"])]
        last: u64,
        /// Start with the current registry: the last delta of every key (a delete's tombstone
        /// while it lasts), then follow.
        #[arg(long)]
        current: bool,
        /// JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Put dead letters back at the end of the spool (the relay publishes them at its next start).
    Retry(Pick),
    /// Remove dead letters for good (the next reconcile publishes their objects' current state).
    Drop(Pick),
}

#[derive(Debug, Subcommand)]
pub enum HeldAction {
    /// Publish held webhooks as NetBox sent them, unconfirmed: for changes known to be main's
    /// (put in the spool; the relay publishes them at its next start).
    Release(HeldPick),
    /// Forget held webhooks; the next reconcile publishes what NetBox's main has of the types
    /// the token may read.
    Drop(HeldPick),
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct HeldPick {
    /// Held webhooks of this object type (e.g. ipam.service); repeatable.
    #[arg(long = "object-type", value_name = "TYPE")]
    pub object_types: Vec<String>,
    /// Every held webhook.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Pick {
    /// Delta ids, as `netbox-relay spool` lists them.
    pub delta_ids: Vec<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        let listen = match self.command {
            Command::Serve { listen } => listen,
            _ => None,
        };
        let sd_listen = match self.command {
            Command::Sd { listen } => listen,
            _ => None,
        };
        let no_webhooks = !matches!(
            self.command,
            Command::Serve { .. } | Command::NetboxSetup { .. } | Command::SendTestWebhook { .. }
        );
        Overrides {
            listen,
            sd_listen,
            log_level: self.log_level.clone(),
            no_webhooks,
        }
    }
}
