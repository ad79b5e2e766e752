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
and ``parse_transport_header`` are the sans-IO part; ``MeshedOpaqueRoute`` and
``serve_inbound_transport`` are the Trio shell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import trio

from proxy.context import INBOUND, ProxyContext, Route
from proxy.errors import ClientError
from proxy.identity import IdentityClient
from proxy.metrics import Metrics
from proxy.mtls.conn import TlsConn
from proxy.mtls.hello import InboundTlsAction, decide_inbound_tls, describe
from proxy.mtls.settings import MtlsSettings
from proxy.mtls.streams import InboundMeshed, accept_meshed, connect_meshed, read_client_hello
from proxy.net import Conn, format_address
from proxy.tcp import splice

__all__ = [
    "TRANSPORT_HEADER_SIZE",
    "MeshedOpaqueRoute",
    "TransportHeaderError",
    "encode_transport_header",
    "parse_transport_header",
    "serve_inbound_transport",
]

log = logging.getLogger(__name__)

_MAGIC: Final = b"\x00meshlet.io/opaque/1\x00"
TRANSPORT_HEADER_SIZE: Final = len(_MAGIC) + 3


class TransportHeaderError(ClientError):
    """A connection to the proxy's own port was not mTLS to us followed by a valid header."""

    slug = "transport_header_invalid"


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


@dataclass(frozen=True, slots=True, kw_only=True)  # Route has defaulted fields
class MeshedOpaqueRoute(Route):
    """``target`` is the endpoint (pod IP, application port); the connection goes to the peer's
    proxy port ``proxy_port`` with mTLS, and the header names ``target``'s port."""

    server_id: str
    identity: IdentityClient
    mtls: MtlsSettings
    proxy_port: int

    async def connect(self, metrics: Metrics) -> Conn:
        host, port = self.target
        peer = (host, self.proxy_port)
        tls = await connect_meshed(peer, self.server_id, self.identity, settings=self.mtls)
        stats = metrics.tcp_open(self.direction, "dst", format_address(self.target))
        conn = TlsConn(tls, tls.transport_stream, metrics, stats, upstream=True)
        try:
            await conn.send(encode_transport_header(port))
        except BaseException:
            conn.close()
            raise
        return conn


async def _read_header(conn: Conn, timeout: float) -> tuple[int, bytes]:
    data = b""
    with trio.move_on_after(timeout):
        while True:
            parsed = parse_transport_header(data)
            if parsed is not None:
                return parsed
            chunk = await conn.receive()
            if not chunk:
                break
            data += chunk
    raise TransportHeaderError("no complete transport header arrived")


async def serve_inbound_transport(
    client: Conn,
    prefix: bytes,
    context: ProxyContext,
    *,
    identity: IdentityClient,
    mtls: MtlsSettings,
    proxy_port: int,
) -> InboundMeshed:
    """Serve a connection addressed to the proxy's own inbound port (``prefix`` already read).

    Only mTLS to our identity followed by a transport header is accepted; the rest of the
    connection is spliced to the application on ``127.0.0.1:<header port>``. Raises
    ``TransportHeaderError`` (or a ``ClientTlsError``/``NoLocalIdentity``) otherwise.
    """
    settings = context.settings
    hello, prefix = await read_client_hello(client.receive, prefix, timeout=mtls.handshake_timeout)
    decision = decide_inbound_tls(hello, identity.settings.local_name)
    if decision.action is not InboundTlsAction.TERMINATE:
        raise TransportHeaderError(f"not mTLS to this proxy: {describe(decision.reason)}")
    meshed = await accept_meshed(client.stream, prefix, identity, settings=mtls)
    tls_client = TlsConn(
        meshed.stream, client.stream, context.metrics, client.stats, upstream=False
    )
    port, rest = await _read_header(tls_client, mtls.handshake_timeout)
    if port == proxy_port:
        raise TransportHeaderError(f"the transport header names the proxy's own port {port}")
    route = Route(INBOUND, ("127.0.0.1", port), settings.inbound_connect_timeout)
    upstream = await route.connect(context.metrics)
    try:
        await splice(tls_client, upstream, prefix=rest)
    finally:
        upstream.close()
    log.debug("opaque transport from %s to port %d done", meshed.client_id, port)
    return meshed
