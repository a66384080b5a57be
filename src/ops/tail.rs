//! `netbox-relay tail`: follows the stream with an ordered consumer (nothing is stored on the
//! server, nothing acknowledged) and prints each delta: JSON lines, or one readable line per
//! delta on a terminal. It starts with the stream's last few deltas (`--last`), so that what was
//! just published is seen; with `--current` with the last delta of every key.

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use serde_json::Value;

use crate::config::Config;
use crate::publish::connect_following;
use crate::publish::subject;

#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Only these kinds (e.g. `device`); all when empty.
    pub kinds: Vec<String>,
    /// Only this partition; all when absent.
    pub partition: Option<String>,
    /// Start this far back; when absent, with the stream's last `last` messages.
    pub since: Option<Duration>,
    /// Without `since` or `current`: how many of the stream's last messages to start with (those
    /// that match the filters are printed); 0 for new deltas only.
    pub last: u64,
    /// Start with the last delta of every key (the current registry).
    pub current: bool,
    /// JSON lines even on a terminal.
    pub json: bool,
}

/// Why `tail` could not start.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Bad usage (exit code 2).
    #[error("--kind {0}: not a kind; the kinds are {1}")]
    UnknownKind(String, String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The kinds `--kind` takes, as deltas name them.
pub fn kinds() -> Vec<&'static str> {
    crate::netbox::object_type::ALL
        .iter()
        .map(|t| t.kind.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Follows until the process is stopped or its reader goes away, across restarts of NATS (or of
/// a cluster node): when the stream is lost it says so once, and goes on after the last delta it
/// printed once the stream answers again.
pub async fn run(config: &Config, options: &TailOptions) -> Result<(), TailError> {
    let known = kinds();
    if let Some(kind) = options.kinds.iter().find(|k| !known.contains(&k.as_str())) {
        return Err(TailError::UnknownKind(kind.clone(), known.join(", ")));
    }
    let servers = crate::publish::shown_servers(&config.nats.url);
    let away = std::sync::atomic::AtomicBool::new(false);
    let said = move |up: bool| match (up, away.swap(!up, std::sync::atomic::Ordering::SeqCst)) {
        (false, false) => {
            eprintln!("netbox-relay tail: lost NATS ({servers}); following again once it is back")
        }
        (true, true) => eprintln!("netbox-relay tail: reconnected to NATS ({servers}); following"),
        _ => {}
    };
    let client = connect_following(&config.nats, said)
        .await
        .map_err(anyhow::Error::from)?;
    let js = jetstream::new(client);
    let stream_name = &config.nats.stream;
    let mut stream = js.get_stream(stream_name).await.map_err(|e| {
        anyhow::anyhow!("stream {stream_name}: {e} (`netbox-relay serve` creates it)")
    })?;
    let filters = filters(&config.nats.subject_prefix, options);
    let mut from = match (options.current, options.since) {
        (true, _) => DeliverPolicy::LastPerSubject,
        (false, Some(since)) => DeliverPolicy::ByStartTime {
            start_time: chrono::Utc::now() - since,
        },
        (false, None) => {
            let state = &stream.info().await.map_err(anyhow::Error::from)?.state;
            last_messages(state.first_sequence, state.last_sequence, options.last)
        }
    };
    let readable = !options.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if readable {
        let start = match (options.current, options.since) {
            (true, _) => "the current registry, then new deltas".to_string(),
            (false, Some(since)) => {
                format!("deltas of the last {}", humantime::format_duration(since))
            }
            (false, None) if options.last == 0 => "new deltas".to_string(),
            (false, None) => format!(
                "the stream's last {} messages (--last), then new deltas",
                options.last
            ),
        };
        eprintln!(
            "following stream {stream_name} ({}) from {start}; Ctrl-C stops. Columns: arrival, op, kind, key, name, [origin], labels, revision",
            filters.join(" ")
        );
    }
    let mut follower = Follower {
        readable,
        last_seq: None,
        lost: false,
    };
    loop {
        let consumer = OrderedConfig {
            filter_subjects: filters.clone(),
            deliver_policy: from,
            ..Default::default()
        };
        let error = match follower.follow(&js, stream_name, consumer).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !follower.lost {
            eprintln!(
                "netbox-relay tail: lost the stream ({error:#}); following again once it answers"
            );
            follower.lost = true;
        }
        if let Some(seq) = follower.last_seq {
            from = DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Follower {
    readable: bool,
    /// The stream sequence of the last delta printed: a new consumer starts after it.
    last_seq: Option<u64>,
    /// The stream was lost, and following again has not been said yet.
    lost: bool,
}

impl Follower {
    /// Prints deltas until the reader goes away (Ok) or the stream is lost (Err).
    async fn follow(
        &mut self,
        js: &jetstream::Context,
        stream_name: &str,
        consumer: OrderedConfig,
    ) -> anyhow::Result<()> {
        let stream = js.get_stream(stream_name).await?;
        let mut messages = stream.create_consumer(consumer).await?.messages().await?;
        if self.lost {
            let after = self
                .last_seq
                .map_or(String::new(), |s| format!(" after stream sequence {s}"));
            eprintln!("netbox-relay tail: following again{after}");
            self.lost = false;
        }
        let mut out = std::io::stdout().lock();
        while let Some(message) = messages.next().await {
            let message = message?;
            let info = message.info().ok();
            let arrived = info.as_ref().map(|i| i.published);
            let written = match self.readable {
                true => writeln!(out, "{}", line(arrived, &message.payload)),
                false => out
                    .write_all(&message.payload)
                    .and_then(|()| out.write_all(b"\n")),
            };
            match written.and_then(|()| out.flush()) {
                // The reader went away (`tail | head`): done, like any Unix filter.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
            self.last_seq = info.map(|i| i.stream_sequence).or(self.last_seq);
        }
        anyhow::bail!("the consumer ended")
    }
}

/// Where to start for the last `last` messages of a stream holding `first..=last_seq` (an empty
/// stream has a `last_seq` of 0, or below `first`).
fn last_messages(first: u64, last_seq: u64, last: u64) -> DeliverPolicy {
    if last == 0 || last_seq == 0 || last_seq < first {
        return DeliverPolicy::New;
    }
    DeliverPolicy::ByStartSequence {
        start_sequence: last_seq.saturating_sub(last - 1).max(first),
    }
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

/// One readable line: when the delta arrived, what, which key, its name, labels and revision.
fn line(arrived: Option<chrono::DateTime<chrono::Utc>>, payload: &[u8]) -> String {
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
    let arrived = arrived.map_or("-".to_string(), |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    });
    format!(
        "{arrived} {:<6} {:<15} {:<32} {:<24} [{}] {labels} revision={}",
        text(&delta["op"]),
        text(&delta["kind"]),
        text(&delta["key"]),
        text(&entry["name"]),
        text(&delta["origin"]),
        text(&delta["revision"]),
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
        let printed = line(None, &serde_json::to_vec(&delta).unwrap());
        assert!(!printed.chars().any(char::is_control), "{printed:?}");
        assert!(printed.contains(r"sw\u{1b}[2J\u{7}1\r"), "{printed:?}");
        assert!(printed.contains(r"site=a\u{1b}]0;x\u{7}"), "{printed:?}");
        let garbage = line(None, b"\x1b[31mnot json");
        assert!(!garbage.chars().any(char::is_control), "{garbage:?}");
    }

    #[test]
    fn the_last_messages_start_within_the_stream() {
        let at = |policy| match policy {
            DeliverPolicy::ByStartSequence { start_sequence } => Some(start_sequence),
            DeliverPolicy::New => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(last_messages(1, 100, 10)), Some(91));
        assert_eq!(at(last_messages(95, 100, 10)), Some(95));
        assert_eq!(at(last_messages(1, 3, 10)), Some(1));
        assert_eq!(at(last_messages(1, 100, 0)), None);
        assert_eq!(at(last_messages(0, 0, 10)), None);
        assert_eq!(at(last_messages(101, 100, 10)), None, "emptied by limits");
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
