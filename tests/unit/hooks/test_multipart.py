"""Recordings are streamed: the multipart body never holds the file whole, and retries resend it intact."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_API_KEY

from airflow_provider_cekura.hooks._multipart import MultipartBody
from airflow_provider_cekura.testing.process import EmulatorProcess


def test_body_is_valid_multipart_and_restartable(tmp_path: Path) -> None:
    import email.parser
    import email.policy

    data = bytes(range(256)) * 1000
    stream = io.BytesIO(data)
    body = MultipartBody({"call_id": 'c"1', "metadata": '{"a": 1}'}, "voice_recording", "a.wav", stream)
    first = b"".join(body)
    second = b"".join(body)  # a retry iterates again: same bytes
    assert first == second
    assert body.len == len(first)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + body.content_type.encode() + b"\r\n\r\n" + first
    )
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["voice_recording"].get_payload(decode=True) == data
    assert parts["metadata"].get_payload(decode=True) == b'{"a": 1}'


def test_unseekable_stream_is_sent_once_then_refused() -> None:
    class OneWay(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 3

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if not self.left:
                return 0
            self.left -= 1
            buffer[:4] = b"data"
            return 4

    body = MultipartBody({}, "voice_recording", "x", OneWay())  # type: ignore[arg-type]
    assert not hasattr(body, "len")  # unknown size: requests falls back to chunked encoding
    assert b"datadatadata" in b"".join(body)
    with pytest.raises(OSError, match="not seekable"):
        b"".join(body)


@pytest.mark.slow
def test_upload_memory_stays_far_below_the_file_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator runs in its own process here, so tracemalloc sees only the client's memory."""
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    server = EmulatorProcess(TEST_API_KEY)
    server.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", server.connection_json())
        size = 24 * 1024 * 1024
        recording = tmp_path / "big.wav"
        with recording.open("wb") as handle:
            block = bytes(range(256)) * 4096
            for _ in range(size // len(block)):
                handle.write(block)
        hook = CekuraHook()
        hook.find_call_log("warm-up")  # connection set up outside the measurement
        tracemalloc.start()
        try:
            call_log = hook.observe({"call_id": "big-1", "agent": 1}, recording=recording, recording_roots=tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert call_log["voice_recording_url"].endswith(f"/{call_log['id']}.bin")
        # requests' own files= upload would hold the file twice (~48 MiB); streaming holds a few chunks.
        assert peak < size / 8, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB recording"
    finally:
        server.stop()


def test_upload_retried_after_a_dropped_connection_resends_the_same_bytes(emulator: Any, tmp_path: Path) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    recording = tmp_path / "r.wav"
    recording.write_bytes(b"RIFF" + bytes(range(256)) * 300)
    emulator.add_fault("drop_before", times=1, method="POST", path="/observe/")
    call_log = CekuraHook().observe({"call_id": "retry-1", "agent": 1}, recording=recording, recording_roots=tmp_path)
    assert emulator.recordings[call_log["id"]]["sha256"] == hashlib.sha256(recording.read_bytes()).hexdigest()
    assert emulator.count_requests("POST", "/observe/") == 2
    assert emulator.duplicates() == {}


def test_the_length_sent_is_the_length_declared(tmp_path: Path) -> None:
    """#29 case 8: Content-Length is what the body holds, even when the file changes or lies about its size."""
    from airflow_provider_cekura.hooks._multipart import RecordingChangedError

    path = tmp_path / "r.wav"
    path.write_bytes(b"x" * 1000)
    with path.open("rb") as stream:
        body = MultipartBody({"call_id": "c"}, "voice_recording", "r.wav", stream)
        with path.open("ab") as grow:
            grow.write(b"y" * 5000)  # the file grows after the length was declared
        sent = b"".join(body)
        assert len(sent) == body.len and b"yy" not in sent and b"x" * 1000 in sent
    with path.open("rb") as stream:
        body = MultipartBody({}, "voice_recording", "r.wav", stream)
        path.write_bytes(b"z" * 10)  # it shrinks: the body cannot match its length, so the request fails
        with pytest.raises(RecordingChangedError, match="shorter") as info:
            b"".join(body)
        assert info.value.field == "voice_recording"
    # a file whose size on disk is not its content (/proc reports 0): the body still matches its length
    with open("/proc/self/status", "rb") as stream:
        body = MultipartBody({}, "voice_recording", "status", stream)
        assert len(b"".join(body)) == body.len
