"""The upstream HTTP/2 connections of the per-stream path (``proxy/h2mux.py``), shared by every
client connection of the process: a ``Link`` (a socket and the ``Peer`` speaking over it), an
``Upstream`` (a link to one endpoint and the streams it carries, whatever client connection they
came from) and ``UpstreamPool``, the set of them by endpoint, with the tasks that move their bytes.

Theory of operation. A stream picked for an endpoint takes an ``Upstream`` to it with room (not
closing, under the peer's concurrency limit and our own, stream ids left); otherwise one is
opened through the target's connector (mTLS when discovery gave an identity). Streams picked for
the same endpoint while it connects wait for that connection instead of opening their own. As in
Linkerd, one connection per endpoint carries the streams of all client connections: requests
that arrive together leave in one write (one TLS record), and the peer's proxy reads them at
once.

Each ``Upstream`` has two tasks in the pool's nursery (``Outbound.run``), never in a client
connection's: a writer, woken by ``kick`` whenever someone queued bytes in its peer (so the
frames of every stream queued in one scheduler pass leave together, and a client connection
that ends can never cut a frame in half), and a reader, which hands each stream's events to the
client connection owning the stream (a ``StreamOwner``) and wakes its writer. The reader never
waits for a client: a slow client's responses stay queued on its stream (the stream's window,
not the connection's, bounds them: ``Peer`` returns connection window on receipt for upstream
connections), so one slow client never stalls the others' streams.

Connections carrying upgraded HTTP/1 requests (``Session.HTTP1_OVER_H2``, to the peer's proxy
port) are kept apart from native HTTP/2 ones: the session is part of the pool key.

An ``Upstream`` that takes no new streams (GOAWAY received, its endpoint removed from discovery)
is closed once its last stream is done (``maybe_close``); idle ones to removed endpoints are
also swept whenever a new connection is opened, and any without a stream for the outbound idle
timeout (``MESHLET_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT``, as for unused authorities) is
closed. A connection silent for the keepalive interval gets a PING; still silent after the
keepalive timeout, it is closed and its streams fail over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

import trio

from proxy.balance import key_of
from proxy.discovery import Endpoint
from proxy.errors import ProxyError, UpstreamClosed, UpstreamError
from proxy.h2peer import (
    Data,
    GoAwayReceived,
    Headers,
    Peer,
    PeerError,
    PeerEvent,
    Reset,
    WindowOpened,
)
from proxy.metrics import Metrics
from proxy.mtls.transport import Session
from proxy.net import Conn, format_address

if TYPE_CHECKING:
    from proxy.h2stream import MuxStream
    from proxy.outbound import Target

__all__ = ["Link", "StreamOwner", "Upstream", "UpstreamPool"]

log = logging.getLogger(__name__)

_MAX_UPSTREAM_STREAMS: Final = 20
"""Streams in flight on one upstream connection before the next stream to that endpoint takes
another: h2load's bursts of 10 still share one connection, while 100 streams in flight no longer
queue through a single reader and writer (in ``bench mesh`` at saturation, one connection
carried 5,900-7,200 req/s with the two proxies using under one core; five reached
7,500-8,200)."""
_UPSTREAM_ID_LIMIT: Final = 2**31 - 1000  # open a fresh connection before ids run out
_PoolKey = tuple[str, int, str | None, Session | None]  # address, port, TLS identity, session


class Link:
    """A socket and the HTTP/2 peer speaking over it; ``flush`` sends what the peer queued.

    A connection shared by several tasks has a writer task of its own (``wait_for_bytes``, then
    ``flush``), woken by ``kick`` when a task queued bytes, so the frames queued in one scheduler
    pass leave in one write; ``send_soon`` lets the first of them go at once."""

    __slots__ = ("_writer", "conn", "last_read", "peer", "sending")

    def __init__(self, conn: Conn, peer: Peer) -> None:
        self.conn = conn
        self.peer = peer
        self.sending = False
        self.last_read = trio.current_time()
        self._writer = trio.lowlevel.ParkingLot()  # the writer task, waiting for bytes

    def kick(self) -> None:
        """Wake the writer if bytes are queued."""
        if self.peer.out:
            self.wake()

    def wake(self) -> None:
        """Wake the writer (if it waits)."""
        if self._writer:
            self._writer.unpark()

    async def wait_for_bytes(self) -> None:
        """The writer's wait until ``kick``."""
        await self._writer.park()

    async def send_soon(self) -> None:
        """Send what is queued from the calling task when the writer is idle (a request alone,
        or the first of a burst, leaves at once, so the peer starts on it while the rest of
        the burst is read) and wake the writer, which gathers whatever else this scheduler
        pass queues into its one write; when the writer is already woken or sending, leave
        the bytes to it. The write is shielded: a TLS record cut short by a cancellation would
        corrupt the connection for every stream. So it is one write, of what was queued when
        called: what other tasks queue meanwhile is the writer's (woken again at the end), and
        a cancelled caller is never held behind their bytes. Raises the send's
        ``ProxyError``."""
        out = self.peer.out
        if not self._writer or self.sending or not out:
            return
        self._writer.unpark()
        data = bytes(out)
        out.clear()
        self.sending = True
        try:
            with trio.CancelScope(shield=True):
                await self.conn.send(data)
        finally:
            self.sending = False
            if out:
                self.wake()

    async def until_unanswered_ping(
        self, interval: float, timeout: float, flush: Callable[[], Awaitable[None]]
    ) -> None:
        """Return once the peer, silent for ``interval`` and sent a PING (queued, then
        ``flush``), is still silent ``timeout`` later: the keepalive of one connection. Also
        when the PING could not be written within ``timeout`` (a peer that stopped reading;
        the write is cut short, so the connection must end)."""
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            if now - self.last_read < interval:
                continue
            self.peer.ping()
            written = False
            with trio.move_on_after(timeout):
                await flush()
                written = True
                await trio.sleep_until(now + timeout)
            if self.last_read <= now or not written:
                return

    async def flush(self) -> None:
        if self.sending:
            return  # the task already sending picks these bytes up
        out = self.peer.out
        self.sending = True
        try:
            while out:
                data = bytes(out)
                out.clear()
                await self.conn.send(data)
        finally:
            self.sending = False


class StreamOwner(Protocol):
    """The client connection a stream came from: what an upstream's reader hands it."""

    def upstream_event(
        self, up: Upstream, stream: MuxStream, event: Data | Headers | Reset
    ) -> None:
        """A frame of ``stream`` arrived on ``up``."""

    def upstream_window(self, stream: MuxStream) -> None:
        """``stream`` may send more of its request body."""

    def upstream_refused(self, up: Upstream, stream: MuxStream) -> None:
        """``up``'s GOAWAY says ``stream`` was never processed (safe to send elsewhere)."""

    def upstream_gone(self, up: Upstream, stream: MuxStream, reason: UpstreamError) -> None:
        """``up`` ended with ``stream`` on it."""

    def kick(self) -> None:
        """Bytes were queued for the client: wake the connection's writer."""


class Upstream(Link):
    """One HTTP/2 connection to an endpoint, carrying streams of any client connection."""

    __slots__ = (
        "closed",
        "closing",
        "endpoint",
        "idle_since",
        "session",
        "streams",
        "target",
    )

    def __init__(
        self, conn: Conn, endpoint: Endpoint, target: Target, session: Session | None = None
    ) -> None:
        super().__init__(conn, Peer(client_side=True))
        self.endpoint = endpoint
        self.session = session
        """``None``: native HTTP/2 streams; ``Session.HTTP1_OVER_H2``: upgraded HTTP/1
        requests, to the peer's proxy port (``proxy/h1upgrade.py``)."""
        self.target = target
        self.streams: dict[int, MuxStream] = {}
        self.closing = False  # GOAWAY received, ids exhausted, or the connection broke
        self.closed = False
        self.idle_since = self.last_read  # when its last stream ended (or it opened)

    async def send_soon(self) -> None:
        """``Link.send_soon``; a failure closes the connection (its reader fails over its
        streams)."""
        try:
            await super().send_soon()
        except ProxyError as exc:
            log.debug("outbound h2 upstream %s: %s", self.endpoint.address, exc)
            self.closing = True
            self.close()

    def close(self) -> None:
        """Close once (best effort to send what is queued, a GOAWAY included)."""
        if self.closed:
            return
        self.closed = self.closing = True  # no new stream until the reader forgets it
        if self.peer.out and not self.sending:
            self.conn.send_nowait(bytes(self.peer.out))  # what fits now, or nothing
        self.peer.out.clear()
        self.conn.close()
        self._writer.unpark_all()

    def has_room(self) -> bool:
        peer = self.peer
        return (
            not self.closing
            and peer.open_streams < min(peer.peer_max_concurrent, _MAX_UPSTREAM_STREAMS)
            and peer.next_stream_id < _UPSTREAM_ID_LIMIT
        )


def _pool_key(endpoint: Endpoint, session: Session | None) -> _PoolKey:
    return (endpoint.address, endpoint.port, endpoint.identity, session)


class UpstreamPool:
    """The process's upstream HTTP/2 connections, by endpoint (see the module docstring)."""

    def __init__(
        self, keepalive_interval: float, keepalive_timeout: float, idle_timeout: float
    ) -> None:
        self._by_key: dict[_PoolKey, list[Upstream]] = {}
        self._connecting: dict[_PoolKey, trio.Event] = {}
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._idle_timeout = idle_timeout
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the connections' tasks until cancelled; then close every connection."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keepalive_loop)
                nursery.start_soon(self._idle_loop)
                task_status.started()
        finally:
            self._nursery = None
            self.close_all()

    def all(self) -> list[Upstream]:
        return [up for ups in self._by_key.values() for up in ups]

    def with_room(self, endpoint: Endpoint, session: Session | None = None) -> Upstream | None:
        for up in self._by_key.get(_pool_key(endpoint, session), ()):
            if up.has_room():
                return up
        return None

    def kick_all(self) -> None:
        """Wake the writer of every connection with bytes queued."""
        for ups in self._by_key.values():
            for up in ups:
                up.kick()

    async def get(
        self,
        endpoint: Endpoint,
        target: Target,
        metrics: Metrics,
        session: Session | None = None,
    ) -> Upstream:
        """An upstream to ``endpoint`` with room (opened, with its tasks, if needed).

        ``session``: ``None`` for native HTTP/2 streams (a connection to the endpoint itself);
        ``Session.HTTP1_OVER_H2`` for upgraded HTTP/1 requests, on connections of their own (to
        the peer's proxy port, ``proxy.tlsglue``)."""
        key = _pool_key(endpoint, session)
        while True:
            up = self.with_room(endpoint, session)
            if up is not None:
                return up
            pending = self._connecting.get(key)
            if pending is None:
                break
            await pending.wait()
        if self._nursery is None:
            raise UpstreamClosed("the proxy is shutting down")
        self._close_removed()
        event = self._connecting[key] = trio.Event()
        try:
            if session is None:
                conn = await target.connect(endpoint, metrics)
            else:
                conn = await target.connect(endpoint, metrics, session)
        finally:
            del self._connecting[key]
            event.set()
        up = Upstream(conn, endpoint, target, session)
        if self._nursery is None:  # shut down while connecting
            up.close()
            raise UpstreamClosed("the proxy is shutting down")
        up.peer.initiate()
        self._by_key.setdefault(key, []).append(up)
        self._nursery.start_soon(self._read_loop, up)
        self._nursery.start_soon(self._write_loop, up)
        return up

    def _close_removed(self) -> None:
        """Idle connections to endpoints discovery no longer lists are closed."""
        for up in self.all():
            endpoints = up.target.endpoints
            if endpoints is not None and key_of(up.endpoint) not in endpoints.current().endpoints:
                up.closing = True
                self.maybe_close(up)

    def maybe_close(self, up: Upstream) -> None:
        """Close ``up`` once idle if it takes no new streams (GOAWAY, or its endpoint was
        removed from discovery)."""
        if up.streams:
            return
        up.idle_since = trio.current_time()
        if not up.closing:
            endpoints = up.target.endpoints
            if endpoints is None or key_of(up.endpoint) in endpoints.current().endpoints:
                return
            up.closing = True
        if self.forget(up):
            up.peer.goaway(0)
            up.close()

    def forget(self, up: Upstream) -> bool:
        """Take ``up`` out of the set (it takes no new streams); whether it was in it."""
        key = _pool_key(up.endpoint, up.session)
        ups = self._by_key.get(key, [])
        if up not in ups:
            return False
        ups.remove(up)
        if not ups:
            del self._by_key[key]
        return True

    def close_all(self) -> None:
        for up in self.all():
            up.close()
        self._by_key.clear()

    # -- the connections' tasks -------------------------------------------------------------------

    async def _write_loop(self, up: Upstream) -> None:
        try:
            while not up.closed:
                if up.peer.out and not up.sending:
                    await up.flush()
                else:  # (a task sending inline, ``send_soon``, wakes the writer when done)
                    await up.wait_for_bytes()
        except ProxyError as exc:
            log.debug("outbound h2 upstream %s: %s", up.endpoint.address, exc)
            up.closing = True
            up.close()  # its reader sees the end and fails over its streams

    async def _read_loop(self, up: Upstream) -> None:
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
                owners: set[StreamOwner] = set()
                for event in events:
                    self._dispatch(up, event, owners)
                self._wake(owners)
        except UpstreamError as exc:
            reason = exc
        except ProxyError as exc:
            log.debug("outbound h2 upstream: %s", exc)
        self._gone(up, reason)

    def _dispatch(self, up: Upstream, event: PeerEvent, owners: set[StreamOwner]) -> None:
        streams = up.streams
        if isinstance(event, (Data, Headers, Reset)):
            stream = streams.get(event.stream_id)
            if stream is None:
                if isinstance(event, Data):
                    up.peer.consumed(event.stream_id, event.flow)
                return
            owner = stream.owner
            owner.upstream_event(up, stream, event)
            owners.add(owner)
        elif isinstance(event, WindowOpened):
            if event.stream_id == 0:
                chosen = list(streams.values())
            else:
                one = streams.get(event.stream_id)
                chosen = [] if one is None else [one]
            for stream in chosen:
                stream.owner.upstream_window(stream)
                owners.add(stream.owner)
        elif isinstance(event, GoAwayReceived):
            up.closing = True
            log.info("outbound h2 upstream %s sent GOAWAY", format_address(key_of(up.endpoint)))
            for up_id in [i for i in streams if i > event.last_stream_id]:
                stream = streams[up_id]  # never processed: safe to send elsewhere
                stream.owner.upstream_refused(up, stream)
                owners.add(stream.owner)
            self.maybe_close(up)

    def _gone(self, up: Upstream, reason: UpstreamError) -> None:
        up.closing = True
        self.forget(up)
        owners: set[StreamOwner] = set()
        for stream in list(up.streams.values()):
            stream.owner.upstream_gone(up, stream, reason)
            owners.add(stream.owner)
        up.streams.clear()
        up.close()
        self._wake(owners)

    def _wake(self, owners: set[StreamOwner]) -> None:
        """Send what the events queued: the upstreams' writers, then the clients'."""
        self.kick_all()
        for owner in owners:
            owner.kick()

    async def _idle_loop(self) -> None:
        """Connections without a stream for the idle timeout are closed (a GOAWAY first)."""
        idle = self._idle_timeout
        while True:
            await trio.sleep(max(idle / 2, 0.05))
            now = trio.current_time()
            for up in self.all():
                if not up.streams and now - up.idle_since >= idle:
                    up.closing = True
                    self.maybe_close(up)

    async def _keepalive_loop(self) -> None:
        """A PING to a connection silent for the keepalive interval; still silent after the
        keepalive timeout, it is closed (its reader fails over its streams)."""
        interval, timeout = self._keepalive
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            silent = [up for up in self.all() if now - up.last_read >= interval]
            if not silent:
                continue
            for up in silent:
                up.peer.ping()
                up.kick()
            await trio.sleep(timeout)
            for up in silent:
                if up.last_read <= now and not up.closed:
                    log.info("outbound h2 upstream %s did not answer a PING", up.endpoint.address)
                    up.close()
