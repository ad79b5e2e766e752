"""The inbound and outbound listeners: accept, find the original destination, detect, dispatch.

Nurseries follow lifetimes: ``serve_proxy`` owns a nursery of connections and, inside it, a
nursery of accept loops. Draining (SIGTERM, ``POST /shutdown``) cancels only the accept loops:
open connections finish on their own (HTTP shells stop after the in-flight requests) while the
process waits for them up to the grace period (``proxy/__main__.py``).

Where a connection goes is decided by ``choose_upstream``, a pure function of the direction, the
original destination and the listen address: inbound connections go to the application on
loopback (``127.0.0.1:<original port>``: loopback is exempt from the iptables redirect),
outbound ones to their original destination, unless the outbound mesh client
(``context.outbound``, ``proxy/outbound.py``) knows it: then HTTP/1 picks an endpoint per request
(``proxy/http1mesh.py``), HTTP/2 one per stream (``proxy/h2mux.py``) and opaque TCP one per
connection (``_dispatch``: a ``Lease`` becomes the ``Route``'s connector). The protocol shells
only see a ``Route``.

Inbound mutual TLS (``proxy/tlsglue.py``): when identity is on, a connection whose first bytes
are a ClientHello naming this proxy's identity is terminated (client certificate required) and
its plaintext is detected afresh (HTTP/1, HTTP/2, opaque) and forwarded to the same loopback
port; TLS for any other name passes through untouched. A connection addressed to the inbound
listener's own port (a meshed peer reaching an opaque port) must be mTLS to our identity
followed by the transport header of ``proxy/mtls/transport.py``; an opaque session is spliced to
the port the header names, an HTTP/1-over-HTTP/2 session is served by ``proxy/h1gateway.py``.
A connection's metric record opens once its TLS state is known, so its
``tls``/``client_id``/``no_tls_reason`` labels are the final ones.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from collections.abc import Callable
from typing import Final, cast

import trio

from proxy.authz import Authorizer
from proxy.context import (
    INBOUND,
    ORIGINAL_DESTINATION,
    OUTBOUND,
    EndpointPicker,
    Lifecycle,
    ProxyContext,
    Route,
)
from proxy.detect import Protocol, detect
from proxy.errors import NoOriginalDestination, ProxyError
from proxy.h1gateway import serve_h1_gateway
from proxy.h2mux import serve_h2_mesh
from proxy.http1 import serve_http1
from proxy.http2 import serve_http2
from proxy.metrics import TLS_DISABLED, Metrics, TcpConnection
from proxy.mtls import MeshTlsError
from proxy.mtls.transport import Session, TransportHeaderError, read_transport_header
from proxy.net import Conn, format_address
from proxy.origdst import OriginalDestinationError, original_destination
from proxy.policy import InboundPolicy
from proxy.settings import Address
from proxy.tcp import splice
from proxy.tlsglue import NOT_PROVIDED_BY_DISCOVERY, MeshTls

__all__ = [
    "INBOUND",
    "OUTBOUND",
    "Lifecycle",
    "ProxyContext",
    "Resolver",
    "Route",
    "choose_upstream",
    "default_resolver",
    "serve_proxy",
]

log = logging.getLogger(__name__)

Resolver = Callable[[trio.socket.SocketType], tuple[str, int]]
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
_ACCEPT_BACKOFF: Final = 0.1  # seconds to wait when out of file descriptors (as trio's serve_tcp)


def default_resolver(sock: trio.socket.SocketType) -> tuple[str, int]:
    """``SO_ORIGINAL_DST`` of an accepted socket (the iptables redirect's record)."""
    return original_destination(cast(socket.socket, sock))


def choose_upstream(direction: str, original: tuple[str, int], listen: Address) -> tuple[str, int]:
    """The upstream address for a connection whose original destination is ``original``.

    Raises ``NoOriginalDestination`` when forwarding would loop back into this listener (a client
    that addressed the proxy's port directly).
    """
    host, port = original
    if direction == INBOUND:
        if port == listen.port:
            raise NoOriginalDestination(f"inbound connection addressed to the proxy port {port}")
        return ("::1" if ":" in host else "127.0.0.1", port)
    if port == listen.port and host in {listen.host, "127.0.0.1", "::1"}:
        raise NoOriginalDestination(f"outbound connection addressed to the proxy itself {host}")
    return original


async def serve_proxy(
    direction: str,
    context: ProxyContext,
    *,
    resolver: Resolver = default_resolver,
    picker: EndpointPicker = ORIGINAL_DESTINATION,
    mesh: MeshTls | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one proxy listener (``INBOUND`` or ``OUTBOUND``) until draining and drained.

    ``mesh`` (inbound): this proxy's mutual TLS; without it (or with identity off) TLS is
    passed through as opaque bytes and every connection is labelled ``no_tls_reason="disabled"``.
    """
    mesh = mesh or MeshTls()
    settings = context.settings
    listen = settings.inbound_listen if direction == INBOUND else settings.outbound_listen
    listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
    bound = listeners[0].socket.getsockname()
    bound_listen = Address(listen.host, bound[1])
    timeout = (
        settings.inbound_connect_timeout
        if direction == INBOUND
        else settings.outbound_connect_timeout
    )
    log.info("%s listener on %s", direction, bound_listen)
    authorizer = None
    if direction == INBOUND:
        policy = InboundPolicy(settings.default_inbound_policy, settings.cluster_networks)
        authorizer = Authorizer(policy, context.metrics, timeout=settings.detect_timeout)

    async def handle(stream: trio.SocketStream) -> None:
        await _handle(
            stream,
            direction,
            bound_listen,
            timeout,
            context,
            resolver=resolver,
            picker=picker,
            mesh=mesh,
            authorizer=authorizer,
        )

    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(_accept_loop, listener, connections, handle)
                context.lifecycle.listening.add(direction)
                task_status.started((bound[0], bound[1]))
                await context.lifecycle.draining.wait()
                acceptors.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            log.info("%s listener closed; waiting for open connections", direction)
    finally:
        context.lifecycle.listening.discard(direction)
        for listener in listeners:
            listener.socket.close()


async def _accept_loop(
    listener: trio.SocketListener,
    connections: trio.Nursery,
    handle: Callable[[trio.SocketStream], object],
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            log.error("accept failed (%s); retrying in %ss", exc, _ACCEPT_BACKOFF)
            await trio.sleep(_ACCEPT_BACKOFF)
            continue
        connections.start_soon(handle, stream)  # type: ignore[arg-type]


async def _handle(
    stream: trio.SocketStream,
    direction: str,
    listen: Address,
    connect_timeout: float,
    context: ProxyContext,
    *,
    resolver: Resolver,
    picker: EndpointPicker,
    mesh: MeshTls,
    authorizer: Authorizer | None,
) -> None:
    try:
        original = resolver(stream.socket)
        # Meshed opaque ports: the peer's proxy addressed our own port (mTLS + transport header).
        transport = direction == INBOUND and mesh.enabled and original[1] == listen.port
        target = original if transport else choose_upstream(direction, original, listen)
        if direction == OUTBOUND:
            target = await picker.pick(target)
    except (OriginalDestinationError, NoOriginalDestination, OSError) as exc:
        log.warning("%s connection refused: %s", direction, exc)
        stream.socket.close()
        return
    metrics = context.metrics
    # The connection's metric record opens once its TLS state is known (after any handshake);
    # until then the bytes read are counted on a scratch record.
    client = Conn(stream, metrics, TcpConnection(""), upstream=False)
    route = _plaintext_route(client, direction, target, connect_timeout, mesh)
    session: Session | None = None
    try:
        if original[1] in context.settings.opaque_ports:
            protocol, prefix = Protocol.OPAQUE, b""
        else:
            protocol, prefix = await _detect(client, context.settings.detect_timeout)
        if transport:
            client, prefix, route, session = await _accept_transport(
                client, protocol, prefix, mesh, context, original
            )
            # The policy refuses an HTTP/1-over-HTTP/2 peer's requests in HTTP/2 (403 each).
            protocol = Protocol.HTTP2 if session is Session.HTTP1_OVER_H2 else Protocol.OPAQUE
        elif direction == INBOUND and protocol is Protocol.TLS and mesh.enabled:
            client, protocol, prefix = await _terminate_tls(client, prefix, mesh, context, original)
        if await _admitted(client, protocol, prefix, metrics, direction, original, authorizer):
            await _dispatch(protocol, client, prefix, route, context, session)
    except MeshTlsError as exc:
        # A refused meshed connection is news (a misconfigured or hostile peer): say why.
        log.info(
            "%s connection from %s refused (%s): %s",
            direction,
            format_address(original),
            exc.slug,
            exc,
        )
    except ProxyError as exc:
        log.debug("%s connection from %s ended: %s", direction, format_address(original), exc)
    except Exception:
        # A bug must cost one connection, never the listener and its other connections.
        log.exception("%s connection from %s failed", direction, format_address(original))
    finally:
        if not client.stats.labels:
            _open_record(client, metrics, direction, original)
        client.close()


async def _admitted(  # noqa: PLR0917 (the connection's state, passed on)
    client: Conn,
    protocol: Protocol,
    prefix: bytes,
    metrics: Metrics,
    direction: str,
    original: tuple[str, int],
    authorizer: Authorizer | None,
) -> bool:
    """Open the connection's metric record (its TLS state is final now), then apply the inbound
    policy, decided once from that state (``proxy/authz.py``); False: refused and answered."""
    if not client.stats.labels:
        _open_record(client, metrics, direction, original)
    return authorizer is None or await authorizer.check(client, protocol, prefix, original)


def _plaintext_route(
    client: Conn, direction: str, target: tuple[str, int], connect_timeout: float, mesh: MeshTls
) -> Route:
    """The route before any mesh decision, and the client's TLS labels until one is made."""
    route = Route(direction, target, connect_timeout)
    if direction == INBOUND:
        client.tls_labels = mesh.inbound_plaintext_labels()
    elif mesh.enabled:  # undiscovered destinations: plaintext because discovery named no peer
        client.tls_labels = NOT_PROVIDED_BY_DISCOVERY
        route = dataclasses.replace(route, connector=mesh.plain_connector(target, connect_timeout))
    return route


async def _dispatch(  # noqa: PLR0917 (the connection's state, passed on)
    protocol: Protocol,
    client: Conn,
    prefix: bytes,
    route: Route,
    context: ProxyContext,
    session: Session | None = None,
) -> None:
    if session is Session.HTTP1_OVER_H2:
        await serve_h1_gateway(client, prefix, route, context)  # a meshed peer's HTTP/1 requests
        return
    if protocol is Protocol.HTTP1:
        await serve_http1(client, prefix, route, context)  # picks per request (mesh) itself
        return
    if protocol is Protocol.HTTP2 and context.outbound is not None and route.direction == OUTBOUND:
        await serve_h2_mesh(client, prefix, route, context)  # per stream when discovered
        return
    lease = None
    if context.outbound is not None and route.direction == OUTBOUND:
        # Opaque TCP: one endpoint per connection.
        lease = await context.outbound.lease(route.target)
        if lease is not None:
            route = dataclasses.replace(route, connector=lease.connect, dst_labels=lease.dst_labels)
    try:
        if protocol is Protocol.HTTP2:
            await serve_http2(client, prefix, route, context)
        else:
            await _forward_opaque(client, prefix, route, context.metrics)
    finally:
        if lease is not None:
            lease.finish()


async def _terminate_tls(
    client: Conn,
    prefix: bytes,
    mesh: MeshTls,
    context: ProxyContext,
    original: tuple[str, int],
) -> tuple[Conn, Protocol, bytes]:
    """Inbound TLS: terminated when addressed to our identity (then the plaintext is detected
    afresh), otherwise passed through as opaque bytes (TLS for the application)."""
    meshed, prefix = await mesh.accept_inbound(
        client, prefix, metrics=context.metrics, source=format_address(original)
    )
    if meshed is None:
        return client, Protocol.OPAQUE, prefix
    _open_record(meshed, context.metrics, INBOUND, original)
    protocol, prefix = await _detect(meshed, context.settings.detect_timeout)
    return meshed, protocol, prefix


async def _accept_transport(  # noqa: PLR0917 (the connection's state, passed on)
    client: Conn,
    protocol: Protocol,
    prefix: bytes,
    mesh: MeshTls,
    context: ProxyContext,
    original: tuple[str, int],
) -> tuple[Conn, bytes, Route, Session]:
    """A connection to our own port: only mTLS to our identity followed by the transport header
    (``proxy/mtls/transport.py``) is accepted; the route is the application port it names, the
    session what follows (opaque bytes, or HTTP/2 for the HTTP/1 gateway)."""
    meshed = None
    if protocol is Protocol.TLS:
        meshed, prefix = await mesh.accept_inbound(
            client,
            prefix,
            metrics=context.metrics,
            source=format_address(original),
        )
    if meshed is None:
        raise TransportHeaderError("a connection to the proxy port that is not mTLS to this proxy")
    _open_record(meshed, context.metrics, INBOUND, original)
    header, rest = await read_transport_header(
        meshed.receive, b"", timeout=context.settings.detect_timeout
    )
    port = header.port
    if port == original[1]:
        raise TransportHeaderError(f"the transport header names the proxy's own port {port}")
    route = Route(INBOUND, ("127.0.0.1", port), context.settings.inbound_connect_timeout)
    if header.session is Session.HTTP1_OVER_H2 and not rest:
        # The policy's refusal answers requests, so it needs the first bytes of the session.
        with trio.move_on_after(context.settings.detect_timeout):
            rest = await meshed.receive()
    return meshed, rest, route, header.session


def _open_record(client: Conn, metrics: Metrics, direction: str, original: tuple[str, int]) -> None:
    """Open the connection's metric record with its TLS labels, moving the bytes counted so far."""
    scratch = client.stats
    client.stats = metrics.tcp_open(
        direction, "src", format_address(original), tls=client.tls_labels or TLS_DISABLED
    )
    client.stats.read += scratch.read
    client.stats.written += scratch.written


async def _detect(client: Conn, timeout: float) -> tuple[Protocol, bytes]:
    """Read until ``detect`` is conclusive; opaque on timeout or early end-of-stream."""
    prefix = b""
    with trio.move_on_after(timeout):
        while True:
            data = await client.receive()
            if not data:
                return Protocol.OPAQUE, prefix
            prefix += data
            verdict = detect(prefix)
            if verdict is not None:
                return verdict, prefix
    return Protocol.OPAQUE, prefix


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
