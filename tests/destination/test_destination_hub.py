"""The hub in-process: streams wake only for their topics, and a stalled stream holds one
pending state however many changes pile up."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from destination.authority import ServiceTarget
from destination.endpoints import identity_function
from destination.events import KINDS, Changed, Relisted
from destination.hub import Hub
from destination.index import ClusterState
from destination.metrics import DestinationMetrics

from .dst_objects import endpoint, endpoint_slice, service

WEB = ServiceTarget("shop", "web", 80)


def new_hub() -> tuple[Hub, DestinationMetrics]:
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    state = ClusterState(cluster_domain="cluster.local", identity_for=identity)
    metrics = DestinationMetrics()
    hub = Hub(state, metrics, keepalive_interval=30)
    for kind in KINDS:
        hub.apply(Relisted(kind, ()))
    hub.apply(Changed("Service", "ADDED", service("web")))
    hub.apply(Changed("Service", "ADDED", service("api", cluster_ip="10.96.0.20")))
    return hub, metrics


def sample(metrics: DestinationMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def line(stream: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(anext(stream), 5))  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_a_stalled_stream_coalesces_to_the_latest_state() -> None:
    hub, metrics = new_hub()
    stream = hub.endpoint_lines(WEB)
    assert (await line(stream))["type"] == "snapshot"
    for n in range(1, 101):  # 100 changes while nobody reads
        eps = [endpoint(f"10.1.{n}.{i}") for i in range(1, 4)]
        hub.apply(Changed("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", eps)))
        await asyncio.sleep(0)
    assert sample(metrics, "destination_updates_coalesced_total", api="endpoints") == 99
    added = await line(stream)
    assert added["type"] == "add"
    assert [e["address"] for e in added["endpoints"]] == ["10.1.100.1", "10.1.100.2", "10.1.100.3"]
    await stream.aclose()
    assert sample(metrics, "destination_streams_active", api="endpoints") == 0


@pytest.mark.asyncio
async def test_changes_elsewhere_do_not_wake_a_stream() -> None:
    hub, _ = new_hub()
    stream = hub.endpoint_lines(WEB)
    await line(stream)
    pending = asyncio.ensure_future(anext(stream))
    hub.apply(
        Changed("EndpointSlice", "ADDED", endpoint_slice("api-a", "api", [endpoint("10.2.0.1")]))
    )
    await asyncio.sleep(0.05)
    assert not pending.done()
    hub.apply(
        Changed("EndpointSlice", "ADDED", endpoint_slice("web-a", "web", [endpoint("10.1.0.1")]))
    )
    assert json.loads(await asyncio.wait_for(pending, 5))["type"] == "add"
    await stream.aclose()


@pytest.mark.asyncio
async def test_streams_wait_for_the_initial_sync_with_keepalives() -> None:
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    state = ClusterState(cluster_domain="cluster.local", identity_for=identity)
    hub = Hub(state, DestinationMetrics(), keepalive_interval=0.05)
    stream = hub.endpoint_lines(WEB)
    assert await line(stream) == {"type": "keepalive"}
    for kind in KINDS:
        hub.apply(Relisted(kind, (service("web"),) if kind == "Service" else ()))
    snapshot = await line(stream)
    while snapshot["type"] == "keepalive":
        snapshot = await line(stream)
    assert snapshot == {"type": "snapshot", "exists": True, "endpoints": []}
    hub.close()
    assert (await line(stream))["type"] == "close"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
