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
- one task per stream (``proxy/h1gatewaystream.py``): an application connection (an idle
  keep-alive one of this gateway connection, or a new one to ``127.0.0.1:<port>``), the head,
  then the request body as it arrives alongside the response: 1xx dropped (a 101 is a 502),
  the final head as HEADERS, each body piece as DATA within the stream's send window (the task
  reads the application again only once what it read left: at most a window per stream). A
  finished response is written by its own task, shielded, when the connection's writer is idle
  (``_send_soon``: the first of a burst goes at once), else by the writer, which gathers what one
  scheduler pass queued into one write. The
  application connection goes back to the idle list when the exchange completed both ways (the
  whole ``content-length`` body written counts, before a trailing END_STREAM), the request was
  HTTP/1.1 and the response was not delimited by the connection's end; a connection that
  broke, was reset or whose stream was reset is closed (aborted). Idle ones are kept at most
  ``MAX_IDLE_APP_CONNECTIONS`` and for the HTTP/1 pool idle timeout
  (``MESHLET_PROXY_HTTP1_POOL_IDLE_TIMEOUT``). A reused one the application closed while idle
  gets an idempotent bodiless request once more on a new one;
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
from collections.abc import Awaitable, Callable

import trio

from proxy.context import INBOUND, ProxyContext, Route
from proxy.errors import ClientProtocolError, ProxyError
from proxy.h1gatewaystream import AppPool, GatewayStream, StreamExchange
from proxy.h1h2convert import RejectedStream, stream_request
from proxy.h2peer import (
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
from proxy.metrics import classify
from proxy.net import Conn
from proxy.tap import next_connection_id

__all__ = ["serve_h1_gateway"]

log = logging.getLogger(__name__)


async def serve_h1_gateway(
    client: Conn, prefix: bytes, route: Route, context: ProxyContext
) -> None:
    """Serve the HTTP/2 connection ``client`` (its first bytes ``prefix``) to ``route``'s app."""
    await _Gateway(client, route, context).run(prefix)


class _Gateway(StreamExchange):
    """One gateway connection: the peer, its streams, the idle application connections."""

    def __init__(self, client: Conn, route: Route, context: ProxyContext) -> None:
        self.client = client
        self.link = Link(client, Peer(client_side=False))
        self.peer = self.link.peer
        self.route = route
        self.context = context
        self.settings = context.settings
        self.metrics = context.metrics
        self.streams: dict[int, GatewayStream] = {}
        self.pool = AppPool(route, context.metrics, context.settings.http1_pool_idle_timeout)
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
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._keepalive)
                nursery.start_soon(self._drain_on_shutdown)
                nursery.start_soon(self.pool.expire)
                await self.done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.pool.close()
        with trio.move_on_after(self.settings.http2_keepalive_timeout):
            try:  # half-close, then read until the peer closes, so the last frames arrive
                await self.link.flush()
                await self.client.send_eof()
                while await self.client.receive():
                    pass
            except ProxyError:
                pass

    async def _flush(self) -> None:
        await self._sending(self.link.flush)

    def _kick(self) -> None:
        self.link.kick()

    async def _send_soon(self) -> None:
        await self._sending(self.link.send_soon)

    async def _sending(self, send: Callable[[], Awaitable[None]]) -> None:
        try:
            await send()
        except ProxyError as exc:
            log.debug("inbound h1-over-h2 connection: %s", exc)
            self.done.set()

    async def _write_loop(self) -> None:
        """Sends what the stream tasks queue (the reader sends what its events queued)."""
        while True:
            await self.link.wait_for_bytes()
            await self._flush()

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
        stream = GatewayStream(sid, request, event.end_stream, labels)
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

    def _finish(self, stream: GatewayStream) -> None:
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

    # -- keepalive, draining ---------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """A PING to a peer silent for the keepalive interval; still silent after the
        keepalive timeout, the connection ends."""
        settings = self.settings
        await self.link.until_unanswered_ping(
            settings.http2_keepalive_interval, settings.http2_keepalive_timeout, self._flush
        )
        log.info("inbound h1-over-h2 peer did not answer a PING")
        self.done.set()

    async def _drain_on_shutdown(self) -> None:
        await self.context.lifecycle.draining.wait()
        if not self.closing:
            self.closing = True
            self.peer.goaway(self.peer.highest_remote)
            await self._flush()
        if not self.streams:
            self.done.set()
