"""Steady, bounded HTTP/1.1 load from inside a pod, every outcome recorded.

``HttpLoad(pod, address, workers=4, interval=0.02)`` runs ``workers`` threads; each sends one
request per ``interval`` seconds (a new connection each, ``Connection: close``, so a failure is
always the mesh's and never a stale keep-alive race in the client) until ``stop()`` or
``max_seconds``. Connections are made inside ``pod`` by the test process (root, not UID 2102),
so the pod's iptables rules send them through its outbound proxy.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from tests.harness.netns import Netns

__all__ = ["HttpLoad", "Outcome", "request"]


@dataclass(frozen=True)
class Outcome:
    started: float
    status: int | None  # None: no HTTP answer at all
    pod: str | None  # which pod answered (mesh_app.py names itself)
    client_id: str | None  # the identity the server's proxy vouched for (None: plaintext)
    error: str | None
    seconds: float


def request(
    pod: Netns, address: tuple[str, int], path: str = "/", method: str = "GET", timeout: float = 10
) -> Outcome:
    """One request; never raises for network or protocol errors (they are the outcome)."""
    started = time.monotonic()
    host = f"{address[0]}:{address[1]}"
    body = b"x" * 64 if method == "POST" else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n" if method == "POST" else "\r\n"
    try:
        with pod.connect(address, timeout=timeout) as sock:
            sock.sendall(head.encode() + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        answer_head, _, answer = data.partition(b"\r\n\r\n")
        status = int(answer_head.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError) as exc:
        return Outcome(started, None, None, None, repr(exc), time.monotonic() - started)
    served_by = client_id = None
    if status == 200:
        try:
            decoded = json.loads(answer)
            served_by, client_id = decoded["pod"], decoded["client_id"]
        except (ValueError, KeyError, TypeError):
            served_by = None
    error = None if status == 200 else f"{status}: {answer[:200]!r}"
    return Outcome(started, status, served_by, client_id, error, time.monotonic() - started)


@dataclass
class HttpLoad:
    pod: Netns
    address: tuple[str, int]
    workers: int = 4
    interval: float = 0.02
    method: str = "GET"
    path: str = "/load"
    max_seconds: float = 40.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)
        ]

    def _work(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            outcome = request(self.pod, self.address, self.path, self.method)
            with self._lock:
                self.outcomes.append(outcome)
            self._stop.wait(max(0.0, self.interval - outcome.seconds))

    def start(self) -> HttpLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        with self._lock:
            return list(self.outcomes)

    def since(self, moment: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= moment]

    def __enter__(self) -> HttpLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
