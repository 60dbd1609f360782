"""The shared budget's side that needs no Redis: keys, selection, and the fallback when the store does not answer.

The store itself (several limiters, threads and processes sharing one budget through a real Redis) is tested
in ``tests/integration/test_rate_limit_store.py``.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest

from airflow_provider_cekura.exceptions import CekuraConfigurationError
from airflow_provider_cekura.hooks._config import RateLimitStore
from airflow_provider_cekura.hooks._rate_limit import RateLimiter, reset_shared_limiters, shared_limiter
from airflow_provider_cekura.hooks._rate_limit_store import (
    KEY_PREFIX,
    RETRY_STORE,
    SharedRateLimiter,
    budget_key,
)

PASSWORD = "rl-TEST-pw-0b7f3c-DO-NOT-LEAK"
API_KEY = "sk-cekura-TEST-not-in-any-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_budget_key_names_host_and_connection_never_the_key() -> None:
    key = budget_key("cekura_default", "https://api.cekura.ai")
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 32
    assert key == budget_key("cekura_default", "https://api.cekura.ai")
    assert key != budget_key("cekura_other", "https://api.cekura.ai")
    assert key != budget_key("cekura_default", "https://eu.api.cekura.ai")
    assert "cekura_default" not in key and API_KEY not in key


def test_shared_limiter_selects_the_store_only_when_the_connection_names_one() -> None:
    reset_shared_limiters()
    try:
        store = RateLimitStore(f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0")
        alone = shared_limiter("cekura_default", "https://api.cekura.ai", None)
        shared = shared_limiter("cekura_default", "https://api.cekura.ai", 5, store)
        assert type(alone) is RateLimiter and isinstance(shared, SharedRateLimiter)
        assert shared_limiter("cekura_default", "https://api.cekura.ai", 7, store) is shared
        assert shared.max_rate == 7 and shared._fallback.max_rate == 7  # the latest max_rate, alone or not
        assert PASSWORD not in repr(shared) and "127.0.0.1" in repr(shared)
    finally:
        reset_shared_limiters()


def test_without_the_redis_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    reset_shared_limiters()
    monkeypatch.delitem(sys.modules, "airflow_provider_cekura.hooks._rate_limit_store")
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` meets when it is not installed
    store = RateLimitStore(f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    with pytest.raises(CekuraConfigurationError, match=r"airflow-provider-cekura\[redis\]") as info:
        shared_limiter("cekura_nostore", "https://api.cekura.ai", None, store)
    assert PASSWORD not in str(info.value) and "'cekura_nostore'" in str(info.value)


@pytest.mark.slow
def test_the_store_module_is_not_imported_unless_a_connection_names_a_store() -> None:
    code = (
        "import sys; import airflow_provider_cekura.hooks.cekura, airflow_provider_cekura.operators.observe; "
        "print('airflow_provider_cekura.hooks._rate_limit_store' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_an_unreachable_store_falls_back_to_pacing_alone_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Connections refused: every turn still comes (from the process's own limiter), a 429 still holds."""
    clock = FakeClock()
    url = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"
    limiter = SharedRateLimiter(RateLimitStore(url), "cekura_default", "https://api.cekura.ai", clock=clock,
                                sleep=clock.sleep)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="airflow_provider_cekura"):
        for _ in range(3):
            with limiter.turn() as turn:
                turn.admitted()
        assert not limiter.shared and limiter._fallback._admitted >= 3
        with limiter.turn() as turn:
            hold = turn.throttled(1.0)  # the process's own limiter holds
        assert 0 < hold <= 1.0 and limiter.throttles == 1
        clock.now += RETRY_STORE  # time to try the store again: it still refuses
        with limiter.turn() as turn:
            turn.admitted()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text  # one warning per outage, not one per request
    message = warnings[0].getMessage()
    assert "'cekura_default'" in message and "redis://***@127.0.0.1" in message and "paces its own" in message
    assert PASSWORD not in caplog.text and PASSWORD not in repr(limiter)
    assert limiter._down_until > clock.now  # it did try again (and gave up again)


@pytest.mark.slow  # (waits STORE_TIMEOUT, 1 s, once)
def test_a_store_that_hangs_costs_one_timeout_not_one_per_waiting_thread(caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts connections and never answers (a store behind a dead link): the first thread waits
    ``STORE_TIMEOUT`` for it; the threads queued behind it pace alone at once, without trying it again."""
    import threading

    accepted: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # and never answer
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    url = f"redis://:{PASSWORD}@127.0.0.1:{listener.getsockname()[1]}/0"
    limiter = SharedRateLimiter(RateLimitStore(url), "cekura_default", "https://api.cekura.ai")
    done: list[bool] = []

    def one_turn() -> None:
        with limiter.turn() as turn:
            turn.admitted()
        done.append(True)

    try:
        with caplog.at_level(logging.WARNING, logger="airflow_provider_cekura"):
            threads = [threading.Thread(target=one_turn) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        stop.set()
        acceptor.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()
    assert done == [True] * 4 and not limiter.shared
    assert len(accepted) == 1  # one try of the store, not one per thread (nor redis-py's own retries)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert PASSWORD not in caplog.text
