"""ServiceProfile routes through the outbound listener: retries, budgets, timeouts, metrics."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from tests.mesh_outbound.conftest import SERVICE_AUTHORITY, Mesh
from tests.mesh_outbound.mo_client import request

pytestmark = pytest.mark.trio


async def test_retryable_get_on_a_5xx_succeeds_on_another_endpoint(mesh: Mesh) -> None:
    failing = mesh.backends[0]
    failing.fail_status = 503
    statuses: Counter[int] = Counter()
    for _ in range(20):
        statuses[(await request(mesh.port, "/retry")).status] += 1
    assert statuses == {200: 20}
    assert failing.hits["/retry"] >= 1  # it was tried, and the failure was retried elsewhere
    metrics = mesh.context.metrics.render().decode()
    assert (
        'route_request_total{direction="outbound",dst="web.shop.svc.cluster.local:8080",'
        'rt_route="GET /retry"} 20' in metrics
    )
    assert 'rt_route="GET /retry",status_code="200",classification="success"} 20' in metrics


async def test_non_retryable_post_is_not_retried(mesh: Mesh) -> None:
    failing = mesh.backends[0]
    failing.fail_status = 503
    statuses: Counter[int] = Counter()
    for _ in range(20):
        statuses[(await request(mesh.port, "/retry", method="POST", body=b"x" * 100)).status] += 1
    assert failing.hits["/retry"] >= 1
    assert statuses[503] == failing.hits["/retry"]
    assert statuses[200] == 20 - failing.hits["/retry"]


@pytest.mark.parametrize("mesh", [{"outbound_retry_buffer_bytes": 16}], indirect=True)
async def test_a_body_too_large_to_buffer_is_not_retried(mesh: Mesh) -> None:
    failing = mesh.backends[0]
    failing.fail_status = 503
    statuses: Counter[int] = Counter()
    for _ in range(15):
        answer = await request(mesh.port, "/retry", body=b"y" * 1000)
        statuses[answer.status] += 1
        if answer.status == 200:
            assert answer.body.endswith(b" 1000\n")  # the whole streamed body arrived
    assert statuses[503] == failing.hits["/retry"] >= 1


async def test_connect_failure_is_retried_on_another_endpoint(mesh: Mesh) -> None:
    dead = mesh.backends[1]
    live_port, dead.port = dead.port, 1  # discovery lists a port where nothing listens
    mesh.set_endpoints(mesh.backends)
    # the destination service reads its file on change: until the proxy's view has the new
    # port, a pick may still reach web-1 where it listens (not what this test is about)
    with trio.fail_after(10):
        while True:
            await request(mesh.port)  # subscribes; picks follow discovery before each request
            active = {
                s.key
                for s in mesh.outbound.targets[SERVICE_AUTHORITY].destination.balancer.stats()
                if not s.draining
            }
            if (dead.host, 1) in active and (dead.host, live_port) not in active:
                break
            await trio.sleep(0.02)
    seen: Counter[str] = Counter()
    for _ in range(20):
        answer = await request(mesh.port)
        seen[answer.backend or str(answer.status)] += 1
    assert set(seen) <= {"web-0", "web-2"}, seen
    assert sum(seen.values()) == 20


async def test_route_timeout_answers_504(mesh: Mesh) -> None:
    answer = await request(mesh.port, "/timeout")
    assert answer.status == 504
    assert answer.headers[b"meshlet-proxy-error"] == b"route_timeout"
    metrics = mesh.context.metrics.render().decode()
    assert 'rt_route="GET /timeout",status_code="504",classification="failure"} 1' in metrics


def _pending(mesh: Mesh) -> list[int]:
    balancer = mesh.outbound.targets[SERVICE_AUTHORITY].destination.balancer
    return [s.pending for s in balancer.stats()]


async def test_every_pick_is_finished_once_whatever_ends_it(mesh: Mesh) -> None:
    mesh.backends[0].fail_status = 503
    for backend in mesh.backends:
        backend.slow_seconds = 1.5
    await request(mesh.port, "/retry")  # retried
    await request(mesh.port, "/retry", method="POST")  # maybe a relayed failure
    await request(mesh.port, "/timeout")  # route timeout
    with trio.move_on_after(0.3):  # the client goes away mid-request
        await request(mesh.port, "/slow")
    with trio.fail_after(8):  # the abandoned request is reported once its answer arrives
        while any(_pending(mesh)):
            await trio.sleep(0.02)
    assert _pending(mesh) == [0, 0, 0]
    assert (await request(mesh.port)).status in {200, 503}


async def test_a_pooled_connection_closed_as_it_is_reused_is_replaced(mesh: Mesh) -> None:
    only = mesh.backends[0]
    only.drop_reused = True
    mesh.set_endpoints([only])
    await request(mesh.port)
    with trio.fail_after(5):
        while len(mesh.outbound.targets[SERVICE_AUTHORITY].destination.balancer) != 1:
            await request(mesh.port)
            await trio.sleep(0.02)
    statuses = [(await request(mesh.port)).status for _ in range(5)]
    assert statuses == [200] * 5  # GET on the default (not retryable) route, never a 502
    assert only.hits["dropped"] >= 4
    post = await request(mesh.port, method="POST", body=b"once")
    assert post.status == 502  # not idempotent: the proxy cannot know it was not processed
