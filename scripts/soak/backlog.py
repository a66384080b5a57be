"""The relay's memory under backlogs, round after round (issue 37: RSS flat after warm-up).

One relay (`serve`, the binary given) on a local `nats-server -js`, and a NetBox stand-in that
answers `/api/status/` (no plugins) and every list with no objects, so that each device webhook's
cascade pulls nothing but still takes a request per dependent type. Each round sends
`--webhooks` signed updates of the recorded device 020 (tests/fixtures) on 8 connections, each a
random one of `--devices` ids with a new name (a rename: a cascade each), then idles 30 s; then
the same again with NATS stopped (SIGSTOP: every delta spooled) and idles 60 s while the spool
drains. It prints the relay's RSS after each phase. A relay whose memory is bounded levels off once
its state file holds every id; one that keeps something per webhook grows each round.

  python3 scripts/soak/backlog.py --relay target/release/netbox-relay --nats .venv/bin/nats-server \
      [--rounds 4] [--webhooks 8000] [--devices 20000]
"""

import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = b"backlog-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NetBox(http.server.BaseHTTPRequestHandler):
    """NetBox 4.6.8 without plugins, and no objects of any type."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/api/status"):
            body = {"netbox-version": "4.6.8", "plugins": {}}
        else:
            body = {"count": 0, "next": None, "previous": None, "results": []}
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_):
        pass


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def send(port, device, count, devices):
    """`count` renames of random devices on one connection; the number answered other than 2xx."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    refused = 0
    for _ in range(count):
        data = dict(device["data"])
        data["id"] = 100_000 + random.randrange(devices)
        data["name"] = f"dev-{data['id']}-{random.random()}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{random.randrange(10**6):06d}+00:00"
        raw = json.dumps(dict(device, data=data, event="updated", timestamp=stamp)).encode()
        signature = hmac.new(SECRET, raw, hashlib.sha512).hexdigest()
        conn.request("POST", "/webhooks/netbox", raw,
                     {"Content-Type": "application/json", "X-Hook-Signature": signature})
        answer = conn.getresponse()
        answer.read()
        refused += answer.status >= 300
    return refused


def burst(port, device, count, devices):
    results = []
    threads = [threading.Thread(target=lambda: results.append(send(port, device, count // 8, devices)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results)


def idle(pid, seconds):
    samples = []
    for _ in range(seconds // 5):
        time.sleep(5)
        samples.append(rss_mb(pid))
    return samples


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--relay", required=True)
    p.add_argument("--nats", required=True)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--webhooks", type=int, default=8000)
    p.add_argument("--devices", type=int, default=20000)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="backlog-")
    nats_port, relay_port = free_port(), free_port()
    netbox = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NetBox)
    threading.Thread(target=netbox.serve_forever, daemon=True).start()
    nats = subprocess.Popen([args.nats, "-js", "-sd", os.path.join(work, "js"), "-p", str(nats_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ,
               NETBOX_RELAY_SERVER__LISTEN=f"127.0.0.1:{relay_port}",
               NETBOX_RELAY_NATS__URL=f"nats://127.0.0.1:{nats_port}",
               NETBOX_RELAY_NETBOX__URL=f"http://127.0.0.1:{netbox.server_port}",
               NETBOX_RELAY_NETBOX__TOKEN="0123456789abcdef0123456789abcdef01234567",
               NETBOX_RELAY_WEBHOOK__SECRETS=SECRET.decode(),
               NETBOX_RELAY_STATE__PATH=os.path.join(work, "state.redb"),
               NETBOX_RELAY_LOG__LEVEL="warn")
    time.sleep(1)
    relay = subprocess.Popen([args.relay, "serve"], env=env,
                             stdout=open(os.path.join(work, "relay.log"), "w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(3)
        with open(os.path.join(ROOT, "tests/fixtures/netbox-webhooks/020_device_created.json")) as f:
            recorded = json.load(f)["body"]
        device = json.loads(recorded) if isinstance(recorded, str) else recorded
        print(f"start: {rss_mb(relay.pid)} MB", flush=True)
        for n in range(args.rounds):
            refused = burst(relay_port, device, args.webhooks, args.devices)
            print(f"round {n}: {args.webhooks} webhooks ({refused} refused): {rss_mb(relay.pid)} MB; "
                  f"idle 30 s: {idle(relay.pid, 30)}", flush=True)
            nats.send_signal(signal.SIGSTOP)
            refused = burst(relay_port, device, args.webhooks // 2, args.devices)
            nats.send_signal(signal.SIGCONT)
            print(f"  NATS stopped: {args.webhooks // 2} webhooks ({refused} refused): "
                  f"{rss_mb(relay.pid)} MB; idle 60 s: {idle(relay.pid, 60)}", flush=True)
    finally:
        relay.terminate()
        nats.send_signal(signal.SIGCONT)
        nats.terminate()
        netbox.shutdown()
        relay.wait()
        nats.wait()
        print(f"relay's log and state: {work}")


if __name__ == "__main__":
    main()
