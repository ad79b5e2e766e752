"""Connections to a meshed peer's proxy port: mTLS plus a header naming the application port.

Theory of operation (Linkerd's "transport header", simplified). Connections to opaque ports
(``MESHLET_PROXY_OPAQUE_PORTS``: server-speaks-first protocols) skip protocol detection inbound,
so TLS arriving on them cannot be told from the application's own bytes. Instead the outbound
proxy connects to the peer's *proxy* inbound port (4143) itself, runs the usual mTLS handshake
(SNI = the peer's identity), and first sends a header naming the application port and the
session that follows::

    b"\\x00meshlet.io/opaque/1\\x00"   + port (2 bytes, big-endian) + b"\\n"   (24 bytes)
    b"\\x00meshlet.io/h1-over-h2/1\\x00" + port (2 bytes, big-endian) + b"\\n"   (28 bytes)

``Session.OPAQUE``: the rest is the application's bytes, spliced to ``127.0.0.1:<port>``.
``Session.HTTP1_OVER_H2``: the rest is an HTTP/2 connection whose streams are HTTP/1 requests
for the HTTP/1 application on ``<port>`` (each marked ``meshlet-orig-proto``); the peer's proxy
terminates it and speaks HTTP/1 to the application (Linkerd's HTTP/1 to HTTP/2 upgrade between
proxies, whose session protocol its header also carries).

The leading NUL makes a header impossible to confuse with HTTP/1, HTTP/2 or anything
``proxy.detect`` recognises. The inbound proxy accepts connections addressed to its own port
*only* in this form (mTLS to its identity, then a header); the session's first bytes can flow at
once, with no detection wait. ``encode_transport_header`` and ``parse_transport_header`` are the
sans-IO part, ``read_transport_header`` reads one off a connection. The running proxy uses them
in ``proxy/tlsglue.py`` (``connect_endpoint(..., opaque_transport_port=, session=)``, outbound)
and ``proxy/server.py`` (connections to its own port).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from proxy.mtls.errors import TransportHeaderError

__all__ = [
    "CONNECTION_FIELDS",
    "ORIG_PROTO_HEADER",
    "Session",
    "TransportHeader",
    "TransportHeaderError",
    "encode_transport_header",
    "parse_transport_header",
    "read_transport_header",
]


ORIG_PROTO_HEADER: Final = b"meshlet-orig-proto"
"""On each request of a ``Session.HTTP1_OVER_H2`` connection: the client's HTTP version
(``HTTP/1.1`` or ``HTTP/1.0``), which the peer's proxy speaks to the application."""
CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
"""Fields that describe one HTTP/1 connection: neither side of a ``Session.HTTP1_OVER_H2``
carries them across the HTTP/2 hop (RFC 9113 8.2.2), in either direction."""


class Session(enum.Enum):
    """What follows the header on the connection."""

    OPAQUE = b"\x00meshlet.io/opaque/1\x00"
    """The application's own bytes (an opaque port)."""
    HTTP1_OVER_H2 = b"\x00meshlet.io/h1-over-h2/1\x00"
    """HTTP/2 carrying HTTP/1 requests (``meshlet-orig-proto``) for an HTTP/1 application."""


@dataclass(frozen=True, slots=True)
class TransportHeader:
    port: int
    session: Session = Session.OPAQUE


_COMMON: Final = b"\x00meshlet.io/"
_LONGEST: Final = max(len(session.value) for session in Session) + 3


def encode_transport_header(port: int, session: Session = Session.OPAQUE) -> bytes:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return session.value + port.to_bytes(2, "big") + b"\n"


def parse_transport_header(data: bytes) -> tuple[TransportHeader, bytes] | None:
    """``(header, bytes after it)``, or ``None`` while the header is incomplete.

    Raises ``TransportHeaderError`` as soon as the bytes cannot be a header.
    """
    for session in Session:
        magic = session.value
        if data.startswith(magic):
            end = len(magic) + 3
            if len(data) < end:
                return None
            port = int.from_bytes(data[len(magic) : end - 1], "big")
            if port == 0 or data[end - 1 : end] != b"\n":
                raise TransportHeaderError("the transport header is malformed")
            return TransportHeader(port, session), data[end:]
    if len(data) < _LONGEST and any(session.value.startswith(data) for session in Session):
        return None
    if data.startswith(_COMMON) or _COMMON.startswith(data):
        raise TransportHeaderError("the transport header names an unknown session")
    raise TransportHeaderError("the connection does not start with the transport header")


async def read_transport_header(
    receive: Callable[[], Awaitable[bytes]], prefix: bytes, *, timeout: float
) -> tuple[TransportHeader, bytes]:
    """Read (after ``prefix``) until the header is complete: ``(header, bytes after it)``.

    Raises ``TransportHeaderError`` for bytes that cannot be a header, an early end, or a
    header slower than ``timeout``.
    """
    data = prefix
    with trio.move_on_after(timeout):
        while (parsed := parse_transport_header(data)) is None:
            chunk = await receive()
            if not chunk:
                break
            data += chunk
        else:
            return parsed
    raise TransportHeaderError("no complete transport header arrived")
