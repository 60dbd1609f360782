"""CekuraConnectionConfig: one typed, frozen reading of the connection; every bad setting refused by name."""

from __future__ import annotations

import dataclasses
import json
import pickle
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import CekuraConfigurationError
from airflow_provider_cekura.hooks._config import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ApiKey,
    CekuraConnectionConfig,
    is_loopback,
)
from airflow_provider_cekura.hooks._transport import RetryPolicy
from airflow_provider_cekura.hooks.cekura import CekuraHook

CONN_ID = "cekura_cfg"


def config(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any] | str) -> CekuraConnectionConfig:
    """The config of ``cekura_cfg`` defined by ``conn`` (JSON connection dict, or a URI)."""
    value = conn if isinstance(conn, str) else json.dumps({"password": TEST_API_KEY, **conn})
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", value)
    return CekuraHook(CONN_ID)._config


def refused(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any] | str, match: str) -> str:
    with pytest.raises(CekuraConfigurationError, match=match) as info:
        config(monkeypatch, conn)
    message = str(info.value)
    assert repr(CONN_ID) in message and TEST_API_KEY not in message
    return message


def test_defaults_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(monkeypatch, {"conn_type": "cekura"})
    assert cfg.base_url == "https://api.cekura.ai" and cfg.conn_id == CONN_ID
    assert cfg.timeout == (10.0, 60.0) and cfg.request_timeout == 70.0
    assert cfg.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 64 * 1024 * 1024
    assert cfg.retry_policy == RetryPolicy() and cfg.rate_limit_max_wait == 300.0
    assert cfg.page_size == 100 and cfg.window.days == 30 and cfg.project_id is None
    assert cfg.api_key.reveal() == TEST_API_KEY
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.base_url = "https://elsewhere.example"  # type: ignore[misc]


def test_extras_are_read_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {
        "connect_timeout": "2", "read_timeout": 3, "request_timeout": 4.5, "max_response_bytes": "1000",
        "max_attempts": "2", "backoff_base": 0, "project_id": "7", "window_days": 1.5, "page_size": 10,
        "max_requests_per_second": "5", "rate_limit_max_wait": 0, "dashboard_url": "https://dash.example/",
    }  # fmt: skip
    cfg = config(monkeypatch, {"conn_type": "cekura", "extra": extra})
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.request_timeout) == (2.0, 3.0, 4.5)
    assert cfg.max_response_bytes == 1000 and cfg.retry_policy.max_attempts == 2 and cfg.project_id == 7
    assert cfg.window.total_seconds() == 1.5 * 86400 and cfg.page_size == 10
    assert cfg.max_requests_per_second == 5.0 and cfg.rate_limit_max_wait == 0.0
    assert cfg.dashboard_url == "https://dash.example"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rate_limit_max_wait", "nan"),
        ("rate_limit_max_wait", -1),
        ("read_timeout", "inf"),
        ("connect_timeout", 0),
        ("request_timeout", -1),
        ("max_response_bytes", 0),
        ("max_response_bytes", 1.5),
        ("max_attempts", "many"),
        ("max_attempts", True),
        ("backoff_max", "nan"),
        ("retry_after_max", "-inf"),
        ("max_requests_per_second", "nan"),
        ("max_requests_per_second", 0),
        ("window_days", "inf"),
        ("page_size", 0),
        ("project_id", "abc"),
    ],
)
def test_bad_extras_are_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch, name: str, value: Any) -> None:
    message = refused(monkeypatch, {"conn_type": "cekura", "extra": {name: value}}, "invalid extra")
    assert name in message or "could not convert" in message or "invalid literal" in message, message


# ---------------------------------------------------------------- connection type


@pytest.mark.parametrize("conn_type", ["http", "postgres", "dbt_cloud"])
def test_another_connection_type_is_refused(monkeypatch: pytest.MonkeyPatch, conn_type: str) -> None:
    message = refused(monkeypatch, {"conn_type": conn_type, "host": "https://api.cekura.ai"}, "of type")
    assert repr(conn_type) in message and "'cekura'" in message


def test_cekura_type_from_json_or_uri_and_an_empty_type_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config(monkeypatch, {"conn_type": "cekura"}).base_url == "https://api.cekura.ai"
    assert config(monkeypatch, {"conn_type": "Cekura"}).base_url == "https://api.cekura.ai"
    assert config(monkeypatch, f"cekura://:{TEST_API_KEY}@api.cekura.ai").base_url == "https://api.cekura.ai"
    # a JSON connection without conn_type (some secrets backends store them so): nothing says it is another type
    assert config(monkeypatch, {"host": "https://api.cekura.ai"}).base_url == "https://api.cekura.ai"


# ---------------------------------------------------------------- base URL


@pytest.mark.parametrize(
    ("conn", "url"),
    [
        ({"host": "::1", "port": 8080, "schema": "http"}, "http://[::1]:8080"),
        ({"host": "[::1]", "port": 8080, "schema": "http"}, "http://[::1]:8080"),
        ({"host": "http://[::1]", "port": 8080}, "http://[::1]:8080"),
        ({"host": "https://[2001:db8::5]/api/", "port": 8443}, "https://[2001:db8::5]:8443/api"),
        ({"host": "https://[2001:db8::5]:9443"}, "https://[2001:db8::5]:9443"),
        ({"host": "127.0.0.1", "port": 8000, "schema": "http"}, "http://127.0.0.1:8000"),
        ({"host": "api.cekura.ai", "port": 443}, "https://api.cekura.ai:443"),
    ],
)
def test_ipv6_and_port_build_a_valid_url(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], url: str) -> None:
    base = config(monkeypatch, {"conn_type": "cekura", **conn}).base_url
    assert base == url
    parts = urlsplit(base)
    assert parts.port == (conn.get("port") or parts.port) and parts.hostname


def test_url_credentials_are_never_shown(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    secret = "hunter2-url-password"
    cfg = config(monkeypatch, {"conn_type": "cekura", "host": f"https://admin:{secret}@api.cekura.ai/"})
    assert cfg.base_url == "https://api.cekura.ai" and secret not in repr(cfg)
    host = emulator.base_url.replace("http://", f"http://admin:{secret}@")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "cekura", "host": host, "password": TEST_API_KEY})
    )
    hook = CekuraHook(CONN_ID)
    ok, message = hook.test_connection()
    assert ok and emulator.base_url in message and secret not in message and "admin" not in message
    assert hook.base_url == emulator.base_url  # what OpenLineage uses as the namespace
    message = refused(monkeypatch, {"conn_type": "cekura", "host": f"ftp://admin:{secret}@127.0.0.1"}, "not an http")
    assert secret not in message


@pytest.mark.parametrize("dashboard", ["javascript:alert(1)", "ftp://dash.example", "dash.example", "data:text/html,x"])
def test_dashboard_url_must_be_http(monkeypatch: pytest.MonkeyPatch, dashboard: str) -> None:
    refused(monkeypatch, {"conn_type": "cekura", "extra": {"dashboard_url": dashboard}}, "dashboard_url")


# ---------------------------------------------------------------- plain http: loopback addresses only


def test_is_loopback_trusts_addresses_not_names() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "10.0.0.5", "::", "api.cekura.ai", "localhost.localdomain", "127.0.0.1.nip.io"):
        assert not is_loopback(host, resolve=lambda name: ["127.0.0.1"]), host  # a name is never trusted...
    assert is_loopback("localhost", resolve=lambda name: ["127.0.0.1", "::1"])  # ...except localhost, resolved:
    assert not is_loopback("localhost", resolve=lambda name: ["127.0.0.1", "10.1.2.3"])  # every address counts
    assert not is_loopback("localhost", resolve=lambda name: [])

    def unresolvable(name: str) -> list[str]:
        raise socket.gaierror("no such name")

    assert not is_loopback("localhost", resolve=unresolvable)


def test_localhost_as_this_machine_resolves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", None)}
    assert is_loopback("localhost") == all(a.startswith("127.") or a == "::1" for a in addresses)
    if is_loopback("localhost"):
        assert (
            config(monkeypatch, {"conn_type": "cekura", "host": "http://localhost:1"}).base_url == "http://localhost:1"
        )


@pytest.mark.parametrize(
    "host", ["http://localhost.localdomain:8000", "http://0.0.0.0:8000", "http://[::]:8000", "http://example.com"]
)
def test_plain_http_elsewhere_is_refused(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    refused(monkeypatch, {"conn_type": "cekura", "host": host}, "plain http")


# ---------------------------------------------------------------- the key


def test_the_key_is_hidden_and_not_picklable(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(monkeypatch, {"conn_type": "cekura"})
    assert TEST_API_KEY not in repr(cfg) and TEST_API_KEY not in str(cfg.api_key)
    assert repr(cfg.api_key) == "ApiKey(***)" and cfg.api_key == ApiKey(TEST_API_KEY)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(cfg)
    hook = CekuraHook(CONN_ID)
    hook.base_url  # noqa: B018 - resolves the config
    assert "api_key" not in hook._settings and TEST_API_KEY not in repr(hook._settings)
    assert TEST_API_KEY not in repr(vars(hook)) and TEST_API_KEY.encode() not in pickle.dumps(hook)
    hook.get_conn()  # the transport and its session exist now
    for obj in (hook, hook._transport, hook._transport.redactor, hook.get_conn(), hook.get_conn().auth):
        assert TEST_API_KEY not in repr(vars(obj) if hasattr(obj, "__dict__") else obj), obj
    assert pickle.loads(pickle.dumps(hook)).base_url == "https://api.cekura.ai"


def test_retry_policy_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps({"conn_type": "cekura", "password": TEST_API_KEY, "extra": {"max_attempts": 9}}),
    )
    policy = RetryPolicy(max_attempts=2)
    assert CekuraHook(CONN_ID, retry_policy=policy).retry_policy is policy
    assert CekuraHook(CONN_ID).retry_policy.max_attempts == 9


def test_a_request_reaches_an_ipv6_host_given_with_the_port_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import hostile

    try:
        server = hostile.HostileServer(hostile.ok_page(), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        conn = {"conn_type": "cekura", "host": "::1", "port": port, "schema": "http", "password": TEST_API_KEY}
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        hook = CekuraHook(CONN_ID)
        assert hook.base_url == f"http://[::1]:{port}"
        assert hook.get_call_logs([1]) == []
    assert server.count == 1


# ---------------------------------------------------------------- rate_limit_store

STORE_PASSWORD = "rl-TEST-pw-4d1a8e-DO-NOT-LEAK"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{STORE_PASSWORD}@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        (f"rediss://worker:{STORE_PASSWORD}@redis.example:6380/2", "rediss://***@redis.example:6380/2"),
        (f"redis://redis.example/1?password={STORE_PASSWORD}", "redis://redis.example/1"),
        (f"unix://:{STORE_PASSWORD}@/run/redis.sock?db=3", "unix://***@/run/redis.sock"),
        ("redis://localhost", "redis://localhost"),
    ],
)
def test_rate_limit_store_is_read_and_its_password_never_shown(
    monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    cfg = config(monkeypatch, {"conn_type": "cekura", "extra": {"rate_limit_store": f" {url} "}})
    store = cfg.rate_limit_store
    assert store is not None and store.reveal() == url and store.shown == shown
    for text in (repr(cfg), str(store), repr(store), store.redact(f"could not reach {url}")):
        assert STORE_PASSWORD not in text, text
    assert store.redact(f"could not reach {url}") == f"could not reach {shown}"
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(store)


def test_without_rate_limit_store_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config(monkeypatch, {"conn_type": "cekura"}).rate_limit_store is None
    assert config(monkeypatch, {"conn_type": "cekura", "extra": {"rate_limit_store": ""}}).rate_limit_store is None


@pytest.mark.parametrize(
    "url",
    [f"http://:{STORE_PASSWORD}@127.0.0.1:6379/0", f"memcached://:{STORE_PASSWORD}@h:1", "redis:///0", "unix://", 6379],
)
def test_a_bad_rate_limit_store_is_refused_without_showing_its_password(
    monkeypatch: pytest.MonkeyPatch, url: Any
) -> None:
    message = refused(monkeypatch, {"conn_type": "cekura", "extra": {"rate_limit_store": url}}, "rate_limit_store")
    assert STORE_PASSWORD not in message
