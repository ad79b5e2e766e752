"""The inbound gateway of ``Session.HTTP1_OVER_H2``: a meshed peer's HTTP/2 connection whose streams
are HTTP/1 requests, served to the HTTP/1 application over keep-alive connections.

Theory of operation. ``proxy/server.py`` hands over a connection to the proxy's own port that
was mTLS to our identity followed by the transport header naming the session and the
application port (``proxy/mtls/transport.py``; docs/mtls.md). ``serve_h1_gateway`` terminates the
HTTP/2 connection with the sans-IO ``proxy.h2peer.Peer`` (server side) and runs, in the
connection's nursery:

- the reader: bytes into the peer, events out. A new stream's header block becomes an HTTP/1
  request head (``proxy/h1h2convert.py``; a block without a valid ``meshlet-orig-proto`` or with
  fields that cannot be written as HTTP/1 is answered 400 ``malformed_request`` and nothing
  reaches the application) and a task of its own; DATA is queued on its stream (at most the
  stream's window: the peer is owed a WINDOW_UPDATE only once the bytes are written to the
  application, ``Peer.consumed``); RST_STREAM cancels the stream's task; WINDOW_UPDATE wakes the
  streams waiting to send;
- one task per stream: an application connection (an idle keep-alive one of this gateway
  connection, or a new one to ``127.0.0.1:<port>``), the head, then the request body as it
  arrives alongside the response: 1xx dropped (a 101 is a 502), the final head as HEADERS, each
  body piece as DATA within the stream's send window (the task reads the application again only
  once what it read left: at most a window per stream is held). The application connection
  goes back to the idle list when the exchange completed both ways and the response was not
  delimited by the connection's end; a connection that broke, was reset or whose stream was
  reset is closed (aborted). Idle ones are kept at most ``_MAX_IDLE_APP_CONNECTIONS`` and for
  the HTTP/1 pool idle timeout (``MESHLET_PROXY_HTTP1_POOL_IDLE_TIMEOUT``);
- keepalive (a PING after ``http2_keepalive_interval`` of silence, closed when unanswered for
  ``http2_keepalive_timeout``) and draining (SIGTERM: GOAWAY, then close once the streams end).

Failures before a response head reach the peer as the inbound HTTP/1 path answers them (502/504
with ``meshlet-proxy-error`` and the same slugs, ``proxy/errors.py``); after it, RST_STREAM. Each
request is counted as every inbound request (``request_total``, ``response_total``,
``response_latency_ms`` with the connection's ``tls``/``client_id`` labels), tapped
(``proxy/tap.py``) and carries the proven ``meshlet-client-id`` to the application.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

import trio

from proxy.context import INBOUND, ProxyContext, Route
from proxy.errors import (
    ERROR_HEADER,
    ClientProtocolError,
    ProxyError,
    UpstreamProtocolError,
    unwrap_groups,
)
from proxy.h1 import End, ResponseHead, ResponseReader
from proxy.h1.replay import reuse_idle
from proxy.h1h2convert import (
    RejectedStream,
    StreamRequest,
    body_bytes,
    body_end,
    response_has_body,
    response_headers,
    stream_request,
)
from proxy.h2peer import (
    INTERNAL_ERROR,
    MAX_CONCURRENT,
    NO_ERROR,
    REFUSED_STREAM,
    Data,
    GoAwayReceived,
    Headers,
    Peer,
    PeerError,
    PeerEvent,
    Reset,
    WindowOpened,
)
from proxy.h2upstream import Link
from proxy.http1response import upstream_event
from proxy.metrics import classify
from proxy.net import Conn
from proxy.tap import TapStream, next_connection_id

__all__ = ["serve_h1_gateway"]

log = logging.getLogger(__name__)

_MAX_IDLE_APP_CONNECTIONS: Final = 16
"""Idle keep-alive connections to the application kept per gateway connection (busy ones are
bounded by the streams, ``MAX_CONCURRENT``)."""
_SWITCHING_PROTOCOLS: Final = 101
_HEAD: Final = b"HEAD"


async def serve_h1_gateway(
    client: Conn, prefix: bytes, route: Route, context: ProxyContext
) -> None:
    """Serve the HTTP/2 connection ``client`` (its first bytes ``prefix``) to ``route``'s app."""
    await _Gateway(client, route, context).run(prefix)


class _Stream:
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


class _Gateway:
    """One gateway connection: the peer, its streams, the idle application connections."""

    def __init__(self, client: Conn, route: Route, context: ProxyContext) -> None:
        self.client = client
        self.link = Link(client, Peer(client_side=False))
        self.peer = self.link.peer
        self.route = route
        self.context = context
        self.settings = context.settings
        self.metrics = context.metrics
        self.streams: dict[int, _Stream] = {}
        self.idle: list[tuple[Conn, ResponseReader]] = []
        self.closing = False
        self.done = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.tap_conn = next_connection_id()
        try:
            self.source: tuple[str, int] = client.stream.socket.getpeername()[:2]
        except OSError:
            self.source = ("", 0)

    async def run(self, prefix: bytes) -> None:
        self.peer.initiate()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._read_loop, prefix)
                nursery.start_soon(self._keepalive)
                nursery.start_soon(self._drain_on_shutdown)
                nursery.start_soon(self._expire_idle)
                await self.done.wait()
                nursery.cancel_scope.cancel()
        finally:
            for conn, _ in self.idle:
                conn.close()
            self.idle.clear()
        with trio.move_on_after(self.settings.http2_keepalive_timeout):
            try:  # half-close, then read until the peer closes, so the last frames arrive
                await self.link.flush()
                await self.client.send_eof()
                while await self.client.receive():
                    pass
            except ProxyError:
                pass

    async def _flush(self) -> None:
        try:
            await self.link.flush()
        except ProxyError as exc:
            log.debug("inbound h1-over-h2 connection: %s", exc)
            self.done.set()

    # -- the reader ------------------------------------------------------------------------------

    async def _read_loop(self, data: bytes) -> None:
        try:
            while True:
                if data:
                    try:
                        events = self.peer.feed(data)
                    except PeerError as exc:
                        log.info("inbound h1-over-h2 peer broke the protocol: %s", exc)
                        self.peer.goaway(self.peer.highest_remote, exc.code)
                        break
                    for event in events:
                        self._event(event)
                await self._flush()
                if self.closing and not self.streams:
                    break
                data = await self.client.receive()
                if not data:
                    break
                self.link.last_read = trio.current_time()
        except ProxyError as exc:
            log.debug("inbound h1-over-h2 connection: %s", exc)
        self.done.set()

    def _event(self, event: PeerEvent) -> None:
        if isinstance(event, Data):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.body_ended:
                self.peer.consumed(event.stream_id, event.flow)
                return
            stream.body.append((event.data, event.flow))
            stream.body_ended = event.end_stream
            stream.arrived.set()
        elif isinstance(event, Headers):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._start(event)
            else:  # trailers: the end of the request body (they are dropped)
                stream.body_ended = True
                stream.arrived.set()
        elif isinstance(event, Reset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset = True
                stream.scope.cancel()
        elif isinstance(event, WindowOpened):
            if event.stream_id == 0:
                for stream in self.streams.values():
                    stream.window.set()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                stream.window.set()
        elif isinstance(event, GoAwayReceived):
            self.closing = True

    def _start(self, event: Headers) -> None:
        sid = event.stream_id
        if self.closing or len(self.streams) >= MAX_CONCURRENT:
            self.peer.reset(sid, REFUSED_STREAM)
            return
        try:
            request = stream_request(event.headers, event.end_stream, self.client.peer_id)
        except RejectedStream as exc:
            self._reject(event, exc)
            return
        labels = self.metrics.http_labels(INBOUND, request.authority, self.client.tls_labels)
        self.metrics.request(labels)
        stream = _Stream(sid, request, event.end_stream, labels)
        peer_id = self.client.peer_id
        stream.tap = self.context.tap.request_start(
            conn=self.tap_conn,
            stream=sid,
            direction=INBOUND,
            method=request.method,
            authority=request.authority,
            path=request.path,
            src=self.source,
            dst=self.route.target,
            tls="true" if peer_id else "no_identity",
            client_id=peer_id or "",
        )
        self.streams[sid] = stream
        assert self.nursery is not None
        self.nursery.start_soon(self._serve, stream)

    def _reject(self, event: Headers, exc: RejectedStream) -> None:
        """400 for a block that is no HTTP/1 request; the application sees nothing."""
        authority = next((v for n, v in event.headers if n in {b":authority", b"host"}), b"")
        labels = self.metrics.http_labels(INBOUND, authority, self.client.tls_labels)
        self.metrics.request(labels)
        error = ClientProtocolError(f"malformed request: {exc}")
        log.info("inbound h1-over-h2 stream refused: %s", exc)
        self.metrics.response_headers(labels, error.status, 0.0)
        self.metrics.response_end(labels, error.status, classify(error.status, None))
        self._answer(event.stream_id, error)
        if event.end_stream:
            self.peer.close_stream(event.stream_id)
        else:
            self.peer.reset(event.stream_id, NO_ERROR)  # no body is needed any more

    def _answer(self, sid: int, error: ProxyError) -> None:
        headers = [
            (b":status", b"%d" % error.status),
            (ERROR_HEADER, error.slug.encode()),
            (b"content-length", b"0"),
        ]
        self.peer.send_headers(sid, headers, True)

    # -- one stream ------------------------------------------------------------------------------

    async def _serve(self, stream: _Stream) -> None:
        app: tuple[Conn, ResponseReader] | None = None
        reusable = False
        try:
            with stream.scope:
                try:
                    app = await self._app_connection()
                    reusable = await self._exchange(stream, *app)
                except ProxyError as exc:
                    self._failed(stream, exc)
        finally:
            if app is not None:
                if reusable:
                    self._put_idle(*app)
                else:
                    app[0].abort()
            self._finish(stream)
        await self._flush()

    async def _exchange(self, stream: _Stream, app: Conn, wire: ResponseReader) -> bool:
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
        return wire.keep_alive and stream.body_written and wire.idle

    async def _pump_body(self, stream: _Stream, app: Conn) -> None:
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
                await app.send(b"".join([body_bytes(request, data) for data, _ in pieces]))
                self.peer.consumed(stream.sid, sum(flow for _, flow in pieces))
                await self._flush()
                continue
            if expected is not None and stream.received != expected:
                raise ClientProtocolError("the request body is shorter than its content-length")
            end = body_end(request)
            if end:
                await app.send(end)
            stream.body_written = True
            return

    async def _relay(self, stream: _Stream, app: Conn, wire: ResponseReader) -> None:
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
            await self._flush()
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
        await self._flush()

    async def _send_data(self, stream: _Stream, data: bytes) -> None:
        """``data`` as DATA frames, each within the stream's and the connection's window."""
        if stream.tap is not None:
            stream.tap.response_bytes += len(data)
        while data:
            window = self.peer.window(stream.sid)
            if window <= 0:
                stream.window = trio.Event()
                await self._flush()
                await stream.window.wait()
                continue
            piece, data = data[:window], data[window:]
            self.peer.send_data(stream.sid, piece, False)
        await self._flush()

    def _failed(self, stream: _Stream, exc: ProxyError) -> None:
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

    def _finish(self, stream: _Stream) -> None:
        """The stream is over: forget it, settle flow control, metrics and tap (no waiting)."""
        sid = stream.sid
        self.streams.pop(sid, None)
        unacked = sum(flow for _, flow in stream.body)
        stream.body.clear()
        if not stream.complete:  # reset by the peer, or cut short after the head
            if stream.responded:
                self.metrics.response_end(stream.labels, stream.status, "failure")
            if stream.tap is not None:
                stream.tap.end(error="reset")
        if not stream.reset and not stream.body_ended:
            self.peer.reset(sid, NO_ERROR)  # RFC 9113 8.1: the response needs no more body
        self.peer.close_stream(sid)
        if unacked:
            self.peer.consumed(sid, unacked)
        if self.closing and not self.streams:
            self.done.set()

    # -- application connections -----------------------------------------------------------------

    async def _app_connection(self) -> tuple[Conn, ResponseReader]:
        """An idle keep-alive connection still fit to use, else a new one."""
        now = trio.current_time()
        limit = self.settings.http1_pool_idle_timeout
        while self.idle:
            conn, wire = self.idle.pop()  # the most recently used
            if reuse_idle(now - wire.idle_since, limit) and not conn.readable_now():
                return conn, wire
            conn.close()
        conn = await self.route.connect(self.metrics)
        return conn, ResponseReader()

    def _put_idle(self, conn: Conn, wire: ResponseReader) -> None:
        if (
            len(self.idle) >= _MAX_IDLE_APP_CONNECTIONS
            or self.settings.http1_pool_idle_timeout <= 0
            or self.done.is_set()
        ):
            conn.close()
            return
        wire.start_next_cycle()
        wire.idle_since = trio.current_time()
        self.idle.append((conn, wire))

    async def _expire_idle(self) -> None:
        """Close the idle application connections once they idled the pool idle timeout."""
        limit = self.settings.http1_pool_idle_timeout
        if limit <= 0:
            return
        while True:
            await trio.sleep(limit)
            now = trio.current_time()
            keep = []
            for conn, wire in self.idle:
                if reuse_idle(now - wire.idle_since, limit):
                    keep.append((conn, wire))
                else:
                    conn.close()
            self.idle[:] = keep

    # -- keepalive, draining ---------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """A PING to a peer silent for the keepalive interval; still silent after the
        keepalive timeout, the connection ends."""
        interval = self.settings.http2_keepalive_interval
        timeout = self.settings.http2_keepalive_timeout
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            if now - self.link.last_read < interval:
                continue
            self.peer.ping()
            await self._flush()
            await trio.sleep(timeout)
            if self.link.last_read <= now:
                log.info("inbound h1-over-h2 peer did not answer a PING")
                self.done.set()
                return

    async def _drain_on_shutdown(self) -> None:
        await self.context.lifecycle.draining.wait()
        if not self.closing:
            self.closing = True
            self.peer.goaway(self.peer.highest_remote)
            await self._flush()
        if not self.streams:
            self.done.set()
