"""A ``cekura`` connection's settings, read and checked once: :class:`CekuraConnectionConfig`."""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_cekura.exceptions import CekuraConfigurationError
from airflow_provider_cekura.hooks._transport import RetryPolicy

DEFAULT_HOST = "https://api.cekura.ai"
DEFAULT_DASHBOARD_URL = "https://dashboard.cekura.ai"
CONN_TYPE = "cekura"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)

Resolver = Callable[[str], list[str]]


def _resolve(name: str) -> list[str]:
    """Every address ``name`` resolves to (both families)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)]


def is_loopback(host: str, resolve: Resolver = _resolve) -> bool:
    """Whether plain http to ``host`` stays on this machine.

    A literal loopback address (127.0.0.0/8, ``::1``) is; so is the name ``localhost`` when every address
    it resolves to is loopback. Any other name is not, whatever it resolves to now (``localhost.localdomain``
    or a name whose DNS answer can change between this check and the connection).
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host.lower().rstrip(".") != "localhost":
        return False
    try:
        addresses = resolve("localhost")
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


class ApiKey:
    """The API key, kept out of reprs, ``vars()`` dumps and pickles. :meth:`reveal` gives it to the header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("The Cekura API key is not picklable; pickle the hook (it drops its settings) instead")


class RateLimitStore:
    """The ``rate_limit_store`` extra: a Redis URL whose password stays out of reprs, logs and errors.

    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix://[[user]:password@]/path``.
    :attr:`shown` is the URL without credentials or query (what logs and errors name); :meth:`reveal` gives the
    whole URL to the Redis client only.

    :param url: the URL as written in the connection.
    :raises ValueError: not such a URL (the message shows it without its credentials).
    """

    __slots__ = ("_secrets", "_url", "shown")
    SCHEMES = ("redis", "rediss", "unix")

    def __init__(self, url: str) -> None:
        if not isinstance(url, str):
            raise ValueError(f"rate_limit_store must be a redis:// URL, got a {type(url).__name__}")
        url = url.strip()
        parts = urlsplit(url)
        self._url = url
        secrets = {parts.password or "", *(v for k, v in parse_qsl(parts.query) if k.lower() == "password")}
        self._secrets = tuple(sorted(secrets - {""}, key=len, reverse=True))
        netloc = parts.netloc.rpartition("@")[2]
        self.shown = f"{parts.scheme}://{'***@' if '@' in parts.netloc else ''}{netloc}{parts.path}"
        if parts.scheme not in self.SCHEMES:
            raise ValueError(f"rate_limit_store must be a redis://, rediss:// or unix:// URL, got {self.redact(url)!r}")
        if (parts.scheme == "unix" and not parts.path) or (parts.scheme != "unix" and not parts.hostname):
            raise ValueError(f"rate_limit_store {self.shown!r} names no host (or no socket path)")

    def reveal(self) -> str:
        return self._url

    def redact(self, text: str) -> str:
        """``text`` with the URL's password (and the URL itself) replaced."""
        text = text.replace(self._url, self.shown)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def secrets(self) -> tuple[str, ...]:
        """The passwords in the URL (for Airflow's secret masker)."""
        return self._secrets

    def __repr__(self) -> str:
        return f"RateLimitStore({self.shown!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RateLimitStore) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __reduce__(self) -> NoReturn:
        raise TypeError("The rate limit store URL is not picklable (it may hold a password)")


def _netloc(hostname: str, port: int | None) -> str:
    shown = f"[{hostname}]" if ":" in hostname else hostname
    return shown if port is None else f"{shown}:{port}"


def _base_url(conn: Any, conn_id: str) -> str:
    """The connection's base URL: scheme, host (IPv6 bracketed), port; user and password dropped."""
    host = (conn.host or "").strip() or DEFAULT_HOST
    if "://" not in host:
        bare = host.split("/", 1)[0]
        try:
            if ipaddress.ip_address(bare.strip("[]")).version == 6:
                host = f"[{bare.strip('[]')}]" + host[len(bare) :]
        except ValueError:
            pass
        host = f"{(conn.schema or '').strip() or 'https'}://{host}"
    parts = urlsplit(host)
    try:
        port = parts.port or (int(conn.port) if conn.port else None)
    except ValueError:
        _fail(conn_id, "host has an invalid port")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{_netloc(parts.hostname or '', None)}{parts.path}"
        _fail(conn_id, f"host {shown!r} is not an http(s) URL")
    if parts.username or parts.password:
        log.warning(
            "Connection %r: the user and password in its host URL are ignored (the API key goes in the password field)",
            conn_id,
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        _fail(
            conn_id,
            f"refusing to send the API key over plain http to {parts.hostname!r}; use https (http is allowed for "
            "loopback addresses and localhost only).",
        )
    return f"{parts.scheme}://{_netloc(parts.hostname, port)}{parts.path}".rstrip("/")


def _fail(conn_id: str, message: str) -> NoReturn:
    raise CekuraConfigurationError(f"Connection {conn_id!r}: {message}") from None


def _number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> float:
    number = float(value)
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return number


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


@dataclass(frozen=True)
class CekuraConnectionConfig:
    """Everything read from a ``cekura`` connection, checked once, immutable.

    :param conn_id: the connection id (named in every error).
    :param api_key: the API key (password field), hidden in reprs.
    :param base_url: scheme, host and port of the API, no trailing slash, no credentials.
    :param project_id: the ``project_id`` extra, applied to list requests.
    :param connect_timeout: seconds to connect (extra ``connect_timeout``, default 10).
    :param read_timeout: seconds one socket read may wait (extra ``read_timeout``, default 60).
    :param request_timeout: seconds one attempt may take in all, connect and whole body (extra
        ``request_timeout``, default ``connect_timeout + read_timeout``).
    :param max_response_bytes: largest decoded body read (extra ``max_response_bytes``, default 64 MiB).
    :param retry_policy: retries of transient failures (extras ``max_attempts``, ``backoff_base``,
        ``backoff_max``, ``retry_after_max``).
    :param window: widest timestamp window per list request (extra ``window_days``, default 30).
    :param page_size: list page size (extra ``page_size``, default 100).
    :param dashboard_url: http(s) URL of the dashboard (extra ``dashboard_url``).
    :param max_requests_per_second: a plan's known limit, never exceeded (``None``: unknown).
    :param rate_limit_max_wait: seconds one request may stay throttled (default 300).
    :param rate_limit_store: a Redis every process spending the connection shares one rate budget through
        (extra ``rate_limit_store``; ``None``: each process paces its own requests).
    """

    conn_id: str
    api_key: ApiKey
    base_url: str
    project_id: int | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    request_timeout: float = 70.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry_policy: RetryPolicy = RetryPolicy()  # noqa: RUF009 - immutable
    window: timedelta = timedelta(days=30)
    page_size: int = 100
    dashboard_url: str = DEFAULT_DASHBOARD_URL
    max_requests_per_second: float | None = None
    rate_limit_max_wait: float = 300.0
    rate_limit_store: RateLimitStore | None = None

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` seconds, as ``requests`` takes them."""
        return self.connect_timeout, self.read_timeout

    @classmethod
    def from_connection(
        cls, conn: Any, conn_id: str, *, retry_policy: RetryPolicy | None = None
    ) -> CekuraConnectionConfig:
        """Read and check ``conn`` (an Airflow ``Connection``); raises :class:`CekuraConfigurationError`.

        A connection whose type is set must be ``cekura`` (so another service's password is never sent as
        the key); an empty type is accepted (a JSON ``AIRFLOW_CONN_*`` without ``conn_type``).
        """
        conn_type = (getattr(conn, "conn_type", None) or "").strip()
        if conn_type and conn_type.lower() != CONN_TYPE:
            _fail(conn_id, f"is of type {conn_type!r}, not {CONN_TYPE!r}; refusing to send its password as a key.")
        if not conn.password:
            raise CekuraConfigurationError(
                f"Connection {conn_id!r} has no API key: put it in the password field."
            ) from None
        from airflow_provider_cekura.version_compat import mask_secret

        mask_secret(conn.password)
        extra = conn.extra_dejson or {}
        if not isinstance(extra, Mapping):
            _fail(conn_id, "its extra must be a JSON object")
        base_url = _base_url(conn, conn_id)

        def option(name: str, default: Any = None) -> Any:
            value = extra.get(name, extra.get(f"extra__cekura__{name}"))
            return default if value in (None, "") else value

        try:
            connect = _number("connect_timeout", option("connect_timeout", 10))
            read = _number("read_timeout", option("read_timeout", 60))
            policy = retry_policy or RetryPolicy(
                max_attempts=_integer("max_attempts", option("max_attempts", 5)),
                backoff_base=_number("backoff_base", option("backoff_base", 0.5), strict=False),
                backoff_max=_number("backoff_max", option("backoff_max", 30), strict=False),
                retry_after_max=_number("retry_after_max", option("retry_after_max", 60), strict=False),
            )
            project_id = option("project_id")
            max_rate = option("max_requests_per_second")
            store = option("rate_limit_store")
            store = RateLimitStore(store) if store is not None else None
            for secret in store.secrets if store is not None else ():
                mask_secret(secret)
            dashboard = str(option("dashboard_url", DEFAULT_DASHBOARD_URL)).strip().rstrip("/")
            dashboard_parts = urlsplit(dashboard)
            if dashboard_parts.scheme not in ("http", "https") or not dashboard_parts.hostname:
                raise ValueError("dashboard_url must be an http(s) URL")
            return cls(
                conn_id=conn_id,
                api_key=ApiKey(conn.password),
                base_url=base_url,
                project_id=_integer("project_id", project_id) if project_id is not None else None,
                connect_timeout=connect,
                read_timeout=read,
                request_timeout=_number("request_timeout", option("request_timeout", connect + read)),
                max_response_bytes=_integer(
                    "max_response_bytes", option("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
                ),
                retry_policy=policy,
                window=timedelta(days=_number("window_days", option("window_days", 30))),
                page_size=_integer("page_size", option("page_size", 100)),
                dashboard_url=dashboard,
                max_requests_per_second=(
                    _number("max_requests_per_second", max_rate) if max_rate is not None else None
                ),
                rate_limit_max_wait=_number("rate_limit_max_wait", option("rate_limit_max_wait", 300), strict=False),
                rate_limit_store=store,
            )
        except (TypeError, ValueError, OverflowError) as err:
            raise CekuraConfigurationError(f"Connection {conn_id!r} has an invalid extra: {err}") from None

    def as_settings(self) -> dict[str, Any]:
        """The old untyped ``CekuraHook._settings`` mapping (without the key), for code not yet moved over."""
        return {
            "base_url": self.base_url,
            "project_id": self.project_id,
            "timeout": self.timeout,
            "retry_policy": self.retry_policy,
            "window": self.window,
            "page_size": self.page_size,
            "dashboard_url": self.dashboard_url,
            "max_requests_per_second": self.max_requests_per_second,
            "rate_limit_max_wait": self.rate_limit_max_wait,
        }
