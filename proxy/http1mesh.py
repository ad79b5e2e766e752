"""One HTTP/1 request to a discovered destination: per-request pick, pools, retries, timeout.

Theory of operation. ``proxy/http1.py`` hands a request here when ``proxy.outbound`` resolved its
authority (the ``Host`` naming a Service, else the connection's original destination). The request
body is read into memory up to ``outbound_retry_buffer_bytes`` (unless the request waits for
``100 Continue`` or upgrades), so it can be sent again. Then, until an attempt is final:
``attempts.pick`` (waiting up to the failfast timeout for endpoints), a pooled keep-alive
connection to that endpoint (or a new one, mTLS when discovery gave an identity), the request, and
the response head; or, when
the endpoint's proxy takes HTTP/1 over HTTP/2 and the request may be upgraded, a stream on the
shared HTTP/2 connection to that proxy (``proxy/h1upgrade.py``), with the same reports and retries.
Pooled connections idle for the pool idle timeout are not reused, and one found dead before any
response byte is replaced once for an idempotent, wholly buffered request (``proxy/h1/replay.py``).
Every pick is reported exactly once (``attempts.finished``): with the status when the head arrives,
``CONNECT_FAILED`` when the connect fails, ``FAILURE`` when the connection breaks or the route
timeout fires, ``CANCELLED`` when the client goes away. A ``Retry`` answer discards the failed
response (its connection is closed) and tries another endpoint; otherwise the response is relayed as
the plain path does. The route timeout covers the whole exchange: before the response head the
client gets 504 ``meshlet-proxy-error: route_timeout``, after it the client connection is reset (the
response can no longer be replaced).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

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
from proxy.h1 import End, RequestHead, ResponseReader
from proxy.h1.replay import (
    BODY_NOT_KEPT,
    NOT_IDEMPOTENT,
    NOT_REPLAYED,
    REPLAY,
    idempotent,
    replay_decision,
    reuse_idle,
)
from proxy.h1.write import frame_body, write_request
from proxy.h1upgrade import RetryAttempt, attempt_upgraded
from proxy.h1upgradeconvert import request_refusal
from proxy.metrics import classify
from proxy.net import Conn
from proxy.outbound import RouteTimeout, Target, no_endpoint_error

if TYPE_CHECKING:
    from proxy.http1 import _Session

__all__ = ["Exchange", "proxy_mesh"]

log = logging.getLogger(__name__)

_HEAD: Final = b"HEAD"


class _FailedHead(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def proxy_mesh(
    session: _Session, request: RequestHead, authority: bytes, target: Target
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
    head = write_request(request, request.fields.forwarded, target.authority.encode())
    exchange = Exchange(session, target, attempts, request, head, authority=authority)
    target.users += 1
    try:
        try:
            if request.fields.upgrade is None and not request.fields.expect_continue:
                await exchange.buffer_body(context.settings.outbound_retry_buffer_bytes)
            attempts.replayable = exchange.complete
            deadline = attempts.deadline
            if deadline is None:  # no route timeout: no cancel scope (a few % of a request)
                status, switched = await exchange.run()
                timed_out = False
            else:
                with trio.move_on_at(deadline) as timeout:
                    status, switched = await exchange.run()
                timed_out = timeout.cancelled_caught
        except (UpstreamError, ProxyConfigError) as exc:
            exchange.record_error(exc.status, started, exc.slug)
            log.info("outbound %s %s: %s", request.method.decode(), target.authority, exc)
            _route_response(session, route_labels, exc.status, started)
            await session.send_error(exc, status=exc.status)
            return False
        except ClientProtocolError as exc:
            await session.send_error(exc, status=exc.status_hint)
            return False
        if timed_out:
            error = RouteTimeout(f"the route {route_name!r} of {target.authority} timed out")
            exchange.record_error(error.status, started, error.slug)
            _route_response(session, route_labels, error.status, started)
            await session.send_error(error, status=error.status)
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


class Exchange:
    """The attempts of one request (see the module docstring); an attempt to an endpoint whose
    proxy takes HTTP/1 requests over HTTP/2 runs in ``proxy/h1upgrade.py``."""

    def __init__(
        self,
        session: _Session,
        target: Target,
        attempts: Attempts[Endpoint],
        request: RequestHead,
        head: bytes,
        *,
        authority: bytes,
    ) -> None:
        self.session = session
        self.target = target
        self.attempts = attempts
        self.request = request
        self.head = head
        self.authority = authority
        self.buffered: list[bytes | End] = []
        """The request body read so far (its events), kept for retries."""
        self.complete = False
        self.streamed = False
        """Body beyond ``buffered`` was sent (an upgraded attempt): it cannot be sent again."""
        self.upgradable = (
            target.outbound.settings.outbound_http1_upgrade and request_refusal(request) is None
        )
        """The request may travel as an HTTP/2 stream (the upgrade is on and it is neither a
        CONNECT, an Upgrade nor ``Expect: 100-continue``); the endpoint decides per attempt."""
        self.labels = ""
        self.pick: Pick[Endpoint] | None = None
        self.reported = True

    async def buffer_body(self, limit: int) -> None:
        """Read the request body into memory, up to ``limit`` bytes (then stop)."""
        size = 0
        session = self.session
        while True:
            event = await session.client_body_event()
            self.buffered.append(event)
            if type(event) is End:
                self.complete = True
                return
            assert type(event) is bytes
            size += len(event)
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

    def report(
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
                if self.upgradable and self.target.outbound.upgrades_http1(choice.endpoint):
                    return await attempt_upgraded(self, choice.endpoint), False
                return await self._attempt(choice.endpoint)
            except RetryAttempt:
                log.debug("retrying %s on another endpoint", self.target.authority)
                continue
            finally:
                if not self.reported:
                    deadline = self.attempts.deadline
                    timed_out = deadline is not None and trio.current_time() >= deadline
                    self.report(outcome=Outcome.FAILURE if timed_out else Outcome.CANCELLED)

    def _on_head(self, status: int) -> None:
        if isinstance(self.report(status=status), Retry):
            raise _FailedHead(status)

    async def _attempt(self, endpoint: Endpoint) -> tuple[int, bool]:
        session, target = self.session, self.target
        metrics = session.context.metrics
        conn, wire = await self._connect(endpoint)
        self.labels = metrics.http_labels(
            OUTBOUND, self.authority, conn.tls_labels, target.dst_labels(endpoint)
        )
        metrics.request(self.labels)
        session.tap.start(self.request, self.authority, (endpoint.address, endpoint.port), conn)
        started = trio.current_time()
        ending = "abort"
        try:
            conn, wire, status, switched = await self._exchange_fresh(endpoint, conn, wire, started)
            if not self.reported:  # 101: no final head went through ``_on_head``
                self.report(status=status)
            if switched:
                ending = "tunnel"
                session.tap.end()
                await session.tunnel(conn, wire)
            else:
                metrics.response_end(self.labels, status, classify(status, None))
                session.tap.end()
                if session.wire_reusable(wire):
                    ending = "keep"
        except _FailedHead as failed:
            latency_ms = (trio.current_time() - started) * 1000
            metrics.response_headers(self.labels, failed.status, latency_ms)
            metrics.response_end(self.labels, failed.status, "failure")
            raise RetryAttempt from None
        except UpstreamError:
            if not self.reported and isinstance(self.report(outcome=Outcome.FAILURE), Retry):
                metrics.response_end(self.labels, 502, "failure")
                raise RetryAttempt from None
            raise
        except ClientClosed:
            if not self.reported:
                self.report(outcome=Outcome.CANCELLED)
            raise
        finally:
            if ending == "keep":
                wire.idle_since = trio.current_time()
                target.checkin(endpoint, conn, wire)
            elif ending == "abort":
                conn.abort()
        return status, switched

    async def _exchange_fresh(
        self, endpoint: Endpoint, conn: Conn, wire: ResponseReader, started: float
    ) -> tuple[Conn, ResponseReader, int, bool]:
        """``_exchange``; when a pooled connection turns out closed as it is reused (the server
        timed it out just then: the request never reached the application), once more on a new
        connection. Returns the connection used."""
        try:
            return conn, wire, *await self._exchange(conn, wire, started)
        except (UpstreamClosed, UpstreamProtocolError):
            if not self._stale(wire):
                raise
        conn.abort()
        fresh = await self.target.connect(endpoint, self.session.context.metrics)
        fresh_wire = ResponseReader()
        try:
            return fresh, fresh_wire, *await self._exchange(fresh, fresh_wire, started)
        except BaseException:
            fresh.abort()
            raise

    def _stale(self, wire: ResponseReader) -> bool:
        """Whether a closed connection may be retried at once on a new one
        (``proxy/h1/replay.py``): it was reused, no byte of a response arrived, the request is
        idempotent and wholly buffered."""
        decision = replay_decision(
            reused=wire.responses > 0,
            response_bytes=wire.received,
            idempotent=idempotent(self.request),
            kept=self.complete,
        )
        if decision in (NOT_IDEMPOTENT, BODY_NOT_KEPT):
            log.info(
                "%s: a reused connection closed before answering; not sent again: %s",
                self.target.authority,
                NOT_REPLAYED[decision],
            )
        return decision == REPLAY and not self.reported

    async def _connect(self, endpoint: Endpoint) -> tuple[Conn, ResponseReader]:
        """A pooled connection to ``endpoint`` idle for less than the pool idle timeout (the
        server may be closing older ones right now; meshed ones are exempt), else a new one."""
        context = self.session.context
        idle_limit = context.settings.http1_pool_idle_timeout
        try:
            while True:
                conn, wire = await self.target.checkout(endpoint, context.metrics)
                idle = trio.current_time() - wire.idle_since
                if not wire.responses or reuse_idle(
                    idle, idle_limit, meshed=conn.peer_id is not None
                ):
                    return conn, wire
                conn.close()
        except UpstreamError as exc:
            if isinstance(self.report(outcome=Outcome.CONNECT_FAILED), Retry):
                log.info("outbound connect to %s failed (%s); retrying", self.target.authority, exc)
                raise RetryAttempt from exc
            raise

    async def _exchange(self, conn: Conn, wire: ResponseReader, started: float) -> tuple[int, bool]:
        """Send the request (buffered part, then the rest as it arrives) and relay the answer."""
        session, request = self.session, self.request
        wire.start(head_request=request.method == _HEAD)
        await conn.send(b"".join([self.head, *[frame_body(request, e) for e in self.buffered]]))
        if self.complete:
            return await session.relay_response(
                conn, wire, request, self.labels, started, on_head=self._on_head
            )
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_rest, conn)
                result = await session.relay_response(
                    conn, wire, request, self.labels, started, on_head=self._on_head
                )
                nursery.cancel_scope.cancel()  # an early response ends the upload
        return result

    async def _pump_rest(self, conn: Conn) -> None:
        """After the buffered part: the rest of a body too large to buffer, as it arrives."""
        session, request = self.session, self.request
        while True:
            event = await session.client_body_event()
            data = frame_body(request, event)
            if data:
                await conn.send(data)
            if type(event) is End:
                return
