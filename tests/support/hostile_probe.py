"""Run one hostile-server case against ``CekuraHook`` in this process and print what happened as JSON.

``python tests/support/hostile_probe.py CASE BOUND``: starts the case's server on 127.0.0.1, points the connection
``cekura_probe`` at it, makes the call in a thread and waits at most ``BOUND`` seconds. Prints ``outcome``
(the exception type and message, ``ok``, or ``still running``), ``seconds``, ``requests`` the server got,
``peak_mb`` (growth of the peak RSS during the call), ``key_leaked`` where the case is about the key, and
the package file used (so a run against older sources can be told apart). Used by
``tests/unit/hooks/test_hostile_server.py`` (memory is measured in a fresh process) and ``benchmarks/hostile.py``
(before/after in one run).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[2]))  # after PYTHONPATH: the package under test wins

KEY = "sk-cekura-PROBE-5e1d2c3b-DO-NOT-LEAK"
CONN_ID = "cekura_probe"
BOMB_MB = 300


def _connection(url: str, **extra: Any) -> None:
    conn = {"conn_type": "cekura", "host": url, "password": KEY, "extra": {"max_attempts": 2, **extra}}
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(conn)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(case: str, bound: float) -> dict[str, Any]:
    import airflow_provider_cekura
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from tests.support import hostile

    result: dict[str, Any] = {"case": case, "package": airflow_provider_cekura.__file__}
    fast = {"backoff_base": 0.05, "backoff_max": 0.5, "rate_limit_max_wait": 2, "connect_timeout": 1}
    other: hostile.HostileServer | None = None
    if case.startswith("retry_after_"):
        value = {"nan": "nan", "inf": "inf", "negative": "-5", "huge": "1e308"}[case.removeprefix("retry_after_")]
        server = hostile.HostileServer(hostile.throttle_forever(value))
        extra: dict[str, Any] = fast
    elif case == "gzip_bomb":
        server = hostile.HostileServer(hostile.gzip_bomb(BOMB_MB))
        extra = {**fast, "read_timeout": 60}
    elif case == "trickle":
        server = hostile.HostileServer(hostile.trickle(seconds=120))
        extra = {**fast, "read_timeout": 2, "max_attempts": 1}
    elif case == "trickle_headers":
        server = hostile.HostileServer(hostile.trickle_headers(seconds=120, every=0.5))
        extra = {**fast, "read_timeout": 2, "max_attempts": 1}
    elif case == "echo_key_401":
        server = hostile.HostileServer(hostile.echo_key_401())
        extra = fast
    elif case == "redirect_elsewhere":
        other = hostile.HostileServer(hostile.ok_page())
        server = hostile.HostileServer(hostile.redirect_to(lambda: f"{other.url}/collect"))  # type: ignore[union-attr]
        extra = fast
    else:
        raise SystemExit(f"unknown case {case!r}")
    outcome: dict[str, Any] = {}
    with server as url:
        if other is not None:
            other.__enter__()
        try:
            _connection(url, **extra)
            hook = CekuraHook(CONN_ID)
            hook.base_url  # noqa: B018 - resolve the connection before measuring

            def call() -> None:
                try:
                    if case == "echo_key_401":
                        _, message = hook.test_connection()
                        outcome["value"] = message
                        try:
                            hook.get_call_logs([1])
                        except Exception as err:
                            outcome["error_text"] = f"{err} {err!r} {vars(err)!r}"
                    elif case == "redirect_elsewhere":
                        response = hook.get_conn().get(f"{url}/observability/v1/call-logs/", timeout=5)
                        outcome["value"] = response.status_code
                    else:
                        hook.get_call_logs([1])
                    outcome["outcome"] = "ok"
                except Exception as err:
                    outcome["outcome"] = f"{type(err).__name__}: {str(err)[:160]}"

            before = _peak_mb()
            started = time.monotonic()
            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            thread.join(bound)
            result["seconds"] = round(time.monotonic() - started, 2)
            result["peak_mb"] = round(_peak_mb() - before, 1)
            result["outcome"] = outcome.get("outcome", f"still running after {bound:g} s")
            result["requests"] = server.count
            if case == "echo_key_401":
                result["key_leaked"] = KEY in str(outcome.get("value", "")) + outcome.get("error_text", "")
            if other is not None:
                result["key_leaked"] = any(
                    r.get(hostile.API_KEY_HEADER) == KEY or KEY in json.dumps(r) for r in other.requests
                )
                result["requests"] += other.count
        finally:
            if other is not None:
                other.__exit__()
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], float(sys.argv[2]))), flush=True)
    os._exit(0)  # a call still running (the old code's endless loops) must not keep the process alive
