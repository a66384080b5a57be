#!/usr/bin/env bash
# A private NetBox for the tests: the PyPI package (with netbox-branching) in its own virtualenv,
# its own PostgreSQL cluster and Redis on free loopback ports, migrations, an admin and a
# read-only user with v2 tokens, and one rqworker so that event rules deliver webhooks.
#
#   scripts/netbox.sh up       start it, building what is missing; prints the settings file
#   scripts/netbox.sh down     stop everything `up` started
#   scripts/netbox.sh status   say what runs
#   scripts/netbox.sh record SCENARIO OUT   run a scenario (scripts/netbox/scenarios/) against it,
#                              recording webhook bodies and API answers into OUT
#
# Everything lives in .netbox/ (ignored by git). What is slow to build is kept per machine in
# ~/.cache/netbox-relay/ and reused by every checkout: the virtualenv (pip) and a dump of the
# migrated database (`migrate`). Exit code 3: this machine cannot run NetBox (no Python >= 3.12).
set -euo pipefail

NETBOX_VERSION=4.7.3
BRANCHING_VERSION=1.2.2
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.netbox"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/netbox-relay/netbox-$NETBOX_VERSION-branching-$BRANCHING_VERSION"
settings="$dir/settings.env"
# Fixed credentials: this NetBox listens on loopback only and lives for the tests.
ADMIN_TOKEN="nbt_relayadmin01.0123456789abcdef0123456789abcdef01234567"
READER_TOKEN="nbt_relayreader1.fedcba9876543210fedcba9876543210fedcba98"
# Reads everything but services: a token short of one view permission, as users get wrong.
PARTIAL_TOKEN="nbt_relaypartial.00112233445566778899aabbccddeeff00112233"

say() { echo "netbox.sh: $*" >&2; }

# A Python >= 3.12: on PATH, or one that pyenv installed (its shims answer for versions that are
# not selected, so each candidate is run).
python312() {
  local candidate
  for candidate in python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

apt_install() {
  "$root/deploy/local/apt-install.sh" "$@"
}

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || { apt_install postgresql >/dev/null; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); }
  # Debian's package starts a cluster of its own on 5432; ours uses its own port and folder.
  echo "$bin"
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# PostgreSQL refuses to run as root: the cluster belongs to an unprivileged user.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

venv() {
  if [ ! -x "$cache/venv/bin/netbox" ]; then
    local started=$SECONDS
    say "installing netbox==$NETBOX_VERSION and netboxlabs-netbox-branching==$BRANCHING_VERSION into $cache/venv"
    rm -rf "$cache/venv"; mkdir -p "$cache"
    "$PY" -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q --disable-pip-version-check \
      "netbox==$NETBOX_VERSION" "netboxlabs-netbox-branching==$BRANCHING_VERSION" >&2
    say "pip took $((SECONDS - started)) s"
  fi
  ln -sfn "$cache/venv" "$dir/venv"
}

configuration() {
  mkdir -p "$dir/root/conf" "$dir/root/media" "$dir/root/reports" "$dir/root/scripts"
  : > "$dir/root/conf/__init__.py"
  cat > "$dir/root/conf/configuration.py" <<EOF
from netbox_branching.utilities import DynamicSchemaDict

ALLOWED_HOSTS = ['*']
DATABASES = DynamicSchemaDict({
    'default': {
        'NAME': 'netbox', 'USER': 'netbox', 'PASSWORD': '', 'HOST': '127.0.0.1',
        'PORT': '$PG_PORT', 'CONN_MAX_AGE': 300,
    }
})
DATABASE_ROUTERS = ['netbox_branching.database.BranchAwareRouter']
REDIS = {
    'tasks': {'HOST': '127.0.0.1', 'PORT': $REDIS_PORT, 'USERNAME': '', 'PASSWORD': '', 'DATABASE': 0, 'SSL': False},
    'caching': {'HOST': '127.0.0.1', 'PORT': $REDIS_PORT, 'USERNAME': '', 'PASSWORD': '', 'DATABASE': 1, 'SSL': False},
}
SECRET_KEY = 'netbox-relay-tests-netbox-relay-tests-netbox-relay-tests-0123'
API_TOKEN_PEPPERS = {1: 'netbox-relay-tests-pepper-netbox-relay-tests-pepper-0123456789'}
PLUGINS = ['netbox_branching']
# Tests that mark branch changes set NETBOX_RELAY_BRANCH_CONTEXT=1 (netbox-branching's
# documented event pipeline step); by default bodies say nothing, as most installations send.
import os
if os.environ.get('NETBOX_RELAY_BRANCH_CONTEXT') == '1':
    EVENTS_PIPELINE = ['extras.events.process_event_queue', 'netbox_branching.events.add_branch_context']
RQ = {'COMMIT_MODE': 'auto'}
CENSUS_REPORTING_ENABLED = False
RELEASE_CHECK_URL = None
MEDIA_ROOT = '$dir/root/media'
REPORTS_ROOT = '$dir/root/reports'
SCRIPTS_ROOT = '$dir/root/scripts'
LOGGING = {'version': 1, 'disable_existing_loggers': False}
EOF
}

netbox() { NETBOX_ROOT="$dir/root" "$dir/venv/bin/netbox" "$@"; }

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

# The cluster's folder: .netbox/pg, or, when the user PostgreSQL runs as cannot reach the
# checkout (a checkout under /root), a folder of its own under /var/tmp.
pg_dir() {
  if [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$dir"; then
    echo "$dir/pg"
  else
    echo "/var/tmp/netbox-relay-pg/$(echo "$dir" | cksum | cut -d' ' -f1)"
  fi
}

start_postgres() {
  local bin; bin=$(pg_bin)
  id postgres >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ] || useradd --system --no-create-home postgres
  PG_DIR=$(pg_dir)
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    mkdir -p "$PG_DIR/data" "$PG_DIR/run"
    [ "$(id -u)" -ne 0 ] || chown -R postgres "$PG_DIR"
    chmod 700 "$PG_DIR/data"
    as_pg "$bin/initdb" -D "$PG_DIR/data" -U netbox --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_pg "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -w -l "$PG_DIR/run/postgres.log" \
      -o "-p $PG_PORT -k $PG_DIR/run -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  fi
}

database() {
  local psql=("$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U netbox -q -v ON_ERROR_STOP=1)
  if "${psql[@]}" -d netbox -c 'select 1' >/dev/null 2>&1; then
    return 0
  fi
  "${psql[@]}" -d postgres -c 'create database netbox' >/dev/null
  if [ -f "$cache/migrated.sql" ]; then
    local started=$SECONDS
    "${psql[@]}" -d netbox -f "$cache/migrated.sql" >/dev/null
    say "database restored from $cache/migrated.sql in $((SECONDS - started)) s"
  else
    local started=$SECONDS
    say "migrating a new database (first run on this machine)"
    netbox migrate --no-input >"$dir/run/migrate.log" 2>&1 || { tail -20 "$dir/run/migrate.log" >&2; exit 1; }
    say "migrate took $((SECONDS - started)) s"
    "$(pg_bin)/pg_dump" -h 127.0.0.1 -p "$PG_PORT" -U netbox -d netbox -O -x >"$cache/migrated.sql.new"
    mv "$cache/migrated.sql.new" "$cache/migrated.sql"
  fi
}

users() {
  local code
  code=$(cat <<EOF
from users.models import Token, User, ObjectPermission
from core.models import ObjectType
admin, _ = User.objects.get_or_create(username='admin', defaults={'is_superuser': True})
admin.set_password('admin')
admin.save()
reader, _ = User.objects.get_or_create(username='reader')
view, _ = ObjectPermission.objects.get_or_create(name='relay read-only', defaults={'actions': ['view']})
view.users.add(reader)
view.object_types.set(ObjectType.objects.public())
partial, _ = User.objects.get_or_create(username='partial')
most, _ = ObjectPermission.objects.get_or_create(name='relay read-only but services', defaults={'actions': ['view']})
most.users.add(partial)
most.object_types.set(ObjectType.objects.public().exclude(app_label='ipam', model='service'))
tokens = ((admin, '$ADMIN_TOKEN', True), (reader, '$READER_TOKEN', False), (partial, '$PARTIAL_TOKEN', False))
for user, value, write in tokens:
    key, plaintext = value.removeprefix('nbt_').split('.', 1)
    if not Token.objects.filter(key=key).exists():
        Token(user=user, version=2, key=key, token=plaintext, write_enabled=write).save()
EOF
)
  netbox shell --no-startup -c "$code" >"$dir/run/users.log" 2>&1 || {
    tail -20 "$dir/run/users.log" >&2; say "creating the users failed"; exit 1; }
}

start_netbox() {
  if ! running web; then
    nohup env NETBOX_ROOT="$dir/root" NETBOX_RELAY_BRANCH_CONTEXT="${NETBOX_RELAY_BRANCH_CONTEXT:-0}" \
      "$dir/venv/bin/netbox" runserver --noreload "127.0.0.1:$WEB_PORT" >"$dir/run/web.log" 2>&1 &
    echo $! >"$dir/web.pid"
  fi
  if ! running worker; then
    nohup env NETBOX_ROOT="$dir/root" NETBOX_RELAY_BRANCH_CONTEXT="${NETBOX_RELAY_BRANCH_CONTEXT:-0}" \
      "$dir/venv/bin/netbox" rqworker high default low >"$dir/run/worker.log" 2>&1 &
    echo $! >"$dir/worker.pid"
  fi
  local deadline=$((SECONDS + 120))
  until curl -fsS -H "Authorization: Bearer $READER_TOKEN" "http://127.0.0.1:$WEB_PORT/api/status/" >/dev/null 2>&1; do
    running web || { tail -20 "$dir/run/web.log" >&2; say "NetBox did not start"; exit 1; }
    [ $SECONDS -lt $deadline ] || { say "NetBox did not answer within 120 s"; exit 1; }
    sleep 0.5
  done
}

ports() {
  if [ -f "$dir/ports.env" ]; then
    # shellcheck disable=SC1091
    . "$dir/ports.env"
  else
    PG_PORT=$(free_port); REDIS_PORT=$(free_port); WEB_PORT=$(free_port)
    printf 'PG_PORT=%s\nREDIS_PORT=%s\nWEB_PORT=%s\n' "$PG_PORT" "$REDIS_PORT" "$WEB_PORT" >"$dir/ports.env"
  fi
}

up() {
  local started=$SECONDS
  PY=$(python312) || { say "no Python >= 3.12 (python3.12, python3.13 or pyenv): NetBox cannot run here"; exit 3; }
  mkdir -p "$dir/run"
  command -v redis-server >/dev/null || apt_install redis-server >/dev/null
  command -v curl >/dev/null || apt_install curl >/dev/null
  ports
  venv
  configuration
  start_postgres
  if ! running redis; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir/run" --logfile "$dir/run/redis.log"
    sleep 0.2
  fi
  database
  # Every time: a database restored or made by an older version of this script gets them too.
  users
  start_netbox
  cat >"$settings" <<EOF
NETBOX_URL=http://127.0.0.1:$WEB_PORT
NETBOX_VERSION=$NETBOX_VERSION
NETBOX_BRANCHING_VERSION=$BRANCHING_VERSION
NETBOX_ADMIN_TOKEN=$ADMIN_TOKEN
NETBOX_READER_TOKEN=$READER_TOKEN
NETBOX_PARTIAL_TOKEN=$PARTIAL_TOKEN
NETBOX_ROOT=$dir/root
NETBOX_CLI=$dir/venv/bin/netbox
EOF
  say "NetBox $NETBOX_VERSION up at http://127.0.0.1:$WEB_PORT in $((SECONDS - started)) s"
  echo "$settings"
}

down() {
  local name
  for name in web worker; do
    if running "$name"; then kill "$(cat "$dir/$name.pid")" 2>/dev/null || true; fi
    rm -f "$dir/$name.pid"
  done
  if running redis; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; fi
  PG_DIR=$(pg_dir)
  if [ -f "$PG_DIR/data/PG_VERSION" ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  fi
  say "stopped"
}

status() {
  local name
  for name in web worker redis; do
    if running "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
  done
  PG_DIR=$(pg_dir)
  if [ -f "$PG_DIR/data/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    echo "postgres: running"
  else
    echo "postgres: stopped"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  record)
    [ $# -eq 3 ] || { say "usage: scripts/netbox.sh record SCENARIO OUT"; exit 2; }
    up >/dev/null
    exec "$dir/venv/bin/python" "$root/scripts/netbox/record.py" --settings "$settings" \
      --scenario "$2" --out "$3"
    ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
