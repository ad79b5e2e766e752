"""Small real HTTP servers on 127.0.0.1 for the command's end-to-end tests.

``serve_pages`` is a proxy admin port whose ``/metrics`` answers the next canned page on each
scrape (the last one from then on). ``serve_prometheus`` answers ``/api/v1/query`` from a function
of the PromQL text and records every query it was asked.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve_pages(pages: list[str], delay: float = 0.0) -> Iterator[str]:
    """A fake admin port (answering after ``delay`` seconds); yields its HOST:PORT."""
    remaining = list(pages)
    lock = threading.Lock()

    class Handler(_Quiet):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.answer(404, b"not found\n", "text/plain")
                return
            time.sleep(delay)
            with lock:
                page = remaining.pop(0) if len(remaining) > 1 else remaining[0]
            self.answer(200, page.encode(), "text/plain; version=0.0.4; charset=utf-8")

    with _serving(Handler) as address:
        yield address


@contextmanager
def serve_prometheus(
    answer: Callable[[str], list[tuple[dict[str, str], float]] | str],
) -> Iterator[tuple[str, list[str]]]:
    """A fake Prometheus; ``answer`` returns a vector, or a string to fail the query with."""
    asked: list[str] = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/api/v1/query":
                self.answer(404, b"404 page not found\n", "text/plain")
                return
            promql = urllib.parse.parse_qs(url.query)["query"][0]
            asked.append(promql)
            result = answer(promql)
            if isinstance(result, str):
                body = {"status": "error", "errorType": "bad_data", "error": result}
                self.answer(400, json.dumps(body).encode(), "application/json")
                return
            vector = [{"metric": m, "value": [1700000000.0, str(v)]} for m, v in result]
            body = {"status": "success", "data": {"resultType": "vector", "result": vector}}
            self.answer(200, json.dumps(body).encode(), "application/json")

    with _serving(Handler) as address:
        yield f"http://{address}", asked
