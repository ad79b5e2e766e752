"""Where mTLS plugs into the proxy's connection handling (``proxy/server.py``).

- Outbound: ``MeshedRoute`` is a ``proxy.context.Route`` whose ``connect`` opens mutual TLS to
  the endpoint (``connect_meshed``) and returns a ``TlsConn``, so ``serve_http1``,
  ``serve_http2`` and opaque forwarding carry meshed connections unchanged. The choice between
  ``Route`` and ``MeshedRoute`` belongs to whoever knows the endpoint's identity (discovery).
- Inbound: ``serve_inbound_tls`` takes a connection that ``proxy.detect`` called TLS: TLS for
  this proxy's identity is terminated, the plaintext detected again and served by the same
  shells; TLS for anything else is forwarded untouched as opaque bytes (the application
  terminates it), as Linkerd does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from proxy.context import ProxyContext, Route
from proxy.detect import Protocol, detect
from proxy.errors import ProxyError
from proxy.http1 import serve_http1
from proxy.http2 import serve_http2
from proxy.identity import IdentityClient
from proxy.metrics import Metrics
from proxy.mtls.conn import TlsConn
from proxy.mtls.hello import InboundTlsAction, decide_inbound_tls, describe
from proxy.mtls.settings import MtlsSettings
from proxy.mtls.streams import InboundMeshed, accept_meshed, connect_meshed, read_client_hello
from proxy.net import Conn, format_address
from proxy.tcp import splice

__all__ = ["MeshedRoute", "detect_plaintext", "serve_inbound_tls"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)  # Route has defaulted fields
class MeshedRoute(Route):
    """A route to an endpoint discovery says is meshed as ``server_id``."""

    server_id: str
    identity: IdentityClient
    mtls: MtlsSettings

    async def connect(self, metrics: Metrics) -> Conn:
        tls = await connect_meshed(self.target, self.server_id, self.identity, settings=self.mtls)
        stats = metrics.tcp_open(self.direction, "dst", format_address(self.target))
        return TlsConn(tls, tls.transport_stream, metrics, stats, upstream=True)


async def detect_plaintext(conn: Conn, timeout: float) -> tuple[Protocol, bytes]:
    """``proxy.server``'s detection loop, on the decrypted bytes of a meshed connection."""
    prefix = b""
    with trio.move_on_after(timeout):
        while True:
            data = await conn.receive()
            if not data:
                return Protocol.OPAQUE, prefix
            prefix += data
            verdict = detect(prefix)
            if verdict is not None:
                return verdict, prefix
    return Protocol.OPAQUE, prefix


async def serve_inbound_tls(
    client: Conn,
    prefix: bytes,
    route: Route,
    context: ProxyContext,
    *,
    identity: IdentityClient,
    mtls: MtlsSettings,
) -> InboundMeshed | None:
    """Serve an inbound connection whose first bytes (``prefix``) are a TLS ClientHello.

    Returns what the handshake proved (``None`` when passed through) once the connection is done.
    Raises ``NoLocalIdentity`` or ``ClientTlsError`` when TLS for us cannot be accepted; the
    caller closes ``client`` in every case, as it does for plaintext.
    """
    hello, prefix = await read_client_hello(
        client.receive, prefix, timeout=context.settings.detect_timeout
    )
    decision = decide_inbound_tls(hello, identity.settings.local_name)
    if decision.action is InboundTlsAction.PASSTHROUGH:
        log.debug("inbound TLS passed through: %s", describe(decision.reason))
        await _forward_opaque(client, prefix, route, context.metrics)
        return None
    meshed = await accept_meshed(client.stream, prefix, identity, settings=mtls)
    tls_client = TlsConn(
        meshed.stream, client.stream, context.metrics, client.stats, upstream=False
    )
    protocol, plain = await detect_plaintext(tls_client, context.settings.detect_timeout)
    if protocol is Protocol.HTTP1:
        await serve_http1(tls_client, plain, route, context)
    elif protocol is Protocol.HTTP2:
        await serve_http2(tls_client, plain, route, context)
    else:
        await _forward_opaque(tls_client, plain, route, context.metrics)
    return meshed


async def _forward_opaque(client: Conn, prefix: bytes, route: Route, metrics: Metrics) -> None:
    try:
        upstream = await route.connect(metrics)
    except ProxyError as exc:
        log.info("%s opaque connection: %s", route.direction, exc)
        client.abort()
        return
    try:
        await splice(client, upstream, prefix=prefix)
    finally:
        upstream.close()
