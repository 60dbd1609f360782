"""Fixtures of the integration tests: a real Airflow 3 deployment (see ``deployment.py``)."""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from .deployment import CELERY_DAGS, OBSERVE_LATENCY, ROOT, AirflowDeployment, CeleryDeployment, DeploymentError

REDIS_SCRIPT = ROOT / "scripts" / "redis.sh"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """When a test using the deployment fails, add the tails of its process logs to the report."""
    outcome = yield
    report = outcome.get_result()
    deployment = getattr(item, "_cekura_deployment", None) or getattr(item, "funcargs", {}).get("celery_deployment")
    # a DeploymentError (a wait that timed out, a component that died) already carries the tails
    already_there = call.excinfo is not None and call.excinfo.errisinstance(DeploymentError)
    if report.failed and deployment is not None and not already_there:
        report.sections.append(("Airflow deployment: process logs", deployment.diagnostics(lines=80)))


@pytest.fixture
def airflow_deployment(
    postgres_uri: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AirflowDeployment]:
    """A started deployment with ``cekura_ingest_then_evaluate`` in its DAGs folder.

    Stopped, and its databases dropped, at the end whatever happened (process groups are killed).
    """
    deployment = AirflowDeployment(
        tmp_path_factory.mktemp("airflow-deployment"),
        postgres_uri,
        dag_files=("cekura_ingest_then_evaluate.py",),
    )
    request.node._cekura_deployment = deployment
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Redis (``scripts/redis.sh``: installed from Debian's packages if absent), stopped at the end."""
    directory = tmp_path_factory.mktemp("redis")
    try:
        started = subprocess.run(
            ["bash", str(REDIS_SCRIPT), "start", str(directory)],
            capture_output=True,
            text=True,
            timeout=600,  # the first time includes apt-get update + install
            stdin=subprocess.DEVNULL,
        )
        if started.returncode:
            pytest.fail(f"could not start Redis: {started.stderr.strip()}")
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(REDIS_SCRIPT), "stop", str(directory)], timeout=60, check=False)


@pytest.fixture(scope="module")
def celery_deployment(
    postgres_uri: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryDeployment]:
    """A started CeleryExecutor deployment (two workers) with the test DAG ``cekura_celery_pipeline``.

    Shared by the tests of one module (they run in order on it); stopped, its databases dropped
    and its process groups killed at the end whatever happened.
    """
    deployment = CeleryDeployment(
        tmp_path_factory.mktemp("celery-deployment"),
        postgres_uri,
        dag_files=("cekura_celery_pipeline.py",),
        dags_source=CELERY_DAGS,
        broker_url=redis_url,
        evaluation_delay=24 * 3600,  # evaluations finish when the test says so (SIGUSR1 to the emulator)
        # each observe request takes this long: a worker killed during a batch dies in the middle of it
        emulator_faults=(f"latency:method=POST,path=/observe/,delay={OBSERVE_LATENCY}",),
    )
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
