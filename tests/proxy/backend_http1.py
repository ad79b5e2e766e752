"""A small HTTP/1.1 application for the proxy's tests, run as its own process.

``python tests/proxy/backend_http1.py`` listens on 127.0.0.1 (a free port, printed on stdout as
``PORT <n>``) with keep-alive and these routes:

- ``GET /bytes/<n>``: ``n`` bytes of a repeating pattern (Content-Length);
- ``GET /chunked/<n>``: ``n`` bytes sent chunked, with a trailer-free chunked encoding;
- ``POST /sha256``: the hex SHA-256 and length of the request body (chunked or Content-Length;
  ``Expect: 100-continue`` is answered with 100 by the standard library);
- ``GET /quiet-close``: answers, then closes the keep-alive connection without warning;
- ``GET /slow/<ms>``: answers after ``ms`` milliseconds;
- ``GET /status/<code>``: an empty response with that status;
- ``GET /headers``: the request headers as received, one ``name: value`` a line;
- ``GET /reset``: sends half a declared body, then resets the connection.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATTERN = bytes(range(256)) * 256


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        parts = self.path.split("/")
        if self.path.startswith("/bytes/"):
            size = int(parts[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent = 0
            while sent < size:
                piece = PATTERN[: min(len(PATTERN), size - sent)]
                self.wfile.write(piece)
                sent += len(piece)
        elif self.path.startswith("/chunked/"):
            size = int(parts[2])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < size:
                piece = PATTERN[: min(4096, size - sent)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/quiet-close":
            self._send(200, b"closing quietly\n")
            self.close_connection = True  # as an idle timeout would: no Connection: close
        elif self.path.startswith("/slow/"):
            time.sleep(int(parts[2]) / 1000)
            self._send(200, b"slow response\n")
        elif self.path.startswith("/status/"):
            self._send(int(parts[2]), b"")
        elif self.path == "/headers":
            lines = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items())
            self._send(200, lines.encode())
        elif self.path == "/reset":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(PATTERN[:50000])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        else:
            self._send(200, b"hello from the backend\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        length = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 65536))
                    digest.update(data)
                    remaining -= len(data)
                    length += len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(remaining, 65536))
                if not data:
                    break
                digest.update(data)
                remaining -= len(data)
                length += len(data)
        self._send(200, f"{digest.hexdigest()} {length}\n".encode())


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
