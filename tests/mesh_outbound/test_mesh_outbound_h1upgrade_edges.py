"""Edge cases of the shared upstream HTTP/2 connection that upgraded HTTP/1 requests ride on
(``proxy/h2upstream.py``: ``Link.send_soon``, the pool's writer and keepalive) and of relaying
an upgraded response (``proxy/h1upgrade.py``), driven directly with stand-in sockets whose
writes can be held (the kernel's send buffer full, a client that stops reading)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, cast

import pytest
import trio
import trio.testing

from proxy.discovery import Endpoint
from proxy.errors import UpstreamClosed
from proxy.h1upgrade import UpgradedStream, _relay_body
from proxy.h1upgradeconvert import h1_response_head
from proxy.h2peer import Data, Headers, Peer, Reset
from proxy.h2upstream import Link, Upstream, UpstreamPool
from proxy.mtls.transport import Session

pytestmark = pytest.mark.trio

ENDPOINT = Endpoint("127.0.0.1", 8080, 1, "db.id", "h2", MappingProxyType({}))


class _Socket:
    """``Conn``'s interface as the upstream uses it; ``hold`` makes writes wait for ``release``
    (a full send buffer)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.hold = False
        self.fail = False  # writes fail (the peer reset the connection)
        self.writing = 0  # writes under way
        self.closed = False
        self._released = trio.Event()
        self._closed = trio.Event()

    async def receive(self) -> bytes:
        await self._closed.wait()
        raise UpstreamClosed("receive failed: closed")

    async def send(self, data: bytes) -> None:
        if self.fail:
            raise UpstreamClosed("send failed: ECONNRESET")
        self.writing += 1
        try:
            if self.hold:
                with trio.fail_after(2):  # a scope of its own: the caller may be shielded
                    await self._released.wait()
            else:
                await trio.lowlevel.checkpoint()
            self.written.append(data)
        finally:
            self.writing -= 1

    def release(self) -> None:
        self.hold = False
        self._released.set()
        self._released = trio.Event()

    def send_nowait(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True
        self._closed.set()


class _Watched(Upstream):
    """An upstream that fails the test when its writer calls ``flush`` over and over while
    another task is sending (a loop that never yields would hang the whole process)."""

    early = 0

    async def flush(self) -> None:
        if self.sending:
            self.early += 1
            if self.early > 100:
                raise AssertionError("the writer loops without waiting while a send is under way")
        await super().flush()


def _upstream(socket: _Socket, kind: type[Upstream] = Upstream) -> Upstream:
    return kind(cast(Any, socket), ENDPOINT, cast(Any, None), Session.HTTP1_OVER_H2)


async def test_the_writer_waits_while_a_request_sends_its_headers_itself() -> None:
    """A request's inline write (``send_soon``) held by a full socket while another stream
    queues DATA and kicks the writer: the writer must wait for the send under way, not spin
    (which froze the proxy), and every byte leaves once, in order."""
    pool = UpstreamPool(10.0, 3.0, 60.0)
    socket = _Socket()
    up = _upstream(socket, _Watched)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool._write_loop, up)
            await trio.testing.wait_all_tasks_blocked()
            socket.hold = True
            up.peer.out += b"headers"
            nursery.start_soon(up.send_soon)
            await trio.testing.wait_all_tasks_blocked()
            assert socket.writing == 1
            up.peer.out += b"data"  # another stream's DATA, as ``UpgradedStream.send`` queues
            up.kick()
            await trio.testing.wait_all_tasks_blocked()
            socket.release()
            await trio.testing.wait_all_tasks_blocked()
            assert b"".join(socket.written) == b"headersdata"
            assert not up.peer.out
            nursery.cancel_scope.cancel()


async def test_a_connection_closed_for_an_unanswered_ping_takes_no_new_stream() -> None:
    """The keepalive closes a silent connection; until its reader has failed its streams over,
    the pool must not hand it to a new request (which would fail on a closed socket instead of
    opening a new connection)."""
    pool = UpstreamPool(0.05, 0.02, 60.0)
    socket = _Socket()
    up = _upstream(socket)
    pool._by_key[(ENDPOINT.address, ENDPOINT.port, ENDPOINT.identity, up.session)] = [up]
    up.last_read -= 1.0
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool._keepalive_loop)
            while not up.closed:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert socket.closed
    assert pool.with_room(ENDPOINT, Session.HTTP1_OVER_H2) is None


async def test_a_request_writing_inline_sends_its_own_bytes_only() -> None:
    """``send_soon`` is shielded (a cut TLS record would break every stream), so it writes only
    what was queued when it was called: bytes other streams queue meanwhile go to the writer,
    and a request cancelled by its route timeout is not held behind other streams' writes on a
    congested connection."""
    pool = UpstreamPool(10.0, 3.0, 60.0)
    socket = _Socket()
    up = _upstream(socket, _Watched)
    returned = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def request() -> None:
                with trio.CancelScope() as scope:
                    scope.cancel()  # the route timeout fired: only the shield holds it
                    await up.send_soon()
                returned.set()

            nursery.start_soon(pool._write_loop, up)
            await trio.testing.wait_all_tasks_blocked()
            socket.hold = True
            up.peer.out += b"headers"
            nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            up.peer.out += b"data"
            up.kick()
            await trio.testing.wait_all_tasks_blocked()
            socket.release()
            socket.hold = True  # the next write waits too
            await trio.testing.wait_all_tasks_blocked()
            assert returned.is_set()
            assert socket.writing == 1  # the writer's
            socket.release()
            await trio.testing.wait_all_tasks_blocked()
            assert socket.written == [b"headers", b"data"]
            assert socket.writing == 0
            assert not up.peer.out
            nursery.cancel_scope.cancel()


async def test_a_ping_that_cannot_even_be_written_ends_the_keepalive_on_time() -> None:
    """``Link.until_unanswered_ping`` (the gateway's and the per-stream client connection's
    keepalive): a silent peer that also stopped reading (a full socket, as behind a network
    partition) must not hold the keepalive past its timeout in the PING's write."""
    socket = _Socket()
    link = Link(cast(Any, socket), Peer(client_side=False))
    link.last_read -= 1.0
    socket.hold = True
    with trio.fail_after(1):
        await link.until_unanswered_ping(0.05, 0.1, link.flush)
    assert socket.writing == 0


class _Exchange:
    """What ``_relay_body`` uses of ``http1mesh.Exchange``: the client connection (``client``
    is a ``_Socket``) and the tap."""

    def __init__(self, client: _Socket) -> None:
        self.session = self
        self.client = client
        self.tap = self
        self.current = None


@pytest.mark.parametrize(
    "last",
    [
        pytest.param(Reset(1, 2), id="reset"),
        pytest.param(Headers(1, [(b"x-checksum", b"1")], end_stream=True), id="trailers"),
    ],
)
async def test_the_end_of_a_response_while_its_client_is_slow_is_not_missed(
    last: Reset | Headers,
) -> None:
    """The response's last event (a reset, or trailers ending it) arrives while the relay waits
    for a slow client to take the previous bytes: once they are written, the relay must see it
    (reset the client, or end the body) instead of waiting for an event that never comes."""
    up = _upstream(_Socket())
    stream = UpgradedStream(up, [(b":method", b"GET")], now=0.0)
    assert stream.up_id == 1
    mux = up.streams[1]
    stream.upstream_event(up, mux, Headers(1, [(b":status", b"200")], end_stream=False))
    stream.upstream_event(up, mux, Data(1, b"first", 5, end_stream=False))
    response = h1_response_head([(b":status", b"200")], head_request=False)
    assert response is not None
    client = _Socket()
    client.hold = True
    exchange = _Exchange(client)
    outcome: list[object] = []

    async def relay() -> None:
        try:
            await _relay_body(cast(Any, exchange), stream, response, b"head", chunked=True)
            outcome.append("ended")
        except UpstreamClosed as exc:
            outcome.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            await trio.testing.wait_all_tasks_blocked()
            assert client.writing == 1
            stream.upstream_event(up, mux, last)
            client.release()
    if isinstance(last, Reset):
        assert isinstance(outcome[0], UpstreamClosed)
    else:
        assert outcome == ["ended"]
        assert client.written[-1] == b"0\r\n\r\n"


async def test_a_failed_inline_write_fails_over_every_stream_of_the_connection() -> None:
    """``Upstream.send_soon`` failing closes the connection: its reader then fails every stream
    on it (each attempt answers or retries) and the pool no longer offers it."""
    pool = UpstreamPool(10.0, 3.0, 60.0)
    socket = _Socket()
    up = _upstream(socket)
    pool._by_key[(ENDPOINT.address, ENDPOINT.port, ENDPOINT.identity, up.session)] = [up]
    streams = [UpgradedStream(up, [(b":method", b"GET")], now=0.0) for _ in range(3)]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool._read_loop, up)
            nursery.start_soon(pool._write_loop, up)
            await trio.testing.wait_all_tasks_blocked()
            socket.fail = True
            up.peer.send_headers(streams[0].up_id, [(b":method", b"GET")], True)
            await up.send_soon()
            assert up.closed
            assert pool.with_room(ENDPOINT, Session.HTTP1_OVER_H2) is None
            await trio.testing.wait_all_tasks_blocked()
    assert [isinstance(s.failure, UpstreamClosed) for s in streams] == [True] * 3
    assert up.streams == {}
    assert pool.all() == []
