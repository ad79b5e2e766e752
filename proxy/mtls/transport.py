"""Opaque TCP between meshed pods on opaque ports: mTLS to the peer's proxy port plus a header.

Theory of operation (Linkerd's "transport header", simplified). Connections to opaque ports
(``MESHLET_PROXY_OPAQUE_PORTS``: server-speaks-first protocols) skip protocol detection inbound,
so TLS arriving on them cannot be told from the application's own bytes. Instead the outbound
proxy connects to the peer's *proxy* inbound port (4143) itself, runs the usual mTLS handshake
(SNI = the peer's identity), and first sends a fixed 24-byte header naming the application port::

    b"\\x00meshlet.io/opaque/1\\x00"  (21 bytes)  +  port (2 bytes, big-endian)  +  b"\\n"

The leading NUL makes it impossible to confuse with HTTP/1, HTTP/2 or anything ``proxy.detect``
recognises. The inbound proxy accepts connections addressed to its own port *only* in this form
(mTLS to its identity, then the header) and splices the rest to ``127.0.0.1:<port>``; the
application's first bytes can flow at once, with no detection wait. ``encode_transport_header``
and ``parse_transport_header`` are the sans-IO part, ``read_transport_header`` reads one off a
connection. The running proxy uses them in ``proxy/tlsglue.py`` (``connect_endpoint(...,
opaque_transport_port=)``, outbound) and ``proxy/server.py`` (connections to its own port).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import trio

from proxy.mtls.errors import TransportHeaderError

__all__ = [
    "TRANSPORT_HEADER_SIZE",
    "TransportHeaderError",
    "encode_transport_header",
    "parse_transport_header",
    "read_transport_header",
]

_MAGIC: Final = b"\x00meshlet.io/opaque/1\x00"
TRANSPORT_HEADER_SIZE: Final = len(_MAGIC) + 3


def encode_transport_header(port: int) -> bytes:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return _MAGIC + port.to_bytes(2, "big") + b"\n"


def parse_transport_header(data: bytes) -> tuple[int, bytes] | None:
    """``(port, bytes after the header)``, or ``None`` while fewer than 24 bytes arrived.

    Raises ``TransportHeaderError`` as soon as the bytes cannot be a header.
    """
    if not _MAGIC.startswith(data[: len(_MAGIC)]):
        raise TransportHeaderError("the connection does not start with the transport header")
    if len(data) < TRANSPORT_HEADER_SIZE:
        return None
    port = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 2], "big")
    if port == 0 or data[TRANSPORT_HEADER_SIZE - 1 : TRANSPORT_HEADER_SIZE] != b"\n":
        raise TransportHeaderError("the transport header is malformed")
    return port, data[TRANSPORT_HEADER_SIZE:]


async def read_transport_header(
    receive: Callable[[], Awaitable[bytes]], prefix: bytes, *, timeout: float
) -> tuple[int, bytes]:
    """Read (after ``prefix``) until the header is complete: ``(port, bytes after it)``.

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
