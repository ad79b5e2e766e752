"""The upstream HTTP/2 connections of one client connection on the per-stream path
(``proxy/h2mux.py``): a ``Link`` (a socket and the ``Peer`` speaking over it), an ``Upstream``
(a link to one endpoint and the streams it carries) and ``Upstreams``, the set of them by
endpoint.

Theory of operation. A stream picked for an endpoint takes an ``Upstream`` to it with room (not
closing, under the peer's concurrency limit and our own, stream ids left); otherwise one is
opened through the target's connector (mTLS when discovery gave an identity). Streams picked for
the same endpoint while it connects wait for that connection instead of opening their own. An
``Upstream`` that takes no new streams (GOAWAY received, its endpoint removed from discovery)
is closed once its last stream is done (``maybe_close``); idle ones to removed endpoints are
also swept whenever a new connection is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from proxy.balance import Key, key_of
from proxy.discovery import Endpoint
from proxy.h2peer import Peer
from proxy.metrics import Metrics
from proxy.net import Conn

if TYPE_CHECKING:
    from proxy.h2stream import MuxStream
    from proxy.outbound import Target

__all__ = ["Link", "Upstream", "Upstreams"]

_MAX_UPSTREAM_STREAMS: Final = 1000  # per upstream connection, whatever the peer allows
_UPSTREAM_ID_LIMIT: Final = 2**31 - 1000  # open a fresh connection before ids run out


class Link:
    """A socket and the HTTP/2 peer speaking over it; ``flush`` sends what the peer queued."""

    __slots__ = ("conn", "last_read", "peer", "sending")

    def __init__(self, conn: Conn, peer: Peer) -> None:
        self.conn = conn
        self.peer = peer
        self.sending = False
        self.last_read = trio.current_time()

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


class Upstream(Link):
    """One HTTP/2 connection to an endpoint, carrying streams of one client connection."""

    __slots__ = ("closed", "closing", "endpoint", "streams", "target")

    def __init__(self, conn: Conn, endpoint: Endpoint, target: Target) -> None:
        super().__init__(conn, Peer(client_side=True))
        self.endpoint = endpoint
        self.target = target
        self.streams: dict[int, MuxStream] = {}
        self.closing = False  # GOAWAY received, ids exhausted, or the connection broke
        self.closed = False

    def close(self) -> None:
        """Close once (best effort to send what is queued, a GOAWAY included)."""
        if self.closed:
            return
        self.closed = True
        if self.peer.out and not self.sending:
            self.conn.send_nowait(bytes(self.peer.out))  # what fits now, or nothing
        self.peer.out.clear()
        self.conn.close()

    def has_room(self) -> bool:
        peer = self.peer
        return (
            not self.closing
            and peer.open_streams < min(peer.peer_max_concurrent, _MAX_UPSTREAM_STREAMS)
            and peer.next_stream_id < _UPSTREAM_ID_LIMIT
        )


class Upstreams:
    """The upstream connections of one client connection, by endpoint."""

    def __init__(self) -> None:
        self._by_key: dict[Key, list[Upstream]] = {}
        self._connecting: dict[Key, trio.Event] = {}

    def all(self) -> list[Upstream]:
        return [up for ups in self._by_key.values() for up in ups]

    def with_room(self, key: Key) -> Upstream | None:
        for up in self._by_key.get(key, ()):
            if up.has_room():
                return up
        return None

    async def get(
        self, endpoint: Endpoint, target: Target, metrics: Metrics, home: Target
    ) -> tuple[Upstream, bool]:
        """An upstream to ``endpoint`` with room, and whether it was just opened (its reader
        must be started). ``home`` is the connection's own target: connections to endpoints
        it no longer lists are swept here."""
        key = key_of(endpoint)
        while True:
            up = self.with_room(key)
            if up is not None:
                return up, False
            pending = self._connecting.get(key)
            if pending is None:
                break
            await pending.wait()
        self._close_removed(home)
        event = self._connecting[key] = trio.Event()
        try:
            conn = await target.connect(endpoint, metrics)
        finally:
            del self._connecting[key]
            event.set()
        up = Upstream(conn, endpoint, target)
        up.peer.initiate()
        self._by_key.setdefault(key, []).append(up)
        return up, True

    def _close_removed(self, home: Target) -> None:
        """Idle connections to endpoints discovery no longer lists are closed."""
        if home.endpoints is None:
            return
        current = home.endpoints.current().endpoints
        for key in [k for k in self._by_key if k not in current]:
            for up in list(self._by_key[key]):
                if up.target is home:
                    up.closing = True
                    self.maybe_close(up)

    def maybe_close(self, up: Upstream) -> None:
        """Close ``up`` once idle if it takes no new streams (GOAWAY, or its endpoint was
        removed from discovery)."""
        if up.streams:
            return
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
        ups = self._by_key.get(key_of(up.endpoint), [])
        if up not in ups:
            return False
        ups.remove(up)
        if not ups:
            del self._by_key[key_of(up.endpoint)]
        return True

    def close_all(self) -> None:
        for up in self.all():
            up.close()
        self._by_key.clear()
