"""HTTP/1.1 proxying: h11 on both sides, bodies streamed, one upstream connection per client.

Theory of operation. A client connection is a sequence of request/response cycles (keep-alive).
For each request the shell (re)uses one upstream connection, sends the request head with
hop-by-hop fields rewritten (``proxy/headers.py``), and then runs two flows at once in a per-request
nursery: the request body (client → upstream) and the response (upstream → client). Each flow moves
one chunk at a time and awaits the write before reading more, so memory per request is bounded by
one receive buffer and a slow side slows the other (backpressure through TCP). Running them
together is what makes ``Expect: 100-continue`` work (the client waits for the upstream's ``100``
before sending the body) and lets an upstream answer early (e.g. 413) without deadlock.

A request without a body (the common GET) skips the second task. A ``101 Switching Protocols``
answer to an upgrade request (WebSocket) turns the connection into a byte tunnel
(``proxy/tcp.py``). Failures before the response head reach the client as an HTTP error carrying
``meshlet-proxy-error: <slug>`` (502 refused, 504 connect timeout, 400 malformed request);
after it, the client connection is reset, since the response can no longer be replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import h11
import trio

from proxy.context import INBOUND, OUTBOUND, ProxyContext, Route
from proxy.errors import (
    ERROR_HEADER,
    ClientClosed,
    ClientProtocolError,
    ProxyError,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    unwrap_groups,
)
from proxy.headers import forward_headers
from proxy.http1mesh import proxy_mesh
from proxy.http1tap import ExchangeTap
from proxy.metrics import classify
from proxy.mtls import inbound_request_headers
from proxy.net import RECEIVE_SIZE, Conn, format_address
from proxy.tcp import splice

__all__ = ["serve_http1"]

log = logging.getLogger(__name__)

_SWITCHING_PROTOCOLS: Final = 101
_CONNECTION_CLOSE: Final = (b"connection", b"close")


async def serve_http1(client: Conn, prefix: bytes, route: Route, context: ProxyContext) -> None:
    """Proxy HTTP/1.x requests from ``client`` (whose first bytes are ``prefix``) to ``route``."""
    session = _Session(client, route, context)
    session.server.receive_data(prefix)
    try:
        with session.scope:
            await session.run()
    finally:
        if session.upstream is not None:
            session.upstream.close()


class _Session:
    """One client connection and the upstream connection it currently uses."""

    def __init__(self, client: Conn, route: Route, context: ProxyContext) -> None:
        self.client = client
        self.route = route
        self.context = context
        self.server = h11.Connection(h11.SERVER)
        self.upstream: Conn | None = None
        self.upstream_h11: h11.Connection | None = None
        self.scope = trio.CancelScope()
        inbound = route.direction != OUTBOUND
        self.tap = ExchangeTap(context.tap, client, route.direction, inbound=inbound)

    async def run(self) -> None:
        lifecycle = self.context.lifecycle
        while True:
            try:
                request = await self._next_request()
            except ClientProtocolError as exc:
                await self._send_error(exc, status=exc.status_hint)
                return
            if request is None:
                return
            switched = await self._proxy(request)
            if switched or self.server.our_state is not h11.DONE:
                return
            if self.server.their_state is not h11.DONE or lifecycle.draining.is_set():
                return
            self.server.start_next_cycle()

    # -- client side ------------------------------------------------------------------------------

    async def _next_request(self) -> h11.Request | None:
        """The next request head, or ``None`` when the client is done (or we are draining)."""
        draining = self.context.lifecycle.draining
        while True:
            event = self._client_event()
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed (or PAUSED after a refused upgrade)
            if draining.is_set():
                return None
            # Idle between requests: the only time draining may cancel the session's scope.
            self.context.lifecycle.idle.add(self.scope)
            try:
                data = await self.client.receive()
            finally:
                self.context.lifecycle.idle.discard(self.scope)
            self.server.receive_data(data)

    def _client_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.server.next_event()
        except h11.RemoteProtocolError as exc:
            raise ClientProtocolError(
                f"malformed request: {exc}", status_hint=exc.error_status_hint
            ) from None

    async def _client_body_event(self) -> h11.Event:
        while True:
            event = self._client_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)
                return event
            data = await self.client.receive()
            self.server.receive_data(data)
            if not data and self.server.their_state is h11.SEND_BODY:
                raise ClientClosed("client closed the connection in the middle of a request body")

    async def _send_client(self, event: h11.Event) -> None:
        data = self.server.send(event)
        if data:
            await self.client.send(data)

    async def _send_error(self, exc: ProxyError, *, status: int) -> None:
        if self.server.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            self.client.abort()
            return
        body = f"{exc}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (ERROR_HEADER, exc.slug.encode()),
            _CONNECTION_CLOSE,
        ]
        try:
            await self._send_client(h11.Response(status_code=status, headers=headers))
            await self._send_client(h11.Data(data=body))
            await self._send_client(h11.EndOfMessage())
        except (h11.LocalProtocolError, ClientClosed) as send_error:
            log.debug("could not send the error response: %s", send_error)

    # -- one exchange -----------------------------------------------------------------------------

    async def _proxy(self, request: h11.Request) -> bool:
        """Forward one request and its response; ``True`` if the connection became a tunnel."""
        authority = _authority(request)
        try:
            outbound = self.context.outbound
            if outbound is not None and self.route.direction == OUTBOUND:
                target = await outbound.resolve_request(authority, self.route.target)
                if target is not None:
                    self._drop_upstream(abort=False)
                    return await proxy_mesh(self, request, authority, target)
            return await self._proxy_plain(request, authority)
        finally:
            self.tap.finish()

    async def _proxy_plain(self, request: h11.Request, authority: bytes) -> bool:
        """The request to the route's target (inbound; outbound without the mesh)."""
        self.tap.start(request, authority, self.route.target, None)
        metrics = self.context.metrics
        started = trio.current_time()
        labels = metrics.http_labels(self.route.direction, authority, self.client.tls_labels)
        metrics.request(labels)
        forwarded = forward_headers(request.headers)
        if self.route.direction == INBOUND:  # meshlet-client-id: only ever the proven one
            forwarded.headers[:] = inbound_request_headers(forwarded.headers, self.client.peer_id)
        if not authority:  # HTTP/1.0 without Host: HTTP/1.1 upstream requests need one
            forwarded.headers.append((b"host", format_address(self.route.target).encode()))
        # ``_parsed=True``: h11 already validated these fields when it parsed them (and the few
        # we add are constants); skipping the second regex pass is a tenth of the CPU here.
        head = h11.Request(
            method=request.method,
            target=request.target,
            headers=forwarded.headers,
            _parsed=True,
        )
        try:
            upstream, upstream_h11 = await self._upstream()
            await _send(upstream, upstream_h11, head)
            upgrade = forwarded.upgrade is not None
            first = self._client_event()
            if isinstance(first, h11.EndOfMessage):  # no body (most requests): no second task
                await _send(upstream, upstream_h11, first)
                status, switched = await self._relay_response(
                    upstream, upstream_h11, labels, started, upgrade
                )
            else:
                with unwrap_groups():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump_request_body, first, upstream, upstream_h11)
                        status, switched = await self._relay_response(
                            upstream, upstream_h11, labels, started, upgrade
                        )
                        nursery.cancel_scope.cancel()  # an early response ends the upload
        except UpstreamError as exc:
            log.info("%s %s %s: %s", self.route.direction, request.method.decode(), authority, exc)
            metrics.response_headers(labels, exc.status, (trio.current_time() - started) * 1000)
            metrics.response_end(labels, exc.status, "failure")
            self.tap.end(exc.status, exc.slug)
            self._drop_upstream(abort=True)
            await self._send_error(exc, status=exc.status)
            return False
        except ClientProtocolError as exc:
            self.tap.end(error=exc.slug)
            self._drop_upstream(abort=True)
            await self._send_error(exc, status=exc.status_hint)
            return False
        if switched:
            metrics.response_end(labels, status, "success")
            self.tap.end()
            await self._tunnel(upstream, upstream_h11)
            return True
        metrics.response_end(labels, status, classify(status, None))
        self.tap.end()
        if upstream_h11.our_state is h11.DONE and upstream_h11.their_state is h11.DONE:
            upstream_h11.start_next_cycle()
        else:
            self._drop_upstream(abort=False)
        return False

    async def _upstream(self) -> tuple[Conn, h11.Connection]:
        if self.upstream is not None and self.upstream.readable_now():
            self._drop_upstream(abort=False)  # the server closed it while it was idle
        if self.upstream is None or self.upstream_h11 is None:
            self.upstream = await self.route.connect(self.context.metrics)
            self.upstream_h11 = h11.Connection(h11.CLIENT)
        return self.upstream, self.upstream_h11

    def _drop_upstream(self, *, abort: bool) -> None:
        if self.upstream is not None:
            if abort:
                self.upstream.abort()
            else:
                self.upstream.close()
        self.upstream = None
        self.upstream_h11 = None

    async def _pump_request_body(
        self,
        first: h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED],
        upstream: Conn,
        upstream_h11: h11.Connection,
    ) -> None:
        event = first if isinstance(first, h11.Event) else await self._client_body_event()
        while True:
            assert isinstance(event, h11.Data | h11.EndOfMessage)
            if isinstance(event, h11.EndOfMessage):
                headers = forward_headers(event.headers, allow_upgrade=False).headers
                await _send(upstream, upstream_h11, h11.EndOfMessage(headers=headers))
                return
            await _send(upstream, upstream_h11, event)
            event = await self._client_body_event()

    async def _relay_response(
        self,
        upstream: Conn,
        upstream_h11: h11.Connection,
        labels: str,
        started: float,
        upgrade: bool,
        *,
        on_head: Callable[[int], None] | None = None,
    ) -> tuple[int, bool]:
        """Relay 1xx, the response head and body; returns (status, switched to a tunnel).

        ``on_head(status)`` sees the final response head before anything of it is relayed (the
        mesh path reports the attempt there, and raises to discard it for a retry)."""
        event = await self._response_head(upstream, upstream_h11, labels, started, upgrade)
        if event is None:
            return 101, True
        status = event.status_code
        if on_head is not None:
            on_head(status)
        self.context.metrics.response_headers(
            labels, status, (trio.current_time() - started) * 1000
        )
        tapped = self.tap.current
        if tapped is not None:
            tapped.response_start(status)
        headers = forward_headers(event.headers, allow_upgrade=False).headers
        if self.context.lifecycle.draining.is_set():
            headers.append(_CONNECTION_CLOSE)
        # The head and whatever body is already buffered go out in one write: loopback writes
        # cost more than the bytes in them, so a small response costs one send, not three.
        out = self.server.send(
            h11.Response(status_code=status, headers=headers, reason=event.reason, _parsed=True)
        )
        try:
            while True:
                polled = _poll_upstream(upstream_h11)
                if polled is h11.NEED_DATA:
                    if out:
                        await self.client.send(out)
                        out = b""
                    upstream_h11.receive_data(await upstream.receive())
                    continue
                if isinstance(polled, h11.EndOfMessage):
                    trailers = forward_headers(polled.headers, allow_upgrade=False).headers
                    out = (out or b"") + (
                        self.server.send(h11.EndOfMessage(headers=trailers)) or b""
                    )
                    await self.client.send(out)
                    return status, False
                assert isinstance(polled, h11.Data)
                if tapped is not None:
                    tapped.response_bytes += len(polled.data)
                out = (out or b"") + (self.server.send(polled) or b"")
                if len(out) >= RECEIVE_SIZE:
                    await self.client.send(out)
                    out = b""
        except UpstreamError as exc:
            # The head is out: the only honest signal left is to reset the client connection.
            log.info("%s response body from %s failed: %s", self.route.direction, labels, exc)
            self.context.metrics.response_end(labels, status, "failure")
            self.tap.end(error="reset")
            self.client.abort()
            raise ClientClosed("response aborted") from exc

    async def _response_head(
        self,
        upstream: Conn,
        upstream_h11: h11.Connection,
        labels: str,
        started: float,
        upgrade: bool,
    ) -> h11.Response | None:
        """The final response head, relaying 1xx; ``None`` after relaying a ``101`` (tunnel)."""
        while True:
            event = await _upstream_event(upstream, upstream_h11)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == _SWITCHING_PROTOCOLS and upgrade:
                    latency_ms = (trio.current_time() - started) * 1000
                    self.context.metrics.response_headers(labels, 101, latency_ms)
                    if self.tap.current is not None:
                        self.tap.current.response_start(101)
                    forwarded = forward_headers(event.headers)
                    await self._send_client(
                        h11.InformationalResponse(status_code=101, headers=forwarded.headers)
                    )
                    return None
                await self._send_client(event)
                continue
            assert isinstance(event, h11.Response)
            return event

    async def _tunnel(self, upstream: Conn, upstream_h11: h11.Connection) -> None:
        """After ``101``: bytes either side already buffered, then a plain byte tunnel."""
        upstream_early, _ = upstream_h11.trailing_data
        client_early, _ = self.server.trailing_data
        self.upstream = None  # splice owns and closes it now
        if upstream_early:
            await self.client.send(upstream_early)
        await splice(self.client, upstream, prefix=client_early)


def _authority(request: h11.Request) -> bytes:
    for name, value in request.headers:
        if name == b"host":
            return value
    return b""


async def _send(upstream: Conn, upstream_h11: h11.Connection, event: h11.Event) -> None:
    try:
        data = upstream_h11.send(event)
    except h11.LocalProtocolError as exc:
        raise UpstreamProtocolError(f"cannot forward to upstream: {exc}") from exc
    if data:
        await upstream.send(data)


async def _upstream_event(upstream: Conn, upstream_h11: h11.Connection) -> h11.Event:
    while True:
        event = _poll_upstream(upstream_h11)
        if event is h11.NEED_DATA:
            upstream_h11.receive_data(await upstream.receive())
            continue
        assert isinstance(event, h11.Event)
        return event


def _poll_upstream(upstream_h11: h11.Connection) -> h11.Event | type[h11.NEED_DATA]:
    """The upstream's next event if it is already buffered, else ``NEED_DATA``."""
    try:
        event = upstream_h11.next_event()
    except h11.RemoteProtocolError as exc:
        raise UpstreamProtocolError(f"upstream sent invalid HTTP/1: {exc}") from exc
    if isinstance(event, h11.ConnectionClosed):
        raise UpstreamClosed("upstream closed the connection before the response was complete")
    if event is h11.PAUSED:
        raise UpstreamProtocolError("upstream switched protocols unasked")
    return event  # type: ignore[return-value]
