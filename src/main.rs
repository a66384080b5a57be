use std::process::ExitCode;

use clap::Parser;
use netbox_relay::app::Relay;
use netbox_relay::cli::{Cli, Command};
use netbox_relay::config::Config;
use netbox_relay::{delta, telemetry};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Schema = cli.command {
        print!("{}", delta::json_schema());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), &cli.overrides()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("netbox-relay: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "netbox-relay failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let relay = Relay::start(config).await?;
    let shutdown = relay.shutdown_token();
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight webhooks, then draining NATS");
        shutdown.cancel();
    });
    relay.wait().await
}
