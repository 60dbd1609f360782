"""Reading the emulator's request log while a client works: how many requests it held open at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def most_in_flight(emulator: Any, work: Callable[[], Any], path: str) -> int:
    """Run ``work()`` in a thread and return the most requests to ``path`` the emulator held unanswered at once
    meanwhile (a logged request has status 0 until it is answered; give the emulator a latency so that each
    stays open long enough to be seen). ``work``'s exception, if any, is raised here."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as err:
            failure.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    most = 0
    while not done.wait(0.005):
        open_requests = [r for r in emulator.requests_snapshot() if r.path == path and r.status == 0]
        most = max(most, len(open_requests))
    thread.join()
    if failure:
        raise failure[0]
    return most
