"""An in-process emulator of the Cekura observability API, for tests, demos and benchmarks.

It follows the documented API (``../shared/cekura-api``): the
``X-CEKURA-API-KEY`` header, the four endpoints (with or without the trailing
slash, as Cekura's router serves them), the documented response shapes,
``{field: [messages]}`` validation errors, page-number pagination with
absolute ``next`` links and a page-size cap, the list filters (including a
maximum timestamp window), asynchronous evaluation that leaves
``"evaluating"`` after a delay, fault injection, and a token-bucket rate
limit (:meth:`CekuraEmulator.set_rate_limit`).

It deliberately shares no code with the client (no payload validation from
:mod:`airflow_provider_cekura.payloads`): a double that reused the client's
rules would agree with every client bug. It imports only the standard
library, so it starts in milliseconds.

Example::

    from airflow_provider_cekura.testing import CekuraEmulator

    with CekuraEmulator(api_key="test-key", evaluation_delay=0.5) as emulator:
        url = emulator.base_url  # point a ``cekura`` connection's host here

Layout (the names below are re-exported here; the modules are private):

- ``_emulator.py``: :class:`CekuraEmulator` (settings, lifecycle, endpoint dispatch, faults, request log)
- ``_store.py``: the call logs (creation, asynchronous evaluation, response shapes, state files)
- ``_pagination.py``: the list endpoint (filters, pages, ``next`` links); ``_filters.py``: ``filters_v2``
- ``_validation.py``: the observe body's checks; ``_faults.py``: :class:`Fault`, :class:`RateLimit`
- ``_handler.py``: the HTTP request handler (public methods of the emulator only)
- ``_common.py``: constants, time helpers, :class:`LoggedRequest`
"""

from __future__ import annotations

from airflow_provider_cekura.testing.emulator._common import (
    CALL_LOGS,
    DEFAULT_METRICS,
    FILTER_OPS,
    OBSERVE,
    REDACT_FIELDS,
    RERUN,
    RESPONSE_STYLES,
    TRANSCRIPT_TYPES,
    LoggedRequest,
)
from airflow_provider_cekura.testing.emulator._emulator import CekuraEmulator
from airflow_provider_cekura.testing.emulator._faults import Fault, RateLimit
from airflow_provider_cekura.testing.emulator._store import CallLogStore

__all__ = [
    "CALL_LOGS",
    "DEFAULT_METRICS",
    "FILTER_OPS",
    "OBSERVE",
    "REDACT_FIELDS",
    "RERUN",
    "RESPONSE_STYLES",
    "TRANSCRIPT_TYPES",
    "CallLogStore",
    "CekuraEmulator",
    "Fault",
    "LoggedRequest",
    "RateLimit",
]
