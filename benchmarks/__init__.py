"""Benchmarks of airflow-provider-cekura: ratios measured side by side in one run.

Run ``make bench`` (or ``python -m benchmarks.run``); results go to ``benchmarks/results.md``.
``python -m benchmarks.run --smoke`` runs every benchmark with tiny sizes (used by the test suite).
"""

from __future__ import annotations
