"""The HTTP/1 shells publish to the tap: request, response and end, on the mesh path too."""

from __future__ import annotations

import pytest

from proxy.tap import TapEnd, TapFilter, TapRequest, TapResponse
from tests.mesh_outbound.conftest import EMPTY_IP, SERVICE_PORT, Mesh
from tests.mesh_outbound.mo_client import request

pytestmark = pytest.mark.trio


async def test_a_balanced_request_is_tapped_with_its_endpoint(mesh: Mesh) -> None:
    subscriber = mesh.context.tap.subscribe(TapFilter(direction="outbound"))
    answer = await request(mesh.port, "/books?x=1")
    events = subscriber.take()
    assert [type(e) for e in events] == [TapRequest, TapResponse, TapEnd]
    started, response, end = events
    assert isinstance(started, TapRequest)
    assert (started.method, started.path) == ("GET", "/books?x=1")
    assert started.authority == "web.shop.svc.cluster.local:8080"
    backend = next(b for b in mesh.backends if b.name == answer.backend)
    assert started.dst == f"{backend.host}:{backend.port}"
    assert started.tls == "no_identity"
    assert isinstance(response, TapResponse)
    assert response.status == 200
    assert isinstance(end, TapEnd)
    assert (end.error, end.response_bytes) == ("", len(answer.body))


async def test_a_request_the_proxy_answers_is_tapped_with_its_reason(mesh: Mesh) -> None:
    subscriber = mesh.context.tap.subscribe(TapFilter())
    mesh.original[0] = (EMPTY_IP, SERVICE_PORT)
    answer = await request(mesh.port, host="example.org")
    assert answer.status == 503
    events = subscriber.take()
    assert [type(e) for e in events] == [TapRequest, TapResponse, TapEnd]
    assert isinstance(events[1], TapResponse)
    assert events[1].status == 503
    assert isinstance(events[2], TapEnd)
    assert events[2].error == "no_endpoints"


async def test_a_plain_request_is_tapped(mesh: Mesh) -> None:
    subscriber = mesh.context.tap.subscribe(TapFilter())
    mesh.original[0] = (mesh.outside.host, mesh.outside.port)
    answer = await request(mesh.port, "/plain", host="example.org")
    assert answer.backend == "outside"
    events = subscriber.take()
    assert [type(e) for e in events] == [TapRequest, TapResponse, TapEnd]
    assert isinstance(events[0], TapRequest)
    assert events[0].path == "/plain"
    assert isinstance(events[2], TapEnd)
    assert events[2].response_bytes == len(answer.body)
