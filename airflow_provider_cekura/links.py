"""Extra link from a task to its call log in the Cekura dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.version_compat import BaseOperatorLink

if TYPE_CHECKING:
    from airflow_provider_cekura.version_compat import BaseOperator, TaskInstanceKey

CALL_LOG_URL_XCOM_KEY = "cekura_call_log_url"
"""XCom key under which operators push the dashboard URL, before they wait."""

CALL_LOG_URL_ATTRIBUTE = "_cekura_call_log_url"
"""Operator attribute that records, in the process that runs ``execute``, the URL pushed (``None``: none yet).

Set to ``None`` when ``execute`` starts and to the URL when it is pushed. Absent in any other process (a
task resumed after deferral, Airflow 2's webserver): the link then reads the XCom."""

_UNKNOWN = object()


class CekuraCallLogLink(BaseOperatorLink):
    """ "Cekura call log": the dashboard page of the task's (first) call log.

    The operator pushes the URL to XCom as soon as the call log exists, so the
    link works even when a later wait fails. ``get_link`` runs on the worker
    when the try ends and never raises: no URL gives an empty link. When the
    try failed before any URL was pushed, no XCom is read at all: on Airflow 3
    reading a missing XCom logs ``XCom not found`` at error level, a red
    herring under the task's real error.
    """

    name = "Cekura call log"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        known: Any = getattr(operator, CALL_LOG_URL_ATTRIBUTE, _UNKNOWN)
        if known is None:
            return ""
        if isinstance(known, str):
            return known
        try:
            from airflow_provider_cekura.version_compat import XCom

            value: Any = XCom.get_value(ti_key=ti_key, key=CALL_LOG_URL_XCOM_KEY)
        except Exception:
            return ""
        return value if isinstance(value, str) else ""
