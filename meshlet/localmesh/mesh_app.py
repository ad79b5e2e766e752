"""The application the mesh tests run in server pods (standard library only).

    python mesh_app.py POD PORT

HTTP/1.1 keep-alive on ``0.0.0.0:PORT``; prints ``ready`` once bound. Every ``GET`` answers
200 with JSON ``{"pod": POD, "path": ..., "client_id": <meshlet-client-id header or null>}``, so
a test sees which pod served each request and which identity the inbound proxy vouched for.
``POST`` reads the body and answers the same JSON with ``"bytes": <length>``.

Each answer leaves in one write, head and body together, so a pod killed mid-request has either
answered completely or not at all. (A response cut between its head and its body cannot be
retried by any proxy once the head went on to the client: the client sees a truncated body.)

``SIGUSR1`` makes every later answer wait 200 ms first (a slow pod), ``SIGUSR2`` makes it fast
again: the test signals the process by PID, so the control never crosses the mesh.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

__all__ = ["main"]

SLOW_SECONDS = 0.2
_state = {"delay": 0.0}


def _slow(signum: int, frame: FrameType | None) -> None:
    _state["delay"] = SLOW_SECONDS


def _fast(signum: int, frame: FrameType | None) -> None:
    _state["delay"] = 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered: head and body leave in one write when the request is done (see the docstring).
    wbufsize = 65536
    pod = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, extra: dict[str, object]) -> None:
        delay = _state["delay"]
        if delay:
            time.sleep(delay)
        body = json.dumps(
            {
                "pod": self.pod,
                "path": self.path,
                "client_id": self.headers.get("meshlet-client-id"),
                **extra,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = len(self.rfile.read(length)) if length else 0
        self._answer({"bytes": received})


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mesh_app.py POD PORT", file=sys.stderr)
        return 2
    _Handler.pod = argv[0]
    signal.signal(signal.SIGUSR1, _slow)
    signal.signal(signal.SIGUSR2, _fast)
    server = ThreadingHTTPServer(("0.0.0.0", int(argv[1])), _Handler)  # noqa: S104 (in a pod)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
