"""Steady, bounded HTTP/2 load from inside a pod on ONE h2c connection, every stream recorded.

``H2Load(pod, address, concurrency=4, interval=0.01)`` runs one thread holding one prior-knowledge
connection (made inside ``pod`` by the test process, so the pod's iptables rules send it through
its outbound proxy) with up to ``concurrency`` streams in flight, a new stream at most every
``interval`` seconds, until ``stop()`` or ``max_seconds``. Each stream's outcome: status, the pod
that answered (``tests/mesh_e2e/h2_app.py`` names itself), the ``meshlet-client-id`` it saw, or
the reset / connection error that ended it. The connection is never reopened: a broken
connection fails every stream after it, as an application would see it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.harness.netns import Netns

__all__ = ["H2Load", "H2Outcome"]


@dataclass(frozen=True)
class H2Outcome:
    started: float
    status: int | None
    pod: str | None
    client_id: str | None
    error: str | None


@dataclass
class _Pending:
    started: float
    status: int | None = None
    body: bytes = b""
    client_id: str | None = None


@dataclass
class H2Load:
    pod: Netns
    address: tuple[str, int]
    concurrency: int = 4
    interval: float = 0.01
    path: str = "/"
    max_seconds: float = 40.0
    outcomes: list[H2Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _record(self, outcome: H2Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _run(self) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        pending: dict[int, _Pending] = {}
        deadline = time.monotonic() + self.max_seconds
        host = f"{self.address[0]}:{self.address[1]}".encode()
        try:
            sock = self.pod.connect(self.address, timeout=10)
        except OSError as exc:
            self._record(H2Outcome(time.monotonic(), None, None, None, repr(exc)))
            return
        sock.settimeout(0.005)
        last_sent = 0.0
        try:
            sock.sendall(conn.data_to_send())
            while True:
                now = time.monotonic()
                running = not self._stop.is_set() and now < deadline
                if not running and not pending:
                    break
                if now > deadline + 15:
                    raise TimeoutError("streams still pending 15 s after the load ended")
                if running and len(pending) < self.concurrency and now - last_sent >= self.interval:
                    stream = conn.get_next_available_stream_id()
                    headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", host),
                               (b":path", self.path.encode())]  # fmt: skip
                    conn.send_headers(stream, headers, end_stream=True)
                    pending[stream] = _Pending(now)
                    last_sent = now
                    sock.sendall(conn.data_to_send())
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    raise ConnectionError("the proxy closed the connection")
                for event in conn.receive_data(data):
                    self._event(conn, event, pending)
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError) as exc:
            for stream in pending.values():
                self._record(H2Outcome(stream.started, None, None, None, repr(exc)))
        finally:
            sock.close()

    def _event(
        self, conn: h2.connection.H2Connection, event: h2.events.Event, pending: dict[int, _Pending]
    ) -> None:
        stream = pending.get(getattr(event, "stream_id", 0))
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers)
            stream.status = int(headers[b":status"])
            stream.client_id = headers.get(b"x-client-id", b"").decode() or None
        elif isinstance(event, h2.events.DataReceived):
            stream.body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            del pending[event.stream_id]
            ok = stream.status == 200
            pod = stream.body.decode(errors="replace").strip() if ok else None
            error = None if ok else f"{stream.status}: {stream.body[:200]!r}"
            self._record(H2Outcome(stream.started, stream.status, pod, stream.client_id, error))
        elif isinstance(event, h2.events.StreamReset):
            del pending[event.stream_id]
            error = f"reset {event.error_code}"
            self._record(H2Outcome(stream.started, None, None, None, error))

    def start(self) -> H2Load:
        self._thread.start()
        return self

    def stop(self) -> list[H2Outcome]:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            return list(self.outcomes)

    def since(self, moment: float) -> list[H2Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= moment]

    def __enter__(self) -> H2Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
