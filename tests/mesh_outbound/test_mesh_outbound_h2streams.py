"""HTTP/2 to a discovered destination, routed per stream (``proxy/h2mux.py``): three in-process
h2c backends, a real destination service, the proxy in-process, one client connection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from proxy.tap import TapEnd, TapFilter, TapRequest, TapResponse
from tests.mesh_outbound.conftest import (
    EMPTY_IP,
    SERVICE_IP,
    SERVICE_PORT,
    H2Mesh,
    h2_answers,
    outbound_proxy,
)
from tests.mesh_outbound.mo_h2backend import H2Backend
from tests.mesh_outbound.mo_h2client import H2Client

pytestmark = pytest.mark.trio


async def test_streams_of_one_connection_spread_over_all_endpoints(h2mesh: H2Mesh) -> None:
    answers = await h2_answers(h2mesh, ["/"] * 30)
    assert {a.status for a in answers} == {200}
    assert {a.text for a in answers} == {"web-0", "web-1", "web-2"}
    assert all(b.connections == 1 for b in h2mesh.backends)  # one upstream per endpoint
    metrics = h2mesh.context.metrics.render().decode()
    for name in ("web-0", "web-1", "web-2"):
        assert f'dst_pod="{name}"' in metrics
    assert h2mesh.balancer_pending() == 0


async def test_sequential_streams_spread_too(h2mesh: H2Mesh) -> None:
    async with trio.open_nursery() as nursery:
        client = await H2Client.connect(nursery, h2mesh.port)
        seen: Counter[str] = Counter()
        for _ in range(30):
            seen[(await client.request("/")).text] += 1
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert set(seen) == {"web-0", "web-1", "web-2"}


async def test_bodies_and_trailers_cross_intact_under_flow_control(h2mesh: H2Mesh) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB: several windows each way
    answers = await h2_answers(h2mesh, ["/echo"] * 4, method="POST", body=body)
    for answer in answers:
        assert answer.status == 200
        assert bytes(answer.body) == body
        assert answer.trailers[b"x-body-bytes"] == str(len(body)).encode()


async def test_grpc_trailers_and_resets_pass_per_stream(h2mesh: H2Mesh) -> None:
    answers = await h2_answers(h2mesh, ["/grpc", "/reset", "/grpc"])
    assert answers[0].trailers[b"grpc-status"] == b"0"
    assert answers[2].trailers[b"grpc-status"] == b"0"
    assert answers[1].reset == 0x8  # the upstream's RST_STREAM CANCEL, passed on
    metrics = h2mesh.context.metrics.render().decode()
    assert 'classification="success"' in metrics


async def test_retryable_get_on_5xx_goes_elsewhere(h2mesh: H2Mesh) -> None:
    h2mesh.backends[0].fail_status = 503
    answers = await h2_answers(h2mesh, ["/retry"] * 20)
    assert [a.status for a in answers] == [200] * 20
    assert h2mesh.backends[0].hits["/retry"] >= 1
    metrics = h2mesh.context.metrics.render().decode()
    assert 'rt_route="GET /retry",status_code="200",classification="success"} 20' in metrics


async def test_non_retryable_post_is_not_retried(h2mesh: H2Mesh) -> None:
    h2mesh.backends[0].fail_status = 503
    answers = await h2_answers(h2mesh, ["/retry"] * 20, method="POST", body=b"x" * 100)
    failed = sum(1 for a in answers if a.status == 503)
    assert failed == h2mesh.backends[0].hits["/retry"] >= 1


async def test_refused_streams_and_goaway_are_retried(h2mesh: H2Mesh) -> None:
    h2mesh.backends[0].refuse_next = 3
    h2mesh.backends[1].goaway_after = 2
    answers = await h2_answers(h2mesh, ["/"] * 40)
    assert [a.status for a in answers] == [200] * 40


async def test_route_timeout_answers_504(h2mesh: H2Mesh) -> None:
    answers = await h2_answers(h2mesh, ["/timeout"])
    assert answers[0].status == 504
    assert answers[0].headers[b"meshlet-proxy-error"] == b"route_timeout"
    with trio.fail_after(3):
        while h2mesh.balancer_pending():
            await trio.sleep(0.01)


async def test_no_endpoints_answers_503_per_stream(h2mesh: H2Mesh) -> None:
    h2mesh.original[0] = (EMPTY_IP, SERVICE_PORT)
    answers = await h2_answers(h2mesh, ["/", "/"], authority=f"{EMPTY_IP}:{SERVICE_PORT}")
    assert [a.status for a in answers] == [503, 503]
    assert answers[0].headers[b"meshlet-proxy-error"] == b"no_endpoints"


async def test_removed_endpoint_drains_and_gets_no_new_streams(h2mesh: H2Mesh) -> None:
    removed = h2mesh.backends[2]
    removed.slow_seconds = 1.0
    async with trio.open_nursery() as nursery:
        client = await H2Client.connect(nursery, h2mesh.port)
        slow: list[Any] = []

        async def slow_one() -> None:
            slow.append(await client.request("/slow"))

        for _ in range(6):  # some land on the endpoint about to be removed
            nursery.start_soon(slow_one)
        await trio.sleep(0.2)
        h2mesh.set_endpoints(h2mesh.backends[:2])
        await trio.sleep(0.5)  # the destination polls its file
        before = removed.total
        seen: Counter[str] = Counter()
        for _ in range(20):
            seen[(await client.request("/")).text] += 1
        with trio.fail_after(5):
            while len(slow) < 6:
                await trio.sleep(0.05)
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert [a.status for a in slow] == [200] * 6  # in flight on the removed one: finished
    assert "web-2" not in seen
    assert removed.total == before


@pytest.mark.parametrize("h2mesh", [{"outbound_http2_per_stream": False}], indirect=True)
async def test_per_connection_mode_relays_one_connection_to_one_endpoint(h2mesh: H2Mesh) -> None:
    answers = await h2_answers(h2mesh, ["/"] * 12)
    assert {a.status for a in answers} == {200}
    assert len({a.text for a in answers}) == 1  # the whole connection went to one endpoint
    assert sum(b.connections for b in h2mesh.backends) == 1


async def test_a_silent_upstream_is_found_by_keepalive(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An endpoint that accepts and never answers (not even SETTINGS or PING): the PING goes
    unanswered, the connection is closed and the stream gets 502 instead of hanging."""
    silent = await trio.open_tcp_listeners(0, host="127.0.0.5")
    port = silent[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, silent)
    backend = H2Backend("silent", "127.0.0.5", port=port)
    keepalive = {"http2_keepalive_interval": 0.3, "http2_keepalive_timeout": 0.2}
    async with outbound_proxy(tmp_path, [backend], keepalive) as run:
        mesh = H2Mesh([backend], run.destination, run.context, run.addresses, run.original)
        with trio.fail_after(5):
            answers = await h2_answers(mesh, ["/"], authority=f"{SERVICE_IP}:{SERVICE_PORT}")
    assert answers[0].status == 502
    assert answers[0].headers[b"meshlet-proxy-error"] == b"upstream_closed"
    for stream in held:
        await stream.aclose()


async def test_draining_lets_streams_in_flight_finish_then_closes(h2mesh: H2Mesh) -> None:
    for backend in h2mesh.backends:
        backend.slow_seconds = 0.5
    async with trio.open_nursery() as nursery:
        client = await H2Client.connect(nursery, h2mesh.port)
        answers: list[Any] = []

        async def slow() -> None:
            answers.append(await client.request("/slow"))

        for _ in range(3):
            nursery.start_soon(slow)
        await trio.sleep(0.2)
        h2mesh.context.lifecycle.drain()  # SIGTERM: GOAWAY to the client, streams finish
        with trio.fail_after(5):
            while not client.closed:
                await trio.sleep(0.05)
        await client.aclose()
        assert client.goaway == 2**31 - 1  # the shutdown notice: nothing in flight refused
    assert [a.status for a in answers] == [200, 200, 200]
    assert h2mesh.balancer_pending() == 0


async def test_streams_are_tapped_with_their_endpoint(h2mesh: H2Mesh) -> None:
    subscriber = h2mesh.context.tap.subscribe(TapFilter())
    answers = await h2_answers(h2mesh, ["/grpc"], method="POST", body=b"x")
    assert answers[0].status == 200
    events = subscriber.take()
    assert [type(e) for e in events] == [TapRequest, TapResponse, TapEnd]
    started, response, end = events
    assert isinstance(started, TapRequest)
    assert isinstance(end, TapEnd)
    assert (started.method, started.path, started.direction) == ("POST", "/grpc", "outbound")
    ports = {f"{b.host}:{b.port}" for b in h2mesh.backends}
    assert started.dst in ports  # the endpoint picked for this stream
    assert isinstance(response, TapResponse)
    assert response.status == 200
    assert (end.grpc_status, end.error, end.response_bytes) == (0, "", 5)
