#!/usr/bin/env bash
# Start/stop a throwaway Redis server (Debian's redis-server) on loopback: the Celery broker of the tests.
#   scripts/redis.sh start [DIR]   -> prints the broker URL; also written to DIR/url
#   scripts/redis.sh stop [DIR]
# DIR (default: .redis in the checkout) holds the pid file and the log; nothing is persisted.
# REDIS_PORT set: that port (say, to restart on the same one). REDIS_PASSWORD set (URL-safe characters): the
# server requires it (requirepass, written to DIR/redis.conf, never on a command line) and the URL carries it
# (redis://:PASSWORD@127.0.0.1:PORT/0).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${2:-$here/.redis}"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  start)
    if ! command -v redis-server >/dev/null 2>&1; then
      echo "Installing Redis from Debian's packages..." >&2
      if [ "$(id -u)" != 0 ]; then echo "need root (or sudo) to apt-get install redis-server" >&2; exit 1; fi
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    fi
    if [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
      cat "$dir/url"; exit 0
    fi
    port="${REDIS_PORT:-$(free_port)}"
    rm -rf "$dir"; mkdir -p "$dir"
    # No persistence, loopback only, its own pid file and log; daemonized, stopped by `stop`.
    (umask 077; : > "$dir/redis.conf")
    auth=""
    if [ -n "${REDIS_PASSWORD:-}" ]; then
      printf 'requirepass "%s"\n' "$REDIS_PASSWORD" > "$dir/redis.conf"
      auth=":$REDIS_PASSWORD@"
    fi
    redis-server "$dir/redis.conf" --bind 127.0.0.1 --port "$port" --protected-mode yes --dir "$dir" \
      --save '' --appendonly no --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
    for _ in $(seq 1 100); do
      if [ "$(REDISCLI_AUTH="${REDIS_PASSWORD:-}" redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
        echo "redis://${auth}127.0.0.1:$port/0" > "$dir/url"
        cat "$dir/url"; exit 0
      fi
      sleep 0.1
    done
    echo "redis-server did not answer on 127.0.0.1:$port; its log:" >&2
    tail -n 20 "$dir/redis.log" >&2 || true
    exit 1
    ;;
  stop)
    if [ -f "$dir/redis.pid" ]; then
      pid="$(cat "$dir/redis.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/redis.pid"
    fi
    ;;
  *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
