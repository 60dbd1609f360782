#!/usr/bin/env bash
# Before `uv sync`: mysqlclient (the MySQL provider's default driver, a dev dependency) has no Linux wheel on
# PyPI and is built from source; that needs a C compiler, pkg-config and MariaDB's client headers. Installs
# them from Debian's packages when missing (and mysqlclient is not installed yet).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$here/.venv/bin/python" ] && "$here/.venv/bin/python" -c "import MySQLdb" >/dev/null 2>&1; then exit 0; fi
if command -v gcc >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1 \
  && { pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; }; then exit 0; fi
source "$here/scripts/_server_dirs.sh"
echo "Installing build dependencies of mysqlclient (gcc, pkg-config, libmariadb-dev) from Debian's packages..." >&2
apt_install gcc pkg-config libmariadb-dev
