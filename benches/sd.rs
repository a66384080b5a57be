//! Service-discovery benchmark: the answer of `GET /sd/prometheus` for N targets, from memory,
//! against a plain JSON dump of the same target groups. One run:
//!   setup: N device deltas (translated by the relay from the recorded API device, each with its
//!          own primary IPv4 and one of 50 sites) applied to the targets;
//!   (a) baseline: `serde_json::to_string` of the same groups, already built as JSON values;
//!   (b) the answer to a query without parameters (every group);
//!   (c) the answer to `?status=active&label.site=<one of 50>&port=9100` (a fiftieth).
//! Reports the median of 15 rounds of each, b/a and c/a, and the answer's size.
//!
//! `cargo bench --bench sd -- [--targets 100000]`

use std::time::{Duration, Instant};

use netbox_relay::sd::{parse_query, Targets};
use serde_json::{json, Value};

mod common;
use common::{device_translator, recorded_device};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 15;

fn main() {
    let count: u32 = std::env::args()
        .skip_while(|a| a != "--targets")
        .nth(1)
        .map_or(100_000, |n| n.parse().expect("--targets N"));
    let targets = targets(count);
    let everything = targets.render(&parse_query(None).unwrap());
    let groups: Value = serde_json::from_str(&everything).unwrap();
    assert_eq!(groups.as_array().unwrap().len(), count as usize);

    let dump = median(|| serde_json::to_string(&groups).unwrap().len());
    let all = median(|| targets.render(&parse_query(None).unwrap()).len());
    let query = parse_query(Some("status=active&label.site=site-7&port=9100")).unwrap();
    let some = median(|| targets.render(&query).len());
    let selected: Value = serde_json::from_str(&targets.render(&query)).unwrap();
    println!(
        "{count} targets, answer {:.1} MB; median of {ROUNDS} rounds:",
        everything.len() as f64 / 1e6
    );
    println!(
        "  (a) baseline, serde_json dump of the same groups: {:>7.1} ms",
        ms(dump)
    );
    println!(
        "  (b) every target:                                 {:>7.1} ms   b/a = {:.2}",
        ms(all),
        ratio(all, dump)
    );
    println!(
        "  (c) one site's active targets ({} groups), port set: {:>5.1} ms   c/a = {:.2}",
        selected.as_array().unwrap().len(),
        ms(some),
        ratio(some, dump)
    );
}

/// `count` devices, each with its own address, spread over 50 sites.
fn targets(count: u32) -> Targets {
    let (device, translator) = device_translator();
    let template = recorded_device();
    let now = chrono::Utc::now();
    let targets = Targets::default();
    for id in 1..=count {
        let mut obj = template.clone();
        obj.insert("id".into(), id.into());
        obj.insert("name".into(), format!("device-{id}").into());
        let [_, b, c, d] = (0x0a00_0000 + id).to_be_bytes();
        obj.insert(
            "primary_ip4".into(),
            json!({"address": format!("10.{b}.{c}.{d}/16")}),
        );
        let site = id % 50;
        obj.insert(
            "site".into(),
            json!({"id": site, "name": format!("Site {site}"), "slug": format!("site-{site}")}),
        );
        let delta = translator.reconcile_upsert(device, &obj, now).unwrap();
        targets.apply(&delta);
    }
    targets
}

fn median(mut f: impl FnMut() -> usize) -> Duration {
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect();
    times.sort();
    times[ROUNDS / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
