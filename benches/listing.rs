//! The cheap pass against a real NetBox: scripts/netbox.sh's NetBox 4.7 (`NETBOX_LIVE_SETTINGS`),
//! loaded once with `--devices` devices, as many IP addresses and `--vms` virtual machines
//! (through NetBox's own shell, in bulk: no webhooks), then in `--rounds` turns:
//!   (l) baseline: what NetBox needs to list the ids of every type the relay follows, as the
//!       cheap pass lists them (`fields=id,last_updated,created`, pages of 1,000), one type after
//!       the other, one request at a time, with the relay's own HTTP client;
//!   (d) `netbox-relay reconcile` with nothing changed (the cheap pass of every type), as an
//!       operator runs it: the process's wall time, start-up included;
//!   (c) `netbox-relay reconcile --full` with nothing changed (with `--full-rounds`).
//! Each round measures (l) and (d) within the same minute; the report gives d/l per round and
//! their median. The loaded objects are deleted at the end (`--keep` leaves them).
//!
//! `NETBOX_LIVE_SETTINGS=$(scripts/netbox.sh up) cargo bench --bench listing -- [--devices 5000]
//!  [--vms 200] [--rounds 5] [--full-rounds 1] [--keep]`

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use netbox_relay::config::NetboxConfig;
use netbox_relay::netbox::client::NetboxClient;
use netbox_relay::netbox::object_type;

mod common;
use common::{free_port, nats_command, wait_for_port};

struct Args {
    devices: u64,
    vms: u64,
    rounds: usize,
    full_rounds: usize,
    keep: bool,
}

fn args() -> Args {
    let mut args = Args {
        devices: 5_000,
        vms: 200,
        rounds: 5,
        full_rounds: 1,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--devices" => args.devices = value().parse().expect("--devices N"),
            "--vms" => args.vms = value().parse().expect("--vms N"),
            "--rounds" => args.rounds = value().parse().expect("--rounds N"),
            "--full-rounds" => args.full_rounds = value().parse().expect("--full-rounds N"),
            "--keep" => args.keep = true,
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    args
}

/// What scripts/netbox.sh printed: `KEY=value` lines.
struct Settings(Vec<(String, String)>);

impl Settings {
    fn load() -> Settings {
        let path = std::env::var("NETBOX_LIVE_SETTINGS")
            .expect("NETBOX_LIVE_SETTINGS: the file `scripts/netbox.sh up` prints");
        let text = std::fs::read_to_string(&path).expect("the settings file");
        let pairs = text.lines().filter_map(|l| l.split_once('='));
        Settings(pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn get(&self, key: &str) -> &str {
        let found = self.0.iter().find(|(k, _)| k == key);
        found
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} in the settings"))
    }
}

/// Makes NetBox hold `devices` devices, as many IP addresses and `vms` VMs named `bench-...`
/// (those missing are created), or none with `remove`. Django's `bulk_create` and queryset
/// deletes outside a request: no change log, no event rules, no webhooks.
const LOAD: &str = r#"
import sys
from django.utils.text import slugify
from dcim.models import Device, DeviceRole, DeviceType, Manufacturer, Site
from ipam.models import IPAddress
from virtualization.models import Cluster, ClusterType, VirtualMachine
devices, vms, remove = int(sys.argv[-3]), int(sys.argv[-2]), sys.argv[-1] == "remove"
if remove:
    IPAddress.objects.filter(description="bench-listing").delete()
    Device.objects.filter(name__startswith="bench-dev-").delete()
    VirtualMachine.objects.filter(name__startswith="bench-vm-").delete()
    print("removed"); sys.exit(0)
def one(model, name, **kw):
    return model.objects.get_or_create(name=name, defaults=dict(slug=slugify(name), **kw))[0]
site = one(Site, "bench-site")
maker = one(Manufacturer, "bench-maker")
dtype = DeviceType.objects.get_or_create(model="bench-type", defaults=dict(slug="bench-type", manufacturer=maker))[0]
role = one(DeviceRole, "bench-role")
ctype = ClusterType.objects.get_or_create(name="bench-ctype", defaults=dict(slug="bench-ctype"))[0]
cluster = Cluster.objects.get_or_create(name="bench-cluster", defaults=dict(type=ctype))[0]
have = set(Device.objects.filter(name__startswith="bench-dev-").values_list("name", flat=True))
new = [Device(name=f"bench-dev-{i}", site=site, device_type=dtype, role=role, status="active")
       for i in range(devices) if f"bench-dev-{i}" not in have]
Device.objects.bulk_create(new, batch_size=1000)
have = {str(a) for a in IPAddress.objects.filter(description="bench-listing").values_list("address", flat=True)}
new = []
for i in range(devices):
    address = f"100.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"
    if address not in have:
        new.append(IPAddress(address=address, status="active", description="bench-listing"))
IPAddress.objects.bulk_create(new, batch_size=1000)
have = set(VirtualMachine.objects.filter(name__startswith="bench-vm-").values_list("name", flat=True))
new = [VirtualMachine(name=f"bench-vm-{i}", cluster=cluster, site=site, status="active")
       for i in range(vms) if f"bench-vm-{i}" not in have]
VirtualMachine.objects.bulk_create(new, batch_size=1000)
print("loaded", Device.objects.count(), IPAddress.objects.count(), VirtualMachine.objects.count())
"#;

fn netbox_shell(settings: &Settings, args: &Args, what: &str) {
    let script = std::env::temp_dir().join("netbox-relay-bench-load.py");
    std::fs::write(&script, LOAD).unwrap();
    let code = format!(
        "import sys; sys.argv += ['{}', '{}', '{what}']; exec(open('{}').read())",
        args.devices,
        args.vms,
        script.display()
    );
    let out = Command::new(settings.get("NETBOX_CLI"))
        .args(["shell", "-c", &code])
        .env("NETBOX_ROOT", settings.get("NETBOX_ROOT"))
        .output()
        .expect("NetBox's shell");
    let said = String::from_utf8_lossy(&out.stdout);
    let last = said.lines().last().unwrap_or("").to_string();
    assert!(
        out.status.success(),
        "NetBox's shell: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("NetBox: {last}");
}

fn main() {
    let args = args();
    let settings = Settings::load();
    netbox_shell(&settings, &args, "load");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&args, &settings));
    if !args.keep {
        netbox_shell(&settings, &args, "remove");
    }
}

async fn run(args: &Args, settings: &Settings) {
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nats = nats_command(port, &scratch.path().join("nats"))
        .spawn()
        .expect("nats-server");
    wait_for_port(port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    let relay = Relay {
        url: settings.get("NETBOX_URL").to_string(),
        token: settings.get("NETBOX_READER_TOKEN").to_string(),
        nats: nats_url,
        state: scratch.path().join("state.redb"),
    };
    let first = relay.reconcile(&[]);
    eprintln!("first run (a full pass, every object published): {first:.2} s");
    let client = relay.client();
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        let (listed, objects) = list_every_type(&client).await;
        let cheap = relay.reconcile(&[]);
        eprintln!(
            "round {round}: (l) {listed:.2} s for {objects} ids, (d) {cheap:.2} s: d/l = {:.2}",
            cheap / listed
        );
        rows.push((listed, cheap));
    }
    let mut full = Vec::new();
    for _ in 0..args.full_rounds {
        full.push(relay.reconcile(&["--full"]));
    }
    nats.kill().ok();
    nats.wait().ok();
    report(&rows, &full);
}

fn report(rows: &[(f64, f64)], full: &[f64]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let ratios: Vec<f64> = rows.iter().map(|(l, d)| d / l).collect();
    println!("\n| round | (l) listing ids, s | (d) cheap pass, s | d/l |");
    println!("| --- | --- | --- | --- |");
    for (i, ((l, d), r)) in rows.iter().zip(&ratios).enumerate() {
        println!("| {} | {l:.2} | {d:.2} | {r:.2} |", i + 1);
    }
    let listed = median(rows.iter().map(|r| r.0).collect());
    let cheap = median(rows.iter().map(|r| r.1).collect());
    println!(
        "\nmedian: (l) {listed:.2} s, (d) {cheap:.2} s, d/l {:.2} (per round {})",
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !full.is_empty() {
        let full = median(full.to_vec());
        println!(
            "(c) full pass, nothing changed: {full:.2} s; d/c {:.2}",
            cheap / full
        );
    }
}

/// Lists the ids of every type the relay follows by default, as the cheap pass asks for them,
/// one page after the other; the seconds it took and the ids listed.
async fn list_every_type(client: &NetboxClient) -> (f64, u64) {
    let started = Instant::now();
    let mut objects = 0;
    for object_type in object_type::ALL {
        let mut start = 0;
        loop {
            let query = format!("start={start}&limit=1000&fields=id,last_updated,created");
            let page = client
                .served_page(object_type, &query)
                .await
                .expect("a page");
            objects += page.ids().count() as u64;
            match page.ids().max() {
                Some(last) if !page.is_last() => start = last + 1,
                _ => break,
            }
        }
    }
    (started.elapsed().as_secs_f64(), objects)
}

struct Relay {
    url: String,
    token: String,
    nats: String,
    state: PathBuf,
}

impl Relay {
    fn client(&self) -> NetboxClient {
        let config = NetboxConfig {
            url: Some(self.url.clone()),
            token: Some(self.token.clone().into()),
            ..NetboxConfig::default()
        };
        NetboxClient::new(&config).expect("a NetBox client")
    }

    /// Runs `netbox-relay reconcile args` to its end; its wall time in seconds.
    fn reconcile(&self, args: &[&str]) -> f64 {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
            .arg("reconcile")
            .args(args)
            .env("NETBOX_RELAY_NETBOX__URL", &self.url)
            .env("NETBOX_RELAY_NETBOX__TOKEN", &self.token)
            .env("NETBOX_RELAY_NATS__URL", &self.nats)
            .env("NETBOX_RELAY_STATE__PATH", &self.state)
            .env("NETBOX_RELAY_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("netbox-relay reconcile");
        let seconds = started.elapsed().as_secs_f64();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "reconcile {args:?}: {said}");
        seconds
    }
}
