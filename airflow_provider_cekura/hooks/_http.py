"""Deprecated: the retry policy and error classification moved to :mod:`airflow_provider_cekura.hooks._transport`.

The names below keep working for code that imported them from here.
"""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = frozenset({"RETRYABLE_STATUSES", "RetryPolicy", "error_from_response", "parse_retry_after"})


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"airflow_provider_cekura.hooks._http.{name} moved to airflow_provider_cekura.hooks._transport.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    from airflow_provider_cekura.hooks import _transport

    return getattr(_transport, name)


__all__ = sorted(_MOVED)
