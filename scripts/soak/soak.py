"""netbox-relay's soak: real NetBox changes under faults, judged by the sum of the guarantees.

scripts/soak.sh sets up what this needs (NetBox 4.7 with netbox-branching from scripts/netbox.sh,
nats-server, HAProxy, the release build) and runs it:

  python soak.py --minutes N --seed S --out DIR --relay BIN --nats BIN --haproxy BIN --settings F

It starts a 3-node NATS cluster (routes on loopback, stream replicas 3), two relays behind HAProxy
(what NetBox's webhook points at), each reaching NATS through a TCP proxy of its own that a fault
can cut, and `netbox-relay tail` following every delta. A generator drives NetBox's REST API at a
steady rate with a random mix of changes (CHANGES), while faults are injected on a schedule
(FAULTS), each logged with its time. Then the faults stop, everything is started again, NetBox's
queue drains, one default reconcile runs, and the judge asks:
  - the final run succeeds, and `netbox-relay audit` reports no difference after it (before it
    is reported too);
  - no key's revision goes backwards on the stream; no dead letters;
  - every save the generator made is on the stream, or overtaken (a later revision, a delete);
    a save NetBox logged no change for (a PATCH that set what was there) is listed apart;
  - each relay's RSS is flat after warm-up (Theil-Sen slope over the last half of its longest life);
  - deltas per second, and NetBox-save-to-stream latency (p50, p99) of the saves seen.
The report is DIR/report.json; the exit code is 0 when every judgement passed.
The same seed makes the same schedule and the same changes (NetBox's timing still varies).
"""

import argparse
import datetime
import json
import os
import random
import signal
import statistics
import socket
import subprocess
import sys
import threading
import time

import requests

# What each fault does, and how often: the mean seconds between two of its kind (exponential).
# Relay stops hit one relay per half of the run, so that each relay also lives half the run in
# one process: long enough to judge its RSS. The other faults hit either relay.
FAULTS = {
    "relay_kill": (60, "SIGKILL a relay (relay-a in the first half, relay-b in the second); start it again 2 s later"),
    "relay_term": (90, "SIGTERM a relay (as relay_kill chooses); start it again once it exited"),
    "nats_restart": (75, "stop one NATS node at random, the stream leader included, for 5 s"),
    "nats_cut": (80, "cut one relay off from NATS: its proxy drops every connection and refuses new ones for 10 s"),
    "nats_slow": (90, "slow one relay's way to NATS: its proxy holds every read 200 ms for 20 s"),
    "worker_stop": (120, "stop NetBox's rq worker for 15 s: webhooks wait in Redis and go out late"),
    "relay_unreachable": (100, "stop HAProxy for 10 s: NetBox's deliveries fail and are lost (NetBox does not retry)"),
}

# The generator's mix: relative weights of each kind of change.
CHANGES = {
    "create_device": 8,  # a device, its interface, an IP address made its primary
    "rename_device": 6,
    "device_status": 4,
    "rename_site": 2,  # a parent: its devices, interfaces and addresses re-label
    "renumber_ip": 4,  # a primary IP's address changes: its device shows the new one
    "delete_ip": 2,  # NetBox clears the device's primary IP without a webhook for the device
    "tag_device": 3,
    "delete_tag": 1,  # a tag in use goes: its devices lose it without webhooks
    "delete_platform": 1,  # a platform in use goes: its devices lose it without webhooks
    "bulk_edit": 2,  # one request, up to 10 devices
    "delete_device": 3,
    "branch_merge": 1,  # a device renamed in a branch, then merged
    "branch_revert": 1,  # the same, merged, then reverted
    "no_webhook": 2,  # the event rule disabled for one change: only a reconcile repairs it
}

SECRET = "soak-webhook-secret"
ADMIN = "soak-admin-token"


def now():
    return time.time()


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=30):
    deadline = now() + seconds
    while now() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Log:
    """The soak's own log: one JSON line per event (faults, phases), with its time."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, event, **fields):
        line = json.dumps({"at": stamp(), "event": event, **fields})
        with self.lock:
            self.file.write(line + "\n")
        print(line, flush=True)


# ---------------------------------------------------------------- components


class Nats:
    """Three nats-server nodes with routes on loopback, JetStream on each."""

    def __init__(self, binary, out):
        self.binary, self.out = binary, out
        self.client = [free_port() for _ in range(3)]
        self.route = [free_port() for _ in range(3)]
        self.procs = [None, None, None]
        for i in range(3):
            self.start(i)
        for port in self.client:
            wait_port(port)

    def start(self, i):
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.route) if j != i)
        log = open(os.path.join(self.out, f"nats{i + 1}.log"), "a")
        self.procs[i] = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.client[i]),
             "-n", f"soak-{i + 1}", "--cluster_name", "soak", "--no_advertise",
             "--cluster", f"nats://127.0.0.1:{self.route[i]}", "--routes", routes,
             "-sd", os.path.join(self.out, f"nats{i + 1}")],
            stdout=log, stderr=log)

    def stop(self, i):
        self.procs[i].terminate()
        self.procs[i].wait(30)

    def urls(self):
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client)

    def close(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
                p.wait(30)


class Proxy:
    """A TCP proxy a relay reaches one NATS node through; `cut` drops it off for a while."""

    def __init__(self, target):
        self.target = target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.cut_until = 0
        self.slow_until = 0
        self.open = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.server.accept()
            if now() < self.cut_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if now() < self.slow_until:
                    time.sleep(0.2)
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def slow(self, seconds):
        self.slow_until = now() + seconds

    def cut(self, seconds):
        self.cut_until = now() + seconds
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.open = []


class Relay:
    """`netbox-relay serve`, NATS through proxies of its own, its state file kept across starts."""

    def __init__(self, name, binary, nats, settings, out):
        self.name, self.binary, self.out = name, binary, out
        self.port = free_port()
        self.proxies = [Proxy(p) for p in nats.client]
        urls = ",".join(f"nats://127.0.0.1:{p.port}" for p in self.proxies)
        self.env = dict(os.environ,
                        NETBOX_RELAY_SERVER__LISTEN=f"127.0.0.1:{self.port}",
                        NETBOX_RELAY_NATS__URL=urls,
                        NETBOX_RELAY_NATS__REPLICAS="3",
                        NETBOX_RELAY_NETBOX__URL=settings["NETBOX_URL"],
                        NETBOX_RELAY_NETBOX__TOKEN=settings["NETBOX_READER_TOKEN"],
                        NETBOX_RELAY_WEBHOOK__SECRETS=SECRET,
                        NETBOX_RELAY_API__ADMIN_TOKEN=ADMIN,
                        NETBOX_RELAY_STATE__PATH=os.path.join(out, f"{name}.redb"),
                        NETBOX_RELAY_LOG__LEVEL="info")
        self.proc = None
        self.rss = []  # (time, pid, kB)
        self.start()

    def start(self):
        log = open(os.path.join(self.out, f"{self.name}.log"), "a")
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=log, stderr=log)
        wait_port(self.port)

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def sample(self):
        if self.proc.poll() is not None:
            return
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                status = {k: v.split()[0] for k, _, v in (line.partition(":") for line in f)
                          if k in ("VmRSS", "RssAnon", "RssFile", "Threads")}
        except (OSError, IndexError):
            return
        if "VmRSS" not in status:
            return
        sample = (now(), self.proc.pid, int(status["VmRSS"]))
        self.rss.append(sample)
        # Kept for whoever reads the judgement: rss-<relay>.jsonl, one sample a line. The split
        # (anonymous memory, mapped files such as the binary, threads, then anonymous memory in
        # transparent huge pages) says where a step came from.
        extra = [int(status.get(k, 0)) for k in ("RssAnon", "RssFile", "Threads")]
        extra.append(huge_pages_kb(self.proc.pid))
        with open(os.path.join(self.out, f"rss-{self.name}.jsonl"), "a") as f:
            f.write(json.dumps(list(sample) + extra) + "\n")

    def get(self, path):
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)


class Haproxy:
    """HAProxy in front of the relays, health-checking /readyz: what NetBox sends webhooks to."""

    def __init__(self, binary, relays, out):
        self.binary, self.port = binary, free_port()
        self.config = os.path.join(out, "haproxy.cfg")
        servers = "\n".join(
            f"    server {r.name} 127.0.0.1:{r.port} check inter 1s fall 2 rise 1" for r in relays)
        with open(self.config, "w") as f:
            f.write(f"""global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
frontend webhooks
    bind 127.0.0.1:{self.port}
    default_backend relays
backend relays
    balance roundrobin
    option httpchk GET /readyz
{servers}
""")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-f", self.config, "-db"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


class Tail:
    """`netbox-relay tail --json` on the whole stream: every delta once, with when it arrived.
    Started again (from the stream's start, repeats skipped by delta id) if it ever exits."""

    def __init__(self, binary, nats, out, log):
        self.binary, self.log = binary, log
        self.path = os.path.join(out, "deltas.jsonl")
        self.file = open(self.path, "a", buffering=1)
        self.errors = open(os.path.join(out, "tail.log"), "a", buffering=1)
        self.env = dict(os.environ, NETBOX_RELAY_NATS__URL=nats.urls(), NETBOX_RELAY_LOG__LEVEL="warn")
        self.seen = set()
        self.count = 0
        self.closing = False
        self.proc = None
        threading.Thread(target=self.follow, daemon=True).start()

    def follow(self):
        while not self.closing:
            self.proc = subprocess.Popen([self.binary, "tail", "--json", "--since", "24h"], env=self.env,
                                         stdout=subprocess.PIPE, stderr=self.errors, text=True)
            for line in self.proc.stdout:
                try:
                    delta = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if delta.get("delta_id") in self.seen:
                    continue
                self.seen.add(delta.get("delta_id"))
                self.file.write(json.dumps({"arrived": now(), "delta": delta}) + "\n")
                self.count += 1
            self.proc.wait()
            if not self.closing:
                self.log("tail_restarted", exit_code=self.proc.returncode)
                time.sleep(1)

    def close(self):
        self.closing = True
        if self.proc:
            self.proc.terminate()


# ---------------------------------------------------------------- NetBox and the generator


class Netbox:
    def __init__(self, settings, run):
        self.url = settings["NETBOX_URL"] + "/api/"
        self.http = requests.Session()
        self.http.headers.update({
            "Authorization": f"Bearer {settings['NETBOX_ADMIN_TOKEN']}",
            "Accept": "application/json"})
        self.run = run

    def call(self, method, path, body=None, headers=None):
        response = self.http.request(method, self.url + path, json=body, headers=headers or {},
                                     timeout=60)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.text else None

    def name(self, what, n=""):
        return f"soak-{self.run}-{what}{n}"


class Generator:
    """Random changes through NetBox's REST API, `rate` a minute; remembers what it saved."""

    def __init__(self, netbox, rng, log, out):
        self.nb, self.rng, self.log = netbox, rng, log
        self.saves = open(os.path.join(out, "saves.jsonl"), "a", buffering=1)
        self.counts = {}
        self.errors = 0
        self.n = 0
        self.devices = {}  # id -> {"interface", "ip"}
        self.setup()

    def setup(self):
        nb, name = self.nb, self.nb.name
        manufacturer = nb.call("POST", "dcim/manufacturers/", {"name": name("mfr"), "slug": name("mfr")})
        self.device_type = nb.call("POST", "dcim/device-types/", {
            "manufacturer": manufacturer["id"], "model": name("model"), "slug": name("model")})["id"]
        self.role = nb.call("POST", "dcim/device-roles/", {"name": name("role"), "slug": name("role")})["id"]
        self.tenant = nb.call("POST", "tenancy/tenants/", {"name": name("tenant"), "slug": name("tenant")})["id"]
        self.sites = [nb.call("POST", "dcim/sites/", {"name": name("site", i), "slug": name("site", i)})["id"]
                      for i in range(3)]
        self.platforms = [self.new_platform() for _ in range(2)]
        self.tags = [self.new_tag() for _ in range(2)]
        rules = nb.call("GET", "extras/event-rules/?name=netbox-relay")["results"]
        self.rule = rules[0]["id"] if rules else None
        for _ in range(10):
            self.create_device()

    def new_platform(self):
        self.n += 1
        return self.nb.call("POST", "dcim/platforms/", {
            "name": self.nb.name("platform", self.n), "slug": self.nb.name("platform", self.n)})["id"]

    def new_tag(self):
        self.n += 1
        return self.nb.call("POST", "extras/tags/", {
            "name": self.nb.name("tag", self.n), "slug": self.nb.name("tag", self.n)})["id"]

    def saved(self, kind, obj):
        """Remembers a save: the judge looks for its key and revision on the stream."""
        key = f"netbox/default/{kind}/{obj['id']}"
        if obj.get("last_updated"):
            self.saves.write(json.dumps({"at": now(), "key": key, "revision": obj["last_updated"]}) + "\n")

    def new_address(self, interface):
        """An IP address on `interface`; the next one when NetBox already has it (an earlier
        soak on this NetBox left it there)."""
        for _ in range(50):
            try:
                return self.nb.call("POST", "ipam/ip-addresses/", {
                    "address": self.address(), "assigned_object_type": "dcim.interface",
                    "assigned_object_id": interface})
            except RuntimeError as e:
                if "Duplicate IP address" not in str(e):
                    raise
        raise RuntimeError("no free address after 50 tries")

    def address(self):
        self.n += 1
        run = int(self.nb.run) % 200
        return f"172.{16 + run % 16}.{(self.n // 250) % 256}.{self.n % 250 + 1}/24"

    def device(self):
        return self.rng.choice(sorted(self.devices)) if self.devices else None

    # -- the changes

    def create_device(self):
        nb = self.nb
        self.n += 1
        device = nb.call("POST", "dcim/devices/", {
            "name": nb.name("device", self.n), "device_type": self.device_type, "role": self.role,
            "site": self.rng.choice(self.sites), "tenant": self.tenant,
            "platform": self.rng.choice(self.platforms), "status": "active"})
        interface = nb.call("POST", "dcim/interfaces/", {
            "device": device["id"], "name": "eth0", "type": "1000base-t"})
        ip = self.new_address(interface["id"])
        device = nb.call("PATCH", f"dcim/devices/{device['id']}/", {"primary_ip4": ip["id"]})
        self.devices[device["id"]] = {"interface": interface["id"], "ip": ip["id"]}
        self.saved("dcim.device", device)
        self.saved("dcim.interface", interface)
        self.saved("ipam.ipaddress", ip)

    def rename_device(self):
        if (d := self.device()) is not None:
            self.n += 1
            self.saved("dcim.device", self.nb.call("PATCH", f"dcim/devices/{d}/", {"name": self.nb.name("device", self.n)}))

    def device_status(self):
        if (d := self.device()) is not None:
            status = self.rng.choice(["active", "offline", "planned", "staged"])
            self.saved("dcim.device", self.nb.call("PATCH", f"dcim/devices/{d}/", {"status": status}))

    def rename_site(self):
        site = self.rng.choice(self.sites)
        self.n += 1
        self.saved("dcim.site", self.nb.call("PATCH", f"dcim/sites/{site}/", {"slug": self.nb.name("site-slug", self.n)}))

    def renumber_ip(self):
        d = self.device()
        if d is not None and self.devices[d]["ip"]:
            self.saved("ipam.ipaddress", self.nb.call(
                "PATCH", f"ipam/ip-addresses/{self.devices[d]['ip']}/", {"address": self.address()}))

    def delete_ip(self):
        d = self.device()
        if d is not None and self.devices[d]["ip"]:
            self.nb.call("DELETE", f"ipam/ip-addresses/{self.devices[d]['ip']}/")
            self.devices[d]["ip"] = None

    def tag_device(self):
        if (d := self.device()) is not None:
            self.saved("dcim.device", self.nb.call("PATCH", f"dcim/devices/{d}/", {"tags": [self.rng.choice(self.tags)]}))

    def delete_tag(self):
        tag = self.tags.pop(self.rng.randrange(len(self.tags)))
        self.nb.call("DELETE", f"extras/tags/{tag}/")
        self.tags.append(self.new_tag())

    def delete_platform(self):
        platform = self.platforms.pop(self.rng.randrange(len(self.platforms)))
        self.nb.call("DELETE", f"dcim/platforms/{platform}/")
        self.platforms.append(self.new_platform())

    def bulk_edit(self):
        ids = self.rng.sample(sorted(self.devices), min(10, len(self.devices)))
        status = self.rng.choice(["active", "offline", "planned"])
        for device in self.nb.call("PATCH", "dcim/devices/", [{"id": i, "status": status} for i in ids]):
            self.saved("dcim.device", device)

    def delete_device(self):
        if len(self.devices) > 5 and (d := self.device()) is not None:
            self.nb.call("DELETE", f"dcim/devices/{d}/")
            del self.devices[d]

    def branch(self):
        self.n += 1
        branch = self.nb.call("POST", "plugins/branching/branches/", {"name": self.nb.name("branch", self.n)})
        deadline = now() + 120
        while now() < deadline:
            branch = self.nb.call("GET", f"plugins/branching/branches/{branch['id']}/")
            if branch["status"]["value"] == "ready":
                return branch
            time.sleep(0.5)
        raise RuntimeError(f"branch {branch['id']} was never provisioned")

    def in_branch(self, revert):
        d = self.device()
        if d is None:
            return
        branch = self.branch()
        self.n += 1
        self.nb.call("PATCH", f"dcim/devices/{d}/", {"name": self.nb.name("branch-device", self.n)},
                     headers={"X-NetBox-Branch": branch["schema_id"]})
        self.nb.call("POST", f"plugins/branching/branches/{branch['id']}/merge/", {"commit": True})
        self.wait_branch(branch["id"], {"merged"})
        if revert:
            self.nb.call("POST", f"plugins/branching/branches/{branch['id']}/revert/", {"commit": True})
            self.wait_branch(branch["id"], {"ready", "reverted"})

    def wait_branch(self, branch, statuses):
        """Merges and reverts are jobs of NetBox's worker: waits until one of `statuses`."""
        deadline = now() + 120
        while now() < deadline:
            status = self.nb.call("GET", f"plugins/branching/branches/{branch}/")["status"]["value"]
            if status in statuses:
                return
            if status == "failed":
                raise RuntimeError(f"branch {branch}: its job failed")
            time.sleep(0.5)
        raise RuntimeError(f"branch {branch} never became {sorted(statuses)}")

    def branch_merge(self):
        self.in_branch(revert=False)

    def branch_revert(self):
        self.in_branch(revert=True)

    def no_webhook(self):
        d = self.device()
        if d is None or self.rule is None:
            return
        self.nb.call("PATCH", f"extras/event-rules/{self.rule}/", {"enabled": False})
        try:
            self.n += 1
            self.saved("dcim.device", self.nb.call("PATCH", f"dcim/devices/{d}/", {"name": self.nb.name("quiet-device", self.n)}))
        finally:
            self.nb.call("PATCH", f"extras/event-rules/{self.rule}/", {"enabled": True})

    def one(self):
        kinds, weights = zip(*CHANGES.items())
        kind = self.rng.choices(kinds, weights)[0]
        try:
            getattr(self, kind)()
            self.counts[kind] = self.counts.get(kind, 0) + 1
        except Exception as e:  # NetBox refused (a name taken, a branch slow): said, counted
            self.errors += 1
            self.log("change_failed", change=kind, error=str(e)[:300])


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args):
        self.args = args
        os.makedirs(args.out, exist_ok=True)
        self.log = Log(os.path.join(args.out, "soak.log"))
        self.rng = random.Random(args.seed)
        self.settings = dict(l.strip().split("=", 1) for l in open(args.settings) if "=" in l)
        self.faults = {name: 0 for name in FAULTS}

    def start(self):
        a = self.args
        self.nats = Nats(a.nats, a.out)
        self.relays = [Relay(n, a.relay, self.nats, self.settings, a.out) for n in ("relay-a", "relay-b")]
        for r in self.relays:
            self.wait_ready(r)
        self.haproxy = Haproxy(a.haproxy, self.relays, a.out)
        setup = subprocess.run(
            [a.relay, "netbox-setup", "--relay-url", f"http://127.0.0.1:{self.haproxy.port}"],
            env=dict(self.relays[0].env, NETBOX_RELAY_NETBOX__TOKEN=self.settings["NETBOX_ADMIN_TOKEN"],
                     NETBOX_RELAY_LOG__LEVEL="warn"),
            capture_output=True, text=True)
        if setup.returncode != 0:
            raise RuntimeError(f"netbox-setup: {setup.stderr}")
        self.tail = Tail(a.relay, self.nats, a.out, self.log)
        self.netbox = Netbox(self.settings, str(a.seed % 100000) + str(int(now()) % 100000))
        self.log("started", nats=self.nats.urls(), relays=[r.port for r in self.relays],
                 haproxy=self.haproxy.port, seed=a.seed)

    def wait_ready(self, relay, seconds=60):
        deadline = now() + seconds
        while now() < deadline:
            try:
                if relay.get("/readyz").status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.log("not_ready", relay=relay.name)

    # -- faults: each says what it did, and undoes itself

    def fault(self, name, second_half):
        self.faults[name] += 1
        relay = self.rng.choice(self.relays)
        if name in ("relay_kill", "relay_term"):
            relay = self.relays[1 if second_half else 0]
        node = self.rng.randrange(3)
        self.log("fault", fault=name, relay=relay.name, node=node + 1)
        if name == "relay_kill":
            relay.signal(signal.SIGKILL)
            time.sleep(2)
            relay.start()
        elif name == "relay_term":
            relay.signal(signal.SIGTERM)
            relay.start()
        elif name == "nats_restart":
            self.nats.stop(node)
            time.sleep(5)
            self.nats.start(node)
        elif name == "nats_cut":
            for proxy in relay.proxies:
                proxy.cut(10)
            time.sleep(10)
        elif name == "nats_slow":
            for proxy in relay.proxies:
                proxy.slow(20)
            time.sleep(20)
        elif name == "worker_stop":
            self.worker("stop")
            time.sleep(15)
            self.worker("start")
        elif name == "relay_unreachable":
            self.haproxy.stop()
            time.sleep(10)
            self.haproxy.start()
        self.log("fault_over", fault=name)

    def worker(self, action):
        pid_file = os.path.join(os.path.dirname(self.args.settings), "worker.pid")
        if action == "stop":
            self.count_lost()
            self.worker_log_at = 0
            try:
                os.kill(int(open(pid_file).read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
            time.sleep(1)
        else:
            subprocess.run([self.args.netbox_sh, "up"], capture_output=True)

    def faults_loop(self, until):
        middle = (now() + until) / 2
        schedule = []
        for name, (every, _) in FAULTS.items():
            at = now() + self.rng.expovariate(1 / every)
            while at < until:
                schedule.append((at, name))
                at += self.rng.expovariate(1 / every)
        for at, name in sorted(schedule):
            if at > until:
                break
            time.sleep(max(0, at - now()))
            self.fault(name, at >= middle)

    def generate(self, until):
        per_change = 60 / self.args.rate
        while now() < until:
            started = now()
            self.generator.one()
            time.sleep(max(0, per_change - (now() - started)))

    def sample(self, until):
        while now() < until + 1e9 and not self.done:
            for r in self.relays:
                r.sample()
            time.sleep(5)

    def worker_log(self):
        return os.path.join(os.path.dirname(self.args.settings), "run", "worker.log")

    def count_lost(self):
        """Counts the deliveries NetBox's worker failed since the last count (it logs each and
        never retries); scripts/netbox.sh starts the worker's log afresh, so this runs before
        each stop of the worker too."""
        try:
            with open(self.worker_log(), errors="replace") as f:
                f.seek(self.worker_log_at)
                text = f.read()
                self.worker_log_at = f.tell()
        except OSError:
            return
        marks = ("requests.exceptions.ConnectionError:", "requests.exceptions.RequestException: Status")
        self.lost += sum(1 for line in text.splitlines() if line.startswith(marks))

    def run(self):
        self.lost = 0
        try:
            self.worker_log_at = os.path.getsize(self.worker_log())
        except OSError:
            self.worker_log_at = 0
        self.start()
        self.generator = Generator(self.netbox, self.rng, self.log, self.args.out)
        self.done = False
        started = now()
        until = started + self.args.minutes * 60
        threading.Thread(target=self.sample, args=(until,), daemon=True).start()
        faults = threading.Thread(target=self.faults_loop, args=(until,))
        faults.start()
        self.generate(until)
        faults.join()
        self.log("faults_over")
        self.settle()
        return self.judge(started, until)

    def settle(self):
        """Everything up again, NetBox's queue drained, then one default reconcile."""
        for r in self.relays:
            if r.proc.poll() is not None:
                r.start()
            self.wait_ready(r)
        time.sleep(30)
        self.audit_before = self.audit()
        self.run_report = self.reconcile()
        time.sleep(5)
        self.audit_after = self.audit()
        self.done = True

    def reconcile(self):
        relay = self.relays[0]
        headers = {"Authorization": f"Bearer {ADMIN}"}
        deadline = now() + 600
        while now() < deadline:
            r = requests.post(f"http://127.0.0.1:{relay.port}/reconcile", headers=headers, timeout=30)
            if r.status_code == 202:
                run_id = r.json()["run_id"]
                break
            time.sleep(2)  # another run (the other relay's lease) is under way
        else:
            raise RuntimeError("no reconcile run could start")
        while now() < deadline:
            report = relay.get(f"/reconcile/runs/{run_id}").json()
            if report.get("status") not in ("running", None):
                self.log("reconcile", status=report["status"], run_id=run_id)
                return report
            time.sleep(1)
        raise RuntimeError("the reconcile run did not end")

    def audit(self):
        env = dict(self.relays[0].env, NETBOX_RELAY_NATS__URL=self.nats.urls(),
                   NETBOX_RELAY_LOG__LEVEL="warn")
        done = subprocess.run([self.args.relay, "audit", "--json"], env=env, capture_output=True, text=True)
        try:
            report = json.loads(done.stdout)
        except json.JSONDecodeError:
            report = {"error": done.stderr.strip()}
        report["exit_code"] = done.returncode
        self.log("audit", exit_code=done.returncode, counts=report.get("counts"))
        return report

    # -- the judge

    def gone(self, key):
        """Whether NetBox no longer has the object of `key`: a save never published (its webhook
        lost with a job of a stopped worker) whose object was deleted since was overtaken."""
        _, _, object_type, id = key.split("/")
        path = {"dcim.device": "dcim/devices", "dcim.interface": "dcim/interfaces",
                "ipam.ipaddress": "ipam/ip-addresses", "dcim.site": "dcim/sites"}[object_type]
        response = self.netbox.http.get(f"{self.netbox.url}{path}/{id}/", timeout=30)
        return response.status_code == 404

    def changed(self, save):
        """Whether NetBox logged a change for `save`. A PATCH that changes nothing (a status set
        to the one the device has, a bulk edit of devices already so) still moves
        `last_updated`, but NetBox records no change for it: there is nothing for a webhook or a
        pass to carry, and the stream keeps the revision of the last real change."""
        _, _, object_type, id = save["key"].split("/")
        changes = self.netbox.http.get(f"{self.netbox.url}core/object-changes/", timeout=30, params={
            "changed_object_type": object_type, "changed_object_id": id,
            "ordering": "-time", "limit": 100}).json()["results"]
        at = parse_time(save["revision"])
        if any(abs(parse_time(c["time"]) - at) < 1.0 for c in changes):
            return True
        # 100 changes all newer than the save: its own may be further back. Counted as changed,
        # so that a save is never excused for want of reading far enough.
        return len(changes) == 100 and parse_time(changes[-1]["time"]) > at

    def judge(self, started, until):
        self.count_lost()
        self.tail.close()
        deltas = [json.loads(l) for l in open(self.tail.path)]
        backwards = []
        last = {}
        for d in deltas:
            delta = d["delta"]
            key, revision = delta["key"], parse_time(delta["revision"])
            if key in last and revision < last[key]:
                backwards.append({"key": key, "before": last[key], "then": delta["revision"]})
            last[key] = max(revision, last.get(key, revision))
        seen = {}
        for d in deltas:
            seen.setdefault((d["delta"]["key"], parse_time(d["delta"]["revision"])), d["arrived"])
        latencies = []
        for line in open(os.path.join(self.args.out, "saves.jsonl")):
            save = json.loads(line)
            arrived = seen.get((save["key"], parse_time(save["revision"])))
            if arrived is not None and save["at"] >= started:
                latencies.append(max(0.0, arrived - save["at"]))
        latencies.sort()
        # Every save NetBox made is on the stream, or was overtaken: the key's last delta is a
        # later revision or a delete.
        final = {}
        for d in deltas:
            final[d["delta"]["key"]] = d["delta"]
        unseen, unchanged = [], []
        for line in open(os.path.join(self.args.out, "saves.jsonl")):
            save = json.loads(line)
            last = final.get(save["key"])
            shown = last is not None and (last["op"] == "delete"
                                          or parse_time(last["revision"]) >= parse_time(save["revision"]))
            if shown or (last is None and self.gone(save["key"])):
                continue
            (unseen if self.changed(save) else unchanged).append(save)
        pct = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else None
        dead = [r.get("/readyz").json().get("dead_letters") for r in self.relays]
        rss = {r.name: rss_summary(r.rss) for r in self.relays}
        seconds = now() - started
        report = {
            "seed": self.args.seed, "minutes": self.args.minutes, "rate_per_minute": self.args.rate,
            "changes": self.generator.counts, "change_errors": self.generator.errors,
            "faults": self.faults, "fault_kinds": {k: v[1] for k, v in FAULTS.items()},
            "deltas": len(deltas), "deltas_per_second": round(len(deltas) / seconds, 2),
            "latency_seconds": {"p50": pct(0.5), "p99": pct(0.99), "saves_seen": len(latencies)},
            "revisions_backwards": backwards[:20], "revisions_backwards_count": len(backwards),
            "saves": sum(1 for _ in open(os.path.join(self.args.out, "saves.jsonl"))),
            "saves_not_on_stream": unseen[:20], "saves_not_on_stream_count": len(unseen),
            "saves_that_changed_nothing": unchanged[:20],
            "deliveries_lost": self.lost,
            "dead_letters": dead, "rss_kb": rss,
            "audit_before_run": {k: self.audit_before.get(k) for k in ("equal", "counts", "exit_code")},
            "final_run": {k: self.run_report.get(k) for k in ("status", "pass")},
            "audit_after_run": self.audit_after,
        }
        report["passed"] = (self.audit_after.get("exit_code") == 0 and not backwards and not unseen
                            and self.run_report.get("status") == "succeeded"
                            and all(d == 0 for d in dead)
                            and all(r.get("flat") is not False for r in rss.values()))
        with open(os.path.join(self.args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        self.log("judged", passed=report["passed"])
        return report

    def close(self):
        for thing in [getattr(self, "tail", None), getattr(self, "haproxy", None)]:
            try:
                thing and (thing.close() if hasattr(thing, "close") else thing.stop())
            except Exception:
                pass
        for r in getattr(self, "relays", []):
            r.signal(signal.SIGTERM)
        if hasattr(self, "nats"):
            self.nats.close()


def huge_pages_kb(pid):
    """The process's anonymous memory in transparent huge pages (0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def rss_summary(samples):
    """RSS at the start and end of the relay's longest-lived process, and the slope over its
    last half (kB per hour); flat when that slope, over the half, adds less than 10 % of the
    half's median. Judged only for a life of 10 minutes or more (shorter ones are still warming
    up). The slope is Theil-Sen's, the median of the slopes between every two samples: an
    allocator's bumps (a burst's buffers, held for a while and given back) tilt a least-squares
    line across a quarter of an hour, but not the median of the pairs."""
    by_pid = {}
    for at, pid, kb in samples:
        by_pid.setdefault(pid, []).append((at, kb))
    if not by_pid:
        return {}
    longest = max(by_pid.values(), key=lambda s: s[-1][0] - s[0][0])
    half = longest[len(longest) // 2:]
    slopes = sorted((k2 - k1) / (t2 - t1) for i, (t1, k1) in enumerate(half)
                    for t2, k2 in half[i + 1:] if t2 > t1)
    slope = statistics.median(slopes) * 3600 if slopes else 0.0
    span_hours = (half[-1][0] - half[0][0]) / 3600 if len(half) >= 2 else 0
    grew = slope * span_hours / max(1, statistics.median(k for _, k in half))
    lifetime = longest[-1][0] - longest[0][0]
    return {"start": longest[0][1], "end": longest[-1][1], "lifetime_seconds": round(lifetime),
            "last_half_median": round(statistics.median(k for _, k in half)),
            "last_half_slope_kb_per_hour": round(slope),
            "flat": grew < 0.10 if lifetime >= 600 else None}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--rate", type=float, default=30, help="changes a minute")
    p.add_argument("--out", required=True)
    p.add_argument("--relay", required=True)
    p.add_argument("--nats", required=True)
    p.add_argument("--haproxy", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--netbox-sh", required=True)
    soak = Soak(p.parse_args())
    # A SIGTERM (or Ctrl-C) stops the run through `finally`: every process it started goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = soak.run()
    finally:
        soak.close()
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
