"""What a per-stream HTTP/2 client connection (``proxy/h2mux.py``) shares across its modules, and
how a stream ends there: ``MuxState`` holds the client ``Link``, the streams, the process's
shared upstream connections (``proxy/h2upstream.py``) and the nursery, reports each pick's
outcome to the balancer exactly once, answers a stream with the proxy's own error response,
finishes a stream on both connections (settling flow control, metrics and the target's use
count) and writes what the peers queued: the client's bytes itself, the upstreams' by waking
their writers.

Backpressure towards a slow client: response DATA moves to the client's queue only while that
queue is under ``_CLIENT_HIGH_WATER``; the rest waits on its stream, unacknowledged, so the
upstream's stream window holds it back. Once the queue drains, the waiting streams are pumped.

The attempts (``proxy/h2attempts.py``), the upstream readers (``proxy/h2responses.py``) and the
client session (``proxy/h2mux.py``) build on it, in that order.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from proxy.balance import GiveUp, Outcome, Retry
from proxy.context import OUTBOUND, ProxyContext
from proxy.errors import ProxyError
from proxy.h2peer import CANCEL, NO_ERROR, Peer
from proxy.h2stream import MuxStream
from proxy.h2upstream import Link, Upstream
from proxy.metrics import classify
from proxy.net import Conn
from proxy.outbound import Target
from proxy.tap import next_connection_id

__all__ = ["MuxState"]

log = logging.getLogger(__name__)

_CLIENT_HIGH_WATER: Final = 256 * 1024  # queued for the client: pump no more response DATA


class MuxState:
    """The state of one client connection and the end of its streams."""

    def __init__(self, client: Conn, target: Target, context: ProxyContext) -> None:
        self.down = Link(client, Peer(client_side=False))
        self.target = target
        self.context = context
        assert context.outbound is not None
        self.outbound = context.outbound
        self.metrics = context.metrics
        self.limit = context.settings.outbound_retry_buffer_bytes
        self.streams: dict[int, MuxStream] = {}
        self.pool = self.outbound.h2_upstreams
        self.congested = False  # response DATA waits until the client's queue drains
        self.closing = False
        self.done = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.tap_conn = next_connection_id()

    def _report(
        self,
        stream: MuxStream,
        *,
        status: int | None = None,
        grpc: int | None = None,
        outcome: Outcome | None = None,
        now: float | None = None,
    ) -> Retry | GiveUp:
        """``attempts.finished`` for the current pick, exactly once per pick (``now``: the time
        of the read that brought the answer, when the caller has it)."""
        if stream.reported or stream.pick is None:
            return GiveUp("reported")
        stream.reported = True
        stream.attempts.replayable = stream.replayable
        if now is None:
            now = trio.current_time()
        return stream.attempts.finished(
            stream.pick, now, status=status, grpc_status=grpc, outcome=outcome
        )

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
        now = trio.current_time()
        if stream.route_labels:
            latency_ms = (now - stream.started) * 1000
            classification = classify(stream.status, stream.grpc)
            self.metrics.route_response(
                stream.route_labels, stream.status, classification, latency_ms
            )
        if stream.begun:
            stream.target.users -= 1
            stream.target.last_used = now
        if stream.wake is not None:
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

    def _maybe_close(self, up: Upstream) -> None:
        self.pool.maybe_close(up)

    def _pump_response(self, stream: MuxStream) -> None:
        if len(self.down.peer.out) >= _CLIENT_HIGH_WATER:
            self.congested = True
            return
        if stream.pump_response(self.down.peer):
            self._response_done(stream)

    def _response_done(self, stream: MuxStream) -> None:
        classification = classify(stream.status, stream.grpc)
        self.metrics.response_end(stream.labels, stream.status, classification)
        if stream.tap is not None:
            stream.tap.end(grpc_status=stream.grpc)
            stream.tap = None
        self._finish(stream, Outcome.SUCCESS)

    def kick(self) -> None:
        """Bytes were queued for the client (by an upstream's reader): write what the socket
        takes now, and wake ``_write_loop`` for the rest (or to pump held-back streams)."""
        down = self.down
        out = down.peer.out
        if not out:
            return
        if not down.sending:
            sent = down.conn.send_some(out)
            if sent:
                del out[:sent]
                if not out and not self.congested:
                    return
        down.wake()

    async def _write_loop(self) -> None:
        """Writes what the upstreams' readers queue for the client."""
        while True:
            await self.down.wait_for_bytes()
            await self._flush()

    async def _flush(self) -> None:
        """Wake the upstreams' writers, write the client's bytes, and pump the streams a full
        client queue held back once it drained."""
        self.pool.kick_all()
        down = self.down
        try:
            await down.flush()
            while self.congested and not down.sending and not down.peer.out:
                self.congested = False
                for stream in list(self.streams.values()):
                    if stream.committed:
                        self._pump_response(stream)
                self.pool.kick_all()  # the WINDOW_UPDATEs for what moved
                await down.flush()
        except ProxyError as exc:
            log.debug("outbound h2 client connection: %s", exc)
            self.done.set()
