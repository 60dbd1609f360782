"""Fixtures of the integration tests: a real Airflow 3 deployment (see ``deployment.py``)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from .deployment import AirflowDeployment, DeploymentError


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """When a test using the deployment fails, add the tails of its process logs to the report."""
    outcome = yield
    report = outcome.get_result()
    deployment = getattr(item, "_cekura_deployment", None)
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
