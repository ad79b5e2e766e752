"""Meshed endpoints are connected through the TLS side's hook with their discovery identity."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from proxy.metrics import Metrics
from proxy.mtls import NoTlsReason, PeerIdentityMismatch, TlsLabels
from proxy.net import Conn, connect
from tests.mesh_outbound.conftest import SERVICE_AUTHORITY, Mesh
from tests.mesh_outbound.mo_client import request

pytestmark = pytest.mark.trio

IDENTITY = "default.shop.serviceaccount.identity.meshlet.cluster.local"


class Recorder:
    """An ``EndpointConnector`` that records its calls and connects in plaintext, labelled as
    the real hook labels a verified mTLS connection (the TLS itself is tests/mesh_tls')."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[tuple[tuple[str, int], str | None]] = []
        self.refuse = refuse

    async def __call__(
        self,
        address: tuple[str, int],
        identity: str | None,
        *,
        timeout: float,
        metrics: Metrics,
        direction: str,
    ) -> Conn:
        self.calls.append((address, identity))
        if identity is None:
            reason = NoTlsReason.NOT_PROVIDED_BY_SERVICE_DISCOVERY
            labels = TlsLabels.plaintext(reason).text
        else:
            if address[0] == self.refuse:
                raise PeerIdentityMismatch(f"{address} is not {identity}")
            labels = TlsLabels.outbound_meshed(identity).text
        conn = await connect(
            address, timeout=timeout, metrics=metrics, direction=direction, tls_labels=labels
        )
        conn.peer_id = identity
        return conn


async def _meshed(mesh: Mesh, recorder: Recorder) -> None:
    mesh.outbound.connector = recorder
    mesh.set_endpoints(mesh.backends, meshed=True)
    await request(mesh.port)  # subscribes
    view = mesh.outbound.targets[SERVICE_AUTHORITY].endpoints
    assert view is not None
    with trio.fail_after(5):
        while not all(e.identity for e in view.current().endpoints.values()):
            await trio.sleep(0.02)


async def test_meshed_endpoints_use_the_hook_with_their_identity(mesh: Mesh) -> None:
    recorder = Recorder()
    await _meshed(mesh, recorder)
    recorder.calls.clear()
    for _ in range(10):
        assert (await request(mesh.port)).status == 200
    assert recorder.calls, "pooled connections to the new endpoints must be opened by the hook"
    assert {identity for _, identity in recorder.calls} == {IDENTITY}
    metrics = mesh.context.metrics.render().decode()
    assert f'tls="true",server_id="{IDENTITY}",dst_' in metrics


async def test_plaintext_endpoints_are_labelled_not_provided_by_discovery(mesh: Mesh) -> None:
    mesh.outbound.connector = Recorder()
    for _ in range(5):
        assert (await request(mesh.port)).status == 200
    metrics = mesh.context.metrics.render().decode()
    assert 'no_tls_reason="not_provided_by_service_discovery",dst_' in metrics


async def test_an_endpoint_failing_its_identity_check_is_avoided(mesh: Mesh) -> None:
    impostor = mesh.backends[0]
    recorder = Recorder(refuse=impostor.host)
    await _meshed(mesh, recorder)
    seen: Counter[int] = Counter()
    for _ in range(20):
        seen[(await request(mesh.port)).status] += 1
    assert seen == {200: 20}  # a refused handshake is a connect failure: tried elsewhere
    assert impostor.hits["/"] == 0
    assert any(address[0] == impostor.host for address, _ in recorder.calls)
