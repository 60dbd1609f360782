"""A streaming ``multipart/form-data`` body: the recording is sent in chunks, never held whole in memory.

``requests`` builds ``files=`` uploads in memory (the whole file, then the
whole body). :class:`MultipartBody` is an iterable with a known length
instead, so ``requests`` sends it with a ``Content-Length`` chunk by chunk.
Each iteration starts again from the beginning (seeking the file back), so a
retried request resends the same bytes.

The length declared is the length sent: the file part is exactly the size measured when the body was
built (``fstat`` of a regular file, else the stream's end); a file that grew meanwhile is sent up to that
size, and one that shrank fails the request (:class:`RecordingChangedError`) instead of leaving the server
waiting for bytes that never come.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import IO

from airflow_provider_cekura.exceptions import CekuraValidationError

CHUNK_SIZE = 256 * 1024


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


class RecordingChangedError(CekuraValidationError):
    """The recording got shorter while it was being sent: the body cannot match its declared length."""

    def __init__(self, message: str) -> None:
        super().__init__("voice_recording", message)


def _remaining_size(stream: IO[bytes]) -> int | None:
    """Bytes from the stream's position to its end, or ``None`` (then the body is sent chunked)."""
    try:
        if not stream.seekable():
            return None
        start = stream.tell()
        try:
            info = os.fstat(stream.fileno())
            end = info.st_size if stat.S_ISREG(info.st_mode) else None
        except (AttributeError, OSError, ValueError):
            end = None
        if end is None:
            end = stream.seek(0, os.SEEK_END)
            stream.seek(start)
        return max(end - start, 0)
    except (AttributeError, OSError, ValueError):
        return None


class MultipartBody:
    """Form fields plus one streamed file, as a ``multipart/form-data`` request body.

    :param fields: text fields (already flattened: objects as JSON text), a mapping or ``(name, value)``
        pairs (a name may repeat: a form list).
    :param file_field: form name of the file part.
    :param filename: file name announced in the part header.
    :param stream: binary stream positioned at the first byte to send.
    """

    def __init__(
        self, fields: Mapping[str, str] | Iterable[tuple[str, str]], file_field: str, filename: str, stream: IO[bytes]
    ) -> None:
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
            for name, value in pairs
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
            f'filename="{_quote(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        self._head = b"".join(parts)
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._stream = stream
        self._start = stream.tell() if stream.seekable() else None
        self._iterated = False
        size = self._size = _remaining_size(stream)
        if size is not None:
            # ``requests`` reads ``len`` to send a Content-Length instead of chunked encoding.
            self.len = len(self._head) + size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        if self._iterated:
            if self._start is None:
                raise OSError("the recording stream is not seekable: it cannot be sent again")
            self._stream.seek(self._start)
        self._iterated = True
        yield self._head
        if self._size is None:
            while chunk := self._stream.read(CHUNK_SIZE):
                yield chunk
        else:
            left = self._size
            while left > 0:
                chunk = self._stream.read(min(CHUNK_SIZE, left))
                if not chunk:
                    raise RecordingChangedError(
                        f"the recording got shorter while it was sent ({self._size - left} of {self._size} bytes)"
                    )
                left -= len(chunk)
                yield chunk
        yield self._tail
