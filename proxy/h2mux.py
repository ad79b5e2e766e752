"""HTTP/2 to a discovered destination, routed per stream: each request of a client connection gets
its own endpoint (P2C over peak-EWMA), profile route, retries and timeout.

Theory of operation. ``serve_h2_mesh`` resolves the connection's original destination with the
outbound mesh client; unknown to discovery, the connection takes the paired frame relay of
``proxy/http2.py`` to its original address (the relay is cheaper and exact where one upstream
suffices). Known, a ``_Mux`` terminates HTTP/2 on both sides with ``proxy.h2peer.Peer`` (a small
sans-IO endpoint: framing, HPACK decode, flow control, SETTINGS/PING/GOAWAY) and moves streams:

- the client's HEADERS (decoded once) start a ``MuxStream`` and its attempts (in a task of
  their own when they must wait): pick (waiting up to the failfast timeout), an upstream HTTP/2
  connection to that endpoint (one per endpoint for the whole process, shared by every client
  connection, mTLS through the connector; more when the peer's concurrency limit is reached:
  ``proxy/h2upstream.py``), a new upstream stream id, the header block re-encoded;
- the rest is event driven in the client's reader and the upstreams' (which hand each stream's
  events to its client connection): DATA and trailers are pumped per stream under both peers'
  windows (``proxy/h2stream.py``); RST_STREAM crosses both ways;
- the upstream's final response head is reported to the balancer (``attempts.finished``); a
  ``Retry`` answer (5xx on a retryable route with a complete body within the retry buffer, or a
  stream the upstream refused or never processed: RST_STREAM REFUSED_STREAM, above a GOAWAY's
  last stream, a connection that broke before the head) resets that upstream stream and tries
  another endpoint; otherwise the head goes to the client and the stream is committed;
- the route timeout covers the whole exchange (504 ``route_timeout`` before the head, RST_STREAM
  after); no endpoint: 503 ``no_endpoints`` / ``all_endpoints_ejected`` on that stream.

Draining (SIGTERM) sends the client a GOAWAY and closes once the streams are done. Upstream
connections to endpoints discovery removed take no new streams and are closed when idle.

The modules, each building on the one before: ``proxy/h2muxstate.py`` (the connection's state,
how a stream ends, the proxy's own error answers, writing), ``proxy/h2attempts.py`` (a stream's
target, picks, upstream stream and retries), ``proxy/h2responses.py`` (what the shared upstream
connections' readers hand the connection: responses, resets, GOAWAY) and this one (the entry
point and the client connection: its reader, keepalive and draining).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

import trio

from proxy.balance import Outcome
from proxy.context import ProxyContext, Route
from proxy.errors import ProxyError, unwrap_groups
from proxy.h2peer import (
    CANCEL,
    MAX_CONCURRENT,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Data,
    GoAwayReceived,
    Headers,
    PeerError,
    PeerEvent,
    Reset,
    WindowOpened,
)
from proxy.h2responses import MuxResponses
from proxy.h2stream import MuxStream, forwardable
from proxy.http2 import serve_http2
from proxy.net import Conn, format_address

__all__ = ["serve_h2_mesh"]

log = logging.getLogger(__name__)

_MAX_STREAM_ID: Final = 2**31 - 1


async def serve_h2_mesh(client: Conn, prefix: bytes, route: Route, context: ProxyContext) -> None:
    """An outbound HTTP/2 connection: per stream to a discovered destination, else relayed."""
    assert context.outbound is not None
    if not context.settings.outbound_http2_per_stream:
        await _serve_per_connection(client, prefix, route, context)
        return
    target = await context.outbound.resolve(format_address(route.target), http=True)
    if target is None:
        await serve_http2(client, prefix, route, context)
        return
    target.users += 1
    try:
        await _Mux(client, target, context).run(prefix)
    finally:
        target.users -= 1
        target.last_used = trio.current_time()


async def _serve_per_connection(
    client: Conn, prefix: bytes, route: Route, context: ProxyContext
) -> None:
    """``MESHLET_PROXY_OUTBOUND_HTTP2_PER_STREAM=false``: one endpoint for the whole connection
    (a ``Lease``), its frames relayed."""
    assert context.outbound is not None
    lease = await context.outbound.lease(route.target)
    if lease is not None:
        route = dataclasses.replace(route, connector=lease.connect, dst_labels=lease.dst_labels)
    try:
        await serve_http2(client, prefix, route, context)
    finally:
        if lease is not None:
            lease.finish()


class _Mux(MuxResponses):
    """One client connection: its reader, keepalive and draining."""

    async def run(self, prefix: bytes) -> None:
        self.down.peer.initiate()
        try:
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._client_loop, prefix)
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._drain_on_shutdown)
                    nursery.start_soon(self._keepalive)
                    await self.done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            for stream in list(self.streams.values()):
                self._abandon(stream, Outcome.CANCELLED)
            self.pool.kick_all()  # the resets of the streams left
        await self._close_client()

    async def _close_client(self) -> None:
        """Half-close, then read until the client closes too (so the last frames are not lost
        to a TCP reset), bounded by the keepalive timeout."""
        with trio.move_on_after(self.context.settings.http2_keepalive_timeout):
            try:
                await self.down.flush()
                await self.down.conn.send_eof()
                while await self.down.conn.receive():
                    pass
            except ProxyError:
                pass

    # -- the client connection --------------------------------------------------------------------

    async def _client_loop(self, data: bytes) -> None:
        try:
            while data:
                try:
                    events = self.down.peer.feed(data)
                except PeerError as exc:
                    log.info("outbound h2 client broke the protocol: %s", exc)
                    self.down.peer.goaway(self.down.peer.highest_remote, exc.code)
                    break
                for event in events:
                    self._client_event(event)
                await self._flush()
                if self.closing and not self.streams:
                    break
                data = await self.down.conn.receive()
                self.down.last_read = trio.current_time()
        except ProxyError as exc:
            log.debug("outbound h2 client connection: %s", exc)
        self.done.set()

    def _client_event(self, event: PeerEvent) -> None:  # noqa: PLR0912 - one branch per event
        if isinstance(event, Data):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.down.peer.consumed(event.stream_id, event.flow)
                return
            stream.add_body(event.data, event.flow, event.end_stream, self.limit)
            stream.pump_request(self.down.peer)
        elif isinstance(event, Headers):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._request(event)
            elif not stream.req_ended:
                stream.trailers = forwardable(event.headers)
                stream.req_ended = True
                stream.pump_request(self.down.peer)
        elif isinstance(event, Reset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._client_reset(stream, event.code)
        elif isinstance(event, WindowOpened):
            if event.stream_id == 0:
                for stream in list(self.streams.values()):
                    if stream.committed:
                        self._pump_response(stream)
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.committed:
                    self._pump_response(stream)
        elif isinstance(event, GoAwayReceived):
            self.closing = True

    def _request(self, event: Headers) -> None:
        method = path = authority = b""
        for name, value in event.headers:
            if name[:1] != b":":
                if name == b"host" and not authority:
                    authority = value
                continue
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        if not method or (not path and method != b"CONNECT"):
            self.down.peer.reset(event.stream_id, PROTOCOL_ERROR)
            return
        if len(self.streams) >= MAX_CONCURRENT:  # what we advertised: the client must wait
            self.down.peer.reset(event.stream_id, REFUSED_STREAM)
            return
        stream = MuxStream(
            event.stream_id,
            forwardable(event.headers),
            method=method,
            path=path,
            authority=authority,
            end_stream=event.end_stream,
            now=self.down.last_read,  # this read's time
        )
        stream.owner = self
        self.streams[event.stream_id] = stream
        self._start(stream)

    def _client_reset(self, stream: MuxStream, code: int) -> None:
        stream.cancelled = True
        if stream.up is not None:
            stream.up.peer.reset(stream.up_id, code if code != NO_ERROR else CANCEL)
        if stream.tap is not None:
            stream.tap.end(error="reset")
            stream.tap = None
        if stream.committed:
            self.metrics.response_end(stream.labels, stream.status, "failure")
        self._finish(stream, Outcome.CANCELLED)

    # -- keepalive, draining ----------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """A PING to a client silent for the keepalive interval; still silent after the
        keepalive timeout, the connection ends (the shared upstreams keep their own watch)."""
        settings = self.context.settings
        await self.down.until_unanswered_ping(
            settings.http2_keepalive_interval, settings.http2_keepalive_timeout, self._flush
        )
        log.info("outbound h2 client did not answer a PING")
        self.done.set()

    async def _drain_on_shutdown(self) -> None:
        await self.context.lifecycle.draining.wait()
        if not self.closing:
            self.closing = True
            self.down.peer.goaway(_MAX_STREAM_ID)
            await self._flush()
        if not self.streams:
            self.done.set()
