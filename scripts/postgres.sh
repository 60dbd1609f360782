#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL server (Debian's packages) on loopback for the tests.
#   scripts/postgres.sh start   -> prints the URI; also written to .pgdata/uri
#   scripts/postgres.sh stop
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
data="$here/.pgdata"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    bin="$(find_bin)"
    if [ -z "$bin" ]; then
      echo "Installing PostgreSQL from Debian's packages..." >&2
      if [ "$(id -u)" != 0 ]; then echo "need root (or sudo) to apt-get install postgresql" >&2; exit 1; fi
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq postgresql >/dev/null
      bin="$(find_bin)"
    fi
    if [ -f "$data/db/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data/db" status >/dev/null 2>&1; then
      cat "$data/uri"; exit 0
    fi
    port="${CEKURA_PG_PORT:-55432}"
    # Another checkout's test server (or anything else) may hold the port: take a free one then.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then port="$(free_port)"; fi
    rm -rf "$data"; mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_pg "$bin/initdb" -D "$data/db" -U postgres -A trust --no-sync >/dev/null
    as_pg "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w \
      -o "-h 127.0.0.1 -p $port -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres cekura_test
    uri="postgresql://postgres@127.0.0.1:$port/cekura_test"
    echo "$uri" > "$data/uri"
    echo "$uri"
    ;;
  stop)
    bin="$(find_bin)"
    if [ -n "$bin" ] && [ -d "$data/db" ]; then as_pg "$bin/pg_ctl" -D "$data/db" -m fast -w stop >/dev/null 2>&1 || true; fi
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
