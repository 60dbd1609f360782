"""The call log extra link: the dashboard URL operators push and the XCom key Airflow stores the link under."""

from __future__ import annotations

DASHBOARD = "https://dashboard.cekura.ai/observability/call-logs/"
"""The dashboard URL of a call log, without its id (``f"{DASHBOARD}{call_log_id}"``)."""

LINK_XCOM_KEY = "_link_CekuraCallLogLink"
"""The XCom key under which Airflow stores ``CekuraCallLogLink``'s URL at the end of a try."""
