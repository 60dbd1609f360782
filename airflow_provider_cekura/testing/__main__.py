"""Run the Cekura emulator from the command line: ``python -m airflow_provider_cekura.testing --port 8765``.

Once listening it prints the line that points Airflow at it, ready to paste::

    export AIRFLOW_CONN_CEKURA_DEFAULT='{"conn_type": "cekura", "host": "http://127.0.0.1:8765", "password": "cekura-test-key"}'

Signals: SIGTERM/SIGINT stop it (saving ``--state-file``); SIGUSR1 finishes every pending evaluation
at once (a test that runs Airflow in other processes decides when evaluations are done).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import fields

from airflow_provider_cekura.testing.emulator import CekuraEmulator, Fault

_FAULT_OPTIONS = {f.name: f.type for f in fields(Fault) if f.name not in ("kind", "seen", "hits")}


def parse_fault(spec: str) -> tuple[str, dict[str, object]]:
    """``KIND[:name=value,...]`` (the fields of :class:`Fault`) -> ``(kind, options)``.

    Example: ``latency:method=POST,path=/observe/,delay=0.5``.
    """
    kind, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in _FAULT_OPTIONS:
            raise argparse.ArgumentTypeError(
                f"bad fault option {item!r} in {spec!r} (options: {sorted(_FAULT_OPTIONS)})"
            )
        kind_of = str(_FAULT_OPTIONS[name])
        try:
            options[name] = float(value) if "float" in kind_of else int(value) if "int" in kind_of else value
        except ValueError:
            raise argparse.ArgumentTypeError(f"fault option {name!r} needs a number, got {value!r}") from None
    return kind, options


def export_line(base_url: str, api_key: str, conn_id: str = "cekura_default") -> str:
    """The shell line that points Airflow's ``conn_id`` at this emulator (printed once listening).

    :param base_url: the emulator's base URL.
    :param api_key: the key it accepts (a test key, not a Cekura key).
    :param conn_id: the Airflow connection id.
    """
    value = json.dumps({"conn_type": "cekura", "host": base_url, "password": api_key})
    return f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(value)}"


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
    parser.add_argument(
        "--max-page-size", "--page-size-cap", dest="page_size_cap", type=int, default=100, help="largest page served"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="milliseconds every request waits before its answer (e.g. 150)"
    )
    parser.add_argument("--state-file", help="load call logs from this JSON file at start, save them at exit")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=parse_fault,
        metavar="KIND[:OPTION=VALUE,...]",
        help="inject a fault for the whole run, e.g. latency:method=POST,path=/observe/,delay=0.5 (repeatable)",
    )
    parser.add_argument(
        "--no-export-line",
        action="store_true",
        help="do not print the `export AIRFLOW_CONN_CEKURA_DEFAULT=...` line (it holds the emulator's key)",
    )
    parser.add_argument("--log-requests", action="store_true", help="print one line per request (method, path, status)")
    args = parser.parse_args(argv)
    if args.latency_ms < 0 or args.page_size_cap < 1:
        parser.error("--latency-ms must be >= 0 and --max-page-size >= 1")
    emulator = CekuraEmulator(
        api_key=args.api_key,
        evaluation_delay=args.evaluation_delay,
        evaluation_failure_rate=args.evaluation_failure_rate,
        page_size_cap=args.page_size_cap,
        host=args.host,
        port=args.port,
        request_log=sys.stdout if args.log_requests else None,
        latency=args.latency_ms / 1000,
    )
    for kind, options in args.fault:
        try:
            emulator.add_fault(kind, **options)
        except ValueError as err:
            parser.error(str(err))
    if args.state_file and os.path.exists(args.state_file):
        loaded = emulator.load_state(args.state_file)
        print(f"Loaded {loaded} call log(s) from {args.state_file}", flush=True)
    url = emulator.start()
    if args.port_file:
        with open(args.port_file, "w") as handle:
            handle.write(str(emulator.port))
    print(f"Cekura emulator listening on {url}", flush=True)
    if not args.no_export_line:
        print(export_line(url, args.api_key), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: emulator.finish_evaluations())
    # Wake up often: Python runs signal handlers in the main thread only, and a signal the kernel hands to a
    # server thread would leave an endless wait() asleep (SIGUSR1 then finished nothing, about 1 time in 20).
    while not done.wait(0.1):
        pass
    emulator.stop()
    if args.state_file:
        emulator.save_state(args.state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
