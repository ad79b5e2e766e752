"""HTTP/1.1 proxying: the Trio shell around the sans-IO core ``proxy/h1/``.

Theory of operation. A client connection is a sequence of request/response cycles (keep-alive).
A ``RequestReader`` turns the client's bytes into events (llhttp via httptools); for each request
the shell (re)uses one upstream connection with its ``ResponseReader``, writes the request head
(the received fields minus hop-by-hop ones, ``proxy/h1/fields.py``, joined by
``proxy/h1/write.py``) together with whatever body is already buffered, and then, if more body is
coming, runs two flows at once in a per-request nursery: the request body (client → upstream) and
the response (upstream → client). Each flow moves what one read returned and awaits the write
before reading more, so memory per request is bounded by one receive buffer and a slow side slows
the other (backpressure through TCP). Running them together is what makes
``Expect: 100-continue`` work (the client waits for the upstream's ``100``) and lets an upstream
answer early (e.g. 413) without deadlock. A request without a body (the common GET) runs without
a nursery, and its response head and body usually leave in one write.

The response side (1xx, head, body towards the client) is ``proxy/http1response.py``; requests
to discovered destinations go through ``proxy/http1mesh.py``. Bodies keep their framing:
``Content-Length`` bodies pass through as received, chunked ones are re-chunked piece by piece
(with their trailers), a response delimited by the upstream closing goes to an HTTP/1.1 client
chunked (its connection stays open) and to an HTTP/1.0 client as is.
A ``101 Switching Protocols`` answer to an upgrade request (WebSocket) turns the connection into
a byte tunnel (``proxy/tcp.py``). The upstream connection is kept between requests while it is
idle for less than the pool idle timeout; when a reused one turns out closed by the server before
one byte of an answer, an idempotent request whose bytes are still held (``ReplayCopy``) is sent
once more on a new connection (``proxy/h1/replay.py`` says when that is safe, and why a ``POST``
is not). Failures before the response head reach the client as an HTTP
error carrying ``meshlet-proxy-error: <slug>`` (502 refused, 504 connect timeout, 400 malformed
request with the reason); after it, the client connection is reset, since the response can no
longer be replaced.
"""

from __future__ import annotations

import logging
from typing import Final

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
from proxy.h1 import (
    End,
    Event,
    ParseError,
    RequestHead,
    RequestReader,
    ResponseReader,
    Truncated,
)
from proxy.h1.replay import (
    FRESH_CONNECTION,
    NOT_REPLAYED,
    REPLAY,
    RESPONSE_STARTED,
    ReplayCopy,
    idempotent,
    replay_decision,
    reuse_idle,
)
from proxy.h1.write import (
    CLOSE_FIELD,
    frame_body,
    response_head,
    write_request,
)
from proxy.http1mesh import proxy_mesh
from proxy.http1response import ResponseRelay
from proxy.http1tap import ExchangeTap
from proxy.metrics import classify
from proxy.mtls import inbound_request_headers
from proxy.net import Conn, format_address
from proxy.tcp import splice

__all__ = ["serve_http1"]

log = logging.getLogger(__name__)

_HEAD: Final = b"HEAD"


async def serve_http1(client: Conn, prefix: bytes, route: Route, context: ProxyContext) -> None:
    """Proxy HTTP/1.x requests from ``client`` (whose first bytes are ``prefix``) to ``route``."""
    session = _Session(client, route, context)
    session.reader.feed(prefix)
    try:
        with session.scope:
            await session.run()
    finally:
        if session.upstream is not None:
            session.upstream.close()


class _Session(ResponseRelay):
    """One client connection and the upstream connection it currently uses."""

    def __init__(self, client: Conn, route: Route, context: ProxyContext) -> None:
        self.client = client
        self.route = route
        self.context = context
        self.reader = RequestReader()
        self.upstream: Conn | None = None
        self.wire: ResponseReader | None = None
        self.scope = trio.CancelScope()
        self.responded = False
        """A final response head for the current request went out (errors must reset now)."""
        self.request_done = False
        """The current request's body was read to its end."""
        self.reusable = True
        inbound = route.direction != OUTBOUND
        self.tap = ExchangeTap(context.tap, client, route.direction, inbound=inbound)

    async def run(self) -> None:
        draining = self.context.lifecycle.draining
        while True:
            try:
                request = await self._next_request()
            except ClientProtocolError as exc:
                await self.send_error(exc, status=exc.status_hint)
                return
            except ClientClosed:
                return
            if request is None:
                return
            self.responded = self.request_done = False
            switched = await self._proxy(request)
            if switched or not (self.reusable and self.request_done and request.keep_alive):
                return
            if self.reader.switched or draining.is_set():
                return

    # -- client side ------------------------------------------------------------------------------

    async def _next_request(self) -> RequestHead | None:
        """The next request head, or ``None`` when the client is done (or we are draining)."""
        lifecycle = self.context.lifecycle
        while True:
            event = self._client_event()
            if type(event) is RequestHead:
                return event
            if event is not None or self.reader.switched:
                return None  # CLOSED
            if lifecycle.draining.is_set():
                return None
            # Idle between requests: the only time draining may cancel the session's scope.
            lifecycle.idle.add(self.scope)
            try:
                data = await self.client.receive_answer()
            finally:
                lifecycle.idle.discard(self.scope)
            self.reader.feed(data)

    def _client_event(self) -> Event | None:
        try:
            return self.reader.next_event()
        except Truncated:
            raise ClientClosed("client closed the connection in the middle of a request") from None
        except ParseError as exc:
            raise ClientProtocolError(f"malformed request: {exc}", status_hint=exc.status) from None

    async def client_body_event(self) -> bytes | End:
        """The next piece of the current request's body, or its ``End``."""
        while True:
            event = self._client_event()
            if event is not None:
                assert type(event) is bytes or type(event) is End
                if type(event) is End:
                    self.request_done = True
                return event
            self.reader.feed(await self.client.receive())

    def buffered_body(self, head: RequestHead) -> tuple[list[bytes | End], bool]:
        """The body events already read (no waiting), and whether they reach the ``End``."""
        events: list[bytes | End] = []
        while True:
            event = self._client_event()
            if event is None:
                return events, False
            assert type(event) is bytes or type(event) is End
            events.append(event)
            if type(event) is End:
                self.request_done = True
                return events, True

    async def send_error(self, exc: ProxyError, *, status: int) -> None:
        """Answer the current request with the proxy's own error (or reset, if too late)."""
        self.reusable = False
        if self.responded:
            self.client.abort()
            return
        self.responded = True
        body = f"{exc}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (ERROR_HEADER, exc.slug.encode()),
            CLOSE_FIELD,
        ]
        try:
            await self.client.send(response_head(status, b"", headers) + body)
        except ClientClosed as send_error:
            log.debug("could not send the error response: %s", send_error)

    # -- one exchange -----------------------------------------------------------------------------

    async def _proxy(self, request: RequestHead) -> bool:
        """Forward one request and its response; ``True`` if the connection became a tunnel."""
        authority = request.authority
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

    async def _proxy_plain(self, request: RequestHead, authority: bytes) -> bool:
        """The request to the route's target (inbound; outbound without the mesh)."""
        self.tap.start(request, authority, self.route.target, None)
        metrics = self.context.metrics
        started = trio.current_time()
        labels = metrics.http_labels(self.route.direction, authority, self.client.tls_labels)
        metrics.request(labels)
        headers = request.fields.forwarded
        if self.route.direction == INBOUND and (request.fields.client_id or self.client.peer_id):
            headers = inbound_request_headers(headers, self.client.peer_id)  # only the proven id
        host = "" if request.fields.host is not None else format_address(self.route.target)
        head = write_request(request, headers, host.encode())
        try:
            events, complete = self.buffered_body(request)
            body = b"".join([frame_body(request, event) for event in events]) if events else b""
            status, switched, upstream, wire = await self._exchange(
                request, head, body, labels, started, complete=complete
            )
        except UpstreamError as exc:
            log.info("%s %s %s: %s", self.route.direction, request.method.decode(), authority, exc)
            metrics.response_headers(labels, exc.status, (trio.current_time() - started) * 1000)
            metrics.response_end(labels, exc.status, "failure")
            self.tap.end(exc.status, exc.slug)
            self._drop_upstream(abort=True)
            await self.send_error(exc, status=exc.status)
            return False
        except ClientProtocolError as exc:
            self.tap.end(error=exc.slug)
            self._drop_upstream(abort=True)
            await self.send_error(exc, status=exc.status_hint)
            return False
        if switched:
            metrics.response_end(labels, status, "success")
            self.tap.end()
            await self.tunnel(upstream, wire)
            return True
        metrics.response_end(labels, status, classify(status, None))
        self.tap.end()
        if self.wire_reusable(wire):
            wire.start_next_cycle()
            wire.idle_since = trio.current_time()
        else:
            self._drop_upstream(abort=False)
        return False

    def wire_reusable(self, wire: ResponseReader) -> bool:
        """Whether the upstream connection may carry the next request (the exchange completed
        both ways and the upstream keeps it alive)."""
        return wire.keep_alive and self.request_done and wire.idle and not wire.switched

    async def _exchange(
        self,
        request: RequestHead,
        head: bytes,
        body: bytes,
        labels: str,
        started: float,
        *,
        complete: bool,
    ) -> tuple[int, bool, Conn, ResponseReader]:
        """Send the request (``head``, the ``body`` bytes already read, then the rest as it
        arrives) and relay the answer. When a reused connection turns out dead before one byte
        of an answer and the request may be replayed (``proxy/h1/replay.py``), once more on a
        new connection."""
        out = head + body if body else head
        copy: ReplayCopy | None = None
        if idempotent(request):
            copy = ReplayCopy(head, self.context.settings.http1_replay_buffer_bytes)
            if body:
                copy.add(body)
        # A request that can be replayed skips the poll for a connection the server closed
        # while idle (one system call per request saved): such a close is noticed as it fails.
        replayable = complete and copy is not None and copy.kept
        upstream, wire = await self._upstream(started, poll=not replayable)
        try:
            status, switched = await self._send(
                request, upstream, wire, out, (labels, started), complete=complete, copy=copy
            )
        except (UpstreamClosed, UpstreamProtocolError) as exc:
            decision = replay_decision(
                reused=wire.responses > 0,
                response_bytes=wire.received,
                idempotent=copy is not None,
                kept=copy is not None and copy.kept,
            )
            if decision != REPLAY or self.responded or copy is None:
                if decision not in (FRESH_CONNECTION, RESPONSE_STARTED):
                    why = NOT_REPLAYED[decision]
                    log.info("%s on a reused connection; not sent again: %s", exc, why)
                raise
            log.debug("%s upstream connection was closed while idle (%s); replaying", labels, exc)
            self._drop_upstream(abort=False)
            upstream, wire = await self._upstream(started, poll=False)
            status, switched = await self._send(
                request, upstream, wire, copy.take(), (labels, started), complete=self.request_done
            )
        return status, switched, upstream, wire

    async def _send(
        self,
        request: RequestHead,
        upstream: Conn,
        wire: ResponseReader,
        out: bytes,
        timing: tuple[str, float],
        *,
        complete: bool,
        copy: ReplayCopy | None = None,
    ) -> tuple[int, bool]:
        """One attempt: ``out``, then (unless ``complete``) the rest of the body, recorded in
        ``copy`` before each write, concurrently with relaying the response. ``timing`` is the
        request's metric labels and start time."""
        labels, started = timing
        wire.start(head_request=request.method == _HEAD)
        await upstream.send(out)
        if complete:
            return await self.relay_response(upstream, wire, request, labels, started)
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_request_body, request, upstream, copy)
                result = await self.relay_response(upstream, wire, request, labels, started)
                nursery.cancel_scope.cancel()  # an early response ends the upload
        return result

    async def _upstream(self, now: float, *, poll: bool) -> tuple[Conn, ResponseReader]:
        """The session's upstream connection, unless it idled too long or (``poll``) the server
        closed it while idle; then a new one."""
        upstream, wire = self.upstream, self.wire
        if upstream is not None and wire is not None:
            idle_limit = self.context.settings.http1_pool_idle_timeout
            if reuse_idle(now - wire.idle_since, idle_limit) and not (
                poll and upstream.readable_now()
            ):
                return upstream, wire
            self._drop_upstream(abort=False)
        self.upstream = upstream = await self.route.connect(self.context.metrics)
        self.wire = wire = ResponseReader()
        return upstream, wire

    def _drop_upstream(self, *, abort: bool) -> None:
        if self.upstream is not None:
            if abort:
                self.upstream.abort()
            else:
                self.upstream.close()
        self.upstream = None
        self.wire = None

    async def _pump_request_body(
        self, request: RequestHead, upstream: Conn, copy: ReplayCopy | None
    ) -> None:
        while True:
            event = await self.client_body_event()
            data = frame_body(request, event)
            if data:
                if copy is not None:
                    copy.add(data)  # before the write: a write that fails is in the replay
                await upstream.send(data)
            if type(event) is End:
                return

    async def tunnel(self, upstream: Conn, wire: ResponseReader) -> None:
        """After ``101``: bytes either side already sent, then a plain byte tunnel."""
        self.upstream = None  # splice owns and closes it now
        self.wire = None
        if wire.rest:
            await self.client.send(wire.rest)
        await splice(self.client, upstream, prefix=self.reader.rest)
