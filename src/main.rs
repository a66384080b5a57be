//! The `netbox-relay` binary: parses the command line, loads the configuration, starts logging and
//! runs the subcommand; its exit code says how it ended (0, 1, 2 bad configuration, 3 partial).

use std::process::ExitCode;

use clap::Parser;
use netbox_relay::app::{self, Relay};
use netbox_relay::cli::{Cli, Command};
use netbox_relay::config::{env_var, Config};
use netbox_relay::netbox::ObjectType;
use netbox_relay::ops::{self, setup::SetupOptions, tail::TailOptions};
use netbox_relay::reconcile::{RunOptions, RunStatus};
use netbox_relay::{delta, telemetry};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

// Reconciliation parses every NetBox page into many small maps; glibc's allocator was the largest
// cost in a profile of a 100,000-object run (BENCHMARKS-HISTORY.md).
// Built with `no_thp`: see `no_huge_pages`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    no_huge_pages();
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
    match cli.command {
        Command::Reconcile {
            dry_run,
            object_types,
            force,
            full,
        } => match needs_netbox(&config, "reconcile") {
            Err(code) => code,
            Ok(()) => reconcile(config, dry_run, &object_types, force, full).await,
        },
        Command::Check => check(&config).await,
        Command::Audit { object_types, json } => match needs_netbox(&config, "audit") {
            Err(code) => code,
            Ok(()) => audit(&config, &object_types, json).await,
        },
        Command::Spool { action } => match ops::spool::run(&config, action.as_ref()) {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("netbox-relay: spool: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Held { action } => {
            let held =
                app::translator(&config).and_then(|t| ops::held::run(&config, &t, action.as_ref()));
            match held {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("netbox-relay: held: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::NetboxSetup {
            relay_url,
            name,
            dry_run,
        } => {
            let options = SetupOptions {
                relay_url,
                name,
                dry_run,
            };
            match needs_netbox(&config, "netbox-setup") {
                Err(code) => code,
                Ok(()) => netbox_setup(&config, &options).await,
            }
        }
        Command::Tail {
            kinds,
            partition,
            since,
            last,
            current,
            json,
        } => {
            let options = TailOptions {
                kinds,
                partition,
                since,
                last,
                current,
                json,
            };
            match ops::tail::run(&config, &options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ ops::tail::TailError::UnknownKind(..)) => {
                    eprintln!("netbox-relay: tail: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("netbox-relay: tail: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::SendTestWebhook { url, curl } => send_test_webhook(&config, url, curl).await,
        Command::Sd { .. } => match sd(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "netbox-relay sd failed");
                ExitCode::FAILURE
            }
        },
        Command::Schema | Command::Serve { .. } => match serve(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "netbox-relay failed");
                ExitCode::FAILURE
            }
        },
    }
}

async fn send_test_webhook(config: &Config, url: Option<String>, curl: bool) -> ExitCode {
    use ops::send;
    let url = url.unwrap_or_else(|| send::default_url(config));
    let (body, signature) = match send::signed_body(config) {
        Ok(signed) => signed,
        Err(e) => {
            eprintln!("netbox-relay: send-test-webhook: {e}");
            return ExitCode::from(2);
        }
    };
    if curl {
        println!("{}", send::curl(&url, &body, &signature));
        return ExitCode::SUCCESS;
    }
    match send::send(&url, body, &signature).await {
        Ok((status, answer)) => {
            println!("{status} {answer}");
            match (200..300).contains(&status) {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("netbox-relay: send-test-webhook: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command that talks to NetBox stops at once, with exit code 2, without its URL or token.
fn needs_netbox(config: &Config, command: &str) -> Result<(), ExitCode> {
    let (key, what) = match (&config.netbox.url, &config.netbox.token) {
        (None, _) => (
            "netbox.url",
            ", NetBox's base URL such as https://netbox.example.net",
        ),
        (_, None) => (
            "netbox.token",
            " (or netbox.token_file), an API token of NetBox",
        ),
        _ => return Ok(()),
    };
    eprintln!(
        "netbox-relay: {command} needs {key}{what}: set it in the configuration file or as {}",
        env_var(key)
    );
    Err(ExitCode::from(2))
}

/// The types `--object-type` names; exit code 2, said, for one that is not supported.
fn object_types(names: &[String]) -> Result<Vec<ObjectType>, ExitCode> {
    names
        .iter()
        .map(|name| {
            ObjectType::from_name(name).ok_or_else(|| {
                eprintln!("netbox-relay: --object-type {name}: not a supported object type");
                ExitCode::from(2)
            })
        })
        .collect()
}

/// `netbox-relay audit`: 0 equal, 1 a difference or a failure, 2 bad configuration.
async fn audit(config: &Config, names: &[String], json: bool) -> ExitCode {
    let only = match object_types(names) {
        Ok(only) => only,
        Err(code) => return code,
    };
    let report = match app::translator(config) {
        Ok(translator) => ops::audit::audit(config, &translator, only).await,
        Err(e) => Err(ops::audit::AuditError::Config(format!("{e:#}"))),
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("netbox-relay: audit: {e}");
            return match e {
                ops::audit::AuditError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    match json {
        true => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
        false => ops::audit::render(&report)
            .iter()
            .for_each(|line| println!("{line}")),
    }
    match report.equal {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// Exit codes: 0 all OK, 1 a dependency failed, 2 the configuration is one `serve` refuses.
async fn check(config: &Config) -> ExitCode {
    let lines = ops::check::run(config).await;
    for line in &lines {
        println!("{line}");
    }
    let failed = |what: &str| {
        lines
            .iter()
            .any(|l| l.status == ops::check::Status::Fail && l.what == what)
    };
    match lines.iter().any(|l| l.status == ops::check::Status::Fail) {
        _ if failed(ops::check::CONFIGURATION) => ExitCode::from(2),
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    }
}

async fn netbox_setup(config: &Config, options: &SetupOptions) -> ExitCode {
    match ops::setup::run(config, options).await {
        Ok(report) => {
            for step in report.steps {
                println!("{step}");
            }
            println!("branching: {}", report.branching);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netbox-relay: netbox-setup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit codes: 0 succeeded, 1 failed, 2 bad configuration or usage, 3 partial (deletes withheld,
/// objects not translated, or object types NetBox refused).
async fn reconcile(
    config: Config,
    dry_run: bool,
    names: &[String],
    force: bool,
    full: bool,
) -> ExitCode {
    let only = match object_types(names) {
        Ok(only) => only,
        Err(code) => return code,
    };
    let trigger = if dry_run { "cli-dry-run" } else { "cli" }.to_string();
    let options = RunOptions {
        trigger,
        force,
        full,
        only,
    };
    let report = match app::reconcile_once(config, dry_run, options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("netbox-relay: reconcile failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("reconcile run {}: {:?}", report.run_id, report.status);
    eprintln!(
        "{:<32} {:>8} {:>8} {:>8} {:>9} {:>6}  note",
        "object type", "fetched", "upserted", "deleted", "unchanged", "errors"
    );
    for (name, t) in &report.object_types {
        let note = t.message.as_deref().unwrap_or_default();
        eprintln!(
            "{name:<32} {:>8} {:>8} {:>8} {:>9} {:>6}  {note}",
            t.fetched, t.upserted, t.deleted, t.unchanged, t.errors
        );
    }
    let c = &report.cascades;
    let note = c.message.as_deref().unwrap_or_default();
    eprintln!(
        "cascades: {} parents, {} dependents pulled, {} published, {} failed  {note}",
        c.parents, c.pulled, c.published, c.failed
    );
    match report.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Partial => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let relay = Relay::start(config).await?;
    cancel_on_signal(relay.shutdown_token())?;
    relay.wait().await
}

async fn sd(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone())?;
    app::discovery_only(config, shutdown).await
}

fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        shutdown.cancel();
        tracing::info!("shutting down: finishing in-flight requests");
    });
    Ok(())
}

/// Transparent huge pages make a long-running relay's memory climb in 2 MiB steps: a burst
/// touches a huge page, the allocator gives the memory back 4 KiB at a time, and the kernel
/// keeps (or collapses again) the whole 2 MiB. The relay's heap is tens of MiB, too small to
/// gain from them. mimalloc built with `no_thp` no longer asks for them; this opts the process
/// out on kernels that hand them to every process (`enabled = always`) too.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
