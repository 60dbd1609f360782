#!/usr/bin/env bash
# make test: lint, type-check, then pytest with the real test servers (Postgres, MariaDB).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] && [ -z "${CEKURA_TEST_POSTGRES_URI:-}${CEKURA_TEST_MARIADB_URI:-}" ]; then
  # A normal user cannot apt-get: say what is missing before anything runs.
  source scripts/_server_dirs.sh
  missing="$(missing_server_packages)"
  if [ -n "$missing" ]; then apt_install $missing; fi
fi
echo "== ruff"; uv run --frozen ruff check . && uv run --frozen ruff format --check .
echo "== mypy"; uv run --frozen mypy
echo "== pytest"
export CEKURA_REQUIRE_POSTGRES=1
exec bash scripts/with_test_servers.sh uv run --frozen pytest -m "" ${PYTEST_ARGS:-tests}
