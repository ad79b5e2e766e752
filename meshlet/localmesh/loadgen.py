"""The demo's load generator: steady HTTP/1.1 GETs at a fixed rate, counted, for a bounded time.

    python loadgen.py HOST:PORT RPS MAX_SECONDS

``RPS`` requests per second in total, spread over a few workers, each on its own keep-alive
connection (reopened after an error). Prints ``ready``, then once a second one JSON line with the
totals so far: ``{"ok": n, "failed": n, "error": <last failure or null>}``. Stops after
``MAX_SECONDS`` (printing a last line) or when terminated.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

__all__ = ["main"]

_WORKERS = 4
_TIMEOUT = 10.0
_PATHS = ("/books/1", "/books/2", "/books/3")


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.error: str | None = None

    def add(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            else:
                self.failed += 1
                self.error = error

    def line(self) -> str:
        with self.lock:
            return json.dumps({"ok": self.ok, "failed": self.failed, "error": self.error})


def _one(connection: http.client.HTTPConnection, path: str) -> str | None:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    return None if response.status == 200 else f"{response.status}: {body[:200]!r}"


def _work(
    target: str, interval: float, deadline: float, counts: _Counts, stop: threading.Event
) -> None:
    connection = http.client.HTTPConnection(target, timeout=_TIMEOUT)
    count = 0
    next_at = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            error = _one(connection, _PATHS[count % len(_PATHS)])
        except (OSError, http.client.HTTPException) as exc:
            error = repr(exc)
            connection.close()
            connection = http.client.HTTPConnection(target, timeout=_TIMEOUT)
        counts.add(error)
        count += 1
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    connection.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: loadgen.py HOST:PORT RPS MAX_SECONDS", file=sys.stderr)
        return 2
    target, rps, max_seconds = argv[0], float(argv[1]), float(argv[2])
    counts = _Counts()
    stop = threading.Event()
    deadline = time.monotonic() + max_seconds
    interval = _WORKERS / rps
    workers = [
        threading.Thread(target=_work, args=(target, interval, deadline, counts, stop), daemon=True)
        for _ in range(_WORKERS)
    ]
    print("ready", flush=True)
    for worker in workers:  # staggered, so requests are evenly spread
        worker.start()
        time.sleep(interval / _WORKERS)
    while any(worker.is_alive() for worker in workers):
        time.sleep(1.0)
        print(counts.line(), flush=True)
    print(counts.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
