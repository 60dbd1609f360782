#!/usr/bin/env bash
# make test: lint, type-check, then pytest with a real Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; uv run --frozen ruff check . && uv run --frozen ruff format --check .
echo "== mypy"; uv run --frozen mypy
echo "== pytest"
export CEKURA_REQUIRE_POSTGRES=1
exec bash scripts/with_postgres.sh uv run --frozen pytest ${PYTEST_ARGS:-}
