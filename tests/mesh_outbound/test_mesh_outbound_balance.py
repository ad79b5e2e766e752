"""Discovery and balancing through the outbound listener, with a real meshlet-destination."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from proxy.outbound import Target
from tests.mesh_outbound.conftest import EMPTY_IP, SERVICE_AUTHORITY, SERVICE_PORT, Mesh
from tests.mesh_outbound.mo_backend import Backend
from tests.mesh_outbound.mo_client import request

pytestmark = pytest.mark.trio


def _target(mesh: Mesh, authority: str = SERVICE_AUTHORITY) -> Target:
    return mesh.outbound.targets[authority]


async def _spread(mesh: Mesh, count: int, path: str = "/") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        answer = await request(mesh.port, path)
        seen[answer.backend or str(answer.status)] += 1
    return seen


# A short peak-EWMA decay: a scheduling hiccup on this shared machine must not make one
# endpoint look slow for the whole test.
SPREAD = pytest.mark.parametrize("mesh", [{"decay": 0.05}], indirect=True)


async def _until_each_seen(mesh: Mesh, times: int, *, limit: int = 1000) -> Counter[str]:
    """Requests until every endpoint answered ``times`` times (at most ``limit``, 60 s).

    Power of two choices never picks the endpoint with the highest RTT estimate out of three:
    one response slowed by a busy machine makes an endpoint skipped until its estimate decays.
    How many requests that takes depends on the machine, not on the balancer; that every
    endpoint keeps getting requests does not."""
    seen: Counter[str] = Counter()
    with trio.fail_after(60):
        while len(seen) < len(mesh.backends) or min(seen.values()) < times:
            assert seen.total() < limit, seen
            answer = await request(mesh.port)
            seen[answer.backend or str(answer.status)] += 1
    return seen


@SPREAD
async def test_requests_spread_over_every_endpoint(mesh: Mesh) -> None:
    seen = await _until_each_seen(mesh, 5)
    assert set(seen) == {"web-0", "web-1", "web-2"}, seen
    metrics = mesh.context.metrics.render().decode()
    assert 'dst_pod="web-1"' in metrics
    assert 'dst_service="web"' in metrics
    assert 'authority="web.shop.svc.cluster.local:8080"' in metrics
    assert metrics.count("outbound_balancer_endpoint_rtt_ms{") == 3
    assert metrics.count('state="healthy"} 0\n') == 3  # nothing pending between requests


@SPREAD
async def test_cluster_ip_without_service_host_is_balanced(mesh: Mesh) -> None:
    seen: Counter[str] = Counter()
    for _ in range(30):
        answer = await request(mesh.port, host="example.org")
        seen[answer.backend] += 1
    assert set(seen) == {"web-0", "web-1", "web-2"}, seen
    assert f"127.0.10.1:{SERVICE_PORT}" in mesh.outbound.targets


async def test_unknown_destination_goes_to_the_original_address(mesh: Mesh) -> None:
    outside = mesh.outside
    mesh.original[0] = (outside.host, outside.port)  # neither a Service nor a pod: unknown
    answer = await request(mesh.port, host="example.org")
    assert (answer.status, answer.backend) == (200, "outside")
    assert not _target(mesh, f"{outside.host}:{outside.port}").known


@SPREAD
async def test_idle_connections_are_reused_per_endpoint(mesh: Mesh) -> None:
    await _spread(mesh, 30)
    idle = _target(mesh).idle_connections()
    assert set(idle) == {(b.host, b.port) for b in mesh.backends}
    assert all(count <= 2 for count in idle.values()), idle  # sequential requests: one or two


async def test_removed_endpoint_drains_and_gets_no_new_requests(mesh: Mesh) -> None:
    for backend in mesh.backends:
        backend.slow_seconds = 1.5
    answers: list[int] = []

    async def slow() -> None:
        answers.append((await request(mesh.port, "/slow")).status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        with trio.fail_after(5):
            while not any(b.in_flight for b in mesh.backends):
                await trio.sleep(0.01)
        busy = next(b for b in mesh.backends if b.in_flight)
        mesh.set_endpoints([b for b in mesh.backends if b is not busy])
        balancer = _target(mesh).destination.balancer
        with trio.fail_after(5):
            while (busy.host, busy.port) not in balancer.draining():
                await request(mesh.port)  # picks follow discovery before each request
                await trio.sleep(0.02)
        before = busy.hits["/"]
        seen = await _spread(mesh, 30)
        assert busy.hits["/"] == before
        assert busy.name not in seen, seen
    assert answers == [200]  # the in-flight request on the removed endpoint completed
    assert (busy.host, busy.port) not in balancer.draining()


async def test_slow_endpoint_gets_less_traffic(mesh: Mesh) -> None:
    slow = mesh.backends[1]
    slow.delay = 0.15
    seen = await _spread(mesh, 60)
    assert seen[slow.name] <= 6, seen
    assert seen["web-0"] + seen["web-2"] >= 54, seen


# A first backoff longer than the test: no probe reaches the failing endpoint however slowly
# this shared machine runs the requests (the probes themselves are tests/balance's). A short
# RTT decay: one slow response must not keep p2c away from the failing endpoint (see above).
@pytest.mark.parametrize("mesh", [{"min_backoff": 30.0, "decay": 0.05}], indirect=True)
async def test_failing_endpoint_is_ejected(mesh: Mesh) -> None:
    failing = mesh.backends[2]
    failing.fail_status = 500
    statuses: Counter[int] = Counter()
    with trio.fail_after(20):  # well inside the 30 s backoff
        while (target := _target_or_none(mesh)) is None or _health(target, failing) == "healthy":
            assert statuses.total() < 1000, statuses
            statuses[(await request(mesh.port)).status] += 1
        # Linkerd's 7 consecutive failures eject it; then nothing reaches it during its backoff.
        assert failing.hits["/"] == 7, statuses
        for _ in range(30):
            statuses[(await request(mesh.port)).status] += 1
    assert failing.hits["/"] == 7, statuses
    assert statuses[500] == failing.hits["/"]  # "/" is not retryable: failures reach the client
    stats = {s.key: s for s in _target(mesh).destination.balancer.stats()}
    assert stats[(failing.host, failing.port)].health != "healthy"
    metrics = mesh.context.metrics.render().decode()
    endpoint = f'endpoint="{failing.host}:{failing.port}"'
    assert f'outbound_balancer_endpoint_pending{{dst="{SERVICE_AUTHORITY}",{endpoint},' in metrics
    assert f'{endpoint},state="ejected"}} 0' in metrics


async def test_no_endpoints_answers_503_after_the_failfast_wait(mesh: Mesh) -> None:
    mesh.original[0] = (EMPTY_IP, SERVICE_PORT)
    started = trio.current_time()
    answer = await request(mesh.port, host="example.org")
    assert answer.status == 503
    assert answer.headers[b"meshlet-proxy-error"] == b"no_endpoints"
    assert trio.current_time() - started >= 0.5  # the failfast wait (0.5 s in these tests)


async def test_endpoints_arriving_during_the_failfast_wait_serve_the_request(mesh: Mesh) -> None:
    mesh.set_endpoints([])
    with trio.fail_after(5):
        while _target_or_none(mesh) is None or _target(mesh).destination.balancer.stats():
            await request(mesh.port)
            await trio.sleep(0.02)
    async with trio.open_nursery() as nursery:
        results: list[str] = []

        async def waiting() -> None:
            results.append((await request(mesh.port)).backend)

        nursery.start_soon(waiting)
        await trio.sleep(0.1)
        mesh.set_endpoints(mesh.backends[:1])
    assert results == ["web-0"]


def _target_or_none(mesh: Mesh) -> Target | None:
    return mesh.outbound.targets.get(SERVICE_AUTHORITY)


def _health(target: Target, backend: Backend) -> str | None:
    """The balancer's view of ``backend`` (``None`` before discovery listed it)."""
    for stats in target.destination.balancer.stats():
        if stats.key == (backend.host, backend.port):
            return stats.health
    return None


@pytest.mark.parametrize(
    "mesh", [{"opaque_ports": frozenset({SERVICE_PORT}), "decay": 0.05}], indirect=True
)
async def test_opaque_connections_pick_an_endpoint_each(mesh: Mesh) -> None:
    seen = await _spread(mesh, 30)
    assert set(seen) == {"web-0", "web-1", "web-2"}, seen
    balancer = mesh.outbound.targets[f"127.0.10.1:{SERVICE_PORT}"].destination.balancer
    with trio.fail_after(5):
        while any(s.pending for s in balancer.stats()):  # every connection's pick was finished
            await trio.sleep(0.01)


@pytest.mark.parametrize("mesh", [{"outbound_discovery_idle_timeout": 0.2}], indirect=True)
async def test_idle_authorities_are_released(mesh: Mesh) -> None:
    await request(mesh.port)
    assert SERVICE_AUTHORITY in mesh.outbound.targets
    with trio.fail_after(5):
        while mesh.outbound.targets:
            await trio.sleep(0.05)
    assert mesh.outbound.discovery.subscriptions == 0  # type: ignore[attr-defined]
    assert (await request(mesh.port)).status == 200  # subscribes again
