"""Typed errors raised by the Cekura provider.

Every error carries the HTTP status (when there is one) and the API's field
messages, and its ``str()`` is safe to log: no error ever includes the API key,
request headers or payload bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_cekura.version_compat import AirflowException


class CekuraError(AirflowException):
    """Base class of every error raised by this provider."""


class CekuraConfigurationError(CekuraError):
    """The connection or an operator argument is unusable (e.g. an http:// base URL)."""


class CekuraValidationError(CekuraError, ValueError):
    """A payload or argument failed validation before any request was sent.

    :param field: the offending field, e.g. ``transcript_json[2].role``.
    :param call_id: the call's own id when the error concerns one call.
    """

    def __init__(self, field: str, message: str, *, call_id: str | None = None) -> None:
        self.field = field
        self.call_id = call_id
        self.reason = message
        where = f"call_id={call_id!r}: " if call_id is not None else ""
        super().__init__(f"{where}{field}: {message}")


class CekuraAgentError(CekuraValidationError, CekuraConfigurationError):
    """The agent/assistant rule was broken: give exactly one of an agent id or an assistant id, and a valid one.

    A :class:`CekuraValidationError`; also a :class:`CekuraConfigurationError`, which the rerun operator's
    ``__init__`` raised for this rule in 0.1.0 (see :func:`airflow_provider_cekura._coerce.agent_or_assistant`).
    """


class CekuraExportError(CekuraError):
    """Writing to the SQL table failed; the message names the table, the page and the row count, never row data."""


class CekuraAPIError(CekuraError):
    """The API answered with an error status.

    :param status: HTTP status code (``None`` for transport failures).
    :param errors: the API's ``{field: [messages]}`` body, or ``{"detail": [...]}``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errors: dict[str, Any] | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status = status
        self.errors = errors or {}
        self.method = method
        self.path = path
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """Whether the hook's retry policy may send the request again."""
        return False


class CekuraBadRequestError(CekuraAPIError):
    """400: the API rejected the request; ``errors`` holds its field messages."""


class CekuraAuthError(CekuraAPIError):
    """401/403: the API key is missing, wrong or lacks permission. Never retried."""


class CekuraNotFoundError(CekuraAPIError):
    """404: no such call log (or path)."""


class CekuraRateLimitError(CekuraAPIError):
    """429 for longer than the connection's ``rate_limit_max_wait``.

    :param retry_after: the server's last ``Retry-After``, in seconds.
    :param waited: seconds the request stayed throttled before giving up.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, waited: float | None = None, **kwargs: Any
    ) -> None:
        self.retry_after = retry_after
        self.waited = waited
        super().__init__(message, **kwargs)

    @property
    def retryable(self) -> bool:
        return True


class CekuraServerError(CekuraAPIError):
    """5xx after every retry was spent."""

    @property
    def retryable(self) -> bool:
        return True


class CekuraTransportError(CekuraAPIError):
    """Timeout or dropped connection after every retry was spent."""

    @property
    def retryable(self) -> bool:
        return True


class CekuraResponseError(CekuraAPIError):
    """The API answered 2xx with a body this provider cannot use (not JSON, wrong shape, looping pages)."""


class CekuraObserveBatchError(CekuraError):
    """Some calls of a bulk observe failed; the others were sent.

    :param failures: ``{call_id: error message}`` of the calls that failed.
    :param call_log_ids: ids of the calls that succeeded, in input order (``None`` where failed).
    :param errors: ``{call_id: exception}`` of the calls that failed (the errors themselves).
    """

    def __init__(
        self,
        failures: dict[str, str],
        call_log_ids: list[int | None],
        *,
        errors: Mapping[str, Exception] | None = None,
    ) -> None:
        self.failures = failures
        self.call_log_ids = call_log_ids
        self.errors: dict[str, Exception] = dict(errors or {})
        lines = "; ".join(f"{cid}: {msg}" for cid, msg in list(failures.items())[:20])
        more = f" (and {len(failures) - 20} more)" if len(failures) > 20 else ""
        super().__init__(f"{len(failures)} of {len(call_log_ids)} calls failed to ingest: {lines}{more}")


class CekuraEvaluationFailedError(CekuraError):
    """One or more call log evaluations ended failed (and ``fail_on_evaluation_failure`` is set)."""


class CekuraWaitTimeoutError(CekuraError):
    """Evaluation did not finish before the deadline; the message names the pending ids."""


class CekuraEvaluationCheckError(CekuraError):
    """Evaluation quality checks did not hold; the message names each one with its value and threshold.

    :param summary: the gate's full summary (the same dict it pushes to XCom).
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        self.summary = summary or {}
        super().__init__(message)
