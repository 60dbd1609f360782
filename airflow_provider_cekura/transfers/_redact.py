"""Database errors without row data: what the export may show of a driver's message.

:func:`safe_db_error` keeps the exception type, the error code and the database's explanation, and
replaces every quoted text that could hold a value with ``<redacted>`` (:func:`redact`). Used by the
SQL transfer's writers for every error they raise or log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _in_any(text: str, statements: Sequence[str]) -> bool:
    return any(text in statement for statement in statements)


def _statement_prefix(text: str, statements: Sequence[str]) -> str:
    """The longest prefix of ``text`` found in one of our own statements (which hold placeholders, no value)."""
    low, high = 0, len(text)
    while low < high:  # a prefix of a substring is a substring: binary search on the length
        middle = (low + high + 1) // 2
        if _in_any(text[:middle], statements):
            low = middle
        else:
            high = middle - 1
    return text[:low]


def redact(message: str, known: Iterable[str] = (), statements: Sequence[str] = ()) -> str:
    """``message`` with every quoted text that could hold a value replaced by ``<redacted>``.

    A quoted text is kept when it is one of the ``known`` names (tables, columns), or
    when it is a piece of one of our own ``statements`` (SQL templates with
    placeholders: MySQL's ``near '...'`` quotes the statement where it stopped
    parsing). Otherwise everything from that quote up to the last quote of the same
    kind goes (a value may itself hold quotes), except the part at its start that
    is text of our own statements.
    """
    allowed = {k.lower() for k in known}
    out: list[str] = []
    position = 0
    while True:
        starts = [i for i in (message.find("'", position), message.find('"', position)) if i >= 0]
        if not starts:
            out.append(message[position:])
            return "".join(out)
        start = min(starts)
        quote = message[start]
        close = message.find(quote, start + 1)
        if close < 0:  # an unbalanced quote: nothing after it can be trusted
            out.append(message[position:start] + "<redacted>")
            return "".join(out)
        inner = message[start + 1 : close]
        if inner.lower() in allowed:
            out.append(message[position : close + 1])
            position = close + 1
            continue
        last = message.rindex(quote)
        inner = message[start + 1 : last]
        if inner and _in_any(inner, statements):
            out.append(message[position : last + 1])
        else:
            kept = _statement_prefix(inner, statements)
            out.append(
                f"{message[position:start]}{quote}{kept}<redacted>{quote}"
                if kept
                else message[position:start] + "<redacted>"
            )
        position = last + 1


def _code_and_message(err: BaseException) -> tuple[Any, str]:
    """The driver's error code and the database's own message.

    MySQL drivers (mysqlclient, PyMySQL) carry ``(errno, message)`` in ``args``: their
    ``str()`` is the tuple's repr, which quotes the whole message. Postgres drivers put
    the SQLSTATE in ``sqlstate``/``pgcode`` and details (with values) on the lines after
    the first: only the first line is kept there.
    """
    errno, msg = getattr(err, "errno", None), getattr(err, "msg", None)
    if isinstance(errno, int) and isinstance(msg, str):  # mysql-connector-python (its args repeat the errno)
        return errno, msg
    args: tuple[Any, ...] = tuple(getattr(err, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return args[0], args[1]
    code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return code, (str(err).strip().splitlines() or [""])[0]


def safe_db_error(err: BaseException, known: Iterable[str] = (), statements: Sequence[str] = ()) -> str:
    """A one-line description of a database error that keeps the database's explanation and no row data.

    Keeps the exception type, the error code (SQLSTATE or MySQL errno) and the message,
    with quoted values redacted by :func:`redact` (database messages quote offending
    values: ``invalid input syntax for type integer: "..."``, ``Duplicate entry '...'``).
    """
    code, message = _code_and_message(err)
    message = " ".join(redact(message, known, statements).split())
    if len(message) > 400:
        message = message[:400] + "..."
    kind = type(err).__name__ + (f" [{code}]" if code else "")
    return f"{kind}: {message}" if message else kind


__all__ = ["redact", "safe_db_error"]
