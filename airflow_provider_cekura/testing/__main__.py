"""Run the Cekura emulator from the command line: ``python -m airflow_provider_cekura.testing --port 8765``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from airflow_provider_cekura.testing.emulator import CekuraEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an emulator of the Cekura observability API.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("CEKURA_EMULATOR_API_KEY", "cekura-test-key"),
        help="the key clients must send (default: $CEKURA_EMULATOR_API_KEY or cekura-test-key)",
    )
    parser.add_argument("--evaluation-delay", type=float, default=2.0, help="seconds a call log stays evaluating")
    parser.add_argument("--evaluation-failure-rate", type=float, default=0.0, help="share of failed evaluations")
    parser.add_argument("--page-size-cap", type=int, default=100, help="largest page served")
    parser.add_argument("--state-file", help="load call logs from this JSON file at start, save them at exit")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument(
        "--request-log", help="append one JSON line per request handled (time, method, path, call_ids) to this file"
    )
    args = parser.parse_args(argv)
    emulator = CekuraEmulator(
        api_key=args.api_key,
        evaluation_delay=args.evaluation_delay,
        evaluation_failure_rate=args.evaluation_failure_rate,
        page_size_cap=args.page_size_cap,
        host=args.host,
        port=args.port,
    )
    if args.state_file and os.path.exists(args.state_file):
        loaded = emulator.load_state(args.state_file)
        print(f"Loaded {loaded} call log(s) from {args.state_file}", flush=True)
    url = emulator.start()
    if args.port_file:
        with open(args.port_file, "w") as handle:
            handle.write(str(emulator.port))
    print(f"Cekura emulator listening on {url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.request_log:
        writer = threading.Thread(target=_write_request_log, args=(emulator, args.request_log, done), daemon=True)
        writer.start()
    done.wait()
    emulator.stop()
    if args.request_log:
        writer.join(timeout=5)
    if args.state_file:
        emulator.save_state(args.state_file)
    return 0


def _write_request_log(emulator: CekuraEmulator, path: str, done: threading.Event) -> None:
    """Append the requests handled so far to ``path`` every 0.2 s (wall-clock times), until ``done``."""
    written = 0
    with open(path, "a", encoding="utf-8") as log:
        while True:
            stopping = done.wait(0.2)
            with emulator._lock:
                new, written = emulator.requests[written:], len(emulator.requests)
            offset = time.time() - time.monotonic()
            for entry in new:
                call_ids = [int(i) for i in entry.query.get("call_ids", "").split(",") if i.strip().isdigit()]
                record = {"at": entry.at + offset, "method": entry.method, "path": entry.path, "call_ids": call_ids}
                log.write(json.dumps(record) + "\n")
            log.flush()
            if stopping:
                return


if __name__ == "__main__":
    sys.exit(main())
