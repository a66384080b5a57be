//! `netbox-relay tail`: follows the stream with an ordered consumer (nothing is stored on the
//! server, nothing acknowledged) and prints each delta: JSON lines, or one readable line per
//! delta on a terminal. With `--current` it starts with the last delta of every key.

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use serde_json::Value;

use crate::config::Config;
use crate::publish::connect_once;
use crate::publish::subject;

#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Only these kinds (e.g. `device`); all when empty.
    pub kinds: Vec<String>,
    /// Only this partition; all when absent.
    pub partition: Option<String>,
    /// Start this far back; only new deltas when absent.
    pub since: Option<Duration>,
    /// Start with the last delta of every key (the current registry).
    pub current: bool,
    /// JSON lines even on a terminal.
    pub json: bool,
}

/// Follows until the stream ends or the process is stopped.
pub async fn run(config: &Config, options: &TailOptions) -> anyhow::Result<()> {
    let client = connect_once(&config.nats).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&config.nats.stream).await.map_err(|e| {
        anyhow::anyhow!(
            "stream {}: {e} (`netbox-relay serve` creates it)",
            config.nats.stream
        )
    })?;
    let deliver_policy = match (options.current, options.since) {
        (true, _) => DeliverPolicy::LastPerSubject,
        (false, Some(since)) => DeliverPolicy::ByStartTime {
            start_time: chrono::Utc::now() - since,
        },
        (false, None) => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filters(&config.nats.subject_prefix, options),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let readable = !options.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut out = std::io::stdout().lock();
    while let Some(message) = messages.next().await {
        let message = message?;
        let written = match readable {
            true => writeln!(out, "{}", line(&message.payload)),
            false => out
                .write_all(&message.payload)
                .and_then(|()| out.write_all(b"\n")),
        };
        match written.and_then(|()| out.flush()) {
            // The reader went away (`tail | head`): done, like any Unix filter.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    Ok(())
}

/// `<prefix>.<partition>.<kind>.<object_id>` with wildcards for what is not asked for.
fn filters(prefix: &str, options: &TailOptions) -> Vec<String> {
    let partition = options.partition.as_deref().unwrap_or("*");
    match options.kinds.is_empty() {
        true => vec![subject::keys_of(prefix, partition, None)],
        false => options
            .kinds
            .iter()
            .map(|kind| subject::keys_of(prefix, partition, Some(kind)))
            .collect(),
    }
}

/// One readable line: when, what, which key, its name and labels.
fn line(payload: &[u8]) -> String {
    let Ok(delta) = serde_json::from_slice::<Value>(payload) else {
        return escape_controls(&String::from_utf8_lossy(payload));
    };
    let text = |v: &Value| escape_controls(v.as_str().unwrap_or_default());
    let entry = &delta["entry"];
    let labels = entry["labels"]
        .as_object()
        .map(|labels| {
            let pairs = labels.iter().filter(|(k, _)| k.as_str() != "source");
            let pairs = pairs.map(|(k, v)| {
                let value = escape_controls(v.as_str().unwrap_or_default());
                format!("{}={value}", escape_controls(k))
            });
            pairs.collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default();
    format!(
        "{} {:<6} {:<15} {:<32} {:<24} [{}] {labels}",
        text(&delta["revision"]),
        text(&delta["op"]),
        text(&delta["kind"]),
        text(&delta["key"]),
        text(&entry["name"]),
        text(&delta["origin"]),
    )
}

/// NetBox data is anybody's text: a name holding escape sequences must not drive the terminal.
fn escape_controls(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c.is_control() {
            true => escaped.extend(c.escape_default()),
            false => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_netbox_data_are_printed_escaped() {
        let delta = serde_json::json!({
            "revision": "2026-11-22T10:45:01Z", "op": "upsert", "kind": "device",
            "key": "netbox/default/dcim.device/1", "origin": "webhook",
            "entry": {"name": "sw\u{1b}[2J\u{7}1\r", "labels": {"site": "a\u{1b}]0;x\u{7}"}},
        });
        let printed = line(&serde_json::to_vec(&delta).unwrap());
        assert!(!printed.chars().any(char::is_control), "{printed:?}");
        assert!(printed.contains(r"sw\u{1b}[2J\u{7}1\r"), "{printed:?}");
        assert!(printed.contains(r"site=a\u{1b}]0;x\u{7}"), "{printed:?}");
        let garbage = line(b"\x1b[31mnot json");
        assert!(!garbage.chars().any(char::is_control), "{garbage:?}");
    }

    #[test]
    fn filters_narrow_by_partition_and_kind() {
        let all = TailOptions::default();
        assert_eq!(filters("netbox.registry", &all), ["netbox.registry.*.*.*"]);
        let some = TailOptions {
            kinds: vec!["device".into(), "vlan".into()],
            partition: Some("lab".into()),
            ..TailOptions::default()
        };
        assert_eq!(filters("p", &some), ["p.lab.device.*", "p.lab.vlan.*"]);
    }
}
