"""HTTP/2 clients whose upstream cannot be reached: each request gets the proxy's error.

The client connection is still served as HTTP/2 so the failure reaches the application as an
HTTP answer it can read (status 502/504 and ``meshlet-proxy-error: <slug>``), not as a dropped
connection; a GOAWAY follows so the client's next connection tries the upstream again.
"""

from __future__ import annotations

import h2.events as ev
import h2.exceptions
from h2.connection import H2Connection

from proxy.errors import ProxyError
from proxy.h2conn import authority_of, goaway_frame, send_error_response
from proxy.metrics import Metrics
from proxy.net import Conn

__all__ = ["serve_h2_errors"]


async def serve_h2_errors(
    h2c: H2Connection,
    client: Conn,
    prefix: bytes,
    exc: ProxyError,
    *,
    direction: str,
    metrics: Metrics,
) -> None:
    """No upstream: answer each request with ``exc``'s status, then GOAWAY, then close."""
    data = prefix
    answered = 0  # the last stream answered
    while data:
        try:
            events = h2c.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        for event in events:
            if isinstance(event, ev.RequestReceived):
                labels = metrics.http_labels(direction, authority_of(event.headers))
                metrics.request(labels)
                metrics.response_headers(labels, exc.status, 0.0)
                metrics.response_end(labels, exc.status, "failure")
                send_error_response(h2c, event.stream_id, exc)
                answered = event.stream_id
        out = h2c.data_to_send()
        if answered:
            out += goaway_frame(answered)
        if out:
            await client.send(out)
        if answered:
            return
        data = await client.receive()
