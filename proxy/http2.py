"""HTTP/2 proxying: each client connection is paired with one upstream HTTP/2 connection.

Theory of operation. Two sans-IO ``H2Connection`` objects (``proxy/h2conn.py``) sit between two
sockets; one reader task per socket feeds its connection and handles the resulting events inline,
so a request costs no task of its own: a stream is a small ``_Stream`` record holding its two
``Flow`` s (request: client → upstream, response: upstream → client). Streams keep their order
and map one to one (client stream id ↔ upstream stream id).

Flow control end to end: data received on one side is sent on the other only as far as the
receiving peer's window allows; the rest waits in the flow's queue, and the sender is credited
(``acknowledge_received_data`` → WINDOW_UPDATE) only for bytes actually forwarded. So what the
proxy holds per stream never exceeds the window it advertised (64 KiB), and a slow reader slows
its writer down through HTTP/2 itself. Trailers (gRPC status) and end-of-stream wait behind the
queued data. A RST_STREAM from either side resets the other half.

Writes: ``_flush`` sends whatever h2 has buffered for a side; a flag (not a lock) makes the one
task already writing pick up data queued meanwhile, which keeps frames in order without an extra
scheduling point per write.

Shutdown and GOAWAY: when the upstream sends GOAWAY, streams past its last-stream-id are refused
to the client (REFUSED_STREAM, safe to retry) and the client receives a GOAWAY naming the last
stream the proxy will finish; the same happens when the proxy drains. The pair closes once no
stream is left. A PING goes to each side that has been silent for the keepalive interval; a peer
that stays silent for the keepalive timeout after it is considered dead and the pair closes.

If the upstream cannot be reached, every request gets a 502/504 with ``meshlet-proxy-error``
(the cause's slug) and the client a GOAWAY, so its next connection tries again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import h2.events as ev
import h2.exceptions
import trio
from h2.errors import ErrorCodes

from proxy.context import ProxyContext, Route
from proxy.errors import ProxyError, UpstreamClosed, unwrap_groups
from proxy.h2conn import (
    ProxyH2Connection,
    authority_of,
    goaway_frame,
    grpc_status_of,
    new_connection,
    reset_quietly,
    send_error_response,
    status_of,
)
from proxy.h2fail import serve_h2_errors
from proxy.h2flow import Flow, Stream, pump
from proxy.metrics import classify
from proxy.net import Conn

__all__ = ["serve_http2"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_REFUSED: Final = ErrorCodes.REFUSED_STREAM
_PING: Final = b"meshlet!"


class _Side:
    __slots__ = ("extra", "h2", "io", "last_read", "scope", "sending", "waiting")

    def __init__(self, h2c: ProxyH2Connection, io: Conn) -> None:
        self.h2 = h2c
        self.io = io
        self.sending = False
        self.last_read = trio.current_time()
        self.extra = b""  # raw frames to send after h2's (a graceful GOAWAY)
        self.waiting = False  # blocked in a read (the only place ``run`` may cancel it)
        self.scope = trio.CancelScope()


async def serve_http2(client: Conn, prefix: bytes, route: Route, context: ProxyContext) -> None:
    """Proxy an HTTP/2 (prior knowledge) client connection to ``route``'s upstream."""
    down = _Side(new_connection(client_side=False), client)
    try:
        upstream = await route.connect(context.metrics)
    except ProxyError as exc:
        log.info("%s h2 upstream unavailable: %s", route.direction, exc)
        await serve_h2_errors(
            down.h2, client, prefix, exc, direction=route.direction, metrics=context.metrics
        )
        return
    try:
        up = _Side(new_connection(client_side=True), upstream)
        await _Pair(down, up, route, context).run(prefix)
    finally:
        upstream.close()


class _Pair:
    def __init__(self, down: _Side, up: _Side, route: Route, context: ProxyContext) -> None:
        self.down, self.up = down, up
        self.direction = route.direction
        self.metrics = context.metrics
        self.context = context
        self.by_down: dict[int, Stream] = {}
        self.by_up: dict[int, Stream] = {}
        self.last_down_id = 0  # highest client stream accepted; 0 until the first
        self.goaway_sent = False
        self.upstream_last_id: int | None = None  # set by the upstream's GOAWAY
        self.client_done = False  # the client sent GOAWAY
        self.done = trio.Event()
        self.waits: set[trio.CancelScope] = set()
        self.down_handlers = self._handlers(down)
        self.up_handlers = self._handlers(up)

    async def run(self, prefix: bytes) -> None:
        await self._receive(self.down, prefix)
        if not self.done.is_set():
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop, self.down)
                    nursery.start_soon(self._read_loop, self.up)
                    nursery.start_soon(self._keepalive)
                    nursery.start_soon(self._drain_on_shutdown)
                    await self.done.wait()
                    # Interrupt only the waits: a task that is writing finishes its write, so
                    # no frame h2 already handed over is lost.
                    for scope in list(self.waits):
                        scope.cancel()
                    for side in (self.down, self.up):
                        if side.waiting:
                            side.scope.cancel()
        await self._flush_all()

    async def _until_done(self, wait: Callable[[], Awaitable[T]]) -> T | None:
        """``await wait()``, or ``None`` once the pair is done."""
        if self.done.is_set():
            return None
        with trio.CancelScope() as scope:
            self.waits.add(scope)
            try:
                return await wait()
            finally:
                self.waits.discard(scope)
        return None

    # -- reading ----------------------------------------------------------------------------------

    async def _read_loop(self, side: _Side) -> None:
        # One cancel scope for the task's life (cheaper than one per read); ``run`` cancels it
        # only while the task is waiting for bytes, never in the middle of a write.
        with trio.CancelScope() as side.scope:
            try:
                while not self.done.is_set():
                    side.waiting = True
                    data = await side.io.receive()
                    side.waiting = False
                    if not data:
                        break
                    await self._receive(side, data)
            except ProxyError as exc:
                log.debug("%s h2 connection: %s", self.direction, exc)
            side.waiting = False
            if not self.done.is_set():
                self._peer_closed(side)
                await self._flush_all()

    async def _receive(self, side: _Side, data: bytes) -> None:
        side.last_read = trio.current_time()
        try:
            events = side.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("%s h2 protocol error from the %s: %s", self.direction, _who(self, side), exc)
            await self._flush(side)  # h2 queued a GOAWAY naming the error
            self.done.set()
            return
        handlers = self.down_handlers if side is self.down else self.up_handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        await self._flush_all()

    def _peer_closed(self, side: _Side) -> None:
        if side is self.down:
            self.done.set()  # nobody is left to answer
            return
        for stream in list(self.by_down.values()):
            if stream.status:
                self._reset_down(stream, ErrorCodes.INTERNAL_ERROR)
            else:
                self._error_response(stream, UpstreamClosed("upstream closed the connection"))
        self._goaway_down()
        self._maybe_done()

    # -- events -----------------------------------------------------------------------------------
    # One table per side maps h2 event types to handlers (cheaper than an isinstance chain).
    # Client-side events drive request flows, upstream-side events response flows.

    def _handlers(self, side: _Side) -> dict[type[ev.Event], Callable[[Any], None]]:
        client = side is self.down
        streams = self.by_down if client else self.by_up
        handlers: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.DataReceived: functools.partial(self._on_data, side, streams, client),
            ev.StreamEnded: functools.partial(self._on_end, streams, client),
            ev.TrailersReceived: functools.partial(self._on_trailers, streams, client),
            ev.StreamReset: functools.partial(self._on_reset, streams, client),
            # A window opened on this side: resume the flows sending *to* it.
            ev.WindowUpdated: functools.partial(self._unblock, streams, not client),
            ev.RemoteSettingsChanged: functools.partial(self._unblock, streams, not client),
        }
        if client:
            handlers[ev.RequestReceived] = self._open
            handlers[ev.ConnectionTerminated] = self._on_client_goaway
        else:
            handlers[ev.ResponseReceived] = self._on_response
            handlers[ev.InformationalResponseReceived] = self._on_informational
            handlers[ev.ConnectionTerminated] = self._on_upstream_goaway
        return handlers

    def _open(self, event: ev.RequestReceived) -> None:
        down_id = event.stream_id
        headers = event.headers
        up_h2 = self.up.h2
        if self.goaway_sent or self.upstream_last_id is not None:
            reset_quietly(self.down.h2, down_id, _REFUSED)
            return
        labels = self.metrics.http_labels(self.direction, authority_of(headers))
        self.metrics.request(labels)
        up_id = up_h2.get_next_available_stream_id()
        try:
            up_h2.send_headers(up_id, headers, end_stream=event.stream_ended is not None)
        except h2.exceptions.TooManyStreamsError:
            reset_quietly(self.down.h2, down_id, _REFUSED)
            return
        self.last_down_id = down_id
        request = Flow(self.down.h2, down_id, self.up.h2, up_id)
        request.ended = request.finished = event.stream_ended is not None
        response = Flow(self.up.h2, up_id, self.down.h2, down_id)
        stream = Stream(request, response, labels, trio.current_time())
        self.by_down[down_id] = stream
        self.by_up[up_id] = stream

    def _on_data(
        self, side: _Side, streams: dict[int, Stream], client: bool, event: ev.DataReceived
    ) -> None:
        stream = streams.get(event.stream_id)
        if stream is None:  # reset or refused: credit the bytes so the connection keeps going
            side.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        flow = stream.request if client else stream.response
        if event.data or event.flow_controlled_length:
            # (bytes, padding to credit once the bytes are forwarded)
            flow.pending.append((event.data, event.flow_controlled_length - len(event.data)))
        if event.stream_ended is not None:
            flow.ended = True
        self._pump(flow, stream)

    def _on_end(self, streams: dict[int, Stream], client: bool, event: ev.StreamEnded) -> None:
        stream = streams.get(event.stream_id)
        if stream is not None:
            flow = stream.request if client else stream.response
            if not flow.ended:
                flow.ended = True
                self._pump(flow, stream)

    def _on_trailers(
        self, streams: dict[int, Stream], client: bool, event: ev.TrailersReceived
    ) -> None:
        stream = streams.get(event.stream_id)
        if stream is not None:
            flow = stream.request if client else stream.response
            flow.trailers = list(event.headers)
            if not client:
                stream.grpc_status = grpc_status_of(event.headers, stream.grpc_status)
            self._pump(flow, stream)

    def _on_reset(self, streams: dict[int, Stream], client: bool, event: ev.StreamReset) -> None:
        stream = streams.get(event.stream_id)
        if stream is None:
            return
        self._forget(stream)
        if client:
            reset_quietly(self.up.h2, stream.request.dst_id, event.error_code)
        elif not stream.status and event.error_code == _REFUSED:
            reset_quietly(self.down.h2, stream.request.src_id, _REFUSED)  # safe to retry
        else:
            reset_quietly(self.down.h2, stream.request.src_id, event.error_code)
            if stream.status:
                self.metrics.response_end(stream.labels, stream.status, "failure")
        self._maybe_done()

    def _on_response(self, event: ev.ResponseReceived) -> None:
        stream = self.by_up.get(event.stream_id)
        if stream is None:
            return
        headers = event.headers
        stream.status = status_of(headers)
        stream.grpc_status = grpc_status_of(headers, None)
        latency_ms = (trio.current_time() - stream.started) * 1000
        self.metrics.response_headers(stream.labels, stream.status, latency_ms)
        ended = event.stream_ended is not None
        self.down.h2.send_headers(stream.response.dst_id, headers, end_stream=ended)
        if ended:
            stream.response.ended = stream.response.finished = True
            self._finish(stream)

    def _on_informational(self, event: ev.InformationalResponseReceived) -> None:
        stream = self.by_up.get(event.stream_id)
        if stream is not None:
            self.down.h2.send_headers(stream.response.dst_id, event.headers)

    def _on_client_goaway(self, event: ev.ConnectionTerminated) -> None:
        self.client_done = True
        self._maybe_done()

    def _on_upstream_goaway(self, event: ev.ConnectionTerminated) -> None:
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self.upstream_last_id = last
        log.info("%s upstream sent GOAWAY (last stream %s)", self.direction, last)
        for up_id, stream in list(self.by_up.items()):
            if up_id > last:  # never processed upstream: the client may safely retry
                self._forget(stream)
                reset_quietly(self.down.h2, stream.request.src_id, _REFUSED)
        self._goaway_down()
        self._maybe_done()

    # -- moving data ------------------------------------------------------------------------------

    def _pump(self, flow: Flow, stream: Stream) -> None:
        if pump(flow) and flow is stream.response:
            self._finish(stream)

    def _unblock(
        self,
        streams: dict[int, Stream],
        response: bool,
        event: ev.WindowUpdated | ev.RemoteSettingsChanged,
    ) -> None:
        stream_id = getattr(event, "stream_id", 0)
        targets = [streams[stream_id]] if stream_id in streams else list(streams.values())
        for stream in targets:
            flow = stream.response if response else stream.request
            if flow.pending:
                self._pump(flow, stream)

    def _finish(self, stream: Stream) -> None:
        """The response is complete: record it and forget the stream."""
        self._forget(stream)
        self.metrics.response_end(
            stream.labels, stream.status, classify(stream.status, stream.grpc_status)
        )
        if not stream.request.finished:
            # Response complete before the request body: the rest of the upload is not needed.
            reset_quietly(self.up.h2, stream.request.dst_id, ErrorCodes.NO_ERROR)
            reset_quietly(self.down.h2, stream.request.src_id, ErrorCodes.NO_ERROR)
        self._maybe_done()

    # -- errors, shutdown -------------------------------------------------------------------------

    def _forget(self, stream: Stream) -> None:
        self.by_down.pop(stream.request.src_id, None)
        self.by_up.pop(stream.request.dst_id, None)

    def _reset_down(self, stream: Stream, error_code: int) -> None:
        self._forget(stream)
        reset_quietly(self.down.h2, stream.request.src_id, error_code)
        if stream.status:
            self.metrics.response_end(stream.labels, stream.status, "failure")

    def _error_response(self, stream: Stream, exc: ProxyError) -> None:
        self._forget(stream)
        send_error_response(self.down.h2, stream.request.src_id, exc)
        self.metrics.response_headers(stream.labels, exc.status, 0.0)
        self.metrics.response_end(stream.labels, exc.status, "failure")

    def _goaway_down(self) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self.down.extra += goaway_frame(self.last_down_id)

    def _maybe_done(self) -> None:
        if not self.by_down and (self.goaway_sent or self.client_done):
            self.done.set()

    async def _drain_on_shutdown(self) -> None:
        if await self._until_done(self._wait_draining):
            self._goaway_down()
            self._maybe_done()
            await self._flush(self.down)

    async def _wait_draining(self) -> bool:
        await self.context.lifecycle.draining.wait()
        return True

    async def _keepalive(self) -> None:
        interval = self.context.settings.http2_keepalive_interval
        timeout = self.context.settings.http2_keepalive_timeout
        while await self._until_done(functools.partial(_sleep, interval)):
            now = trio.current_time()
            silent = [side for side in (self.down, self.up) if now - side.last_read >= interval]
            if not silent:
                continue
            for side in silent:
                side.h2.ping(_PING)
            await self._flush_all()
            if not await self._until_done(functools.partial(_sleep, timeout)):
                return
            for side in silent:
                if side.last_read <= now:
                    log.info("%s h2 %s did not answer a PING", self.direction, _who(self, side))
                    self.done.set()
                    return

    async def _flush(self, side: _Side) -> None:
        if side.sending:
            return  # the task already sending will pick this data up
        side.sending = True
        try:
            while True:
                data = side.h2.data_to_send()
                if side.extra:
                    data, side.extra = data + side.extra, b""
                if not data:
                    return
                await side.io.send(data)
        finally:
            side.sending = False

    async def _flush_all(self) -> None:
        await self._flush(self.up)
        await self._flush(self.down)


async def _sleep(seconds: float) -> bool:
    await trio.sleep(seconds)
    return True


def _who(pair: _Pair, side: _Side) -> str:
    return "client" if side is pair.down else "upstream"
