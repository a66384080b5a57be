//! Logging: JSON or human format, chosen by `log.format` (`auto`: JSON when not on a terminal),
//! and the Prometheus metrics behind `/metrics`.

pub mod metrics;

pub use self::metrics::{handle as metrics_handle, *};

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{},async_nats=warn", log.level)));
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Logs go to stderr: standard output is for what a command prints (deltas, summaries).
    // A log line that cannot be written is lost, nothing more: tracing-subscriber would report
    // it with `eprintln!`, which panics once stderr is a closed pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}
