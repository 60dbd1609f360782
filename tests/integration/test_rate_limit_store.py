"""One rate budget shared through a real Redis (the connection's ``rate_limit_store``).

A throwaway Redis from Debian's packages (``scripts/redis.sh``, with a password), the in-process emulator
with a token-bucket limit, limiters in threads and in separate processes. No assertion is about speed:
the throughput of 4 processes sharing a budget is benchmark B5's row.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.hooks._config import RateLimitStore
from airflow_provider_cekura.hooks._rate_limit_store import RETRY_STORE, SharedRateLimiter, budget_key
from airflow_provider_cekura.hooks.cekura import CekuraHook
from support.secrets_sweep import leaks

ROOT = Path(__file__).resolve().parents[2]
REDIS_SCRIPT = ROOT / "scripts" / "redis.sh"
PASSWORD = "rl-TEST-pw-93c5e1-DO-NOT-LEAK"
TURNS = [{"role": "Main Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.0}]

pytestmark = pytest.mark.slow


def redis_script(action: str, directory: Path, **env: str) -> str:
    done = subprocess.run(
        ["bash", str(REDIS_SCRIPT), action, str(directory)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env={**os.environ, **env},
    )  # fmt: skip
    if done.returncode:
        pytest.fail(f"scripts/redis.sh {action} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Redis that requires a password (installed from Debian's packages if absent), stopped at the end."""
    directory = tmp_path_factory.mktemp("redis-store")
    try:
        url = redis_script("start", directory, REDIS_PASSWORD=PASSWORD)
        assert PASSWORD in url
        yield url
    finally:
        redis_script("stop", directory)


def conn_id() -> str:
    """A fresh connection id: a fresh budget in the shared Redis."""
    return f"cekura_rl_{uuid.uuid4().hex[:8]}"


def limiter(url: str, conn: str, base_url: str, **kwargs: Any) -> SharedRateLimiter:
    return SharedRateLimiter(RateLimitStore(url), conn, base_url, **kwargs)


def calls(count: int, prefix: str) -> list[dict[str, Any]]:
    return [{"call_id": f"{prefix}-{n:04d}", "agent": 1, "transcript_json": TURNS} for n in range(count)]


def connection(emulator: Any, store: str) -> str:
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, "read_timeout": 5, "rate_limit_store": store}
    return json.dumps({"conn_type": "cekura", "host": emulator.base_url, "password": TEST_API_KEY, "extra": extra})


def stored_state(url: str, conn: str, base_url: str) -> dict[str, Any]:
    fields = redis.Redis.from_url(url, decode_responses=True).hgetall(budget_key(conn, base_url))
    return {**fields, "state": json.loads(fields["state"]) if fields.get("state") else None}


def assert_stored_once(emulator: Any, batch: list[dict[str, Any]]) -> None:
    stored = [c["call_id"] for c in emulator.call_logs()]
    assert emulator.duplicates() == {} and sorted(stored) == sorted(c["call_id"] for c in batch)


def throttled_share(emulator: Any) -> float:
    statuses = [r.status for r in emulator.requests_snapshot()]
    return statuses.count(429) / len(statuses)


# ---------------------------------------------------------------- one budget


def test_limiters_in_threads_share_one_budget(
    monkeypatch: pytest.MonkeyPatch, emulator: Any, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three hooks, each with a limiter of its own (as in three processes), bulk-observe against 20 req/s."""
    conn = conn_id()
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", connection(emulator, store_url))
    emulator.set_rate_limit(20, burst=2)
    batches = [calls(30, f"thread{n}") for n in range(3)]
    limiters = [limiter(store_url, conn, emulator.base_url) for _ in batches]

    def observe(batch: list[dict[str, Any]], own: SharedRateLimiter) -> list[Any]:
        hook = CekuraHook(conn, rate_limiter=own)
        try:
            return hook.observe_many(batch, max_concurrency=4)
        finally:
            hook.close()

    with caplog.at_level(logging.INFO), ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(observe, batches, limiters))
    assert [len(r) for r in results] == [30, 30, 30]
    assert_stored_once(emulator, [c for batch in batches for c in batch])
    assert throttled_share(emulator) <= 0.15  # one pacer: few 429s (independent limiters fight over the bucket)
    assert all(lim.shared for lim in limiters)
    state = stored_state(store_url, conn, emulator.base_url)
    assert state["state"]["_last_good"] is not None  # the budget was learned in the store, by all
    assert 0.5 * 20 <= state["state"]["_last_good"] <= 1.5 * 20
    assert not leaks(PASSWORD, {"logs": caplog.text, **{f"limiter {n}": repr(x) for n, x in enumerate(limiters)}})


PROCESS = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    hook = CekuraHook(sys.argv[1])
    results = hook.observe_many(json.loads(sys.argv[2]), max_concurrency=4)
    print(json.dumps({"ids": len(results), "throttles": hook.rate_limiter.throttles,
                      "shared": hook.rate_limiter.shared, "limiter": repr(hook.rate_limiter)}))
    """
)


def test_separate_processes_share_one_budget(emulator: Any, store_url: str) -> None:
    """Three processes (each its own Python, as Celery workers are), one connection naming the store."""
    conn = conn_id()
    env = {**os.environ, f"AIRFLOW_CONN_{conn.upper()}": connection(emulator, store_url)}
    emulator.set_rate_limit(20, burst=2)
    batches = [calls(25, f"proc{n}") for n in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, conn, json.dumps(batch)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for batch in batches
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["ids"] for r in reports] == [25, 25, 25] and all(r["shared"] for r in reports)
    assert_stored_once(emulator, [c for batch in batches for c in batch])
    assert throttled_share(emulator) <= 0.15
    state = stored_state(store_url, conn, emulator.base_url)
    assert state["state"]["_last_good"] is not None and int(state["v"]) >= 1
    places = {
        f"process {n} {name}": text for n, o in enumerate(outputs) for name, text in zip(("out", "err"), o, strict=True)
    }
    assert not leaks(PASSWORD, places)


def test_a_429_seen_by_one_process_holds_every_process_and_cuts_the_rate_once(emulator: Any, store_url: str) -> None:
    conn = conn_id()
    first, second, third = (limiter(store_url, conn, emulator.base_url) for _ in range(3))
    with first.turn() as one, second.turn() as two:  # both sent before the server said 429
        hold = one.throttled(0.5)
        episode = stored_state(store_url, conn, emulator.base_url)["state"]
        assert episode["pending"] is not None and episode["pending"][0] == one.sent_at
        two.throttled(0.5)  # the same episode: the hold may grow, the rate is not cut again
    after = stored_state(store_url, conn, emulator.base_url)["state"]
    assert after["_episode_start"] == episode["_episode_start"] and after["pending"] == episode["pending"]
    assert first.throttles == 1 and second.throttles == 1 and third.throttles == 0
    started = time.monotonic()
    with third.turn() as turn:  # a process that never saw a 429 waits for the hold all the same
        waited = time.monotonic() - started
        turn.admitted()
    assert turn.sent_at >= float(stored_state(store_url, conn, emulator.base_url)["until"])
    assert waited >= 0.8 * hold
    settled = stored_state(store_url, conn, emulator.base_url)["state"]
    assert settled["pending"] is None and settled["_last_good"] is not None  # estimated once, when the hold ended
    for other in (first, second):
        with other.turn() as turn:
            turn.admitted()
    assert first.estimate == second.estimate == third.estimate == settled["_last_good"]
    assert first.rate() == pytest.approx(third.rate(), rel=0.05)


# ---------------------------------------------------------------- the store fails


def test_redis_down_falls_back_to_pacing_alone_then_comes_back(
    tmp_path: Path, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "redis"
    url = redis_script("start", directory, REDIS_PASSWORD=PASSWORD)
    port = url.rsplit(":", 1)[1].split("/")[0]
    skew = [0.0]
    shared = limiter(url, conn_id(), emulator.base_url, clock=lambda: time.monotonic() + skew[0])
    try:
        with caplog.at_level(logging.INFO, logger="airflow_provider_cekura"):
            with shared.turn() as turn:
                turn.admitted()
            assert shared.shared
            redis_script("stop", directory)
            for _ in range(5):  # the store is gone: turns still come, from the process's own limiter
                with shared.turn() as turn:
                    turn.admitted()
            assert not shared.shared
            with shared.turn() as turn:
                assert 0 < turn.throttled(0.2) <= 0.2  # a 429 still holds the process
            redis_script("start", directory, REDIS_PASSWORD=PASSWORD, REDIS_PORT=port)
            with shared.turn() as turn:  # not tried again before RETRY_STORE
                turn.admitted()
            assert not shared.shared
            skew[0] = RETRY_STORE
            with shared.turn() as turn:
                turn.admitted()
            assert shared.shared
    finally:
        redis_script("stop", directory)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "paces its own requests" in warnings[0], warnings
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert not leaks(PASSWORD, {"logs": caplog.text, "repr": repr(shared)})


def test_a_wrong_password_paces_alone_and_is_never_shown(
    emulator: Any, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "rl-TEST-wrong-5e0d2b-DO-NOT-LEAK"
    url = store_url.replace(PASSWORD, wrong)
    shared = limiter(url, conn_id(), emulator.base_url)
    with caplog.at_level(logging.INFO, logger="airflow_provider_cekura"), shared.turn() as turn:
        turn.admitted()
    assert not shared.shared
    assert "AuthenticationError" in caplog.text or "ResponseError" in caplog.text, caplog.text
    assert not leaks(wrong, {"logs": caplog.text, "repr": repr(shared)})
    assert not leaks(PASSWORD, {"logs": caplog.text})


def test_a_state_this_version_cannot_read_starts_afresh(emulator: Any, store_url: str) -> None:
    """Say, written by another version of the provider on another worker: a fresh controller, no failed task."""
    conn = conn_id()
    client = redis.Redis.from_url(store_url, decode_responses=True)
    key = budget_key(conn, emulator.base_url)
    for garbage in ('{"_last_good": 12}', "not json", "[1, 2]"):
        client.hset(key, mapping={"v": "41", "state": garbage})
        shared = limiter(store_url, conn, emulator.base_url)
        with shared.turn() as turn:
            turn.admitted()
        assert shared.shared and shared.estimate is None and shared.rate() is None
