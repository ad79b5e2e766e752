"""The per-stream HTTP/2 path's upstream connections are shared by every client connection of
the proxy (``proxy/h2upstream.py``): one connection per endpoint, and no client connection can
stall or break the others' streams on it (three in-process h2c backends, a real destination
service, the proxy in-process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.settings
import pytest
import trio

from tests.mesh_outbound.conftest import (
    SERVICE_IP,
    SERVICE_PORT,
    H2Mesh,
    h2_answers,
    outbound_proxy,
)
from tests.mesh_outbound.mo_h2backend import H2Backend
from tests.mesh_outbound.mo_h2client import H2Client

pytestmark = pytest.mark.trio


@pytest.fixture
async def one_endpoint(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[H2Mesh]:
    """The Service with a single endpoint: every stream shares one upstream connection."""
    backend = H2Backend("web-0", "127.0.0.2")
    await nursery.start(backend.serve)
    async with outbound_proxy(tmp_path, [backend], {}) as run:
        yield H2Mesh([backend], run.destination, run.context, run.addresses, run.original)


async def test_client_connections_share_one_upstream_connection_per_endpoint(
    h2mesh: H2Mesh,
) -> None:
    async with trio.open_nursery() as nursery:
        results: list[Any] = []

        async def one_client() -> None:
            results.extend(await h2_answers(h2mesh, ["/"] * 6))

        for _ in range(6):
            nursery.start_soon(one_client)
    assert len(results) == 36
    assert {a.status for a in results} == {200}
    assert {a.text for a in results} == {"web-0", "web-1", "web-2"}
    assert [b.connections for b in h2mesh.backends] == [1, 1, 1]  # not one per client


async def _silent_client(port: int, paths: list[str]) -> trio.SocketStream:
    """A client connection that asks for ``paths`` with huge windows, then never reads."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    for path in paths:
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", f"{SERVICE_IP}:{SERVICE_PORT}".encode()),
            (b":path", path.encode()),
        ]
        conn.send_headers(stream_id, headers, end_stream=True)
    await stream.send_all(conn.data_to_send())
    return stream


async def test_a_client_that_stops_reading_stalls_no_other_client(one_endpoint: H2Mesh) -> None:
    """17 streams of 8 MiB to a client that never reads, on one upstream connection: its socket
    and queue fill, and each of its streams holds a stream window's worth, more than the
    connection's window in all. Another client's streams on that connection (it has room for 3
    more) still flow, bodies whole."""
    backend = one_endpoint.backends[0]
    backend.big_bytes = 8 << 20
    stalled = await _silent_client(one_endpoint.port, ["/big"] * 17)
    try:
        with trio.fail_after(2):  # the big answers are under way
            while backend.hits["/big"] < 17:
                await trio.sleep(0.02)
        await trio.sleep(0.5)  # every window the silent client leaves open is used up
        backend.big_bytes = 1 << 20
        paths = ["/", "/big", "/", "/big", "/"] * 3
        with trio.fail_after(10):
            answers = await h2_answers(one_endpoint, paths)
        assert [a.status for a in answers] == [200] * 15
        big = [len(a.body) for p, a in zip(paths, answers, strict=True) if p == "/big"]
        assert big == [1 << 20] * 6
    finally:
        await stalled.aclose()
    assert backend.connections == 2  # the silent client's 17 streams and 3 more; then the rest


async def test_a_client_leaving_mid_stream_leaves_the_other_streams_whole(
    h2mesh: H2Mesh,
) -> None:
    for backend in h2mesh.backends:
        backend.slow_seconds = 0.3
    async with trio.open_nursery() as nursery:
        leaving = await H2Client.connect(nursery, h2mesh.port)
        for _ in range(6):
            nursery.start_soon(leaving.request, "/slow")
        staying: list[Any] = []

        async def stay() -> None:
            staying.extend(await h2_answers(h2mesh, paths))

        paths = ["/slow", "/big"] * 3

        nursery.start_soon(stay)
        await trio.sleep(0.1)
        await leaving.aclose()  # its streams are reset upstream, on the shared connections
    assert [a.status for a in staying] == [200] * 6
    big = [len(a.body) for p, a in zip(paths, staying, strict=True) if p == "/big"]
    assert big == [1 << 20] * 3
    assert [b.connections for b in h2mesh.backends] == [1, 1, 1]
    answers = await h2_answers(h2mesh, ["/"] * 6)  # and the connections still serve
    assert {a.status for a in answers} == {200}
    assert [b.connections for b in h2mesh.backends] == [1, 1, 1]


async def test_a_connection_without_streams_for_the_idle_timeout_is_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A stream longer than the idle timeout keeps its connection; once it has had no stream for
    the idle timeout, the connection is closed and the next stream opens a new one."""
    backend = H2Backend("web-0", "127.0.0.2", slow_seconds=0.6)
    await nursery.start(backend.serve)
    async with outbound_proxy(tmp_path, [backend], {"outbound_discovery_idle_timeout": 0.2}) as run:
        mesh = H2Mesh([backend], run.destination, run.context, run.addresses, run.original)
        answers = await h2_answers(mesh, ["/slow", "/"])
        assert [a.status for a in answers] == [200, 200]
        assert backend.connections == 1
        assert len(mesh.context.outbound.h2_upstreams.all()) == 1
        with trio.fail_after(2):
            while mesh.context.outbound.h2_upstreams.all():
                await trio.sleep(0.05)
        answers = await h2_answers(mesh, ["/"])
        assert answers[0].status == 200
        assert backend.connections == 2
