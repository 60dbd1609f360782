"""Every difference between the Airflow lines this provider supports, in one place.

Task-facing names come from ``apache-airflow-providers-common-compat``
(``airflow.providers.common.compat.sdk``), which resolves them to ``airflow.sdk`` on
Airflow 3 and to their old homes on Airflow 2.11. What that package does not cover
(the deferral-timeout exception, version flags) is resolved here. No other module of
this provider checks the Airflow version or imports a moved name with ``try/except``.

Names that cost import time and are needed only on some paths (``ObjectStoragePath``,
``Asset``, ``XCom``, ``mask_secret``, ``redact``) are resolved lazily on first attribute access, so
that a DAG file importing an operator does not pay for them at every parse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowSensorTimeout,
    BaseHook,
    BaseOperator,
    BaseOperatorLink,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)


def _version_tuple(version: str) -> tuple[int, int, int]:
    from packaging.version import Version

    parsed = Version(version)
    return parsed.major, parsed.minor, parsed.micro


AIRFLOW_VERSION_TUPLE: tuple[int, int, int] = _version_tuple(AIRFLOW_VERSION)
AIRFLOW_V_3_0_PLUS: bool = AIRFLOW_VERSION_TUPLE >= (3, 0, 0)
AIRFLOW_V_3_1_PLUS: bool = AIRFLOW_VERSION_TUPLE >= (3, 1, 0)
AIRFLOW_V_3_2_PLUS: bool = AIRFLOW_VERSION_TUPLE >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS: bool = AIRFLOW_VERSION_TUPLE >= (3, 3, 0)

# How a deferral that ran out of time comes back to the task: a ``TaskDeferralTimeout`` on Airflow 3
# (``airflow.sdk.exceptions`` from 3.2, ``airflow.exceptions`` before); on Airflow 2.11 a
# ``TaskDeferralError("Trigger/execution timeout")``, the same class as a crashed trigger, told apart by
# its message. Catch ``TaskDeferralTimeout`` and ask :func:`is_deferral_timeout`.
if AIRFLOW_V_3_2_PLUS:
    from airflow.sdk.exceptions import TaskDeferralTimeout
elif AIRFLOW_V_3_0_PLUS:
    from airflow.exceptions import TaskDeferralTimeout  # type: ignore[no-redef,attr-defined,unused-ignore]
else:  # Airflow 2.11
    from airflow.exceptions import TaskDeferralError as TaskDeferralTimeout  # type: ignore[no-redef,attr-defined,unused-ignore]


def is_deferral_timeout(error: BaseException) -> bool:
    """Whether ``error`` (caught as ``TaskDeferralTimeout``) means the deferral timed out."""
    return AIRFLOW_V_3_0_PLUS or "timeout" in str(error).lower()


EVENT_DRIVEN_SCHEDULING: bool = AIRFLOW_V_3_0_PLUS
"""Whether DAGs can be scheduled on external events (``Asset`` + ``AssetWatcher`` + ``BaseEventTrigger``)."""


def require_event_driven_scheduling(what: str) -> None:
    """Raise a clear error naming ``what`` when this Airflow cannot schedule DAGs on external events."""
    if not EVENT_DRIVEN_SCHEDULING:
        from airflow_provider_cekura.exceptions import CekuraConfigurationError

        raise CekuraConfigurationError(
            f"{what} needs event-driven scheduling (an Asset with an AssetWatcher), which needs Airflow 3.0 "
            f"or later; this is Airflow {AIRFLOW_VERSION}. Schedule an export instead "
            "(example_dags/cekura_hourly_export.py)."
        )


def asset_state_store_of(trigger: Any) -> Any | None:
    """The per-asset state store the triggerer gave an event trigger (AIP-103, Airflow 3.3+), else ``None``.

    ``None`` outside a triggerer (a bare asyncio loop, tests) and on Airflow 3.0 to 3.2, which have none.
    """
    return getattr(trigger, "asset_state_store", None) if AIRFLOW_V_3_3_PLUS else None


if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import (
        Asset,
        Context,
        ObjectStoragePath,
        TaskInstanceKey,
        XCom,
        mask_secret,
        redact,
    )
    from airflow.sdk import AssetWatcher
    from airflow.timetables.interval import DeltaDataIntervalTimetable
    from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

_LAZY = frozenset({"Asset", "Context", "ObjectStoragePath", "TaskInstanceKey", "XCom", "mask_secret", "redact"})


def _delta_data_interval_timetable() -> Any:
    """The interval timetable of DAG authors: ``airflow.sdk`` from 3.2, the core module before."""
    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk import DeltaDataIntervalTimetable as timetable
    else:
        from airflow.timetables.interval import DeltaDataIntervalTimetable as timetable  # type: ignore[assignment]
    return timetable


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from airflow.providers.common.compat import sdk

        value = getattr(sdk, name)
    elif name == "DeltaDataIntervalTimetable":
        value = _delta_data_interval_timetable()
    elif name in ("BaseTrigger", "TriggerEvent"):
        # Only the trigger module needs them (imported at defer time and in the triggerer); on Airflow 3.3
        # with Python 3.12 importing airflow.triggers.base alone costs about 250 ms (measured by B4).
        from airflow.triggers import base

        value = getattr(base, name)
    elif name == "BaseEventTrigger":
        # Airflow 3.0+: the base of triggers an AssetWatcher accepts. Airflow 2.11 has no event-driven
        # scheduling: BaseTrigger there, so that event trigger modules still import (they refuse to be built).
        from airflow.triggers import base

        value = getattr(base, "BaseEventTrigger", None) or base.BaseTrigger
    elif name == "AssetWatcher":
        if not EVENT_DRIVEN_SCHEDULING:
            require_event_driven_scheduling("AssetWatcher")
        from airflow.sdk import AssetWatcher as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_VERSION_TUPLE",
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "EVENT_DRIVEN_SCHEDULING",
    "AirflowException",
    "AirflowSensorTimeout",
    "Asset",
    "AssetWatcher",
    "BaseEventTrigger",
    "BaseHook",
    "BaseOperator",
    "BaseOperatorLink",
    "BaseSensorOperator",
    "BaseTrigger",
    "Context",
    "DeltaDataIntervalTimetable",
    "ObjectStoragePath",
    "PokeReturnValue",
    "TaskDeferralTimeout",
    "TaskInstanceKey",
    "TriggerEvent",
    "XCom",
    "asset_state_store_of",
    "conf",
    "is_deferral_timeout",
    "mask_secret",
    "redact",
    "require_event_driven_scheduling",
]
