//! Helpers the benchmarks share: ports, waiting for a server, the nats-server binary, the
//! recorded device. Not every benchmark uses every helper.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port` (20 s at most).
pub fn wait_for_port(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `$NATS_SERVER`, else the one `deploy/local/ensure-nats.sh` installs into `.venv`.
pub fn nats_binary() -> PathBuf {
    std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server"))
}

/// `nats-server -js` on loopback `port`, its JetStream store in `store`, quiet.
pub fn nats_command(port: u16, store: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(nats_binary());
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// The first device of the recorded API answer (tests/fixtures), as the REST API serializes it.
pub fn recorded_device() -> serde_json::Map<String, serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/netbox-api/dcim_devices.json");
    let text = std::fs::read_to_string(path).unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&text).unwrap();
    let body: serde_json::Value = serde_json::from_str(recorded["body"].as_str().unwrap()).unwrap();
    body["results"][0].as_object().unwrap().clone()
}

/// The device type and a translator for it alone, hosts only (no subnet expansion).
pub fn device_translator() -> (
    netbox_relay::netbox::ObjectType,
    netbox_relay::translate::Translator,
) {
    let device = netbox_relay::netbox::ObjectType::from_name("dcim.device").unwrap();
    let sweep = netbox_relay::translate::SweepOptions {
        expand_subnets: false,
        max_expanded_hosts: 0,
    };
    let translator = netbox_relay::translate::Translator::new("default", sweep, &[device]);
    (device, translator)
}

/// User + system CPU time of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}
