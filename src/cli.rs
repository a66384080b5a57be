//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "netbox-relay",
    version,
    about = "Relays NetBox changes to NATS JetStream as registry deltas"
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
    },
    /// Print the JSON Schema of the registry delta.
    Schema,
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        let listen = match self.command {
            Command::Serve { listen } => listen,
            Command::Schema | Command::Reconcile { .. } => None,
        };
        Overrides {
            listen,
            log_level: self.log_level.clone(),
        }
    }
}
