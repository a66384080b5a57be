//! A downstream consumer of netbox-relay's registry deltas: a durable JetStream pull consumer that
//! keeps an in-memory registry (key -> entry) up to date, acknowledging each delta only after it
//! is applied, so a crash re-delivers what was not applied.
//!
//! ```text
//! cargo run --example consumer -- --nats nats://127.0.0.1:4222
//! ```
//!
//! The durable consumer remembers, on the server, how far this consumer got. A registry kept only
//! in memory is empty after a restart, so start such a mirror with `--rebuild`: it recreates the
//! consumer with the "last per subject" deliver policy. Every registry key has a subject of its
//! own (`<prefix>.<partition>.<kind>.<object_id>`) and the stream keeps the last few messages of
//! each, so the consumer first receives the current registry, one delta per key (the entry, or a
//! delete's tombstone while it lasts), then every change as it comes. No history to replay.
//!
//! Deltas of one key arrive in order (the relay publishes them so); each is applied as it comes:
//! an upsert stores the entry, a delete removes the key. Redelivery is harmless: applying the same
//! delta twice leaves the same registry. The delta's schema is `schemas/registry-delta.v1.json`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use clap::Parser;
use futures::StreamExt;
use netbox_relay::delta::{Entry, Op, RegistryDelta};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "NETBOX_REGISTRY")]
    stream: String,
    /// Subjects to follow, e.g. `netbox.registry.default.device.*` (one subject per key).
    #[arg(long, default_value = "netbox.registry.>")]
    subjects: String,
    /// The durable consumer's name: the server remembers how far it got.
    #[arg(long, default_value = "registry-mirror")]
    durable: String,
    /// Start over from the current registry (recreates the durable consumer).
    #[arg(long)]
    rebuild: bool,
    /// Stop once no delta came for this long, and print the registry as JSON.
    #[arg(long, value_parser = humantime::parse_duration)]
    until_idle: Option<Duration>,
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args = Args::parse();
    let js = jetstream::new(async_nats::connect(&args.nats).await?);
    let stream = js.get_stream(&args.stream).await?;
    if args.rebuild {
        // Absent on a first start; that is fine.
        let _ = stream.delete_consumer(&args.durable).await;
    }
    // A new consumer starts with the last delta of every key: the current registry.
    let consumer = stream
        .get_or_create_consumer(
            &args.durable,
            pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.subjects.clone(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut registry: BTreeMap<String, Entry> = BTreeMap::new();
    let wait = args.until_idle.unwrap_or(Duration::from_secs(30));
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(wait)
            .messages()
            .await?;
        let mut applied = 0;
        while let Some(message) = batch.next().await {
            let message = message?;
            match serde_json::from_slice::<RegistryDelta>(&message.payload) {
                Ok(delta) => apply(&mut registry, delta),
                // A delta this consumer cannot read is skipped, not retried forever.
                Err(e) => eprintln!("skipping {}: {e}", message.subject),
            }
            message.ack().await?;
            applied += 1;
        }
        eprintln!(
            "applied {applied} deltas; registry holds {}",
            registry.len()
        );
        if applied == 0 && args.until_idle.is_some() {
            break;
        }
    }
    println!("{}", serde_json::to_string_pretty(&registry)?);
    Ok(())
}

fn apply(registry: &mut BTreeMap<String, Entry>, delta: RegistryDelta) {
    match (delta.op, delta.entry) {
        (Op::Upsert, Some(entry)) => {
            registry.insert(delta.key, entry);
        }
        (Op::Delete, _) => {
            registry.remove(&delta.key);
        }
        (Op::Upsert, None) => eprintln!("{}: an upsert without an entry", delta.key),
    }
}
