# The two commands: `make demo` and `make test`. Both do all set-up on a fresh machine.
SHELL := /bin/bash
export UV_FROZEN := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test test-compat lint bench reliability postgres-start postgres-stop mariadb-start mariadb-stop clean

setup:  ## create .venv from the committed uv.lock (installs uv with pip if missing)
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@bash scripts/build_deps.sh
	@uv sync --frozen --quiet

demo: setup  ## emulator + ingest_then_evaluate example DAG into a SQLite warehouse
	@uv run --frozen python scripts/demo.py

lint: setup
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy

test: setup  ## ruff, mypy, and the whole pytest suite against the emulator, SQLite, DuckDB and real Postgres and MariaDB servers
	@bash scripts/test.sh

test-compat: setup  ## compatibility matrix (compat/cells.toml): each Airflow line x Python in a throwaway venv
	@uv run --frozen python scripts/compat.py

bench: setup  ## benchmarks (ratios measured side by side), results in benchmarks/results.md
	@bash scripts/with_test_servers.sh uv run --frozen python -m benchmarks.run

reliability: setup  ## fault scenarios (observe -> wait -> export to Postgres), figures in docs/reliability.md
	@bash scripts/with_test_servers.sh uv run --frozen python scripts/reliability_report.py

postgres-start:
	@scripts/postgres.sh start
postgres-stop:
	@scripts/postgres.sh stop
mariadb-start:
	@scripts/mariadb.sh start
mariadb-stop:
	@scripts/mariadb.sh stop

clean:
	@scripts/postgres.sh stop; scripts/mariadb.sh stop
	rm -rf .venv .airflow .demo .testservers .compat .redis
