#!/usr/bin/env bash
# make test: lint, type-check, then pytest with the real test servers (Postgres, MariaDB).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; uv run --frozen ruff check . && uv run --frozen ruff format --check .
echo "== mypy"; uv run --frozen mypy
echo "== pytest"
export CEKURA_REQUIRE_POSTGRES=1
exec bash scripts/with_test_servers.sh uv run --frozen pytest ${PYTEST_ARGS:-}
