//! Parsing and translating one webhook, in one process, against a baseline measured in the same
//! run: (a) parsing the body into a `serde_json::Value` (what the ingest floor does), (b) the
//! relay's parse (only what translation reads), (c) the relay's parse and translation into the
//! delta. The recorded NetBox 4.6 bodies the ingest benchmark sends (device, IP address, VM and
//! prefix creates) and a device and an IP address update, in turns.
//!
//! `cargo bench --bench parse -- [--seconds 3]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::Utc;
use netbox_relay::netbox::object_type;
use netbox_relay::netbox::webhook::{parse, Parsed};
use netbox_relay::translate::{SweepOptions, Translator, READS};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODIES: [&str; 6] = [
    "020_device_created.json",
    "029_ipaddress_created.json",
    "039_virtualmachine_created.json",
    "017_prefix_created.json",
    "034_device_updated.json",
    "056_ipaddress_updated.json",
];

fn main() {
    let seconds: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(3.0, |s| s.parse().expect("--seconds N"));
    let bodies: Vec<Vec<u8>> = BODIES.iter().map(|f| body(f)).collect();
    let translator = Translator::new(
        "default",
        SweepOptions {
            expand_subnets: false,
            max_expanded_hosts: 4096,
        },
        &object_type::ALL,
    );
    let per = Duration::from_secs_f64(seconds / 3.0);
    let mut rows = Vec::new();
    for round in 0..3 {
        let a = rate(per, &bodies, |b| {
            black_box(serde_json::from_slice::<serde_json::Value>(b).unwrap());
        });
        let b = rate(per, &bodies, |b| {
            black_box(parse(b, READS).unwrap());
        });
        let c = rate(per, &bodies, |b| {
            if let Parsed::Change(event) = parse(b, READS).unwrap() {
                black_box(translator.webhook(&event, Utc::now()).unwrap());
            }
        });
        println!(
            "round {}: b/a = {:.3}, c/a = {:.3}",
            round + 1,
            b / a,
            c / a
        );
        rows.push((a, b, c));
    }
    let mean = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(f).sum::<f64>() / 3.0;
    let (a, b, c) = (mean(|r| r.0), mean(|r| r.1), mean(|r| r.2));
    println!("| target | bodies/s | us per body | to (a) |\n| --- | --- | --- | --- |");
    for (name, r) in [
        ("(a) parse into a Value", a),
        ("(b) the relay's parse", b),
        ("(c) the relay's parse and translation", c),
    ] {
        println!("| {name} | {r:.0} | {:.2} | {:.3} |", 1e6 / r, r / a);
    }
}

/// Bodies handled per second by `f`, for about `per`, one thread.
fn rate(per: Duration, bodies: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < per {
        for body in bodies {
            f(body);
        }
        n += bodies.len() as u64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// A recorded webhook's raw body.
fn body(file: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/netbox-webhooks/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    recorded["body"]
        .as_str()
        .expect("raw body")
        .as_bytes()
        .to_vec()
}
