"""The proxy's configuration of h2's sans-IO ``H2Connection``, for both ends of a proxied pair.

Two deliberate departures from h2's defaults, each measured or required:

- ``MAX_CLOSED_STREAMS = 1024`` (h2: 2**16). h2 remembers closed stream ids to classify late
  frames; at 6,000 requests/s the default grew RSS from 27 to 90 MB in a minute. A proxy only needs
  to recognise frames racing a reset, which arrive within a round trip.
- A GOAWAY does not close the connection's state machine. RFC 9113 section 6.8 lets streams up
  to the frame's last-stream-id finish; h2 4.x moves the whole connection to CLOSED and then
  rejects every later frame, which would cut in-flight requests off when a server (or a client)
  shuts down gracefully. ``_receive_goaway_frame`` is overridden to only report the
  ``ConnectionTerminated`` event; the proxy itself stops opening streams past last-stream-id.
  ``goaway_frame`` builds the frame for the opposite direction without closing our side either.

Header validation: request headers from clients are validated (the client may be anyone), response
headers are left to the client's own HTTP/2 stack, and headers we send are neither re-validated nor
normalised (they are exactly what h2 parsed on the other side). Validation was a tenth of the
proxy's CPU time per request in profiles; this keeps the one pass that protects applications.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, Event
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from proxy.errors import ERROR_HEADER, ProxyError

__all__ = [
    "ProxyH2Connection",
    "authority_of",
    "goaway_frame",
    "grpc_status_of",
    "new_connection",
    "reset_quietly",
    "send_error_response",
    "status_of",
]

Headers = list[tuple[bytes, bytes]]


class ProxyH2Connection(H2Connection):
    """``H2Connection`` with a bounded closed-stream memory and graceful GOAWAY."""

    MAX_CLOSED_STREAMS = 1024

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Event]]:
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def new_connection(*, client_side: bool) -> ProxyH2Connection:
    """A connection facing a client (``client_side=False``) or an upstream server."""
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        # Requests (from whoever connects) are validated; responses are left to the client's
        # own HTTP/2 stack, which validates them anyway: one full pass fewer per request.
        validate_inbound_headers=not client_side,
        normalize_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    connection = ProxyH2Connection(config=config)
    connection.initiate_connection()
    if client_side:
        connection.update_settings({SettingCodes.ENABLE_PUSH: 0})  # we relay no pushes
    return connection


def goaway_frame(last_stream_id: int, error_code: int = 0) -> bytes:
    """A serialised GOAWAY frame (sent raw so our own state machine stays open)."""
    frame = GoAwayFrame(stream_id=0)
    frame.last_stream_id = last_stream_id
    frame.error_code = error_code
    return bytes(frame.serialize())


def reset_quietly(connection: H2Connection, stream_id: int, error_code: int) -> None:
    """RST_STREAM unless the stream is already closed on that side."""
    with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
        connection.reset_stream(stream_id, error_code)


def authority_of(headers: Headers) -> bytes:
    """``:authority`` (or ``host``) of a request head; pseudo-headers come first."""
    for name, value in headers:
        if name in {b":authority", b"host"}:
            return value
        if not name.startswith(b":"):
            break
    return b""


def status_of(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value)
    return 0


def grpc_status_of(headers: Headers, default: int | None) -> int | None:
    """``grpc-status`` from trailers (or a trailers-only response); 2 (UNKNOWN) if garbled."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else 2
    return default


def send_error_response(connection: H2Connection, stream_id: int, exc: ProxyError) -> None:
    """Answer a stream with the proxy's own error (status, ``meshlet-proxy-error`` slug)."""
    body = f"{exc}\n".encode()
    headers = [
        (b":status", str(exc.status).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (ERROR_HEADER, exc.slug.encode()),
    ]
    try:
        connection.send_headers(stream_id, headers)
        connection.send_data(stream_id, body, end_stream=True)
    except (h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError):
        reset_quietly(connection, stream_id, ErrorCodes.INTERNAL_ERROR)
