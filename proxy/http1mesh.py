"""One HTTP/1 request to a discovered destination: per-request pick, pools, retries, timeout.

Theory of operation. ``proxy/http1.py`` hands a request here when ``proxy.outbound`` resolved its
authority (the ``Host`` naming a Service, else the connection's original destination). The
request body is read into memory up to ``outbound_retry_buffer_bytes`` (unless the request waits
for ``100 Continue`` or upgrades), so it can be sent again. Then, until an attempt is final:
``attempts.pick`` (waiting up to the failfast timeout for endpoints), a pooled keep-alive
connection to that endpoint (or a new one, mTLS when discovery gave an identity), the request, and
the response head. Every pick is reported exactly once (``attempts.finished``): with the status
when the head arrives, ``CONNECT_FAILED`` when the connect fails, ``FAILURE`` when the connection
breaks or the route timeout fires, ``CANCELLED`` when the client goes away. A ``Retry`` answer
discards the failed response (its connection is closed) and tries another endpoint; otherwise the
response is relayed as the plain path does. The route timeout covers the whole exchange: before
the response head the client gets 504 ``meshlet-proxy-error: route_timeout``, after it the client
connection is reset (the response can no longer be replaced).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import h11
import trio

from proxy.balance import Attempts, GiveUp, Outcome, Pick, Retry
from proxy.context import OUTBOUND
from proxy.discovery import Endpoint
from proxy.errors import (
    ClientClosed,
    ClientProtocolError,
    ProxyConfigError,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    unwrap_groups,
)
from proxy.headers import forward_headers
from proxy.metrics import classify
from proxy.net import Conn
from proxy.outbound import RouteTimeout, Target, no_endpoint_error

if TYPE_CHECKING:
    from proxy.http1 import _Session

__all__ = ["proxy_mesh"]

log = logging.getLogger(__name__)

_EXPECT: Final = b"expect"
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class _RetryAttempt(Exception):
    """The attempt failed and the retry policy said: try again."""


class _FailedHead(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def proxy_mesh(
    session: _Session, request: h11.Request, authority: bytes, target: Target
) -> bool:
    """Forward one request to ``target``; ``True`` if the connection became a tunnel."""
    context = session.context
    metrics = context.metrics
    started = trio.current_time()
    attempts = target.begin(request.method, request.target, started)
    route_name = attempts.route.name
    route_labels = (
        metrics.route_labels(OUTBOUND, target.authority, route_name) if route_name else ""
    )
    if route_labels:
        metrics.route_request(route_labels)
    forwarded = forward_headers(request.headers)
    if not authority:
        forwarded.headers.append((b"host", target.authority.encode()))
    head = h11.Request(
        method=request.method, target=request.target, headers=forwarded.headers, _parsed=True
    )
    upgrade = forwarded.upgrade is not None
    exchange = _Exchange(
        session, target, attempts, request, head, authority=authority, upgrade=upgrade
    )
    target.users += 1
    try:
        try:
            if not upgrade and not _expects_continue(request.headers):
                await exchange.buffer_body(context.settings.outbound_retry_buffer_bytes)
            attempts.replayable = exchange.complete
            with trio.move_on_at(attempts.deadline or float("inf")) as timeout:
                status, switched = await exchange.run()
        except (UpstreamError, ProxyConfigError) as exc:
            exchange.record_error(exc.status, started, exc.slug)
            log.info("outbound %s %s: %s", request.method.decode(), target.authority, exc)
            _route_response(session, route_labels, exc.status, started)
            await session._send_error(exc, status=exc.status)
            return False
        except ClientProtocolError as exc:
            await session._send_error(exc, status=exc.status_hint)
            return False
        if timeout.cancelled_caught:
            error = RouteTimeout(f"the route {route_name!r} of {target.authority} timed out")
            exchange.record_error(error.status, started, error.slug)
            _route_response(session, route_labels, error.status, started)
            await session._send_error(error, status=error.status)
            return False
    finally:
        target.users -= 1
        target.last_used = trio.current_time()
    _route_response(session, route_labels, status, started)
    return switched


def _route_response(session: _Session, labels: str, status: int, started: float) -> None:
    if labels:
        latency_ms = (trio.current_time() - started) * 1000
        session.context.metrics.route_response(labels, status, classify(status, None), latency_ms)


def _expects_continue(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name == _EXPECT and value.lower() == b"100-continue" for name, value in headers)


class _Exchange:
    """The attempts of one request (see the module docstring)."""

    def __init__(
        self,
        session: _Session,
        target: Target,
        attempts: Attempts[Endpoint],
        request: h11.Request,
        head: h11.Request,
        *,
        authority: bytes,
        upgrade: bool,
    ) -> None:
        self.session = session
        self.target = target
        self.attempts = attempts
        self.request = request
        self.head = head
        self.authority = authority
        self.upgrade = upgrade
        self.buffered: list[h11.Event] = []
        self.complete = False
        self.labels = ""
        self.pick: Pick[Endpoint] | None = None
        self.reported = True

    async def buffer_body(self, limit: int) -> None:
        """Read the request body into memory, up to ``limit`` bytes (then stop)."""
        size = 0
        while True:
            event = await self.session._client_body_event()
            self.buffered.append(event)
            if isinstance(event, h11.EndOfMessage):
                if event.headers:  # trailers (rare): hop-by-hop fields removed
                    trailers = forward_headers(event.headers, allow_upgrade=False).headers
                    self.buffered[-1] = h11.EndOfMessage(headers=trailers)
                self.complete = True
                return
            assert isinstance(event, h11.Data)
            size += len(event.data)
            if size > limit:
                return

    def record_error(self, status: int, started: float, slug: str) -> None:
        """Metrics (and tap) for a request the proxy answers itself (or resets)."""
        session = self.session
        session.tap.start(self.request, self.authority, session.route.target, None)
        session.tap.end(status, slug)
        metrics = session.context.metrics
        if not self.labels:
            self.labels = metrics.http_labels(OUTBOUND, self.authority)
            metrics.request(self.labels)
        metrics.response_headers(self.labels, status, (trio.current_time() - started) * 1000)
        metrics.response_end(self.labels, status, "failure")

    def _report(
        self, *, status: int | None = None, outcome: Outcome | None = None
    ) -> Retry | GiveUp:
        """``attempts.finished`` for the current pick; called exactly once per pick."""
        assert self.pick is not None
        self.reported = True
        now = trio.current_time()
        return self.attempts.finished(self.pick, now, status=status, outcome=outcome)

    async def run(self) -> tuple[int, bool]:
        while True:
            choice = await self.target.pick(self.attempts.pick)
            if not isinstance(choice, Pick):
                raise no_endpoint_error(choice, self.target.authority)
            self.pick, self.reported = choice, False
            try:
                return await self._attempt(choice.endpoint)
            except _RetryAttempt:
                log.debug("retrying %s on another endpoint", self.target.authority)
                continue
            finally:
                if not self.reported:
                    deadline = self.attempts.deadline
                    timed_out = deadline is not None and trio.current_time() >= deadline
                    self._report(outcome=Outcome.FAILURE if timed_out else Outcome.CANCELLED)

    def _on_head(self, status: int) -> None:
        if isinstance(self._report(status=status), Retry):
            raise _FailedHead(status)

    async def _attempt(self, endpoint: Endpoint) -> tuple[int, bool]:
        session, target = self.session, self.target
        metrics = session.context.metrics
        conn, conn_h11 = await self._connect(endpoint)
        self.labels = metrics.http_labels(
            OUTBOUND, self.authority, conn.tls_labels, target.dst_labels(endpoint)
        )
        metrics.request(self.labels)
        session.tap.start(self.request, self.authority, (endpoint.address, endpoint.port), conn)
        started = trio.current_time()
        ending = "abort"
        try:
            conn, conn_h11, status, switched = await self._exchange_fresh(
                endpoint, conn, conn_h11, started
            )
            if not self.reported:  # 101: no final head went through ``_on_head``
                self._report(status=status)
            if switched:
                ending = "tunnel"
                session.tap.end()
                await session._tunnel(conn, conn_h11)
            else:
                metrics.response_end(self.labels, status, classify(status, None))
                session.tap.end()
                if conn_h11.our_state is h11.DONE and conn_h11.their_state is h11.DONE:
                    ending = "keep"
        except _FailedHead as failed:
            latency_ms = (trio.current_time() - started) * 1000
            metrics.response_headers(self.labels, failed.status, latency_ms)
            metrics.response_end(self.labels, failed.status, "failure")
            raise _RetryAttempt from None
        except UpstreamError:
            if not self.reported and isinstance(self._report(outcome=Outcome.FAILURE), Retry):
                metrics.response_end(self.labels, 502, "failure")
                raise _RetryAttempt from None
            raise
        except ClientClosed:
            if not self.reported:
                self._report(outcome=Outcome.CANCELLED)
            raise
        finally:
            if ending == "keep":
                target.checkin(endpoint, conn, conn_h11)
            elif ending == "abort":
                conn.abort()
        return status, switched

    async def _exchange_fresh(
        self, endpoint: Endpoint, conn: Conn, conn_h11: h11.Connection, started: float
    ) -> tuple[Conn, h11.Connection, int, bool]:
        """``_exchange``; when a pooled connection turns out closed as it is reused (the server
        timed it out just then: the request never reached the application), once more on a new
        connection. Returns the connection used."""
        try:
            return conn, conn_h11, *await self._exchange(conn, conn_h11, started)
        except (UpstreamClosed, UpstreamProtocolError):
            if not self._stale(conn_h11):
                raise
        conn.abort()
        fresh = await self.target.connect(endpoint, self.session.context.metrics)
        fresh_h11 = h11.Connection(h11.CLIENT)
        try:
            return fresh, fresh_h11, *await self._exchange(fresh, fresh_h11, started)
        except BaseException:
            fresh.abort()
            raise

    def _stale(self, conn_h11: h11.Connection) -> bool:
        """Whether a closed connection may be retried at once on a new one: it was reused, no
        byte of a response arrived, the request is buffered and idempotent."""
        return (
            conn_h11.their_http_version is not None  # a response came on it before: reused
            # h11 calls an end of stream before the head a protocol error (state ERROR)
            and conn_h11.their_state in {h11.SEND_RESPONSE, h11.ERROR}
            and not conn_h11.trailing_data[0]  # not one byte of a response
            and not self.reported
            and self.complete
            and self.request.method in _IDEMPOTENT
        )

    async def _connect(self, endpoint: Endpoint) -> tuple[Conn, h11.Connection]:
        try:
            return await self.target.checkout(endpoint, self.session.context.metrics)
        except UpstreamError as exc:
            if isinstance(self._report(outcome=Outcome.CONNECT_FAILED), Retry):
                log.info("outbound connect to %s failed (%s); retrying", self.target.authority, exc)
                raise _RetryAttempt from exc
            raise

    async def _exchange(
        self, conn: Conn, conn_h11: h11.Connection, started: float
    ) -> tuple[int, bool]:
        """Send the request (buffered part, then the rest as it arrives) and relay the answer."""
        relay = self.session._relay_response
        await _send(conn, conn_h11, self.head)
        for event in self.buffered:
            await _send(conn, conn_h11, event)
        if self.complete:
            return await relay(
                conn, conn_h11, self.labels, started, self.upgrade, on_head=self._on_head
            )
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_rest, conn, conn_h11)
                result = await relay(
                    conn, conn_h11, self.labels, started, self.upgrade, on_head=self._on_head
                )
                nursery.cancel_scope.cancel()  # an early response ends the upload
        return result

    async def _pump_rest(self, conn: Conn, conn_h11: h11.Connection) -> None:
        """After the buffered part: the rest of a body too large to buffer, as it arrives."""
        session = self.session
        if self.buffered and isinstance(self.buffered[-1], h11.EndOfMessage):
            return
        while True:
            event = await session._client_body_event()
            if isinstance(event, h11.EndOfMessage):
                headers = forward_headers(event.headers, allow_upgrade=False).headers
                await _send(conn, conn_h11, h11.EndOfMessage(headers=headers))
                return
            await _send(conn, conn_h11, event)


async def _send(conn: Conn, conn_h11: h11.Connection, event: h11.Event) -> None:
    try:
        data = conn_h11.send(event)
    except h11.LocalProtocolError as exc:
        raise UpstreamProtocolError(f"cannot forward to upstream: {exc}") from exc
    if data:
        await conn.send(data)
