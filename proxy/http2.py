"""HTTP/2 proxying: each client connection is paired with one upstream HTTP/2 connection and
their frames are relayed (``proxy/h2relay.py``), observed for metrics, never re-encoded.

Theory of operation. One reader task per socket feeds the bytes it reads to that direction's
``FrameScanner``, appends what the scanner returns to the other side's output buffer and writes
it before reading again, so a slow receiver slows its sender (the peers' own HTTP/2 flow control
and TCP backpressure; the proxy holds one read buffer per direction). Streams are records in a
dict, not tasks. Writes: ``_flush`` sends a side's buffer; a flag (not a lock) makes the task
already writing pick up bytes queued meanwhile, keeping frames in order.

The proxy's own frames go in at frame boundaries only:

- keepalive: a side silent for the keepalive interval gets a PING (its ACK is consumed by the
  scanner); still silent after the keepalive timeout, the pair closes;
- drain (SIGTERM): the client gets GOAWAY with the maximum stream id (RFC 9113 6.8's shutdown
  notice: nothing in flight is refused), streams finish, then the pair closes;
- the upstream's own GOAWAY reaches the client unchanged; once the streams it allowed are done
  the pair closes;
- the upstream closing or resetting the connection: each open stream without a response head gets
  a 502 ``meshlet-proxy-error: upstream_closed``, the others RST_STREAM, and the client a GOAWAY.

If the upstream cannot be reached at all, ``proxy/h2fail.py`` answers every request with the
cause (502/504 and ``meshlet-proxy-error``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

from proxy.context import INBOUND, ProxyContext, Route
from proxy.errors import ProxyError, UpstreamClosed, unwrap_groups
from proxy.h2fail import serve_h2_errors
from proxy.h2relay import (
    Event,
    FrameScanner,
    GoAway,
    RelayError,
    RequestStarted,
    ResponseEnded,
    ResponseStarted,
    Settings,
    StreamReset,
    error_response,
    goaway,
    ping,
    rst_stream,
)
from proxy.metrics import classify
from proxy.mtls import inbound_request_headers
from proxy.net import Conn
from proxy.tap import TapStream, next_connection_id

__all__ = ["serve_http2"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_STREAM_ID: Final = 2**31 - 1
_INTERNAL_ERROR: Final = 0x2
_PROTOCOL_ERROR: Final = 0x1


class _Side:
    __slots__ = ("io", "last_read", "out", "scope", "sending", "waiting")

    def __init__(self, io: Conn) -> None:
        self.io = io
        self.out = bytearray()
        self.sending = False
        self.waiting = False  # blocked in a read: the only place ``run`` may cancel it
        self.scope = trio.CancelScope()
        self.last_read = trio.current_time()


class _Stream:
    __slots__ = ("labels", "started", "status", "tap")

    def __init__(self, labels: str, started: float) -> None:
        self.labels = labels
        self.started = started
        self.status = 0
        self.tap: TapStream | None = None


async def serve_http2(client: Conn, prefix: bytes, route: Route, context: ProxyContext) -> None:
    """Proxy an HTTP/2 (prior knowledge) client connection to ``route``'s upstream."""
    try:
        upstream = await route.connect(context.metrics)
    except ProxyError as exc:
        log.info("%s h2 upstream unavailable: %s", route.direction, exc)
        await serve_h2_errors(
            client,
            prefix,
            exc,
            direction=route.direction,
            metrics=context.metrics,
        )
        return
    try:
        await _Relay(_Side(client), _Side(upstream), route, context).run(prefix)
    finally:
        upstream.close()


def _client_id_rewrite(
    client_id: str | None,
) -> Callable[[list[tuple[bytes, bytes]], bool], list[tuple[bytes, bytes]]]:
    def rewrite(headers: list[tuple[bytes, bytes]], starts: bool) -> list[tuple[bytes, bytes]]:
        return inbound_request_headers(headers, client_id if starts else None)

    return rewrite


class _Relay:
    def __init__(self, down: _Side, up: _Side, route: Route, context: ProxyContext) -> None:
        self.down, self.up = down, up
        self.direction = route.direction
        self.metrics = context.metrics
        self.context = context
        # client → upstream; inbound, meshlet-client-id is only ever the identity proven by mTLS
        rewrite = _client_id_rewrite(down.io.peer_id) if self.direction == INBOUND else None
        self.requests = FrameScanner(from_client=True, rewrite=rewrite)
        self.responses = FrameScanner(from_client=False)  # upstream → client
        self.streams: dict[int, _Stream] = {}
        self.highest = 0  # highest client stream seen
        self.closing = False  # a GOAWAY went either way, or we drain
        self.done = trio.Event()
        self.waits: set[trio.CancelScope] = set()
        self.tap_conn = next_connection_id()
        self.dst = "" if route.dst_labels is None else route.dst_labels()

    async def run(self, prefix: bytes) -> None:
        await self._relay(self.down, prefix)
        if not self.done.is_set():
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop, self.down)
                    nursery.start_soon(self._read_loop, self.up)
                    nursery.start_soon(self._keepalive)
                    nursery.start_soon(self._drain_on_shutdown)
                    await self.done.wait()
                    for scope in list(self.waits):
                        scope.cancel()
                    for side in (self.down, self.up):
                        if side.waiting:
                            side.scope.cancel()
        await self._flush(self.down)
        await self._flush(self.up)
        await self._close_gracefully(self.down)

    async def _close_gracefully(self, side: _Side) -> None:
        """Half-close, then read until the peer closes too (bounded by the keepalive timeout).

        Closing a socket with unread bytes in it sends a TCP reset, which can destroy the last
        response before the client reads it; reading the peer's final frames avoids that.
        """
        with trio.move_on_after(self.context.settings.http2_keepalive_timeout):
            try:
                await side.io.send_eof()
                while await side.io.receive():
                    pass
            except ProxyError:
                pass  # the peer is gone already

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

    # -- relaying ---------------------------------------------------------------------------------

    async def _read_loop(self, side: _Side) -> None:
        with trio.CancelScope() as side.scope:
            try:
                while not self.done.is_set():
                    side.waiting = True
                    data = await side.io.receive()
                    side.waiting = False
                    if not data:
                        break
                    await self._relay(side, data)
            except ProxyError as exc:
                log.debug("%s h2 connection: %s", self.direction, exc)
            side.waiting = False
            if not self.done.is_set():
                self._peer_closed(side)
                await self._flush(self.down)
                await self._flush(self.up)

    async def _relay(self, side: _Side, data: bytes) -> None:
        side.last_read = trio.current_time()
        from_client = side is self.down
        scanner = self.requests if from_client else self.responses
        target = self.up if from_client else self.down
        try:
            out, events = scanner.feed(data)
        except RelayError as exc:
            log.info("%s h2 %s broke the protocol: %s", self.direction, _who(from_client), exc)
            if from_client:  # tell the client why, if that can be done cleanly
                self.down.out += self.responses.inject(goaway(self.highest, _PROTOCOL_ERROR))
            self.done.set()
            return
        target.out += out
        for event in events:
            self._observe(event, from_client)
        await self._flush(target)
        if self.down.out and target is not self.down:
            await self._flush(self.down)

    def _observe(self, event: Event, from_client: bool) -> None:
        if isinstance(event, RequestStarted):
            self._on_request(event)
        elif isinstance(event, ResponseStarted):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.status = event.status
                latency_ms = (trio.current_time() - stream.started) * 1000
                self.metrics.response_headers(stream.labels, event.status, latency_ms)
                if stream.tap is not None:
                    stream.tap.response_start(event.status)
        elif isinstance(event, ResponseEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                classification = classify(stream.status, event.grpc_status)
                self.metrics.response_end(stream.labels, stream.status, classification)
                if stream.tap is not None:
                    stream.tap.end(grpc_status=event.grpc_status)
                self.requests.forget(event.stream_id)
                self._maybe_done()
        elif isinstance(event, StreamReset):
            self._on_reset(event)
        elif isinstance(event, GoAway):
            self._on_goaway(event, from_client)
        elif isinstance(event, Settings) and event.header_table_size is not None:
            # Each peer's SETTINGS bound the table the *other* peer's encoder may use.
            scanner = self.responses if from_client else self.requests
            size = max(scanner.decoder.max_allowed_table_size, event.header_table_size)
            scanner.decoder.max_allowed_table_size = size

    def _on_reset(self, event: StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            if stream.status:
                self.metrics.response_end(stream.labels, stream.status, "failure")
            if stream.tap is not None:
                stream.tap.end(error="reset")
            self.requests.forget(event.stream_id)
            self._maybe_done()

    def _on_request(self, event: RequestStarted) -> None:
        tls = (self.down if self.direction == INBOUND else self.up).io.tls_labels
        labels = self.metrics.http_labels(self.direction, event.authority, tls, self.dst)
        self.metrics.request(labels)
        stream = self.streams[event.stream_id] = _Stream(labels, trio.current_time())
        self.highest = max(self.highest, event.stream_id)
        if self.context.tap.active:
            stream.tap = self._tap_start(event)

    def _tap_start(self, event: RequestStarted) -> TapStream | None:
        inbound = self.direction == INBOUND
        peer = (self.down if inbound else self.up).io.peer_id
        return self.context.tap.request_start(
            conn=self.tap_conn,
            stream=event.stream_id,
            direction=self.direction,
            method=event.method,
            authority=event.authority,
            path=event.path,
            scheme=event.scheme or b"http",
            src=self.down.io.stream.socket.getpeername()[:2],
            dst=self.up.io.stream.socket.getpeername()[:2],
            tls="true" if peer else "no_identity",
            client_id=(peer or "") if inbound else "",
            server_id="" if inbound else (peer or ""),
        )

    def _on_goaway(self, event: GoAway, from_client: bool) -> None:
        self.closing = True
        if not from_client:
            log.info(
                "%s upstream sent GOAWAY (last stream %s)", self.direction, event.last_stream_id
            )
            for stream_id in [s for s in self.streams if s > event.last_stream_id]:
                dropped = self.streams.pop(stream_id)  # never processed: the client retries it
                if dropped.tap is not None:
                    dropped.tap.end(error="refused")
        self._maybe_done()

    def _peer_closed(self, side: _Side) -> None:
        if side is self.up and self.responses.at_boundary:
            for stream_id, stream in self.streams.items():
                if stream.status:
                    self.down.out += rst_stream(stream_id, _INTERNAL_ERROR)
                    self.metrics.response_end(stream.labels, stream.status, "failure")
                else:
                    exc = UpstreamClosed("upstream closed the connection")
                    self.down.out += error_response(stream_id, exc.status, exc.slug.encode())
                    self.metrics.response_headers(stream.labels, exc.status, 0.0)
                    self.metrics.response_end(stream.labels, exc.status, "failure")
                    if stream.tap is not None:
                        stream.tap.response_start(exc.status)
                if stream.tap is not None:
                    stream.tap.end(error="upstream_closed")
            if not self.closing:
                self.down.out += goaway(self.highest)
        self.streams.clear()
        self.done.set()

    def _maybe_done(self) -> None:
        if self.closing and not self.streams:
            self.done.set()

    # -- the proxy's own frames -------------------------------------------------------------------

    async def _drain_on_shutdown(self) -> None:
        if await self._until_done(self._wait_draining):
            if not self.closing:
                self.closing = True
                self.down.out += self.responses.inject(goaway(_MAX_STREAM_ID))
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
                # A frame to the client travels with the upstream's frames, and vice versa.
                scanner = self.responses if side is self.down else self.requests
                side.out += scanner.inject(ping())
                await self._flush(side)
            if not await self._until_done(functools.partial(_sleep, timeout)):
                return
            for side in silent:
                if side.last_read <= now:
                    who = _who(side is self.down)
                    log.info("%s h2 %s did not answer a PING", self.direction, who)
                    self.done.set()
                    return

    async def _flush(self, side: _Side) -> None:
        if side.sending:
            return  # the task already sending will pick these bytes up
        side.sending = True
        try:
            while side.out:
                data = bytes(side.out)
                side.out.clear()
                await side.io.send(data)
        finally:
            side.sending = False


async def _sleep(seconds: float) -> bool:
    await trio.sleep(seconds)
    return True


def _who(client: bool) -> str:
    return "client" if client else "upstream"
