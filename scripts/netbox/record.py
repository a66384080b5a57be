"""Records what a real NetBox sends and answers during a scenario, as test fixtures.

Run by `scripts/netbox.sh record SCENARIO OUT` with the NetBox of `scripts/netbox.sh up`. A plain
HTTP receiver on loopback takes NetBox's webhooks; a webhook (signed with the fixtures' secret)
and an event rule on every object type the relay reads point NetBox at it for the scenario's
duration. Writes, in OUT:
  NNN_<object type>_<event>.json   {"headers", "body"}: a webhook exactly as received
  api/<name>.json                  {"request", "status", "headers", "body"}: a saved API answer
  index.jsonl                      one line per webhook: file, step, event, object_type, id,
                                   request_id, signature_valid
A scenario (scripts/netbox/scenarios/NAME.json) is a list of steps
  {"name": "site", "method": "POST", "path": "dcim/sites/", "body": {...},
   "headers": {...}, "save": true}
where "{site.id}" in a path or body is the id a step named "site" was answered with, and
"{run}" a number unique to this recording.
"""

import argparse
import hashlib
import hmac
import http.server
import json
import pathlib
import re
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = (ROOT / "tests/fixtures/netbox-webhooks/secret.txt").read_text().strip()
OBJECT_TYPES = [
    "dcim.device", "dcim.interface", "dcim.site", "tenancy.tenant", "ipam.ipaddress",
    "ipam.prefix", "ipam.vlan", "ipam.vrf", "ipam.service", "virtualization.cluster",
    "virtualization.virtualmachine", "virtualization.vminterface",
]
received = []
arrived = threading.Event()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        received.append((dict(self.headers), body.decode("utf-8")))
        arrived.set()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def substitute(value, named, run):
    text = json.dumps(value)

    def field(match):
        name, key = match.group(1), match.group(2)
        return str(named[name][key])

    text = text.replace("{run}", run)
    text = re.sub(r'"\{(\w+)\.(\w+)\}"', lambda m: json.dumps(named[m.group(1)][m.group(2)]), text)
    text = re.sub(r"\{(\w+)\.(\w+)\}", field, text)
    return json.loads(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = dict(l.split("=", 1) for l in pathlib.Path(args.settings).read_text().split())
    scenario_path = pathlib.Path(args.scenario)
    if not scenario_path.exists():
        scenario_path = ROOT / "scripts/netbox/scenarios" / f"{args.scenario}.json"
    steps = json.loads(scenario_path.read_text())
    out = pathlib.Path(args.out)
    (out / "api").mkdir(parents=True, exist_ok=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = settings["NETBOX_URL"] + "/api/"
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + settings["NETBOX_ADMIN_TOKEN"]
    api.headers["Accept"] = "application/json"
    run = str(int(time.time()) % 100000)
    name = f"fixture-recorder-{run}"
    hook = api.post(base + "extras/webhooks/", json={
        "name": name, "payload_url": f"http://127.0.0.1:{server.server_port}/",
        "http_method": "POST", "http_content_type": "application/json", "secret": SECRET,
    }).json()
    rule = api.post(base + "extras/event-rules/", json={
        "name": name, "object_types": OBJECT_TYPES, "enabled": True,
        "event_types": ["object_created", "object_updated", "object_deleted"],
        "action_type": "webhook", "action_object_type": "extras.webhook", "action_object_id": hook["id"],
    }).json()
    named, steps_of = {}, []
    try:
        for number, step in enumerate(steps, 1):
            path = substitute(step["path"], named, run)
            body = substitute(step.get("body"), named, run)
            answer = api.request(step["method"], base + path, json=body, headers=step.get("headers"))
            if not answer.ok:
                raise SystemExit(f"step {number} {step['method']} {path}: {answer.status_code} {answer.text[:300]}")
            parsed = answer.json() if answer.content else None
            if "name" in step and parsed is not None:
                named[step["name"]] = parsed
            if step.get("save"):
                saved = {"request": f"{step['method']} /api/{path}", "status": answer.status_code,
                         "headers": dict(answer.headers), "body": parsed}
                (out / "api" / f"{step.get('name', number)}.json").write_text(json.dumps(saved, indent=2))
            steps_of.append((len(received), number))
        # NetBox's worker sends after the request; wait until two quiet seconds pass.
        while arrived.wait(2.0):
            arrived.clear()
    finally:
        api.delete(base + f"extras/event-rules/{rule['id']}/")
        api.delete(base + f"extras/webhooks/{hook['id']}/")
    with open(out / "index.jsonl", "w") as index:
        for n, (headers, body) in enumerate(received, 1):
            parsed = json.loads(body)
            object_type = parsed.get("object_type", "unknown")
            event = parsed.get("event", "unknown")
            file = f"{n:03d}_{object_type}_{event}.json"
            (out / file).write_text(json.dumps({"headers": headers, "body": body}, indent=2))
            signature = hmac.new(SECRET.encode(), body.encode(), hashlib.sha512).hexdigest()
            index.write(json.dumps({
                "file": file, "event": event, "object_type": object_type,
                "id": (parsed.get("data") or {}).get("id"),
                "request_id": (parsed.get("request") or {}).get("id"),
                "signature_valid": headers.get("X-Hook-Signature") == signature,
            }) + "\n")
    print(f"recorded {len(received)} webhooks and {sum(1 for s in steps if s.get('save'))} API answers into {out}")


if __name__ == "__main__":
    main()
