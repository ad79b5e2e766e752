"""The upstream side of the per-stream HTTP/2 mesh path (``proxy/h2mux.py``): what a client
connection does with its streams' events, which the shared upstream connections' readers
(``proxy/h2upstream.py``) hand it as their ``StreamOwner``. A final response head is reported to
the balancer and either retried elsewhere or committed to the client; DATA and trailers are
pumped to the client; RST_STREAM crosses to the client (committed) or fails the attempt
(REFUSED_STREAM: never processed); a GOAWAY fails over the streams above its last stream id; a
connection that ends fails over (or resets) its streams.
"""

from __future__ import annotations

import logging
from typing import Final

from proxy.balance import Outcome, Retry
from proxy.discovery import Endpoint
from proxy.errors import UpstreamClosed, UpstreamError
from proxy.h2attempts import MuxAttempts
from proxy.h2peer import CANCEL, REFUSED_STREAM, Data, Headers, Reset
from proxy.h2stream import MuxStream, forwardable, grpc_status, status_of
from proxy.h2upstream import Upstream
from proxy.outbound import Target

__all__ = ["MuxResponses"]

log = logging.getLogger(__name__)

_INTERNAL_ERROR: Final = 0x2


class MuxResponses(MuxAttempts):
    """The responses of the client connection's streams, from the shared upstreams."""

    async def _upstream(self, endpoint: Endpoint, target: Target) -> Upstream:
        """An upstream connection to ``endpoint`` with room for a stream (opened if needed)."""
        return await self.pool.get(endpoint, target, self.metrics)

    # -- StreamOwner: called by the upstreams' readers --------------------------------------------

    def upstream_event(
        self, up: Upstream, stream: MuxStream, event: Data | Headers | Reset
    ) -> None:
        if isinstance(event, Data):
            if not stream.committed:
                up.peer.consumed(event.stream_id, event.flow)
                return
            stream.resp.append((event.data, event.flow))
            if event.end_stream:
                stream.resp_ended = True
            self._pump_response(stream)
        elif isinstance(event, Headers):
            self._response_headers(stream, up, event)
        elif stream.committed:
            self._fail_committed(up, stream, event.code, "reset")
        else:
            refused = event.code == REFUSED_STREAM
            outcome = Outcome.CONNECT_FAILED if refused else Outcome.FAILURE
            error = UpstreamClosed("upstream reset the stream")
            self._attempt_failed(stream, outcome, error, reset=event.code)

    def upstream_window(self, stream: MuxStream) -> None:
        stream.pump_request(self.down.peer)

    def upstream_refused(self, up: Upstream, stream: MuxStream) -> None:
        self._attempt_failed(
            stream, Outcome.CONNECT_FAILED, UpstreamClosed("upstream refused the stream")
        )

    def upstream_gone(self, up: Upstream, stream: MuxStream, reason: UpstreamError) -> None:
        if stream.committed:
            self._fail_committed(up, stream, _INTERNAL_ERROR, "upstream_closed")
        else:
            self._attempt_failed(stream, Outcome.FAILURE, reason)

    def _fail_committed(self, up: Upstream, stream: MuxStream, code: int, error: str) -> None:
        """The upstream side of a committed stream ended early: reset it to the client."""
        up.streams.pop(stream.up_id, None)
        self.down.peer.reset(stream.sid, code)
        self.metrics.response_end(stream.labels, stream.status, "failure")
        if stream.tap is not None:
            stream.tap.end(error=error)
            stream.tap = None
        stream.up = None
        self._finish(stream, Outcome.FAILURE)

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
