"""A task context for calling an operator's ``execute`` outside a DAG run (the unit tier)."""

from __future__ import annotations

from typing import Any


class TaskInstanceStub:
    """Just enough of a task instance for ``execute`` outside a DAG run.

    Records the XComs the operator pushes (``xcoms[key]``, the last value of each key) and reads them back
    with ``xcom_pull(key=...)``, as ``resume_execution`` does after a deferral timeout.
    """

    def __init__(self, **xcoms: Any) -> None:
        self.xcoms: dict[str, Any] = dict(xcoms)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(key)


def task_context(**entries: Any) -> tuple[Any, TaskInstanceStub]:
    """``(context, ti)``: a context holding a fresh :class:`TaskInstanceStub` as ``ti`` (plus ``entries``).

    Typed ``Any`` so that ``operator.execute(context)`` needs no ``type: ignore``.
    """
    ti = TaskInstanceStub()
    return {"ti": ti, **entries}, ti
