"""The upstream side of the per-stream HTTP/2 mesh path (``proxy/h2mux.py``): opening an upstream
connection and reading it. Each upstream's events go to the streams they belong to: a final
response head is reported to the balancer and either retried elsewhere or committed to the
client; DATA and trailers are pumped to the client; RST_STREAM crosses to the client (committed)
or fails the attempt (REFUSED_STREAM: never processed); a GOAWAY fails over the streams above its
last stream id; a connection that ends fails over (or resets) all its streams.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from proxy.balance import Outcome, Retry, key_of
from proxy.discovery import Endpoint
from proxy.errors import ProxyError, UpstreamClosed, UpstreamError
from proxy.h2attempts import MuxAttempts
from proxy.h2peer import (
    CANCEL,
    REFUSED_STREAM,
    Data,
    GoAwayReceived,
    Headers,
    PeerError,
    PeerEvent,
    Reset,
    WindowOpened,
)
from proxy.h2stream import MuxStream, forwardable, grpc_status, status_of
from proxy.h2upstream import Upstream
from proxy.net import format_address
from proxy.outbound import Target

__all__ = ["MuxResponses"]

log = logging.getLogger(__name__)

_INTERNAL_ERROR: Final = 0x2


class MuxResponses(MuxAttempts):
    """The upstream connections of a client connection and the responses they carry."""

    async def _upstream(self, endpoint: Endpoint, target: Target) -> Upstream:
        """An upstream connection to ``endpoint`` with room for a stream (opened if needed)."""
        up, opened = await self.ups.get(endpoint, target, self.metrics, self.target)
        if opened:
            assert self.nursery is not None
            self.nursery.start_soon(self._upstream_loop, up)
        return up

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
        now = up.last_read  # this read's time
        latency_ms = (now - stream.attempt_started) * 1000
        self.metrics.response_headers(stream.labels, status, latency_ms)
        decision = self._report(stream, status=status, grpc=grpc, now=now)
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
