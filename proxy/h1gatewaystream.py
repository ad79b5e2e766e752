"""One request stream of the HTTP/1-over-HTTP/2 gateway (``proxy/h1gateway.py``): its state, its
exchange with the application, and the gateway connection's idle application connections.

``StreamExchange._serve`` runs in a task per stream: an application connection from ``AppPool``
(an idle keep-alive one still fit to use, else a new one), the request head, then the request
body (``_pump_body``: written as it arrives, its window returned once written; a write the
application refuses only stops the upload, its early answer may be on the way) alongside the
response (``_relay``: 1xx dropped, a 101 refused, the head as HEADERS, the body as DATA within
the send windows). A reused connection the application closed while idle, before one byte of an
answer, gets an idempotent request without a body once more on a new connection
(``proxy/h1/replay.py``). Failures before the head are the proxy's own answer (``_failed``:
502/504 with ``meshlet-proxy-error``), after it RST_STREAM. The gateway connection (the reader,
``_finish``, ``_kick``: its writer sends what the streams queue) is the subclass in
``proxy/h1gateway.py``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

import trio

from proxy.context import Route
from proxy.errors import (
    ERROR_HEADER,
    ClientProtocolError,
    ProxyError,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    unwrap_groups,
)
from proxy.h1 import NO_BODY, End, ResponseHead, ResponseReader
from proxy.h1.replay import (
    FRESH_CONNECTION,
    NOT_REPLAYED,
    REPLAY,
    RESPONSE_STARTED,
    replay_decision,
    reuse_idle,
)
from proxy.h1h2convert import (
    StreamRequest,
    body_bytes,
    body_end,
    response_has_body,
    response_headers,
)
from proxy.h2peer import INTERNAL_ERROR, Peer
from proxy.http1response import upstream_event
from proxy.metrics import Metrics, classify
from proxy.net import Conn
from proxy.tap import TapStream

__all__ = ["MAX_IDLE_APP_CONNECTIONS", "AppPool", "GatewayStream", "StreamExchange"]

log = logging.getLogger(__name__)

MAX_IDLE_APP_CONNECTIONS: Final = 16
"""Idle keep-alive connections to the application kept per gateway connection (busy ones are
bounded by the streams, ``MAX_CONCURRENT``)."""
_SWITCHING_PROTOCOLS: Final = 101
_HEAD: Final = b"HEAD"
_HTTP11: Final = b"1.1"


def _first(group: BaseExceptionGroup[ProxyError]) -> ProxyError:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


class GatewayStream:
    """One request stream and its exchange with the application."""

    __slots__ = (
        "arrived", "body", "body_ended", "body_written", "complete", "labels", "received",
        "request", "reset", "responded", "scope", "sid", "started", "status", "tap", "window",
    )  # fmt: skip

    def __init__(self, sid: int, request: StreamRequest, end_stream: bool, labels: str) -> None:
        self.sid = sid
        self.request = request
        self.labels = labels
        self.started = trio.current_time()
        self.body: deque[tuple[bytes, int]] = deque()  # DATA received, not yet written
        self.body_ended = end_stream  # the peer sent all of the request body
        self.body_written = end_stream  # ... and the application has all of it
        self.received = 0
        self.arrived = trio.Event()
        self.window = trio.Event()
        self.scope = trio.CancelScope()
        self.reset = False  # the peer reset the stream (or we did)
        self.responded = False  # the response head went out
        self.complete = False  # the response went out whole (or the proxy's own answer)
        self.status = 0
        self.tap: TapStream | None = None


class AppPool:
    """The idle keep-alive application connections of one gateway connection: at most
    ``MAX_IDLE_APP_CONNECTIONS``, each for at most the HTTP/1 pool idle timeout."""

    def __init__(self, route: Route, metrics: Metrics, idle_timeout: float) -> None:
        self._route = route
        self._metrics = metrics
        self._limit = idle_timeout
        self._idle: list[tuple[Conn, ResponseReader]] = []
        self.closed = False

    async def get(self) -> tuple[Conn, ResponseReader]:
        """An idle keep-alive connection still fit to use, else a new one."""
        now = trio.current_time()
        limit = self._limit
        while self._idle:
            conn, wire = self._idle.pop()  # the most recently used
            if reuse_idle(now - wire.idle_since, limit) and not conn.readable_now():
                return conn, wire
            conn.close()
        return await self.connect()

    async def connect(self) -> tuple[Conn, ResponseReader]:
        return await self._route.connect(self._metrics), ResponseReader()

    def put(self, conn: Conn, wire: ResponseReader) -> None:
        if len(self._idle) >= MAX_IDLE_APP_CONNECTIONS or self._limit <= 0 or self.closed:
            conn.close()
            return
        wire.start_next_cycle()
        wire.idle_since = trio.current_time()
        self._idle.append((conn, wire))

    async def expire(self) -> None:
        """Close the idle application connections once they idled the pool idle timeout."""
        limit = self._limit
        if limit <= 0:
            return
        while True:
            await trio.sleep(limit)
            now = trio.current_time()
            keep = []
            for conn, wire in self._idle:
                if reuse_idle(now - wire.idle_since, limit):
                    keep.append((conn, wire))
                else:
                    conn.close()
            self._idle[:] = keep

    def close(self) -> None:
        self.closed = True
        for conn, _ in self._idle:
            conn.close()
        self._idle.clear()


class StreamExchange:
    """The per-stream half of the gateway connection (``proxy.h1gateway._Gateway``)."""

    peer: Peer
    pool: AppPool
    metrics: Metrics

    def _kick(self) -> None:
        """Have the connection's writer send what the peer queued (a stream task writes to the
        connection only shielded, in ``_send_soon``: a reset cancels it, and a write cut short
        would break the TLS records of every stream)."""
        raise NotImplementedError

    async def _send_soon(self) -> None:
        """Send what the peer queued at once when the connection's writer is idle (shielded:
        see ``_kick``) and wake it for whatever else this scheduler pass queues."""
        raise NotImplementedError

    def _finish(self, stream: GatewayStream) -> None:
        raise NotImplementedError

    def _answer(self, sid: int, error: ProxyError) -> None:
        headers = [
            (b":status", b"%d" % error.status),
            (ERROR_HEADER, error.slug.encode()),
            (b"content-length", b"0"),
        ]
        self.peer.send_headers(sid, headers, True)

    async def _serve(self, stream: GatewayStream) -> None:
        app: tuple[Conn, ResponseReader] | None = None
        reusable = False
        try:
            with stream.scope:
                try:
                    app = await self.pool.get()
                    try:
                        reusable = await self._exchange(stream, *app)
                    except (UpstreamClosed, UpstreamProtocolError) as exc:
                        if not self._replayable(stream, app[1], exc):
                            raise
                        app[0].abort()
                        app = None
                        app = await self.pool.connect()
                        reusable = await self._exchange(stream, *app)
                except* ProxyError as group:
                    # A group when the peer's reset cancelled the exchange as the body pump
                    # failed (the cancellation leaves with the scope): a reset stream is over.
                    if not stream.reset:
                        self._failed(stream, _first(group))
        finally:
            if app is not None:
                if reusable:
                    self.pool.put(*app)
                else:
                    app[0].abort()
            self._finish(stream)
            self._kick()

    def _replayable(self, stream: GatewayStream, wire: ResponseReader, exc: ProxyError) -> bool:
        """Whether a request whose application connection failed may go once more on a new
        one (``proxy/h1/replay.py``: a reused connection the application closed while idle, no
        response byte, an idempotent request whose bytes the proxy still holds: no body)."""
        decision = replay_decision(
            reused=wire.responses > 0,
            response_bytes=wire.received,
            idempotent=stream.request.idempotent,
            kept=stream.request.framing == NO_BODY,
        )
        if decision == REPLAY and not stream.responded:
            log.debug("inbound h1-over-h2 connection closed while idle (%s); replaying", exc)
            return True
        if decision not in (FRESH_CONNECTION, RESPONSE_STARTED):
            log.info("%s on a reused connection; not sent again: %s", exc, NOT_REPLAYED[decision])
        return False

    async def _exchange(self, stream: GatewayStream, app: Conn, wire: ResponseReader) -> bool:
        """The request and its response; whether ``app`` may carry another exchange."""
        wire.start(head_request=stream.request.method == _HEAD)
        await app.send(stream.request.head)
        if stream.body_written:
            await self._relay(stream, app, wire)
        else:
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_body, stream, app)
                    await self._relay(stream, app, wire)
                    nursery.cancel_scope.cancel()  # an early response ends the upload
        # An HTTP/1.0 request (no keep-alive asked for) ends its connection (RFC 9112 9.3),
        # whatever the application's answer says.
        keep = wire.keep_alive and stream.request.version == _HTTP11
        return keep and stream.body_written and wire.idle

    async def _pump_body(self, stream: GatewayStream, app: Conn) -> None:
        """The request body to the application as it arrives; its window back once written."""
        request = stream.request
        expected = request.content_length
        while True:
            while not stream.body and not stream.body_ended:
                stream.arrived = trio.Event()
                await stream.arrived.wait()
            if stream.body:
                pieces = list(stream.body)
                stream.body.clear()
                stream.received += sum(len(data) for data, _ in pieces)
                if expected is not None and stream.received > expected:
                    raise ClientProtocolError("the request body is longer than its content-length")
                try:
                    await app.send(b"".join([body_bytes(request, data) for data, _ in pieces]))
                except UpstreamError as exc:
                    # The application stopped taking the body: it may have answered early and
                    # closed (a 413). Its answer, or its failure, is the relay's to read; the
                    # rest of the body is held (the peer's window stays shut) until the stream
                    # ends. The connection is not reused (``body_written`` stays false).
                    log.debug("inbound h1-over-h2 request body not written: %s", exc)
                    stream.body.extendleft(reversed(pieces))
                    return
                self.peer.consumed(stream.sid, sum(flow for _, flow in pieces))
                self._kick()
                # The application has the whole body: an answer before the END_STREAM (which
                # may trail in a frame of its own) leaves the connection fit for another.
                stream.body_written = stream.received == expected
                continue
            if expected is not None and stream.received != expected:
                raise ClientProtocolError("the request body is shorter than its content-length")
            end = body_end(request)
            if end:
                await app.send(end)
            stream.body_written = True
            return

    async def _relay(self, stream: GatewayStream, app: Conn, wire: ResponseReader) -> None:
        """The application's response as HEADERS and DATA on the stream."""
        while True:
            head = await upstream_event(app, wire)
            if type(head) is not ResponseHead:
                raise UpstreamProtocolError("upstream sent body bytes without a response head")
            if head.status == _SWITCHING_PROTOCOLS:
                raise UpstreamProtocolError("upstream switched protocols on an h1-over-h2 stream")
            if head.status >= 200:
                break
            await upstream_event(app, wire)  # a 1xx head is a whole message: dropped
        sid = stream.sid
        stream.status = head.status
        latency_ms = (trio.current_time() - stream.started) * 1000
        self.metrics.response_headers(stream.labels, head.status, latency_ms)
        if stream.tap is not None:
            stream.tap.response_start(head.status)
        has_body = response_has_body(head)
        self.peer.send_headers(sid, response_headers(head), not has_body)
        stream.responded = True
        if has_body:
            self._kick()
        while True:
            event = await upstream_event(app, wire)
            if type(event) is bytes:
                await self._send_data(stream, event)
            elif type(event) is End:
                break
            else:
                raise UpstreamProtocolError("upstream sent a second response unasked")
        if has_body:
            self.peer.send_data(sid, b"", True)
        stream.complete = True
        self.metrics.response_end(stream.labels, head.status, classify(head.status, None))
        if stream.tap is not None:
            stream.tap.end()
        await self._send_soon()

    async def _send_data(self, stream: GatewayStream, data: bytes) -> None:
        """``data`` as DATA frames, each within the stream's and the connection's window."""
        if stream.tap is not None:
            stream.tap.response_bytes += len(data)
        while data:
            window = self.peer.window(stream.sid)
            if window <= 0:
                stream.window = trio.Event()
                self._kick()
                await stream.window.wait()
                continue
            piece, data = data[:window], data[window:]
            self.peer.send_data(stream.sid, piece, False)
        self._kick()

    def _failed(self, stream: GatewayStream, exc: ProxyError) -> None:
        """The exchange failed: the proxy's own answer before the head, RST_STREAM after it."""
        log.info("inbound h1-over-h2 %s: %s", stream.request.authority.decode("latin-1"), exc)
        status = exc.status_hint if isinstance(exc, ClientProtocolError) else exc.status
        if stream.responded:
            self.peer.reset(stream.sid, INTERNAL_ERROR)
            stream.reset = True
            return  # _finish counts the failure
        latency_ms = (trio.current_time() - stream.started) * 1000
        self.metrics.response_headers(stream.labels, status, latency_ms)
        self.metrics.response_end(stream.labels, status, "failure")
        if stream.tap is not None:
            stream.tap.response_start(status)
            stream.tap.end(error=exc.slug)
        stream.status = status
        stream.complete = True
        self._answer(stream.sid, exc)
