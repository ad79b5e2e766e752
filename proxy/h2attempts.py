"""The attempts of one stream of the per-stream HTTP/2 mesh path (``proxy/h2mux.py``): its target
(the Service its ``:authority`` names, else the connection's), route and attempt series, the pick
of an endpoint (at once when nothing needs waiting for, else in a task of its own under the route
timeout), an upstream connection with room, the upstream stream opened with the request head, and
what happens when an attempt fails before a response head: retry on another endpoint, or answer.
"""

from __future__ import annotations

import abc
import logging

import trio

from proxy.balance import Outcome, Pick, Retry
from proxy.context import OUTBOUND
from proxy.discovery import Endpoint
from proxy.errors import UpstreamError
from proxy.h2muxstate import MuxState
from proxy.h2peer import CANCEL
from proxy.h2stream import MuxStream
from proxy.h2upstream import Upstream
from proxy.outbound import RouteTimeout, Target, no_endpoint_error

__all__ = ["MuxAttempts"]

log = logging.getLogger(__name__)


class MuxAttempts(MuxState, abc.ABC):
    """Starting, retrying and failing the attempts of the client connection's streams."""

    @abc.abstractmethod
    async def _upstream(self, endpoint: Endpoint, target: Target) -> Upstream:
        """An upstream connection to ``endpoint`` with room for a stream (opened if needed)."""

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
                now = stream.started  # the time of this read
                target.sync(now)
                choice = stream.attempts.pick(now)
                if isinstance(choice, Pick):
                    stream.pick, stream.reported = choice, False
                    up = self.pool.with_room(choice.endpoint)
                    if up is not None:
                        self._open(stream, up, choice.endpoint, now)
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
            assert stream.wake is not None
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
            await stream.wake.wait()  # set by ``_finish`` or ``_retry``
            if not stream.next_retry:
                return

    def _open(
        self, stream: MuxStream, up: Upstream, endpoint: Endpoint, now: float | None = None
    ) -> None:
        stream.up, stream.endpoint = up, endpoint
        stream.up_id = up.peer.open_stream()
        up.streams[stream.up_id] = stream
        stream.rewind()
        stream.attempt_started = trio.current_time() if now is None else now
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
