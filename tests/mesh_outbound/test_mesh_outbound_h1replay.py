"""HTTP/1 to a discovered destination when a pooled keep-alive connection was closed by the
server as the proxy reused it (``proxy/http1mesh.py`` with ``proxy/h1/replay.py``): idempotent
requests with bodies are replayed on a new connection, a ``POST`` only with an Idempotency-Key,
and connections idle past the pool idle timeout are not reused at all."""

from __future__ import annotations

import h11
import pytest
import trio

from tests.mesh_outbound.conftest import SERVICE_AUTHORITY, Mesh
from tests.mesh_outbound.mo_backend import Backend
from tests.mesh_outbound.mo_client import request

pytestmark = pytest.mark.trio


async def _send(port: int, method: str, body: bytes, *, extra: list[tuple[str, str]]) -> int:
    """One request with ``extra`` fields on its own client connection; the status."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = h11.Connection(h11.CLIENT)
            headers = [("host", SERVICE_AUTHORITY), ("content-length", str(len(body))), *extra]
            await stream.send_all(
                client.send(h11.Request(method=method, target="/", headers=headers))
                + client.send(h11.Data(data=body))
                + client.send(h11.EndOfMessage())
            )
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    return event.status_code


async def _only(mesh: Mesh) -> Backend:
    """One endpoint that closes every reused connection unanswered, with a connection pooled."""
    only = mesh.backends[0]
    only.drop_reused = True
    mesh.set_endpoints([only])
    await request(mesh.port)  # the authority is resolved from here on
    with trio.fail_after(5):
        while len(mesh.outbound.targets[SERVICE_AUTHORITY].destination.balancer) != 1:
            await request(mesh.port)
            await trio.sleep(0.02)
    await request(mesh.port)  # leaves a pooled connection to ``only``
    return only


_REUSE = pytest.mark.parametrize("mesh", [{"http1_pool_idle_timeout": 60.0}], indirect=True)
"""Pooled connections stay reusable however slow the machine: the race is the backend's."""


@_REUSE
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        pytest.param("PUT", [], id="put"),
        pytest.param("DELETE", [], id="delete"),
        pytest.param("POST", [("idempotency-key", '"k-1"')], id="post-idempotency-key"),
    ],
)
async def test_an_idempotent_request_with_a_body_is_replayed(
    mesh: Mesh, method: str, extra: list[tuple[str, str]]
) -> None:
    only = await _only(mesh)
    dropped = only.hits["dropped"]
    status = await _send(mesh.port, method, b"z" * 5000, extra=extra)
    assert status == 200
    assert only.hits["dropped"] == dropped + 1  # the pooled connection was dead; replayed


@_REUSE
async def test_a_plain_post_is_not_replayed(mesh: Mesh) -> None:
    only = await _only(mesh)
    answered, dropped = only.hits["/"], only.hits["dropped"]
    assert await _send(mesh.port, "POST", b"once", extra=[]) == 502
    assert (only.hits["/"], only.hits["dropped"]) == (answered, dropped + 1)  # sent once only


@pytest.mark.parametrize("mesh", [{"http1_pool_idle_timeout": 0.2}], indirect=True)
async def test_a_pooled_connection_idle_past_the_pool_idle_timeout_is_not_reused(
    mesh: Mesh,
) -> None:
    only = await _only(mesh)
    dropped = only.hits["dropped"]
    for _ in range(2):
        await trio.sleep(0.3)
        assert await _send(mesh.port, "POST", b"after a pause", extra=[]) == 200
    assert only.hits["dropped"] == dropped  # the idle connection was not offered the POST
