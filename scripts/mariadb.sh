#!/usr/bin/env bash
# Start/stop a throwaway MariaDB server (Debian's mariadb-server) on loopback for the tests.
#   scripts/mariadb.sh start   -> prints the URI (user cekura, full rights); also in .testservers/mariadb.uri
#   scripts/mariadb.sh stop    -> stops it and removes its data directory
# Users: cekura / cekura-test-pw (ALL PRIVILEGES) and cekura_ro / cekura-ro-pw (SELECT only).
# Data: a directory owned by the mysql user under the system temp dir (see scripts/_server_dirs.sh).
set -euo pipefail
source "$(dirname "$0")/_server_dirs.sh"

# mariadb-install-db gives socket (unix_socket) access to root and to the user that ran it: as a normal
# user, that user is the server's administrator.
admin_user="root"
if [ "$(id -u)" != 0 ]; then admin_user="$(id -un)"; fi
admin() { mariadb --no-defaults --protocol=socket --socket="$1/mysqld.sock" -u"$admin_user" "${@:2}"; }

case "${1:-}" in
  start)
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
      echo "Installing MariaDB from Debian's packages..." >&2
      apt_install mariadb-server
    fi
    mariadbd="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
    data="$(recorded_datadir mariadb)"
    if [ -n "$data" ] && [ -S "$data/mysqld.sock" ] && admin "$data" -e "SELECT 1" >/dev/null 2>&1; then
      cat "$record/mariadb.uri"; exit 0
    fi
    forget_datadir mariadb
    port="${CEKURA_MARIADB_PORT:-53306}"
    if port_taken "$port"; then port="$(free_port)"; fi
    data="$(new_datadir mariadb mysql)"
    user=()
    if [ "$(id -u)" = 0 ]; then user=(--user=mysql); fi
    mariadb-install-db --no-defaults "${user[@]}" --datadir="$data/db" --auth-root-authentication-method=socket \
      --skip-test-db >"$data/install.log" 2>&1 || { cat "$data/install.log" >&2; exit 1; }
    # Throwaway data: no binary log, no fsync per commit, small buffers.
    nohup "$mariadbd" --no-defaults "${user[@]}" --datadir="$data/db" --socket="$data/mysqld.sock" \
      --pid-file="$data/mysqld.pid" --log-error="$data/server.log" --bind-address=127.0.0.1 --port="$port" \
      --skip-name-resolve --skip-log-bin --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
      --innodb-buffer-pool-size=64M --max-connections=200 --character-set-server=utf8mb4 \
      --collation-server=utf8mb4_unicode_ci >/dev/null 2>&1 &
    server_pid=$!
    for _ in $(seq 1 300); do
      if [ -S "$data/mysqld.sock" ] && admin "$data" -e "SELECT 1" >/dev/null 2>&1; then break; fi
      sleep 0.1
    done
    if ! admin "$data" -e "SELECT 1" >/dev/null 2>&1; then
      # Not left running: with_test_servers.sh only stops what started.
      echo "MariaDB did not start (or refused its administrator):" >&2; tail -20 "$data/server.log" >&2
      kill "$server_pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
      forget_datadir mariadb
      exit 1
    fi
    admin "$data" <<'SQL'
CREATE DATABASE cekura_test CHARACTER SET utf8mb4;
CREATE USER 'cekura'@'127.0.0.1' IDENTIFIED BY 'cekura-test-pw';
GRANT ALL PRIVILEGES ON *.* TO 'cekura'@'127.0.0.1';
CREATE USER 'cekura_ro'@'127.0.0.1' IDENTIFIED BY 'cekura-ro-pw';
GRANT SELECT ON *.* TO 'cekura_ro'@'127.0.0.1';
SQL
    # The MySQL provider's mysql-connector-python client: a wheel, no compiler (mysqlclient is not installed).
    uri="mysql://cekura:cekura-test-pw@127.0.0.1:$port/cekura_test?client=mysql-connector-python"
    echo "$uri" > "$record/mariadb.uri"
    echo "$uri"
    ;;
  stop)
    data="$(recorded_datadir mariadb)"
    if [ -n "$data" ] && [ -f "$data/mysqld.pid" ]; then
      pid="$(cat "$data/mysqld.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    forget_datadir mariadb
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
