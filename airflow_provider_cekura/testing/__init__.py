"""Test helpers: an emulator of the Cekura API for your own DAG tests, the demo and the benchmarks.

Standard library only; importing it does not import Airflow.
"""

from __future__ import annotations

from airflow_provider_cekura.testing.emulator import DEFAULT_METRICS, CekuraEmulator, Fault, LoggedRequest

__all__ = ["DEFAULT_METRICS", "CekuraEmulator", "Fault", "LoggedRequest"]
