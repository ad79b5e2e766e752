"""HTTP/2 to a discovered destination (static view, nginx): dst labels, picks, failfast 503."""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from proxy.__main__ import ProxyAddresses, run_proxy
from proxy.context import Lifecycle, ProxyContext
from proxy.discovery import EndpointView, ProfileView
from proxy.discovery.state import EndpointTracker, ProfileTracker
from proxy.metrics import Metrics
from proxy.outbound import Outbound
from proxy.settings import Address, ProxySettings
from tests.proxy.conftest import Nginx, curl, nginx

pytestmark = pytest.mark.trio
__all__ = ["nginx"]  # fixture used below

SERVICE = ("127.0.10.1", 80)


class StaticDiscovery:
    """Discovery answering one authority with fixed endpoints (the real client is tested with
    a real destination service in the other modules)."""

    def __init__(self, endpoints: list[dict[str, Any]]) -> None:
        tracker = EndpointTracker()
        tracker.apply({"type": "snapshot", "exists": True, "endpoints": endpoints})
        profile = ProfileTracker()
        profile.apply({"type": "profile", "routes": []})
        self.view = EndpointView("127.0.10.1:80", tracker)
        self.profile_view = ProfileView("127.0.10.1:80", profile)

    async def endpoints(self, authority: str) -> EndpointView:
        return self.view

    async def profile(self, authority: str) -> ProfileView:
        return self.profile_view

    def release(self, authority: str) -> None:
        pass


Start = Callable[[list[dict[str, Any]]], Awaitable[tuple[ProxyAddresses, ProxyContext]]]


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    async def start(endpoints: list[dict[str, Any]]) -> tuple[ProxyAddresses, ProxyContext]:
        settings = ProxySettings(
            inbound_listen=Address("127.0.0.1", 0),
            outbound_listen=Address("127.0.0.1", 0),
            admin_listen=Address("127.0.0.1", 0),
            outbound_failfast_timeout=0.2,
        )
        outbound = Outbound(settings, StaticDiscovery(endpoints), rng=random.Random(3))
        context = ProxyContext(settings, Metrics(), Lifecycle(), outbound=outbound)
        addresses = await nursery.start(
            functools.partial(run_proxy, settings, resolver=lambda _s: SERVICE, context=context)
        )
        return addresses, context

    return start


async def test_http2_connections_pick_a_discovered_endpoint(start: Start, nginx: Nginx) -> None:
    endpoint = {"address": "127.0.0.1", "port": nginx.h2c_port, "labels": {"pod": "nginx-0"}}
    addresses, context = await start([endpoint])
    for _ in range(2):
        result = await curl(
            "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
            f"http://127.0.0.1:{addresses.outbound[1]}/",
        )  # fmt: skip
        assert result.stdout == b"200", result.stderr
    metrics = context.metrics.render().decode()
    assert 'dst_pod="nginx-0"' in metrics
    assert context.outbound is not None
    balancer = context.outbound.targets["127.0.10.1:80"].destination.balancer
    with trio.fail_after(5):
        while any(s.pending for s in balancer.stats()):
            await trio.sleep(0.01)
    assert [s.requests for s in balancer.stats()] == [2]


async def test_http2_without_endpoints_gets_503_per_stream(start: Start) -> None:
    addresses, _ = await start([])
    result = await curl(
        "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
        f"http://127.0.0.1:{addresses.outbound[1]}/",
    )  # fmt: skip
    assert b"HTTP/2 503" in result.stdout, result.stdout
    assert b"meshlet-proxy-error: no_endpoints" in result.stdout
