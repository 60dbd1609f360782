"""Apache Airflow provider for Cekura, the observability and evaluation platform for voice AI agents.

Importing this package is cheap: it defines only ``__version__`` and
:func:`get_provider_info`; hooks, operators, sensors, triggers and the
transfer live in their own modules and import Airflow lazily where they can.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_CONNECTION_FIELDS: dict[str, dict[str, Any]] = {
    "project_id": {
        "label": "Project ID",
        "description": "Cekura project id; required with an organisation-level API key.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "connect_timeout": {
        "label": "Connect timeout (s)",
        "description": "Seconds to wait for a TCP/TLS connection (default 10).",
        "schema": {"type": ["number", "null"], "minimum": 0.1, "default": 10},
    },
    "read_timeout": {
        "label": "Read timeout (s)",
        "description": "Seconds to wait for a response (default 60).",
        "schema": {"type": ["number", "null"], "minimum": 0.1, "default": 60},
    },
    "request_timeout": {
        "label": "Request timeout (s)",
        "description": "Seconds one attempt may take in all: connect, headers and the whole body "
        "(default: connect timeout + read timeout).",
        "schema": {"type": ["number", "null"], "minimum": 0.1},
    },
    "max_response_bytes": {
        "label": "Max response bytes",
        "description": "Largest answer read, counted after gzip decoding (default 67108864 = 64 MiB).",
        "schema": {"type": ["integer", "null"], "minimum": 1, "default": 67108864},
    },
    "max_attempts": {
        "label": "Max attempts",
        "description": "Attempts per request on 5xx, timeouts and dropped connections (default 5); "
        "429s spend the rate limit wait instead.",
        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 20, "default": 5},
    },
    "max_requests_per_second": {
        "label": "Max requests per second",
        "description": "Your plan's known rate limit: the requests of this connection in one process (in all "
        "processes together with a rate limit store) never exceed it (default: none; the limiter still slows "
        "down on 429s).",
        "schema": {"type": ["number", "null"], "minimum": 0.01},
    },
    "rate_limit_store": {
        "label": "Rate limit store",
        "description": "A Redis URL (redis://[:password@]host:port/db, rediss:// for TLS) through which every "
        "process and machine using this connection shares one rate budget, e.g. the Celery broker's Redis "
        "(needs the [redis] extra; default: none, each process paces its own requests).",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "rate_limit_max_wait": {
        "label": "Rate limit max wait (s)",
        "description": "Seconds one request may stay throttled (429) before the task fails with "
        "CekuraRateLimitError (default 300).",
        "schema": {"type": ["number", "null"], "minimum": 0, "default": 300},
    },
    "dashboard_url": {
        "label": "Dashboard URL",
        "description": "Base URL of the Cekura dashboard used by task links (default https://dashboard.cekura.ai).",
        "schema": {"type": ["string", "null"], "format": "url"},
    },
    "recording_roots": {
        "label": "Recording roots",
        "description": "Comma-separated directories local recordings may be uploaded from, besides the DAG "
        "folder and template_searchpath (never /proc, /sys or /dev).",
        "schema": {"type": ["string", "null"]},
    },
}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-cekura",
        "name": "Cekura",
        "description": "Cekura (https://cekura.ai): ingest voice-agent calls, run and await evaluations, "
        "export call logs with metrics to SQL.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Cekura",
                "external-doc-url": "https://docs.cekura.ai",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Cekura", "python-modules": ["airflow_provider_cekura.hooks.cekura"]}],
        "operators": [
            {
                "integration-name": "Cekura",
                "python-modules": [
                    "airflow_provider_cekura.operators.observe",
                    "airflow_provider_cekura.operators.rerun_evaluation",
                    "airflow_provider_cekura.operators.evaluation_check",
                ],
            }
        ],
        "sensors": [{"integration-name": "Cekura", "python-modules": ["airflow_provider_cekura.sensors.call_log"]}],
        "triggers": [
            {
                "integration-name": "Cekura",
                "python-modules": [
                    "airflow_provider_cekura.triggers.call_log",
                    "airflow_provider_cekura.triggers.evaluated_call_logs",
                ],
            }
        ],
        "transfers": [
            {
                "source-integration-name": "Cekura",
                "target-integration-name": "Common SQL",
                "python-module": "airflow_provider_cekura.transfers.call_logs_to_sql",
            },
            {
                "source-integration-name": "Cekura",
                "target-integration-name": "Common IO",
                "python-module": "airflow_provider_cekura.transfers.call_logs_to_object_storage",
            },
        ],
        "connection-types": [
            {
                "connection-type": "cekura",
                "hook-class-name": "airflow_provider_cekura.hooks.cekura.CekuraHook",
                "hook-name": "Cekura",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.cekura.ai",
                        "password": "X-CEKURA-API-KEY value",
                    },
                },
                "conn-fields": _CONNECTION_FIELDS,
            }
        ],
        "extra-links": ["airflow_provider_cekura.links.CekuraCallLogLink"],
    }
