"""Small applications that end-to-end tests run inside pods (standard library only).

    python apps.py http PORT      HTTP/1.1 (keep-alive): GET /hello, GET /bytes/N, POST /sha256,
                                  GET /reset (announces 1 MB, sends 64 KiB, then resets)
    python apps.py echo PORT      opaque TCP echo that honours half-close
    python apps.py banner PORT    a server-speaks-first line protocol (SMTP-like)
    python apps.py sink PORT      reads to EOF, then answers the SHA-256 of what it read

Each listens on 0.0.0.0:PORT, prints ``ready`` once bound, and serves until terminated.

- ``POST /sha256`` streams the request body (Content-Length or chunked) through SHA-256 and
  answers ``{"sha256": ..., "bytes": ...}``; ``Expect: 100-continue`` is answered by the standard
  library's handler before the body is read.
- ``echo`` writes back every byte as it arrives; when the client half-closes (EOF), it finishes
  writing and then half-closes too, so a client sees all its bytes and then EOF.
- ``sink`` only answers after the client's half-close, so its answer crossing the proxies shows
  that half-close is forwarded without closing the other direction.
- ``banner`` sends ``220 meshlet-test ready`` first, then answers ``250 <line>`` per line and
  ``221 bye`` to ``QUIT``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import struct
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_CHUNK = 65536


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._send(200, b"hello from the server pod\n")
        elif self.path == "/reset":
            self.send_response(200)
            self.send_header("Content-Length", str(1024 * 1024))
            self.end_headers()
            self.wfile.write(b"x" * 65536)
            self.wfile.flush()
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif self.path.startswith("/bytes/"):
            size = int(self.path.removeprefix("/bytes/"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            pattern = bytes(range(256)) * (_CHUNK // 256)
            while size:
                part = pattern[: min(size, _CHUNK)]
                self.wfile.write(part)
                size -= len(part)
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        if self.path != "/sha256":
            self._send(404, b"not found\n")
            return
        digest = hashlib.sha256()
        total = 0
        for chunk in self._body():
            digest.update(chunk)
            total += len(chunk)
        answer = {"sha256": digest.hexdigest(), "bytes": total}
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, _CHUNK))
                    if not chunk:
                        raise ConnectionError("body ended inside a chunk")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length", "0"))
        while remaining:
            chunk = self.rfile.read(min(remaining, _CHUNK))
            if not chunk:
                raise ConnectionError("body ended early")
            remaining -= len(chunk)
            yield chunk

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(_CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class _Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        digest = hashlib.sha256()
        total = 0
        while data := sock.recv(_CHUNK):
            digest.update(data)
            total += len(data)
        sock.sendall(f"{digest.hexdigest()} {total}\n".encode())
        sock.shutdown(socket.SHUT_WR)


class _Banner(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 meshlet-test ready\r\n")
        for line in self.rfile:
            text = line.strip()
            if text.upper() == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            self.wfile.write(b"250 " + text + b"\r\n")


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> int:
    handlers: dict[str, type[socketserver.BaseRequestHandler]] = {
        "echo": _Echo,
        "sink": _Sink,
        "banner": _Banner,
    }
    if len(argv) != 2 or (argv[0] != "http" and argv[0] not in handlers):
        print(__doc__, file=sys.stderr)
        return 2
    kind, port = argv[0], int(argv[1])
    server: socketserver.BaseServer
    if kind == "http":
        ThreadingHTTPServer.daemon_threads = True
        server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    else:
        server = _TCPServer(("0.0.0.0", port), handlers[kind])
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
