"""HTTP/2 to a discovered destination, routed per stream: each request of a client connection gets
its own endpoint (P2C over peak-EWMA), profile route, retries and timeout.

Theory of operation. ``serve_h2_mesh`` resolves the connection's original destination with the
outbound mesh client; unknown to discovery, the connection takes the paired frame relay of
``proxy/http2.py`` to its original address (the relay is cheaper and exact where one upstream
suffices). Known, a ``_Mux`` terminates HTTP/2 on both sides with ``proxy.h2peer.Peer`` (a small
sans-IO endpoint: framing, HPACK decode, flow control, SETTINGS/PING/GOAWAY) and moves streams:

- the client's HEADERS (decoded once) start a ``MuxStream`` and a task for its attempts: pick
  (waiting up to the failfast timeout), an upstream HTTP/2 connection to that endpoint (one per
  endpoint per client connection, mTLS through the connector; more when the peer's concurrency
  limit is reached), a new upstream stream id, the header block re-encoded as literals;
- the rest is event driven in the two readers: DATA and trailers are pumped per stream under
  both peers' windows (``proxy/h2stream.py``); RST_STREAM crosses both ways;
- the upstream's final response head is reported to the balancer (``attempts.finished``); a
  ``Retry`` answer (5xx on a retryable route with a complete body within the retry buffer, or a
  stream the upstream refused or never processed: RST_STREAM REFUSED_STREAM, above a GOAWAY's
  last stream, a connection that broke before the head) resets that upstream stream and tries
  another endpoint; otherwise the head goes to the client and the stream is committed;
- the route timeout covers the whole exchange (504 ``route_timeout`` before the head, RST_STREAM
  after); no endpoint: 503 ``no_endpoints`` / ``all_endpoints_ejected`` on that stream.

Draining (SIGTERM) sends the client a GOAWAY and closes once the streams are done. Upstream
connections to endpoints discovery removed take no new streams and are closed when idle.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

import trio

from proxy.balance import GiveUp, Outcome, Pick, Retry, key_of
from proxy.context import OUTBOUND, ProxyContext, Route
from proxy.discovery import Endpoint
from proxy.errors import ProxyError, UpstreamClosed, UpstreamError, unwrap_groups
from proxy.h2peer import (
    CANCEL,
    MAX_CONCURRENT,
    NO_ERROR,
    PROTOCOL_ERROR,
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
from proxy.h2stream import MuxStream, forwardable, grpc_status, status_of
from proxy.h2upstream import Link, Upstream, Upstreams
from proxy.http2 import serve_http2
from proxy.metrics import classify
from proxy.net import Conn, format_address
from proxy.outbound import RouteTimeout, Target, no_endpoint_error
from proxy.tap import next_connection_id

__all__ = ["serve_h2_mesh"]

log = logging.getLogger(__name__)

_MAX_STREAM_ID: Final = 2**31 - 1
_INTERNAL_ERROR: Final = 0x2


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


class _Mux:
    def __init__(self, client: Conn, target: Target, context: ProxyContext) -> None:
        self.down = Link(client, Peer(client_side=False))
        self.target = target
        self.context = context
        assert context.outbound is not None
        self.outbound = context.outbound
        self.metrics = context.metrics
        self.limit = context.settings.outbound_retry_buffer_bytes
        self.streams: dict[int, MuxStream] = {}
        self.ups = Upstreams()
        self.closing = False
        self.done = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.tap_conn = next_connection_id()

    async def run(self, prefix: bytes) -> None:
        self.down.peer.initiate()
        try:
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._client_loop, prefix)
                    nursery.start_soon(self._drain_on_shutdown)
                    nursery.start_soon(self._keepalive)
                    await self.done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            for stream in list(self.streams.values()):
                self._abandon(stream, Outcome.CANCELLED)
            self.ups.close_all()
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
            now=trio.current_time(),
        )
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

    # -- attempts ---------------------------------------------------------------------------------

    def _known_target(self, authority: bytes) -> Target | None:
        """The stream's target when it needs no wait: the Service its ``:authority`` names
        (resolved and with its profile), else the connection's; ``None``: resolve first."""
        service = self.outbound.service_authority(authority) if authority else None
        if service is None or service == self.target.authority:
            return self.target
        target = self.outbound.targets.get(service)
        if target is None or not target.ready.is_set() or target.profile is None:
            return None
        return target if target.known else self.target

    def _begin(self, stream: MuxStream, target: Target) -> None:
        """The stream's target, route and attempts (``_finish`` releases the target)."""
        stream.target = target
        stream.begun = True
        target.users += 1
        attempts = stream.attempts = target.begin(stream.method, stream.path, stream.started)
        if attempts.route.name:
            stream.route_labels = self.metrics.route_labels(
                OUTBOUND, target.authority, attempts.route.name
            )
            self.metrics.route_request(stream.route_labels)

    def _start(self, stream: MuxStream) -> None:
        """Send the stream at once when nothing needs waiting for (target, endpoint and its
        connection at hand, no route timeout to time): no task, and its HEADERS leave with the
        same write as the other streams of this read. Otherwise a task does it."""
        target = self._known_target(stream.authority)
        if target is not None:
            self._begin(stream, target)
            if stream.attempts.deadline is None:
                now = trio.current_time()
                target.sync(now)
                choice = stream.attempts.pick(now)
                if isinstance(choice, Pick):
                    stream.pick, stream.reported = choice, False
                    up = self.ups.with_room(key_of(choice.endpoint))
                    if up is not None:
                        self._open(stream, up, choice.endpoint)
                        return
        self._spawn(stream)

    def _spawn(self, stream: MuxStream) -> None:
        assert self.nursery is not None
        stream.task = True
        stream.wake = trio.Event()
        self.nursery.start_soon(self._run_stream, stream)

    def _retry(self, stream: MuxStream) -> None:
        """Another attempt: the stream's task picks again (started now if it had none)."""
        stream.next_retry = True
        if stream.task:
            stream.wake.set()
        else:
            self._spawn(stream)

    async def _run_stream(self, stream: MuxStream) -> None:
        if not stream.begun:
            target = self._known_target(stream.authority)
            if target is None:
                service = self.outbound.service_authority(stream.authority)
                assert service is not None
                target = await self.outbound.resolve(service, http=True) or self.target
            if stream.finished:
                return
            self._begin(stream, target)
        await self._run_attempts(stream)

    async def _run_attempts(self, stream: MuxStream) -> None:
        if stream.finished:
            return
        deadline = stream.attempts.deadline
        with trio.CancelScope(deadline=float("inf") if deadline is None else deadline) as scope:
            stream.scope = scope
            try:
                await self._attempts(stream)
            except UpstreamError as exc:
                self._answer_error(stream, exc)
        if scope.cancelled_caught and not stream.finished:
            name = stream.attempts.route.name
            error = RouteTimeout(f"the route {name!r} of {stream.target.authority} timed out")
            if stream.committed:
                self.down.peer.reset(stream.sid, CANCEL)
                self.metrics.response_end(stream.labels, stream.status, "failure")
                self._drop_attempt(stream, CANCEL)
                if stream.tap is not None:
                    stream.tap.end(error="reset")
                    stream.tap = None
                self._finish(stream, Outcome.FAILURE)
            else:
                self._drop_attempt(stream, CANCEL)
                self._answer_error(stream, error, outcome=Outcome.FAILURE)
        await self._flush()

    async def _attempts(self, stream: MuxStream) -> None:
        target = stream.target
        while not stream.finished:
            if stream.pick is None or stream.reported:  # else ``_start`` picked already
                choice = await target.pick(stream.attempts.pick)
                if not isinstance(choice, Pick):
                    raise no_endpoint_error(choice, target.authority)
                stream.pick, stream.reported = choice, False
            choice = stream.pick
            endpoint = choice.endpoint
            try:
                up = await self._upstream(endpoint, target)
            except UpstreamError as exc:
                if isinstance(self._report(stream, outcome=Outcome.CONNECT_FAILED), Retry):
                    log.info("outbound connect to %s failed (%s); retrying", target.authority, exc)
                    continue
                raise
            except BaseException:
                self._report(stream, outcome=Outcome.CANCELLED)
                raise
            if stream.finished:  # the client reset it meanwhile
                return
            stream.wake = trio.Event()
            stream.next_retry = False
            self._open(stream, up, endpoint)
            await self._flush()
            await stream.wake.wait()
            if not stream.next_retry:
                return

    def _open(self, stream: MuxStream, up: Upstream, endpoint: Endpoint) -> None:
        stream.up, stream.endpoint = up, endpoint
        stream.up_id = up.peer.open_stream()
        up.streams[stream.up_id] = stream
        stream.rewind()
        stream.attempt_started = trio.current_time()
        stream.labels = self.metrics.http_labels(
            OUTBOUND, stream.authority, up.conn.tls_labels, stream.target.dst_labels(endpoint)
        )
        self.metrics.request(stream.labels)
        if stream.tap is None and self.context.tap.active:
            peer_id = up.conn.peer_id
            stream.tap = self.context.tap.request_start(
                conn=self.tap_conn,
                stream=stream.sid,
                direction=OUTBOUND,
                method=stream.method,
                authority=stream.authority,
                path=stream.path,
                src=self.down.conn.stream.socket.getpeername()[:2],
                dst=(endpoint.address, endpoint.port),
                tls="true" if peer_id else "no_identity",
                server_id=peer_id or "",
            )
        alone = stream.req_ended and not stream.body and stream.trailers is None
        up.peer.send_headers(stream.up_id, stream.headers, alone)
        if alone:
            stream.end_sent = True
        else:
            stream.pump_request(self.down.peer)

    def _report(
        self,
        stream: MuxStream,
        *,
        status: int | None = None,
        grpc: int | None = None,
        outcome: Outcome | None = None,
    ) -> Retry | GiveUp:
        """``attempts.finished`` for the current pick, exactly once per pick."""
        if stream.reported or stream.pick is None:
            return GiveUp("reported")
        stream.reported = True
        stream.attempts.replayable = stream.replayable
        now = trio.current_time()
        return stream.attempts.finished(
            stream.pick, now, status=status, grpc_status=grpc, outcome=outcome
        )

    def _drop_attempt(self, stream: MuxStream, code: int) -> None:
        """Leave the current upstream stream (reset it), returning what it sent us unread."""
        up = stream.up
        if up is None:
            return
        for _, flow in stream.resp:
            up.peer.consumed(stream.up_id, flow)
        stream.resp.clear()
        if up.streams.pop(stream.up_id, None) is not None:
            up.peer.reset(stream.up_id, code)
        stream.up = None
        self._maybe_close(up)

    def _attempt_failed(
        self, stream: MuxStream, outcome: Outcome, exc: UpstreamError, reset: int | None = None
    ) -> None:
        """The attempt ended before a response head: retry, or answer ``exc`` (or pass the
        upstream's RST_STREAM ``reset`` on)."""
        if outcome is Outcome.CONNECT_FAILED and stream.overflow:
            outcome = Outcome.FAILURE  # part of its body is gone: it cannot be sent again
        up = stream.up
        if up is not None:
            up.streams.pop(stream.up_id, None)
            up.peer.close_stream(stream.up_id)
            stream.up = None
        decision = self._report(stream, outcome=outcome)
        if isinstance(decision, Retry) and not stream.finished:
            self.metrics.response_end(stream.labels, exc.status, "failure")  # this attempt's
            self._retry(stream)
        elif reset is not None:
            self.down.peer.reset(stream.sid, reset)
            stream.cancelled = True  # nothing more to send either way
            if stream.tap is not None:
                stream.tap.end(error="reset")
                stream.tap = None
            self._finish(stream, Outcome.FAILURE)
        else:
            self._answer_error(stream, exc)
        if up is not None:
            self._maybe_close(up)

    def _answer_error(
        self, stream: MuxStream, exc: ProxyError, outcome: Outcome = Outcome.CANCELLED
    ) -> None:
        """The proxy's own response on the stream (503/502/504 with ``meshlet-proxy-error``)."""
        if stream.finished:
            return
        if not stream.labels:
            stream.labels = self.metrics.http_labels(OUTBOUND, stream.authority)
            self.metrics.request(stream.labels)
        latency_ms = (trio.current_time() - stream.started) * 1000
        self.metrics.response_headers(stream.labels, exc.status, latency_ms)
        self.metrics.response_end(stream.labels, exc.status, "failure")
        headers = [
            (b":status", str(exc.status).encode()),
            (b"meshlet-proxy-error", exc.slug.encode()),
            (b"content-length", b"0"),
        ]
        self.down.peer.send_headers(stream.sid, headers, True)
        if stream.tap is not None:
            stream.tap.response_start(exc.status)
            stream.tap.end(error=exc.slug)
            stream.tap = None
        stream.status = exc.status
        log.info("outbound h2 %s: %s", stream.authority.decode("latin-1"), exc)
        self._finish(stream, outcome)

    def _finish(self, stream: MuxStream, outcome: Outcome = Outcome.CANCELLED) -> None:
        """The stream is over for the proxy: forget it on both connections, settle accounts."""
        if stream.finished:
            return
        stream.finished = True
        self._report(stream, outcome=outcome)
        self.streams.pop(stream.sid, None)
        down = self.down.peer
        up = stream.up
        if up is not None:
            up.streams.pop(stream.up_id, None)
            if not stream.end_sent and not stream.cancelled:
                up.peer.reset(stream.up_id, CANCEL)  # the response is complete: stop the upload
            for _, flow in stream.resp:
                up.peer.consumed(stream.up_id, flow)
            up.peer.close_stream(stream.up_id)
            self._maybe_close(up)
        if not stream.req_ended and not stream.cancelled:
            down.reset(stream.sid, NO_ERROR)  # RFC 9113 8.1: the response needs no more body
        unacked = stream.unacked()
        down.close_stream(stream.sid)
        if unacked:
            down.consumed(stream.sid, unacked)
        if stream.route_labels:
            latency_ms = (trio.current_time() - stream.started) * 1000
            classification = classify(stream.status, stream.grpc)
            self.metrics.route_response(
                stream.route_labels, stream.status, classification, latency_ms
            )
        if stream.begun:
            stream.target.users -= 1
            stream.target.last_used = trio.current_time()
        stream.wake.set()
        if stream.scope is not None and stream.cancelled:
            stream.scope.cancel()
        if self.closing and not self.streams:
            self.done.set()

    def _abandon(self, stream: MuxStream, outcome: Outcome) -> None:
        stream.cancelled = True
        if stream.tap is not None:
            stream.tap.end(error="aborted")
            stream.tap = None
        self._finish(stream, outcome)

    # -- upstream connections ---------------------------------------------------------------------

    async def _upstream(self, endpoint: Endpoint, target: Target) -> Upstream:
        """An upstream connection to ``endpoint`` with room for a stream (opened if needed)."""
        up, opened = await self.ups.get(endpoint, target, self.metrics, self.target)
        if opened:
            assert self.nursery is not None
            self.nursery.start_soon(self._upstream_loop, up)
        return up

    def _maybe_close(self, up: Upstream) -> None:
        self.ups.maybe_close(up)

    async def _upstream_loop(self, up: Upstream) -> None:
        reason: UpstreamError = UpstreamClosed("upstream closed the connection")
        try:
            while True:
                data = await up.conn.receive()
                if not data:
                    break
                up.last_read = trio.current_time()
                try:
                    events = up.peer.feed(data)
                except PeerError as exc:
                    log.info("outbound h2 upstream %s broke the protocol: %s", up.endpoint, exc)
                    up.peer.goaway(0, exc.code)
                    reason = UpstreamClosed(f"upstream broke HTTP/2: {exc}")
                    break
                for event in events:
                    self._upstream_event(up, event)
                await self._flush()
        except UpstreamError as exc:
            reason = exc
        except ProxyError as exc:
            log.debug("outbound h2 upstream: %s", exc)
        self._upstream_gone(up, reason)
        await self._flush()

    def _upstream_gone(self, up: Upstream, reason: UpstreamError) -> None:
        up.closing = True
        self.ups.forget(up)
        for stream in list(up.streams.values()):
            if stream.committed:
                up.streams.pop(stream.up_id, None)
                self.down.peer.reset(stream.sid, _INTERNAL_ERROR)
                self.metrics.response_end(stream.labels, stream.status, "failure")
                if stream.tap is not None:
                    stream.tap.end(error="upstream_closed")
                    stream.tap = None
                stream.up = None
                self._finish(stream, Outcome.FAILURE)
            else:
                self._attempt_failed(stream, Outcome.FAILURE, reason)
        up.close()

    def _upstream_event(self, up: Upstream, event: PeerEvent) -> None:  # noqa: PLR0912
        if isinstance(event, Data):
            stream = up.streams.get(event.stream_id)
            if stream is None or not stream.committed:
                up.peer.consumed(event.stream_id, event.flow)
                return
            stream.resp.append((event.data, event.flow))
            if event.end_stream:
                stream.resp_ended = True
            self._pump_response(stream)
        elif isinstance(event, Headers):
            stream = up.streams.get(event.stream_id)
            if stream is not None:
                self._response_headers(stream, up, event)
        elif isinstance(event, WindowOpened):
            if event.stream_id == 0:
                for stream in list(up.streams.values()):
                    stream.pump_request(self.down.peer)
            else:
                stream = up.streams.get(event.stream_id)
                if stream is not None:
                    stream.pump_request(self.down.peer)
        elif isinstance(event, Reset):
            stream = up.streams.get(event.stream_id)
            if stream is None:
                return
            if stream.committed:
                up.streams.pop(event.stream_id)
                self.down.peer.reset(stream.sid, event.code)
                self.metrics.response_end(stream.labels, stream.status, "failure")
                if stream.tap is not None:
                    stream.tap.end(error="reset")
                    stream.tap = None
                stream.up = None
                self._finish(stream, Outcome.FAILURE)
            else:
                refused = event.code == REFUSED_STREAM
                outcome = Outcome.CONNECT_FAILED if refused else Outcome.FAILURE
                error = UpstreamClosed("upstream reset the stream")
                self._attempt_failed(stream, outcome, error, reset=event.code)
        elif isinstance(event, GoAwayReceived):
            up.closing = True
            log.info("outbound h2 upstream %s sent GOAWAY", format_address(key_of(up.endpoint)))
            for up_id in [i for i in up.streams if i > event.last_stream_id]:
                stream = up.streams[up_id]  # never processed: safe to send elsewhere
                self._attempt_failed(
                    stream, Outcome.CONNECT_FAILED, UpstreamClosed("upstream refused the stream")
                )
            self._maybe_close(up)

    def _response_headers(self, stream: MuxStream, up: Upstream, event: Headers) -> None:
        headers = forwardable(event.headers)
        if stream.committed:  # trailers
            stream.resp_trailers = headers
            stream.resp_ended = True
            stream.grpc = grpc_status(headers)
            self._pump_response(stream)
            return
        status = status_of(headers)
        if 100 <= status < 200:  # informational: passed on, the final head follows
            if not event.end_stream:
                self.down.peer.send_headers(stream.sid, headers, False)
            return
        grpc = grpc_status(headers) if event.end_stream else None
        latency_ms = (trio.current_time() - stream.attempt_started) * 1000
        self.metrics.response_headers(stream.labels, status, latency_ms)
        decision = self._report(stream, status=status, grpc=grpc)
        if isinstance(decision, Retry) and not stream.finished:
            self.metrics.response_end(stream.labels, status, "failure")
            self._drop_attempt(stream, CANCEL)
            self._retry(stream)
            return
        stream.committed = True
        stream.status = status
        stream.grpc = grpc
        if stream.tap is not None:
            stream.tap.response_start(status)
        self.down.peer.send_headers(stream.sid, headers, event.end_stream)
        if event.end_stream:
            self._response_done(stream)

    def _pump_response(self, stream: MuxStream) -> None:
        if stream.pump_response(self.down.peer):
            self._response_done(stream)

    def _response_done(self, stream: MuxStream) -> None:
        classification = classify(stream.status, stream.grpc)
        self.metrics.response_end(stream.labels, stream.status, classification)
        if stream.tap is not None:
            stream.tap.end(grpc_status=stream.grpc)
            stream.tap = None
        self._finish(stream, Outcome.SUCCESS)

    # -- writing, draining ------------------------------------------------------------------------

    async def _flush(self) -> None:
        try:
            for up in self.ups.all():
                if up.peer.out:
                    try:
                        await up.flush()
                    except UpstreamError:
                        up.closing = True  # its reader sees the end and fails its streams
            await self.down.flush()
        except ProxyError as exc:
            log.debug("outbound h2 client connection: %s", exc)
            self.done.set()

    async def _keepalive(self) -> None:
        """A PING to a connection silent for the keepalive interval; still silent after the
        keepalive timeout: an upstream is closed (its streams fail over), the client ends all."""
        interval = self.context.settings.http2_keepalive_interval
        timeout = self.context.settings.http2_keepalive_timeout
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            links: list[Link] = [self.down, *self.ups.all()]
            silent = [link for link in links if now - link.last_read >= interval]
            if not silent:
                continue
            for link in silent:
                link.peer.ping()
            await self._flush()
            await trio.sleep(timeout)
            for link in silent:
                if link.last_read > now:
                    continue
                if link is self.down:
                    log.info("outbound h2 client did not answer a PING")
                    self.done.set()
                    return
                assert isinstance(link, Upstream)
                log.info("outbound h2 upstream %s did not answer a PING", link.endpoint.address)
                link.close()  # its reader fails over its streams

    async def _drain_on_shutdown(self) -> None:
        await self.context.lifecycle.draining.wait()
        if not self.closing:
            self.closing = True
            self.down.peer.goaway(_MAX_STREAM_ID)
            await self._flush()
        if not self.streams:
            self.done.set()
