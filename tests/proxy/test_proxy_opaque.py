"""Opaque TCP through the proxy: half-close, server-speaks-first, detection timeout, counting."""

from __future__ import annotations

import functools
import os
import resource
import socket

import pytest
import trio
import trio.testing

from proxy.errors import ClientClosed
from proxy.metrics import Metrics
from proxy.net import Conn
from tests.proxy.conftest import StartProxy

pytestmark = pytest.mark.trio


async def _serve(nursery: trio.Nursery, handler: object) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _reverse_after_eof(stream: trio.SocketStream) -> None:
    """Reads until the client half-closes, then answers with the bytes reversed."""
    received = b""
    while data := await stream.receive_some(65536):
        received += data
    await stream.send_all(received[::-1])
    await stream.aclose()


async def _banner_first(stream: trio.SocketStream) -> None:
    await stream.send_all(b"220 smtp.example ESMTP ready\r\n")
    while data := await stream.receive_some(65536):
        await stream.send_all(data.upper())
    await stream.aclose()


async def _read_all(stream: trio.SocketStream) -> bytes:
    received = b""
    while data := await stream.receive_some(65536):
        received += data
    return received


async def test_half_close_is_respected_both_ways(
    start_proxy: StartProxy, nursery: trio.Nursery
) -> None:
    port = await _serve(nursery, _reverse_after_eof)
    proxy = await start_proxy(("127.0.0.1", port))
    payload = b"\x00binary protocol\xff" * 50_000
    client = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    async with client:
        await client.send_all(payload)
        await client.send_eof()  # we are done sending, but still want the answer
        with trio.fail_after(10):
            answer = await _read_all(client)
    assert answer == payload[::-1]
    await trio.sleep(0.05)
    text = proxy.context.metrics.render().decode()
    read = f'tcp_read_bytes_total{{direction="inbound",peer="src",target_addr="127.0.0.1:{port}"'
    assert f'{read},tls="no_identity",no_tls_reason="disabled"}} {len(payload)}' in text
    assert 'tcp_open_connections{direction="inbound",peer="src"' in text


async def test_server_speaks_first_after_detection_timeout(
    start_proxy: StartProxy, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await _serve(nursery, _banner_first)
    proxy = await start_proxy(("127.0.0.1", port), opaque_ports=frozenset())
    client = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    async with client:
        started = trio.current_time()
        banner = await client.receive_some(1024)
        waited = trio.current_time() - started
        await client.send_all(b"helo\r\n")
        echoed = await client.receive_some(1024)
    assert banner.startswith(b"220 ")
    assert waited >= 10.0  # the detection timeout (mock clock: no real waiting)
    assert echoed == b"HELO\r\n"


async def test_opaque_ports_skip_detection(
    start_proxy: StartProxy, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await _serve(nursery, _banner_first)
    proxy = await start_proxy(("127.0.0.1", port), opaque_ports=frozenset({port}))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    async with client:
        started = trio.current_time()
        banner = await client.receive_some(1024)
        assert trio.current_time() - started < 1.0
    assert banner.startswith(b"220 ")


async def test_refused_upstream_resets_the_client(start_proxy: StartProxy) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    proxy = await start_proxy(("127.0.0.1", port), opaque_ports=frozenset({port}))
    client = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    async with client:
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(10):
            await client.receive_some(1024)


async def test_a_closed_connection_never_reaches_a_reused_descriptor() -> None:

    metrics = Metrics()
    left, right = trio.socket.socketpair()
    conn = Conn(
        trio.SocketStream(left), metrics, metrics.tcp_open("inbound", "src", "x"), upstream=False
    )
    conn.close()
    reused, other = socket.socketpair()  # likely takes the closed descriptor's number
    try:
        with pytest.raises(ClientClosed):
            await conn.send(b"must not arrive anywhere")
        with pytest.raises(ClientClosed):
            await conn.receive()
        other.setblocking(False)
        with pytest.raises(BlockingIOError):
            other.recv(100)
    finally:
        reused.close()
        other.close()
        right.close()


async def test_reads_of_closed_connections_name_the_failure_every_time() -> None:
    """A read after close is refused as such, however many closed connections try: waiting for
    readiness on a closed connection's -1 would leave the task registered with trio for that
    "descriptor", and the next closed connection's read would fail with BusyResourceError."""
    metrics = Metrics()
    for _ in range(3):
        left, right = trio.socket.socketpair()
        stats = metrics.tcp_open("inbound", "src", "x")
        conn = Conn(trio.SocketStream(left), metrics, stats, upstream=False)
        conn.close()
        try:
            with pytest.raises(ClientClosed):
                await conn.receive_answer()  # waits for readiness first
        finally:
            right.close()


async def test_an_idle_connection_on_a_high_descriptor_is_not_taken_for_closed() -> None:
    """Keep-alive reuse asks ``readable_now``; a busy proxy holds descriptors from 1024 up,
    where select(2) cannot look (the answer was then "readable": never reused)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1500:
        pytest.skip(f"the descriptor limit ({hard}) is too low to open descriptor 1500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1501), hard))
    metrics = Metrics()
    left, right = socket.socketpair()
    high = os.dup2(left.fileno(), 1500)
    left.close()
    conn = Conn(
        trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=high))),
        metrics,
        metrics.tcp_open("inbound", "src", "x"),
        upstream=False,
    )
    try:
        assert not conn.readable_now()  # idle: may take the next request
        right.send(b"x")
        assert conn.readable_now()
        right.close()
        await conn.receive()
        assert conn.readable_now()  # end of stream waiting, too
    finally:
        conn.close()
        right.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
