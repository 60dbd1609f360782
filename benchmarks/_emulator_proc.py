"""The Cekura emulator in its own process, driven over stdin/stdout (one JSON object per line).

Benchmarks run the emulator out of process so that its CPU work (JSON encoding of
large pages, filtering) does not compete for the GIL with the client being
measured: the real API is remote, too. ``RemoteEmulator`` is the client side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _serve(options: dict[str, Any]) -> None:
    from airflow_provider_cekura.testing import CekuraEmulator

    emulator = CekuraEmulator(**options)
    emulator.start()
    print(json.dumps({"base_url": emulator.base_url, "api_key": emulator.api_key}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op, kwargs = command["op"], command.get("kwargs", {})
            try:
                result = _dispatch(emulator, op, kwargs)
                reply: dict[str, Any] = {"ok": result}
            except Exception as err:
                reply = {"error": f"{type(err).__name__}: {err}"}
            print(json.dumps(reply), flush=True)
    finally:
        emulator.stop()


def _dispatch(emulator: Any, op: str, kwargs: dict[str, Any]) -> Any:
    if op == "seed":
        kwargs["start"] = datetime.fromisoformat(kwargs["start"])
        kwargs["end"] = datetime.fromisoformat(kwargs["end"])
        return emulator.seed(**kwargs)
    if op == "add_fault":
        emulator.add_fault(**kwargs)
        return None
    if op == "faults":
        return [{"kind": f.kind, "hits": f.hits} for f in emulator.faults()]
    if op == "record_count":
        return emulator.record_count()
    if op == "count_by_path":
        # requests per exact path (the list endpoint and detail paths share a prefix)
        counts: dict[str, int] = {}
        for request in emulator.requests_snapshot():
            counts[request.path] = counts.get(request.path, 0) + 1
        return counts
    if op == "count_by_status":
        statuses: dict[str, int] = {}
        for request in emulator.requests_snapshot():
            statuses[str(request.status)] = statuses.get(str(request.status), 0) + 1
        return statuses
    if op == "set_rate_limit":
        emulator.set_rate_limit(**kwargs)
        return None
    if op == "pending_count":
        return emulator.pending_evaluations()
    if op in {"clear_faults", "reset_log", "count_requests", "duplicates", "finish_evaluations"}:
        return getattr(emulator, op)(**kwargs)
    if op == "call_ids":
        return emulator.call_ids()
    if op == "base_latency":
        # Sleep before every request the emulator handles (faulted 429/5xx answers return at once).
        # Unlike add_fault("latency"), this stacks with the other faults.
        delay = float(kwargs["delay"])
        handle = type(emulator).handle

        def slow_handle(*args: Any) -> Any:
            time.sleep(delay)
            return handle(emulator, *args)

        emulator.handle = slow_handle
        return None
    if op == "time_index":
        _time_index(emulator)
        return None
    if op == "status_counts_since_reset":
        log = emulator.requests_snapshot()
        return {str(s): sum(1 for r in log if r.status == s) for s in {r.status for r in log}}
    if op == "set":
        for key, value in kwargs.items():
            setattr(emulator, key, value)
        return None
    raise ValueError(f"unknown op {op!r}")


def _time_index(emulator: Any) -> None:
    """Serve window-only list requests from a time index built now (the records must not change after).

    The emulator filters every stored call log on every list request (O(n) in Python, ~0.1-0.5 s per request
    at 60,000 call logs on this machine): a real server answers from an index, and what B1's round-trip rows
    model is its 150 ms, not the emulator's scan. Requests with any other filter go to the emulator's own list.
    """
    from bisect import bisect_left, bisect_right
    from urllib.parse import urlencode

    from airflow_provider_cekura.testing.emulator import CALL_LOGS
    from airflow_provider_cekura.testing.emulator._common import _parse_time

    timeline = sorted((_parse_time(c["timestamp"]), c["id"]) for c in emulator.call_logs())
    stamps = [t for t, _ in timeline]
    windows: dict[tuple[str, str], list[int]] = {}
    original = emulator.handle

    def indexed_list(method: str, path: str, query: dict[str, str], body: Any, base: str) -> Any:
        if (
            method != "GET"
            or path.rstrip("/") + "/" != CALL_LOGS
            or set(query) - {"timestamp_from", "timestamp_to", "page", "page_size"}
            or "timestamp_from" not in query
        ):
            return original(method, path, query, body, base)
        key = (query["timestamp_from"], query.get("timestamp_to", ""))
        ids = windows.get(key)
        if ids is None:
            start, end = _parse_time(key[0]), _parse_time(key[1])
            low = bisect_left(stamps, start)
            high = bisect_right(stamps, end) if end is not None else len(stamps)  # the emulator's inclusive end
            ids = windows[key] = sorted((i for _, i in timeline[low:high]), reverse=True)
        page = int(query.get("page", "1"))
        size = min(int(query.get("page_size", str(emulator.default_page_size))), emulator.page_size_cap)
        first = (page - 1) * size
        if first >= len(ids) and page != 1:
            return 404, {"detail": "Invalid page."}
        results = [emulator.record(i) for i in ids[first : first + size]]

        def link(number: int) -> str:
            return f"{base}{CALL_LOGS}?{urlencode({**query, 'page': number})}"

        return 200, {
            "count": len(ids),
            "next": link(page + 1) if first + size < len(ids) else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": results,
        }

    emulator.handle = indexed_list


class RemoteEmulator:
    """Start ``CekuraEmulator(**options)`` in a child process; call a few of its methods remotely."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.api_key = ""

    def __enter__(self) -> RemoteEmulator:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._emulator_proc", json.dumps(self.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert self._proc.stdout is not None
        hello = json.loads(self._proc.stdout.readline() or "{}")
        if "base_url" not in hello:
            self.__exit__()
            raise RuntimeError("the emulator process did not start")
        self.base_url, self.api_key = hello["base_url"], hello["api_key"]
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def call(self, op: str, **kwargs: Any) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("emulator process not running")
        proc.stdin.write(json.dumps({"op": op, "kwargs": kwargs}, default=str) + "\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline() or '{"error": "emulator process died"}')
        if "error" in reply:
            raise RuntimeError(f"emulator {op}: {reply['error']}")
        return reply["ok"]

    def seed(self, count: int, *, start: datetime, end: datetime, **kwargs: Any) -> list[int]:
        ids: list[int] = self.call("seed", count=count, start=start.isoformat(), end=end.isoformat(), **kwargs)
        return ids

    def add_fault(self, kind: str, **options: Any) -> None:
        self.call("add_fault", kind=kind, **options)

    def count_requests(self, method: str | None = None, path: str | None = None) -> int:
        return int(self.call("count_requests", method=method, path=path))

    def reset_log(self) -> None:
        self.call("reset_log")

    def clear_faults(self) -> None:
        self.call("clear_faults")

    def duplicates(self) -> dict[str, int]:
        result: dict[str, int] = self.call("duplicates")
        return result

    def record_count(self) -> int:
        return int(self.call("record_count"))

    def connection_json(self, **extra: Any) -> str:
        """An ``AIRFLOW_CONN_*`` value (JSON) for a ``cekura`` connection to this emulator."""
        return json.dumps({"conn_type": "cekura", "host": self.base_url, "password": self.api_key, "extra": extra})


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
