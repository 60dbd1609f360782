# The two commands: `make demo` and `make test`. Both do all set-up on a fresh machine, as a normal user:
# only python3 (>= 3.11) and make are needed. uv comes from PATH, else it is installed into .tools/ of this
# checkout (a private virtualenv: no root, and no pip install into a system Python that PEP 668 protects).
SHELL := /bin/bash
export UV_FROZEN := 1
export PYTHONDONTWRITEBYTECODE := 1
# .tools/bin last: a uv already on PATH wins.
export PATH := $(PATH):$(CURDIR)/.tools/bin

.PHONY: setup setup-demo uv demo test test-compat lint docs bench reliability postgres-start postgres-stop mariadb-start mariadb-stop clean

uv:  ## uv on PATH, else a private copy in .tools/ (python3 -m venv; pip install --target when venv has no pip)
	@command -v uv >/dev/null 2>&1 || bash scripts/bootstrap_uv.sh

setup: uv  ## create .venv from the committed uv.lock with every group (what make test needs)
	@uv sync --frozen --quiet

setup-demo: uv  ## only what the demo needs: the package, Airflow and the SQLite provider (no driver to build)
	@uv sync --frozen --quiet --inexact --no-default-groups --group demo

demo: setup-demo  ## emulator + ingest_then_evaluate example DAG into a SQLite warehouse
	@uv run --frozen --no-sync python scripts/demo.py

lint: setup
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy

docs: uv  ## the Sphinx site (user guide + API reference from the docstrings) in docs/_build/html; warnings are errors
	@uv sync --frozen --quiet --inexact --no-default-groups --group docs
	@uv run --frozen --no-sync sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

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
	rm -rf .venv .tools .airflow .demo .testservers .compat .redis docs/_build
