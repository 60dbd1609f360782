"""Decoding a page of call logs for polling: only the fields that decide the evaluation.

A waiting poll needs ``id``, ``status``, ``success``, ``error_message`` and the
metrics of each call log (:mod:`airflow_provider_cekura.evaluation` reads
nothing else). A list page also carries transcripts, metadata and dynamic
variables, about nine in ten of its JSON containers. :func:`decode_page` skips
them while it decodes (msgspec, a typed decoder, never builds the skipped
values), so that polling thousands of call logs in the triggerer allocates a
fraction of the objects, for its garbage collector, and holds the GIL a quarter
as long as ``json.loads`` does.

A body that does not have the documented shape (``results`` that is not a list
of objects, or ``metrics`` neither a list of objects nor JSON text) is decoded in full with ``json.loads`` instead, so that the
caller's checks and messages are the same as for any other page.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

EVALUATION_FIELDS = ("id", "status", "success", "error_message", "metrics", "evaluation")
"""What :func:`~airflow_provider_cekura.evaluation.summarize` reads of a call log (``evaluation``: the rerun shape)."""


METRIC_FIELDS = ("id", "name", "type", "score", "enum", "value")
"""What is read of a metric (its ``explanation`` is not)."""


class _MetricFields(msgspec.Struct, gc=False):
    # gc=False: these are never part of a reference cycle, and the collector need not track them
    id: Any = msgspec.UNSET
    name: Any = msgspec.UNSET
    type: Any = msgspec.UNSET
    score: Any = msgspec.UNSET
    enum: Any = msgspec.UNSET
    value: Any = msgspec.UNSET


class _CallLogFields(msgspec.Struct, gc=False):
    id: Any = msgspec.UNSET
    status: Any = msgspec.UNSET
    success: Any = msgspec.UNSET
    error_message: Any = msgspec.UNSET
    metrics: list[_MetricFields] | str | msgspec.UnsetType | None = msgspec.UNSET  # a list, or JSON text
    evaluation: Any = msgspec.UNSET


class _Page(msgspec.Struct, gc=False):
    results: list[_CallLogFields] | msgspec.UnsetType = msgspec.UNSET
    next: Any = None


_DECODER = msgspec.json.Decoder(_Page)


def decode_page(content: bytes) -> Any:
    """A list page as ``{"results": [...], "next": ...}`` with only :data:`EVALUATION_FIELDS` in each result.

    :raises ValueError: when ``content`` is not JSON (``msgspec.DecodeError`` is one).
    """
    try:
        page = _DECODER.decode(content)
    except msgspec.ValidationError:  # valid JSON in another shape: decode it all, let the caller judge it
        return json.loads(content)
    body: dict[str, Any] = {"next": page.next}
    if page.results is not msgspec.UNSET:
        body["results"] = [_fields(call_log) for call_log in page.results]
    return body


def _fields(call_log: _CallLogFields) -> dict[str, Any]:
    fields = _present(call_log, EVALUATION_FIELDS)
    if isinstance(call_log.metrics, list):
        fields["metrics"] = [_present(metric, METRIC_FIELDS) for metric in call_log.metrics]
    return fields


def _present(struct: msgspec.Struct, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of ``struct`` the body had (``null`` included), as a dict."""
    values = (getattr(struct, name) for name in names)
    return {name: value for name, value in zip(names, values, strict=True) if value is not msgspec.UNSET}
