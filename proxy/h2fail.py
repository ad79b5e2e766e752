"""HTTP/2 clients whose upstream cannot be reached: each request gets the proxy's error.

The client connection is still served as HTTP/2 (by h2, as a server) so the failure reaches the
application as an HTTP answer it can read (status 502/504 and ``meshlet-proxy-error: <slug>``),
not as a dropped connection; a GOAWAY follows so the client's next connection tries the upstream
again. Request headers are validated by h2 like any server's.

h2 is imported on the first such client, not with the proxy: its state machine is used nowhere
else, and importing it costs every proxy 0.8 MB of memory (the budget is 32 MB) for a path most
never take. ``tests/proxy/test_proxy_h2fail_import.py`` fails if a module imports it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.errors import ERROR_HEADER, ProxyError
from proxy.h2relay import goaway
from proxy.metrics import Metrics
from proxy.net import Conn

if TYPE_CHECKING:
    from h2.connection import H2Connection

__all__ = ["serve_h2_errors"]


async def serve_h2_errors(
    client: Conn,
    prefix: bytes,
    exc: ProxyError,
    *,
    direction: str,
    metrics: Metrics,
    on_request: Callable[[], None] | None = None,
) -> None:
    """No upstream: answer each request with ``exc``'s status, then GOAWAY, then close.
    ``on_request`` is called for each request answered (the inbound policy counts them)."""
    import h2.events as ev  # noqa: PLC0415 (see the module docstring)
    import h2.exceptions  # noqa: PLC0415
    from h2.config import H2Configuration  # noqa: PLC0415
    from h2.connection import H2Connection  # noqa: PLC0415

    h2c = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    h2c.initiate_connection()
    data = prefix
    answered = 0  # the last stream answered
    while data:
        try:
            events = h2c.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        for event in events:
            if isinstance(event, ev.RequestReceived):
                labels = metrics.http_labels(direction, _authority(event.headers))
                metrics.request(labels)
                metrics.response_headers(labels, exc.status, 0.0)
                metrics.response_end(labels, exc.status, "failure")
                _send_error(h2c, event.stream_id, exc)
                if on_request is not None:
                    on_request()
                answered = event.stream_id
        out = h2c.data_to_send()
        if answered:
            out += goaway(answered)
        if out:
            await client.send(out)
        if answered:
            return
        data = await client.receive()


def _authority(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name in {b":authority", b"host"}:
            return value
    return b""


def _send_error(h2c: H2Connection, stream_id: int, exc: ProxyError) -> None:
    body = f"{exc}\n".encode()
    headers = [
        (b":status", str(exc.status).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (ERROR_HEADER, exc.slug.encode()),
    ]
    h2c.send_headers(stream_id, headers)
    h2c.send_data(stream_id, body, end_stream=True)
