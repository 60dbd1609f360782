# Sourced by scripts/postgres.sh and scripts/mariadb.sh: where a test server keeps its data.
#
# The servers run as their own users (postgres, mysql), which cannot enter a checkout in a private
# directory (a clone in root's home, or in `mktemp -d`). So the data directory lives in the system's
# temporary directory, owned by the server's user, and the checkout records where it is:
#   .testservers/<name>.datadir   the data directory (created by `start`, removed by `stop`)
#   .testservers/<name>.uri       the URI of the running server
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
record="$here/.testservers"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# new_datadir NAME OWNER: a fresh directory under the system temp dir, owned by OWNER when we are root.
new_datadir() {
  local name="$1" owner="$2" dir
  mkdir -p "$record"
  dir="$(mktemp -d "${CEKURA_SERVER_TMP:-/tmp}/cekura-test-$name.XXXXXX")"
  chmod 0755 "$dir"
  if [ "$(id -u)" = 0 ]; then chown "$owner" "$dir"; fi
  echo "$dir" > "$record/$name.datadir"
  echo "$dir"
}

# recorded_datadir NAME: the data directory recorded by the last `start`, or nothing.
recorded_datadir() {
  local file="$record/$1.datadir"
  if [ -f "$file" ] && [ -d "$(cat "$file")" ]; then cat "$file"; fi
}

forget_datadir() {
  local dir
  dir="$(recorded_datadir "$1")"
  if [ -n "$dir" ]; then
    case "$dir" in "${CEKURA_SERVER_TMP:-/tmp}"/cekura-test-"$1".*) rm -rf "$dir" ;; esac
  fi
  rm -f "$record/$1.datadir" "$record/$1.uri"
}

# missing_server_packages: the Debian packages of the test servers that are not installed (none: empty).
missing_server_packages() {
  local missing=()
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
  { command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || missing+=(mariadb-server)
  echo "${missing[@]}"
}

# apt_install PACKAGE...: as root, installs them; as a normal user, says exactly what to install and stops.
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "Missing Debian package(s): $*. The servers run as this user once installed; install them once as root:" >&2
    echo "    sudo apt-get install -y --no-install-recommends $*" >&2
    echo "then run the command again." >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
