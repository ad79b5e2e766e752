"""One attempt of an outbound HTTP/1 request as a stream on a shared HTTP/2 connection to the
endpoint's proxy (Linkerd's HTTP/1 upgrade between meshed proxies; the contract is in
docs/mesh-outbound.md, the sans-IO conversions in ``proxy/h1upgradeconvert.py``).

Theory of operation. ``proxy/http1mesh.py`` picks an endpoint for each attempt as for any
request; when the endpoint's proxy speaks HTTP/2 to meshed peers and the request is upgradable,
the attempt runs here instead of on a pooled HTTP/1 connection. It takes a connection with room
from the process's ``UpstreamPool`` under the ``Session.HTTP1_OVER_H2`` key (opened, if needed,
as mTLS to the peer's proxy port with the transport header naming that session: never one of
the connections native HTTP/2 streams use), and opens a stream on it whose owner is an
``UpgradedStream``.

Two parties move the stream's bytes. The upstream connection's reader task (the pool's) hands
the stream's frames to its ``UpgradedStream``, which only records them (the response fields,
DATA with its flow-control credit, the end, a reset, a refusal, the connection's end) and wakes
the client connection's task: it never blocks, so one slow HTTP/1 client stalls nobody else on
the shared connection. The client connection's task does the rest: it queues HEADERS, then the
request body (the part ``http1mesh`` buffered for retries, then the rest as the client sends it)
as DATA the stream's send window allows, waiting for WINDOW_UPDATEs in between; and at once it
waits for the response head, which is reported to the balancer (``attempts.finished``) before
anything of it is relayed, exactly as on the HTTP/1 path. A ``Retry`` answer resets the stream
and picks again. Then the head goes to the client in HTTP/1 (the client's framing chosen by
``proxy/http1response.py``), and each DATA is written to the client before its bytes are
``consumed``: the stream's window only reopens as the client reads, so the proxy holds at most
a window per stream. The HEADERS go out through ``Upstream.send_soon`` (written at once when the
connection's writer is idle, so a request alone or the first of a burst does not wait for it);
every other queued frame ``kick``s the writer task.

A stream the peer REFUSED (RST_STREAM REFUSED_STREAM, or above a GOAWAY's last stream id) was
never processed: it counts as a failed connect, retried on any route (unless part of the body
already streamed past the retry buffer). Any other reset, or the connection ending, before the
response head is a failure (retried on retryable routes, else 502); after it, the client
connection is reset. Whatever ends the attempt (its end, a retry, the route timeout cancelling
it, the client leaving), the stream is forgotten on the connection (reset if still open upstream)
and a connection that takes no new streams is closed once idle.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from proxy.balance import Outcome, Retry
from proxy.context import OUTBOUND
from proxy.discovery import Endpoint
from proxy.errors import (
    ClientClosed,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    unwrap_groups,
)
from proxy.h1 import LENGTH, NO_BODY, End, ResponseHead
from proxy.h1.write import chunk, last_chunk
from proxy.h1upgradeconvert import ResponseHeadError, h1_response_head, h2_request_headers
from proxy.h2peer import CANCEL, REFUSED_STREAM, Data, Headers, Reset
from proxy.h2stream import MuxStream, status_of
from proxy.h2upstream import Upstream
from proxy.metrics import classify
from proxy.mtls.transport import Session

if TYPE_CHECKING:
    from proxy.http1mesh import Exchange

__all__ = ["RetryAttempt", "UpgradedStream", "attempt_upgraded"]

log = logging.getLogger(__name__)

_HEAD: Final = b"HEAD"


class RetryAttempt(Exception):
    """The attempt failed and the retry policy said: try again."""


class UpgradedStream:
    """One attempt's HTTP/2 stream, and the ``StreamOwner`` the upstream's reader hands its
    frames to (recorded here; the client connection's task acts on them)."""

    def __init__(self, up: Upstream, headers: list[tuple[bytes, bytes]], *, now: float) -> None:
        self.up = up
        self.up_id = up.peer.open_stream()
        mux = MuxStream(
            self.up_id, headers, method=b"", path=b"", authority=b"", end_stream=True, now=now
        )  # the pool's record of the stream (it only reads ``owner``)
        mux.owner = self
        mux.up, mux.up_id = up, self.up_id
        up.streams[self.up_id] = mux
        self.head: list[tuple[bytes, bytes]] | None = None
        """The final response's fields (interim 1xx answers are dropped)."""
        self.data: deque[tuple[bytes, int]] = deque()
        self.ended = False  # the response is complete (trailers are dropped)
        self.end_sent = False  # the request is complete upstream
        self.failure: UpstreamError | None = None
        self.refused = False  # never processed by the peer: safe to send again
        self.remote_reset = False
        self.closed = False
        self._lot = trio.lowlevel.ParkingLot()

    # -- StreamOwner: the upstream reader's calls, which never block --------------------------

    def upstream_event(
        self, up: Upstream, stream: MuxStream, event: Data | Headers | Reset
    ) -> None:
        if isinstance(event, Data):
            if self.head is None or self.ended:  # not a response body: dropped
                up.peer.consumed(self.up_id, event.flow)
                if self.head is None and self.failure is None:  # no head will come
                    self.failure = UpstreamProtocolError("upstream sent DATA before a head")
            else:
                self.data.append((event.data, event.flow))
            self.ended = self.ended or (event.end_stream and self.head is not None)
        elif isinstance(event, Headers):
            if self.head is None:
                status = status_of(event.headers)
                if 100 <= status < 200 and status != 101 and not event.end_stream:
                    return  # an interim answer: the final one follows
                self.head = event.headers
            self.ended = self.ended or event.end_stream
        else:
            self.remote_reset = True
            if not self.ended:
                self.refused = event.code == REFUSED_STREAM
                self.failure = UpstreamClosed(f"upstream reset the stream (error {event.code})")
        self._lot.unpark_all()

    def upstream_window(self, stream: MuxStream) -> None:
        self._lot.unpark_all()

    def upstream_refused(self, up: Upstream, stream: MuxStream) -> None:
        self.refused = True
        self.failure = UpstreamClosed("upstream refused the stream (GOAWAY)")
        self._lot.unpark_all()

    def upstream_gone(self, up: Upstream, stream: MuxStream, reason: UpstreamError) -> None:
        self.failure = reason
        self._lot.unpark_all()

    def kick(self) -> None:
        self._lot.unpark_all()

    # -- the client connection's side -------------------------------------------------------------

    async def changed(self) -> None:
        """Wait until the reader recorded something for the stream."""
        await self._lot.park()

    async def send(self, data: bytes) -> bool:
        """Queue ``data`` as DATA frames as the stream's window allows; ``False`` when the stream
        failed meanwhile (the answer says what happened)."""
        peer, up_id, up = self.up.peer, self.up_id, self.up
        view = memoryview(data)
        while view:
            if self.failure is not None or self.closed or self.ended:
                return False
            window = peer.window(up_id)
            if window <= 0:
                await self.changed()
                continue
            peer.send_data(up_id, bytes(view[:window]), False)
            view = view[window:]
            up.kick()
        return True

    def send_end(self) -> None:
        if self.failure is None and not self.closed and not self.end_sent:
            self.up.peer.send_data(self.up_id, b"", True)
            self.end_sent = True
            self.up.kick()

    def consumed(self, flow: int) -> None:
        """``flow`` bytes of response went to the client: the peer may send as many more."""
        if flow and not self.closed:
            self.up.peer.consumed(self.up_id, flow)
            self.up.kick()

    def close(self) -> None:
        """Forget the stream on its connection (RST_STREAM CANCEL when it is still open there)
        and hand back the window of what arrived unread."""
        if self.closed:
            return
        self.closed = True
        up, peer = self.up, self.up.peer
        known = up.streams.pop(self.up_id, None) is not None
        for _, flow in self.data:
            peer.consumed(self.up_id, flow)
        self.data.clear()
        if known and not self.remote_reset and not (self.ended and self.end_sent):
            peer.reset(self.up_id, CANCEL)
        peer.close_stream(self.up_id)
        up.kick()


async def attempt_upgraded(exchange: Exchange, endpoint: Endpoint) -> int:
    """One attempt of ``exchange``'s request to ``endpoint`` as an HTTP/2 stream to its proxy;
    returns the response status once the response went to the client. Raises ``RetryAttempt``
    when the retry policy says so, an ``UpstreamError`` to answer with, ``ClientClosed``."""
    session, target = exchange.session, exchange.target
    metrics = session.context.metrics
    pool = target.outbound.h2_upstreams
    try:
        up = await pool.get(endpoint, target, metrics, Session.HTTP1_OVER_H2)
    except UpstreamError as exc:
        if isinstance(exchange.report(outcome=Outcome.CONNECT_FAILED), Retry):
            log.info("outbound connect to %s failed (%s); retrying", target.authority, exc)
            raise RetryAttempt from exc
        raise
    exchange.labels = metrics.http_labels(
        OUTBOUND, exchange.authority, up.conn.tls_labels, target.dst_labels(endpoint)
    )
    metrics.request(exchange.labels)
    request = exchange.request
    session.tap.start(request, exchange.authority, (endpoint.address, endpoint.port), up.conn)
    started = trio.current_time()
    headers = h2_request_headers(request, target.authority.encode())
    stream = UpgradedStream(up, headers, now=started)
    try:
        alone = exchange.complete and all(type(e) is End for e in exchange.buffered)
        up.peer.send_headers(stream.up_id, headers, alone)
        await up.send_soon()
        if alone:
            stream.end_sent = True
            status = await _respond(exchange, stream, started)
        else:
            status = await _upload_and_respond(exchange, stream, started)
    except ClientClosed:
        if not exchange.reported:
            exchange.report(outcome=Outcome.CANCELLED)
        raise
    finally:
        stream.close()
        pool.maybe_close(up)
    return status


async def _upload_and_respond(exchange: Exchange, stream: UpgradedStream, started: float) -> int:
    """The request body and the response at once (a response may come before the body ends)."""
    status = 0
    with unwrap_groups():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_upload, exchange, stream)
            with contextlib.suppress(RetryAttempt):  # raised once the upload stopped
                status = await _respond(exchange, stream, started)
            nursery.cancel_scope.cancel()  # an early response ends the upload
    if not status:
        raise RetryAttempt
    return status


async def _upload(exchange: Exchange, stream: UpgradedStream) -> None:
    """The request body: what ``http1mesh`` buffered, then the rest as the client sends it
    (chunked trailers are dropped)."""
    for event in exchange.buffered:
        if type(event) is bytes and not await stream.send(event):
            return
    if not exchange.complete:
        while True:
            event = await exchange.session.client_body_event()
            exchange.streamed = True  # past the retry buffer: never sent again
            if type(event) is End:
                break
            assert type(event) is bytes
            if not await stream.send(event):
                return
    stream.send_end()


async def _respond(exchange: Exchange, stream: UpgradedStream, started: float) -> int:
    """Wait for the response head, report it, and relay the response to the client."""
    while stream.head is None:
        if stream.failure is not None:
            _failed(exchange, stream, stream.failure)
        await stream.changed()
    request = exchange.request
    try:
        response = h1_response_head(stream.head, head_request=request.method == _HEAD)
    except ResponseHeadError as exc:
        _failed(exchange, stream, UpstreamProtocolError(f"upstream sent a bad response: {exc}"))
    if response is None:  # an interim answer with END_STREAM: no final one will come
        _failed(exchange, stream, UpstreamProtocolError("upstream ended the stream with a 1xx"))
    session, labels = exchange.session, exchange.labels
    metrics = session.context.metrics
    status = response.status
    latency_ms = (trio.current_time() - started) * 1000
    if isinstance(exchange.report(status=status), Retry):
        metrics.response_headers(labels, status, latency_ms)
        metrics.response_end(labels, status, "failure")
        raise RetryAttempt
    metrics.response_headers(labels, status, latency_ms)
    tapped = session.tap.current
    if tapped is not None:
        tapped.response_start(status)
    chunked, out = session.client_head(request, response)
    session.responded = True
    try:
        await _relay_body(exchange, stream, response, out, chunked=chunked)
    except UpstreamError as exc:
        # The head is out: the only honest signal left is to reset the client connection.
        log.info("outbound upgraded response body from %s failed: %s", labels, exc)
        metrics.response_end(labels, status, "failure")
        session.tap.end(error="reset")
        session.client.abort()
        raise ClientClosed("response aborted") from exc
    metrics.response_end(labels, status, classify(status, None))
    session.tap.end()
    return status


class _BodyOut:
    """The response body's bytes for the client in its framing, checked against the
    ``content-length`` the head announced."""

    def __init__(self, response: ResponseHead, *, chunked: bool) -> None:
        self.chunked = chunked
        self.dropped = response.framing == NO_BODY
        self.left = response.fields.content_length if response.framing == LENGTH else None

    def add(self, data: bytes) -> bytes:
        if self.dropped:
            return b""
        if self.left is not None:
            self.left -= len(data)
            if self.left < 0:
                raise UpstreamProtocolError("upstream sent more than its content-length")
        return chunk(data) if self.chunked else data

    def end(self) -> bytes:
        if self.left:
            raise UpstreamClosed("upstream ended the response before its content-length")
        return last_chunk([]) if self.chunked else b""


async def _relay_body(
    exchange: Exchange,
    stream: UpgradedStream,
    response: ResponseHead,
    out: bytes,
    *,
    chunked: bool,
) -> None:
    """The response DATA after its head (``out``), each piece ``consumed`` once written."""
    client = exchange.session.client
    tapped = exchange.session.tap.current
    body = _BodyOut(response, chunked=chunked)
    owed = 0
    while True:
        while stream.data:
            data, flow = stream.data.popleft()
            owed += flow
            if data:
                if tapped is not None:
                    tapped.response_bytes += len(data)
                out += body.add(data)
        done = stream.ended
        if done:
            out += body.end()
        elif stream.failure is not None:
            raise stream.failure
        if out:
            await client.send(out)  # then the peer may send as much again
            out = b""
        stream.consumed(owed)
        owed = 0
        if done:
            return
        if not stream.data and not stream.ended and stream.failure is None:  # (what came
            await stream.changed()  # while the client took the last bytes counts too)


def _failed(exchange: Exchange, stream: UpgradedStream, error: UpstreamError) -> NoReturn:
    """The attempt ended before a response head: retry, or raise ``error`` to answer with."""
    refused = stream.refused and not exchange.streamed
    outcome = Outcome.CONNECT_FAILED if refused else Outcome.FAILURE
    if isinstance(exchange.report(outcome=outcome), Retry):
        log.info("%s: %s; retrying", exchange.target.authority, error)
        exchange.session.context.metrics.response_end(exchange.labels, 502, "failure")
        raise RetryAttempt from error
    raise error
