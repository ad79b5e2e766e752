"""HTTP/1.1 through the proxy at the byte level: smuggling refused, HEAD/204/304, HTTP/1.0,
pipelining, bodies delimited by close. Raw sockets as clients (curl hides the bytes), a real
backend process, and for the upstream's odd shapes a scripted upstream on loopback."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import trio

from tests.proxy.conftest import StartProxy

pytestmark = pytest.mark.trio


async def _exchange(port: int, data: bytes, *, until: bytes | None = None) -> bytes:
    """Send ``data``, read until the proxy closes (or ``until`` arrives)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                answer += chunk
                if until is not None and answer.endswith(until):
                    break
    return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
                     id="cl-and-te"),
        pytest.param(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                     b"Content-Length: 40\r\n\r\nabcd", id="duplicate-cl"),
        pytest.param(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4x\r\nabcd\r\n0\r\n\r\n", id="bad-chunk-size"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n",
                     id="oversize-head"),
    ],
)  # fmt: skip
async def test_smuggling_shapes_get_400_with_a_reason(
    start_proxy: StartProxy, http1_backend: int, request_bytes: bytes
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    answer = await _exchange(proxy.addresses.inbound[1], request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer[:200]
    assert b"meshlet-proxy-error: malformed_request" in head
    assert b"connection: close" in head
    assert body.startswith(b"malformed request: ")
    assert b"smuggled" not in answer


async def test_head_then_get_on_one_connection(start_proxy: StartProxy, http1_backend: int) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    answer = await _exchange(
        proxy.addresses.inbound[1],
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n",
        until=b"\x00\x01\x02",
    )
    first, _, second = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 23" in first
    assert second.startswith(b"HTTP/1.1 200 ")  # no body bytes in between
    assert second.endswith(b"\r\n\r\n\x00\x01\x02")


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_keep_the_connection(
    start_proxy: StartProxy, http1_backend: int, status: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    request = b"GET /status/%d HTTP/1.1\r\nHost: a\r\n\r\n" % status
    answer = await _exchange(
        proxy.addresses.inbound[1],
        request + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        until=b"hello from the backend\n",
    )
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert answer.count(b"HTTP/1.1 ") == 2


async def test_http10_client_gets_a_chunked_body_unchunked_then_close(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    answer = await _exchange(proxy.addresses.inbound[1], b"GET /chunked/10000 HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"chunked" not in head.lower()
    assert b"connection: close" in head
    assert body == (bytes(range(256)) * 40)[:10000]


async def test_pipelined_requests_are_answered_in_order(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    requests = b"".join(
        b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (n, b"x" * n)
        for n in (1, 2, 3)
    )
    answer = await _exchange(
        proxy.addresses.inbound[1],
        requests + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    lengths = [line.split()[1] for line in answer.split(b"\n") if len(line.split(b" ")[0]) == 64]
    assert lengths == [b"1", b"2", b"3"]
    assert answer.endswith(b"hello from the backend\n")


Script = Callable[[trio.SocketStream], Awaitable[None]]


async def _scripted_upstream(nursery: trio.Nursery, script: Script) -> int:
    """An upstream on loopback that reads one request head and runs ``script``."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(65536)
            await script(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def test_response_delimited_by_close_reaches_a_keep_alive_client_chunked(
    start_proxy: StartProxy, nursery: trio.Nursery
) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Up: 1\r\n\r\nuntil the ")
        await stream.send_all(b"end")

    port = await _scripted_upstream(nursery, script)
    proxy = await start_proxy(("127.0.0.1", port))
    answer = await _exchange(
        proxy.addresses.inbound[1], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until=b"0\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert b"connection: close" not in head
    pieces = []
    while body != b"0\r\n\r\n":  # chunk boundaries depend on how the reads fell
        size, _, body = body.partition(b"\r\n")
        pieces.append(body[: int(size, 16)])
        assert body[int(size, 16) : int(size, 16) + 2] == b"\r\n"
        body = body[int(size, 16) + 2 :]
    assert b"".join(pieces) == b"until the end"


async def test_invalid_upstream_response_gives_502(
    start_proxy: StartProxy, nursery: trio.Nursery
) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

    port = await _scripted_upstream(nursery, script)
    proxy = await start_proxy(("127.0.0.1", port))
    answer = await _exchange(proxy.addresses.inbound[1], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"meshlet-proxy-error: upstream_protocol_error" in answer


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_request_after_the_upstream_closed_the_idle_connection(
    start_proxy: StartProxy, http1_backend: int, method: str
) -> None:
    """GET: replayed on a new connection when the reused one answers nothing; POST: the idle
    connection is checked before it is reused."""
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    second = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        if method == "GET"
        else b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    answer = b""
    async with stream:
        await stream.send_all(b"GET /quiet-close HTTP/1.1\r\nHost: a\r\n\r\n")
        with trio.fail_after(10):
            while not answer.endswith(b"closing quietly\n"):
                answer += await stream.receive_some(65536)
            await trio.sleep(0.2)  # the backend has closed its side by now
            await stream.send_all(second)
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer
    assert b"meshlet-proxy-error" not in answer
    opened = [
        line
        for line in proxy.context.metrics.render().decode().splitlines()
        if line.startswith('tcp_open_total{direction="inbound",peer="dst"')
    ]
    assert len(opened) == 1
    assert opened[0].endswith(" 2"), opened  # a second upstream connection


async def test_chunked_trailers_pass_without_hop_by_hop_fields(
    start_proxy: StartProxy, nursery: trio.Nursery
) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
            b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\nConnection: x\r\n\r\n"
        )

    port = await _scripted_upstream(nursery, script)
    proxy = await start_proxy(("127.0.0.1", port))
    answer = await _exchange(
        proxy.addresses.inbound[1],
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        until=b"grpc-status: 0\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head
    assert body == b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"


async def test_http10_request_without_host_gets_one(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    answer = await _exchange(proxy.addresses.inbound[1], b"GET /headers HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert f"host: 127.0.0.1:{http1_backend}".encode() in answer
