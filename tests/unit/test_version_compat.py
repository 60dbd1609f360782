"""version_compat is the only place that knows Airflow lines apart (run in every cell of make test-compat)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

import airflow_provider_cekura
from airflow_provider_cekura import version_compat

PACKAGE = Path(airflow_provider_cekura.__file__).resolve().parent
ALLOWED_PREFIX = "airflow.providers."
"""Outside version_compat.py, Airflow is imported only through providers (common.compat, common.sql, ...)."""


def airflow_imports(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of Airflow itself (not of a provider package) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if (name == "airflow" or name.startswith("airflow.")) and not name.startswith(ALLOWED_PREFIX):
                found.append((node.lineno, name))
    return found


def checked_files() -> list[Path]:
    library = [p for p in PACKAGE.rglob("*.py") if p.name != "version_compat.py"]
    return sorted(library + list((ROOT / "example_dags").glob("*.py")))


def test_the_check_finds_direct_imports() -> None:
    source = "import airflow.sdk\nfrom airflow.sdk import DAG\nfrom airflow.models.xcom import XCom\n"
    source += "from airflow.providers.common.compat.sdk import BaseHook\n"
    source += "def f():\n    from airflow.timetables.interval import DeltaDataIntervalTimetable\n"
    assert airflow_imports(source) == [
        (1, "airflow.sdk"),
        (2, "airflow.sdk"),
        (3, "airflow.models.xcom"),
        (6, "airflow.timetables.interval"),
    ]


def test_only_version_compat_imports_airflow_itself() -> None:
    files = checked_files()
    assert len(files) > 20, files  # the package and the example DAGs were found
    offenders = [
        f"{path.relative_to(path.parents[1])}:{line}: {module}"
        for path in files
        for line, module in airflow_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "import these through airflow_provider_cekura.version_compat:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", version_compat.__all__)
def test_every_name_resolves_on_this_airflow(name: str) -> None:
    if name == "AssetWatcher" and not version_compat.AIRFLOW_V_3_0_PLUS:
        from airflow_provider_cekura.exceptions import CekuraConfigurationError

        with pytest.raises(CekuraConfigurationError, match=r"needs Airflow 3\.0"):  # event-driven scheduling is 3.0+
            getattr(version_compat, name)
        return
    assert getattr(version_compat, name) is not None


def test_version_flags_match_the_installed_airflow() -> None:
    major, minor, _ = version_compat.AIRFLOW_VERSION_TUPLE
    assert (major >= 3) == version_compat.AIRFLOW_V_3_0_PLUS
    assert ((major, minor) >= (3, 2)) == version_compat.AIRFLOW_V_3_2_PLUS


def test_deferral_timeout_is_told_apart_from_a_crashed_trigger() -> None:
    timeout = version_compat.TaskDeferralTimeout("Trigger/execution timeout")
    assert version_compat.is_deferral_timeout(timeout)
    if not version_compat.AIRFLOW_V_3_0_PLUS:  # Airflow 2: one class for both, the message tells
        assert not version_compat.is_deferral_timeout(version_compat.TaskDeferralTimeout("Trigger failure"))


def test_the_event_trigger_imports_on_every_line_and_needs_airflow_3_to_be_built() -> None:
    """Airflow 2.11 has no event-driven scheduling: the module imports, building the trigger says why not."""
    from airflow_provider_cekura.exceptions import CekuraConfigurationError
    from airflow_provider_cekura.triggers.evaluated_call_logs import CekuraCallLogsEvaluatedTrigger

    assert version_compat.EVENT_DRIVEN_SCHEDULING is version_compat.AIRFLOW_V_3_0_PLUS
    if version_compat.EVENT_DRIVEN_SCHEDULING:
        assert CekuraCallLogsEvaluatedTrigger(poll_interval=5).poll_interval == 5.0
        assert version_compat.AssetWatcher.__name__ == "AssetWatcher"
    else:
        with pytest.raises(CekuraConfigurationError, match=r"needs Airflow 3\.0 or later; this is Airflow 2\."):
            CekuraCallLogsEvaluatedTrigger()
        with pytest.raises(CekuraConfigurationError, match="AssetWatcher needs"):
            version_compat.AssetWatcher  # noqa: B018
