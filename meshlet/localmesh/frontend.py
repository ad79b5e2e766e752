"""The demo's web front end: every page asks two back ends, one over HTTP/1.1, one over gRPC.

    python frontend.py PORT BOOKS_HOST:PORT AUTHORS_HOST:PORT

HTTP/1.1 keep-alive on ``0.0.0.0:PORT``; prints ``ready`` once bound. ``GET <path>`` asks the
books service (``GET <path>``, HTTP/1.1, one keep-alive connection per serving thread) and the
authors service (gRPC ``meshlet.test.Echo/Unary`` of ``grpc_app.py``, one shared channel), and
answers 200 with JSON ``{"book": ..., "author": ...}`` when both answered, else 502 with the
cause. The front end knows only the Services' addresses: the pod's proxy intercepts both
connections (mTLS, discovery, balancing) without the application knowing.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

__all__ = ["main"]

_TIMEOUT = 5.0
_UNARY = "/meshlet.test.Echo/Unary"


class _Backends:
    def __init__(self, books: str, authors: str) -> None:
        self.books = books
        self.channel = grpc.insecure_channel(authors)
        self.unary = self.channel.unary_unary(_UNARY)
        self.local = threading.local()

    def book(self, path: str) -> dict[str, Any]:
        """GET ``path`` from books; a reused connection the other side closed is retried once
        on a new one (as HTTP client libraries do for a GET)."""
        for attempt in range(2):
            connection = getattr(self.local, "connection", None)
            fresh = connection is None
            if connection is None:
                connection = http.client.HTTPConnection(self.books, timeout=_TIMEOUT)
                self.local.connection = connection
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionError) as error:
                connection.close()
                self.local.connection = None
                if fresh or attempt:
                    raise RuntimeError(f"books: {error!r}") from None
                continue
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                self.local.connection = None
                raise RuntimeError(f"books: {error!r}") from None
            if response.status != 200:
                raise RuntimeError(f"books answered {response.status}")
            answer: dict[str, Any] = json.loads(body)
            return answer
        raise AssertionError("unreachable")

    def author(self, path: str) -> str:
        try:
            reply: bytes = self.unary(path.encode(), timeout=_TIMEOUT)
        except grpc.RpcError as error:
            raise RuntimeError(f"authors: {error.code().name} {error.details()}") from None
        return reply.decode(errors="replace")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backends: _Backends

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            page: dict[str, Any] = {
                "book": self.backends.book(self.path),
                "author": self.backends.author(self.path),
            }
            status = 200
        except RuntimeError as error:
            page, status = {"error": str(error)}, 502
        body = json.dumps(page).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: frontend.py PORT BOOKS_HOST:PORT AUTHORS_HOST:PORT", file=sys.stderr)
        return 2
    _Handler.backends = _Backends(argv[1], argv[2])
    server = ThreadingHTTPServer(("0.0.0.0", int(argv[0])), _Handler)  # noqa: S104 (in a pod)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
