"""The inbound policy in real proxies on loopback, certified by a real ``meshlet-identity``.

curl is the client: plaintext straight to the server proxy's inbound listener (an unmeshed
client), or through a client proxy whose discovery names the server proxy (a meshed client).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

import pytest
import trio

from proxy.policy import DefaultInboundPolicy
from tests.mesh_tls.conftest import DB, WEB, IdentityService, MeshProxy, StartMeshProxy
from tests.proxy.conftest import curl

pytestmark = pytest.mark.trio

ALL_AUTH = DefaultInboundPolicy.ALL_AUTHENTICATED
PLAIN = 'tls="no_identity",no_tls_reason="no_tls_from_remote"'


async def _pair(
    identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    app: tuple[str, int],
    **server_settings: Any,
) -> tuple[MeshProxy, MeshProxy]:
    server = await start_mesh_proxy(app, identity_service.variables(DB), **server_settings)
    client = await start_mesh_proxy(
        server.inbound, identity_service.variables(WEB), endpoints={server.inbound: DB}
    )
    await server.wait_ready()
    await client.wait_ready()
    return client, server


def _status_and_error(head: bytes) -> tuple[int, str | None]:
    text = head.decode()
    status = int(text.split()[1])
    match = re.search(r"(?im)^meshlet-proxy-error: *(\S+)", text)
    return status, match.group(1) if match else None


async def test_all_authenticated_refuses_plaintext_http_and_admits_meshed_clients(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, app_port: int
) -> None:
    client, server = await _pair(
        identity_service,
        start_mesh_proxy,
        ("127.0.0.1", app_port),
        default_inbound_policy=ALL_AUTH,
    )
    refused = await curl("--include", "--http1.1", "--data", "x" * 100_000,
                         f"{server.inbound_url}/headers")  # fmt: skip
    assert refused.returncode == 0, refused.stderr
    assert _status_and_error(refused.stdout) == (403, "unauthorized")
    assert b"requires a mesh identity" in refused.stdout
    meshed = await curl("--include", f"{client.outbound_url}/headers")
    assert meshed.returncode == 0, meshed.stderr
    assert _status_and_error(meshed.stdout) == (200, None)
    assert f"meshlet-client-id: {WEB}".encode() in meshed.stdout
    metrics = await server.metrics()
    assert (
        f'inbound_http_authz_deny_total{{direction="inbound",srv_port="{app_port}",'
        f'policy="all-authenticated",reason="unauthenticated",{PLAIN}}} 1'
    ) in metrics, metrics
    assert re.search(r'response_total\{direction="inbound",[^}]*status_code="403"', metrics)
    assert re.search(r'request_total\{direction="inbound",[^}]*tls="true"', metrics)
    # A request head that never completes: nothing to answer; closed and counted as TCP.
    stream = await trio.open_tcp_stream(*server.inbound)
    async with stream:
        await stream.send_all(b"GET /headers HTTP/1.1\r\nhost: x\r\n")
        await stream.send_eof()
        with trio.fail_after(15):
            assert await stream.receive_some(1024) == b""
    assert (
        f'inbound_tcp_authz_deny_total{{direction="inbound",srv_port="{app_port}",'
        f'policy="all-authenticated",reason="unauthenticated",{PLAIN}}} 1'
    ) in await server.metrics()


async def test_all_authenticated_refuses_plaintext_http2(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, h2_app: tuple[str, int]
) -> None:
    client, server = await _pair(
        identity_service, start_mesh_proxy, h2_app, default_inbound_policy=ALL_AUTH
    )
    refused = await curl("--include", "--http2-prior-knowledge", f"{server.inbound_url}/x")
    assert refused.returncode == 0, refused.stderr
    assert _status_and_error(refused.stdout) == (403, "unauthorized")
    meshed = await curl("--include", "--http2-prior-knowledge", f"{client.outbound_url}/x")
    assert _status_and_error(meshed.stdout) == (200, None), meshed
    metrics = await server.metrics()
    assert re.search(
        r'inbound_http_authz_deny_total\{[^}]*reason="unauthenticated"[^}]*\} 1', metrics
    ), metrics


async def test_all_authenticated_closes_plaintext_opaque_tcp(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, nursery: trio.Nursery
) -> None:
    async def banner_then_echo(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 ready\n")
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, banner_then_echo, 0, host="127.0.0.1")
    )
    app = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    client, server = await _pair(
        identity_service, start_mesh_proxy, app, default_inbound_policy=ALL_AUTH
    )
    opaque = await start_mesh_proxy(
        app,
        identity_service.variables(DB),
        default_inbound_policy=ALL_AUTH,
        opaque_ports=frozenset({app[1]}),
    )
    await opaque.wait_ready()
    # Plaintext, detected as opaque (client speaks first), and on an opaque port (no
    # detection; the app would speak first): closed before the app sees the connection.
    for proxy, first in ((server, b"\x01not http\n"), (opaque, b"")):
        stream = await trio.open_tcp_stream(*proxy.inbound)
        async with stream:
            if first:
                await stream.send_all(first)
            with trio.fail_after(15):
                assert await stream.receive_some(1024) == b""  # closed, no banner
        metrics = await proxy.metrics()
        assert (
            f'inbound_tcp_authz_deny_total{{direction="inbound",srv_port="{app[1]}",'
            f'policy="all-authenticated",reason="unauthenticated",{PLAIN}}} 1'
        ) in metrics, metrics
    # A meshed client's opaque bytes ride mTLS and reach the app.
    stream = await trio.open_tcp_stream("127.0.0.1", client.addresses.outbound[1])
    async with stream:
        await stream.send_all(b"\x01meshed\n")
        received = b""
        with trio.fail_after(15):
            while received != b"220 ready\n\x01meshed\n":
                data = await stream.receive_some(1024)
                assert data, received
                received += data


@pytest.mark.parametrize(
    "case",
    [
        pytest.param((DefaultInboundPolicy.DENY, None, 403, 403), id="deny"),
        pytest.param(
            (DefaultInboundPolicy.CLUSTER_UNAUTHENTICATED, "10.0.0.0/8", 403, 403),
            id="cluster-unauthenticated/loopback-outside",
        ),
        pytest.param(
            (DefaultInboundPolicy.CLUSTER_UNAUTHENTICATED, "127.0.0.0/8", 200, 200),
            id="cluster-unauthenticated/loopback-inside",
        ),
        pytest.param(
            (DefaultInboundPolicy.CLUSTER_AUTHENTICATED, "127.0.0.0/8", 200, 403),
            id="cluster-authenticated/loopback-inside",
        ),
        pytest.param((DefaultInboundPolicy.ALL_UNAUTHENTICATED, None, 200, 200), id="default"),
    ],
)  # fmt: skip
async def test_policies_through_real_proxies(
    identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    app_port: int,
    case: tuple[DefaultInboundPolicy, str | None, int, int],
) -> None:
    """(policy, cluster networks, status for the meshed client, for the plaintext client)"""
    policy, networks, meshed_status, plain_status = case
    extra: dict[str, Any] = {"default_inbound_policy": policy}
    if networks is not None:
        extra["cluster_networks"] = (ipaddress.ip_network(networks),)
    client, server = await _pair(
        identity_service, start_mesh_proxy, ("127.0.0.1", app_port), **extra
    )
    meshed = await curl("--include", f"{client.outbound_url}/headers")
    plain = await curl("--include", f"{server.inbound_url}/headers")
    assert _status_and_error(meshed.stdout)[0] == meshed_status, meshed
    assert _status_and_error(plain.stdout)[0] == plain_status, plain
    if meshed_status == 403:
        # The meshed client's refusal is counted with its proven identity.
        assert f'client_id="{WEB}"}} 1' in await server.metrics()


async def test_admin_and_tap_are_not_subject_to_the_policy(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, app_port: int
) -> None:
    _client, server = await _pair(
        identity_service,
        start_mesh_proxy,
        ("127.0.0.1", app_port),
        default_inbound_policy=DefaultInboundPolicy.DENY,
    )
    assert (await server.admin("/ready")).status_code == 200
    assert "inbound_http_authz_deny_total" in await server.metrics()
