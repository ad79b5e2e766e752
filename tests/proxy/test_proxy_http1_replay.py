"""A keep-alive upstream connection that the server closes while the proxy reuses it, through the
real proxy on loopback (``proxy/h1/replay.py``, docs/proxy.md "Reused connections").

The backend is a Trio server in the test: keep-alive with an idle timeout, and it makes the race
deterministic: a request arriving on a connection idle for at least its timeout is read (head,
and the body when asked) and the connection closed without an answer, which is what the proxy
sees when the server's idle close crosses its request. It hashes every body it answers, so a
byte lost or sent twice shows. Clients are raw sockets (the bytes and the connection matter).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import pytest
import trio

from tests.proxy.conftest import StartProxy

pytestmark = pytest.mark.trio


@dataclass
class IdleClosingBackend:
    keepalive: float
    """A reused connection idle this long is closed, unanswered, when its next request comes."""
    drop_all_but_first: bool = False
    """Close unanswered every request but the very first one (a server gone bad)."""
    read_body_first: bool = False
    """Read the whole request body before closing (it reached the server)."""
    port: int = 0
    connections: int = 0
    dropped: int = 0
    answered: list[tuple[str, str, int]] = field(default_factory=list)
    """(method, SHA-256 of the body, body length) of each request answered."""

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1")
        )
        self.port = int(listeners[0].socket.getsockname()[1])

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        idle_since: float | None = None
        async with stream:
            while True:
                request = await _next(stream, conn)
                if not isinstance(request, h11.Request):
                    return
                stale = (
                    idle_since is not None and trio.current_time() - idle_since >= self.keepalive
                )
                if stale or (self.drop_all_but_first and self.answered):
                    if self.read_body_first:
                        await _body(stream, conn)
                    self.dropped += 1
                    return  # closed without a byte of an answer
                digest, length = await _body(stream, conn)
                self.answered.append((request.method.decode(), digest, length))
                payload = f"{digest} {length}\n".encode()
                await stream.send_all(
                    conn.send(
                        h11.Response(
                            status_code=200, headers=[("content-length", str(len(payload)))]
                        )
                    )
                    + conn.send(h11.Data(data=payload))
                    + conn.send(h11.EndOfMessage())
                )
                conn.start_next_cycle()
                idle_since = trio.current_time()


async def _next(stream: trio.SocketStream, conn: h11.Connection) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def _body(stream: trio.SocketStream, conn: h11.Connection) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    while True:
        event = await _next(stream, conn)
        if isinstance(event, h11.EndOfMessage):
            return digest.hexdigest(), length
        assert isinstance(event, h11.Data), event
        digest.update(event.data)
        length += len(event.data)


@pytest.fixture
async def backend(nursery: trio.Nursery) -> IdleClosingBackend:
    server = IdleClosingBackend(keepalive=0.1)
    await server.serve(nursery)
    return server


class Client:
    """One keep-alive client connection to the proxy."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self) -> tuple[bytes, bytes]:
        """The next response: (head, body); bodies here always have a Content-Length."""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += await self._receive()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(self.buffer) < length:
                self.buffer += await self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head, body

    async def _receive(self) -> bytes:
        data = await self.stream.receive_some(65536)
        assert data, f"the proxy closed the connection; got {self.buffer!r}"
        return data


Connect = Callable[[int], Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(port)``: a client connection, closed when the test ends."""
    streams: list[trio.SocketStream] = []

    async def open_client(port: int) -> Client:
        streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        return Client(streams[-1])

    try:
        yield open_client
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


def _request(method: str, body: bytes, *, extra: str = "", chunked: bool = False) -> bytes:
    head = f"{method} /up HTTP/1.1\r\nHost: app\r\n{extra}"
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:1000], body[1000:]) if p)
        return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + framed + b"0\r\n\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _answer(body: bytes) -> bytes:
    return f"{hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()


async def _warm(client: Client, backend: IdleClosingBackend) -> None:
    """One answered request, then a pause the backend's idle timeout sees as idle."""
    await client.send(b"GET /warm HTTP/1.1\r\nHost: app\r\n\r\n")
    head, _ = await client.response()
    assert head.startswith(b"HTTP/1.1 200 ")
    await trio.sleep(backend.keepalive * 2)


async def test_a_post_after_a_pause_goes_on_a_new_connection(
    start_proxy: StartProxy, backend: IdleClosingBackend, connect: Connect
) -> None:
    """The pool idle timeout below the server's keep-alive timeout: the race never happens."""
    backend.keepalive = 0.4
    proxy = await start_proxy(("127.0.0.1", backend.port), http1_pool_idle_timeout=0.2)
    client = await connect(proxy.addresses.inbound[1])
    bodies = [os.urandom(10_000), os.urandom(20_000)]
    for body in bodies:
        await client.send(_request("POST", body))
        head, answer = await client.response()
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert answer == _answer(body)
        await trio.sleep(0.5)  # longer than both idle timeouts
    assert backend.dropped == 0
    assert backend.connections == 2  # the idle one was not reused
    assert [(m, d) for m, d, _ in backend.answered] == [
        ("POST", hashlib.sha256(b).hexdigest()) for b in bodies
    ]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("PUT", "", False), id="put-content-length"),
        pytest.param(("PUT", "", True), id="put-chunked"),
        pytest.param(("DELETE", "", False), id="delete-with-body"),
        pytest.param(("POST", 'Idempotency-Key: "a1b2"\r\n', False), id="post-idempotency-key"),
        pytest.param(("PATCH", "X-Idempotency-Key: 7\r\n", True), id="patch-x-idempotency-key"),
    ],
)
async def test_an_idempotent_request_with_a_body_is_replayed_on_a_new_connection(
    start_proxy: StartProxy,
    backend: IdleClosingBackend,
    connect: Connect,
    case: tuple[str, str, bool],
) -> None:
    method, extra, chunked = case
    proxy = await start_proxy(("127.0.0.1", backend.port), http1_pool_idle_timeout=60.0)
    client = await connect(proxy.addresses.inbound[1])
    await _warm(client, backend)
    body = os.urandom(30_000)
    await client.send(_request(method, body, extra=extra, chunked=chunked))
    head, answer = await client.response()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"meshlet-proxy-error" not in head
    assert answer == _answer(body)  # not a byte lost or doubled
    assert backend.dropped == 1
    assert backend.connections == 2
    assert backend.answered[1:] == [(method, hashlib.sha256(body).hexdigest(), len(body))]
    # The new connection carries on: the next request reuses it.
    await client.send(_request("PUT", b"again"))
    assert (await client.response())[1] == _answer(b"again")
    assert backend.connections == 2


async def test_a_body_still_streaming_is_replayed_with_what_was_sent_then_the_rest(
    start_proxy: StartProxy, backend: IdleClosingBackend, connect: Connect
) -> None:
    """The head leaves before the body arrives; the reused connection dies; the head goes again
    on a new connection and the body follows there."""
    proxy = await start_proxy(("127.0.0.1", backend.port), http1_pool_idle_timeout=60.0)
    client = await connect(proxy.addresses.inbound[1])
    await _warm(client, backend)
    body = os.urandom(50_000)
    request = _request("PUT", body)
    head_end = request.index(b"\r\n\r\n") + 4
    await client.send(request[: head_end + 5000])
    with trio.fail_after(5):
        while backend.dropped == 0:  # the backend read the head and closed
            await trio.sleep(0.01)
    await trio.sleep(0.05)
    await client.send(request[head_end + 5000 :])
    head, answer = await client.response()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert answer == _answer(body)
    assert backend.connections == 2


async def test_a_post_on_a_dead_reused_connection_gets_502_and_is_not_sent_again(
    start_proxy: StartProxy, backend: IdleClosingBackend, connect: Connect
) -> None:
    """RFC 9110 9.2.2: the server may have processed it; the client decides, not the proxy.
    (Only reachable when the pool idle timeout is longer than the server's keep-alive.)"""
    proxy = await start_proxy(("127.0.0.1", backend.port), http1_pool_idle_timeout=60.0)
    client = await connect(proxy.addresses.inbound[1])
    await _warm(client, backend)
    await client.send(_request("POST", b"charge the card once"))
    head, _ = await client.response()
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert b"meshlet-proxy-error: upstream_closed" in head
    assert b"connection: close" in head
    assert backend.dropped == 1
    assert backend.connections == 1  # no second connection: no replay
    assert [m for m, _, _ in backend.answered] == ["GET"]


async def test_a_body_beyond_the_replay_buffer_gives_502(
    start_proxy: StartProxy, backend: IdleClosingBackend, connect: Connect
) -> None:
    backend.read_body_first = True
    proxy = await start_proxy(
        ("127.0.0.1", backend.port), http1_pool_idle_timeout=60.0, http1_replay_buffer_bytes=1024
    )
    client = await connect(proxy.addresses.inbound[1])
    await _warm(client, backend)
    await client.send(_request("PUT", os.urandom(8192)))
    head, _ = await client.response()
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert b"meshlet-proxy-error: upstream_closed" in head
    assert backend.connections == 1  # not kept, so not sent again


async def test_a_fresh_connection_that_fails_is_not_replayed(
    start_proxy: StartProxy, backend: IdleClosingBackend, connect: Connect
) -> None:
    backend.drop_all_but_first = True
    proxy = await start_proxy(("127.0.0.1", backend.port), http1_pool_idle_timeout=60.0)
    client = await connect(proxy.addresses.inbound[1])
    await client.send(b"GET /warm HTTP/1.1\r\nHost: app\r\n\r\n")
    assert (await client.response())[0].startswith(b"HTTP/1.1 200 ")
    # The reused connection fails, the one replay on a new connection fails too: 502, no third.
    await client.send(_request("PUT", b"x" * 100))
    head, _ = await client.response()
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert b"meshlet-proxy-error: upstream_closed" in head
    assert (backend.connections, backend.dropped) == (2, 2)
    # A new client connection starts on a new upstream connection: its failure is final.
    other = await connect(proxy.addresses.inbound[1])
    await other.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    head, _ = await other.response()
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert (backend.connections, backend.dropped) == (3, 3)


async def test_an_idle_limit_of_zero_never_reuses_a_connection(
    start_proxy: StartProxy, backend: IdleClosingBackend, connect: Connect
) -> None:
    backend.keepalive = 60.0
    proxy = await start_proxy(("127.0.0.1", backend.port), http1_pool_idle_timeout=0.0)
    client = await connect(proxy.addresses.inbound[1])
    for _ in range(3):
        await client.send(_request("POST", b"abc"))
        assert (await client.response())[1] == _answer(b"abc")
    assert backend.connections == 3
