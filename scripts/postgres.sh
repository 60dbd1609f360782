#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL server (Debian's packages) on loopback for the tests.
#   scripts/postgres.sh start   -> prints the URI; also written to .testservers/postgres.uri
#   scripts/postgres.sh stop    -> stops it and removes its data directory
# Data: a directory owned by the postgres user under the system temp dir (see scripts/_server_dirs.sh).
set -euo pipefail
source "$(dirname "$0")/_server_dirs.sh"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_pg() {
  # From / : the postgres user may not be allowed into the current directory (a private checkout).
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

case "${1:-}" in
  start)
    bin="$(find_bin)"
    if [ -z "$bin" ]; then
      echo "Installing PostgreSQL from Debian's packages..." >&2
      apt_install postgresql
      bin="$(find_bin)"
    fi
    data="$(recorded_datadir postgres)"
    if [ -n "$data" ] && [ -f "$data/db/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data/db" status >/dev/null 2>&1; then
      cat "$record/postgres.uri"; exit 0
    fi
    forget_datadir postgres
    port="${CEKURA_PG_PORT:-55432}"
    # Another checkout's test server (or anything else) may hold the port: take a free one then.
    if port_taken "$port"; then port="$(free_port)"; fi
    data="$(new_datadir postgres postgres)"
    as_pg "$bin/initdb" -D "$data/db" -U postgres -A trust --no-sync >/dev/null
    as_pg "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w \
      -o "-h 127.0.0.1 -p $port -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres cekura_test
    uri="postgresql://postgres@127.0.0.1:$port/cekura_test"
    echo "$uri" > "$record/postgres.uri"
    echo "$uri"
    ;;
  stop)
    bin="$(find_bin)"
    data="$(recorded_datadir postgres)"
    if [ -n "$bin" ] && [ -n "$data" ] && [ -d "$data/db" ]; then
      as_pg "$bin/pg_ctl" -D "$data/db" -m fast -w stop >/dev/null 2>&1 || true
    fi
    forget_datadir postgres
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
