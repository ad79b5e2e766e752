"""Two real proxies on loopback, certified by a real ``meshlet-identity``: mTLS between them.

The client proxy's discovery names the server proxy's inbound listener with the identity ``db``;
curl (a real HTTP/1.1 and HTTP/2 client) talks to the client proxy's outbound listener, the app
behind the server proxy echoes the request headers it received (``GET /headers``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import ssl
from pathlib import Path

import pytest
import trio

from proxy.identity import IdentityClient, IdentityClientSettings
from proxy.mtls import MESH_ALPN, connect_meshed
from proxy.mtls.transport import encode_transport_header
from proxy.tap import Subscriber, TapFilter, TapRequest
from tests.identity.conftest import PKI, start_identity, stop
from tests.mtls.conftest import foreign_identity
from tests.proxy.conftest import curl

from .conftest import (
    ADMIN,
    DB,
    SHORT_LIFETIME,
    WEB,
    IdentityService,
    MeshProxy,
    StartMeshProxy,
    free_port,
)

pytestmark = pytest.mark.trio

ECHO_BYTES = 65536


def _headers(body: bytes) -> list[str]:
    return [line for line in body.decode().splitlines() if line]


def _client_ids(body: bytes) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in _headers(body)
        if line.lower().startswith("meshlet-client-id:")
    ]


def _tap_both(client: MeshProxy, server: MeshProxy) -> tuple[Subscriber, Subscriber]:
    return (
        client.context.tap.subscribe(TapFilter(direction="outbound")),
        server.context.tap.subscribe(TapFilter(direction="inbound")),
    )


def _assert_tapped_meshed(outbound: Subscriber, inbound: Subscriber) -> None:
    """Each side's tap shows the request with the identity its peer proved."""
    sent = [e for e in outbound.take() if isinstance(e, TapRequest)]
    received = [e for e in inbound.take() if isinstance(e, TapRequest)]
    assert [(e.tls, e.server_id) for e in sent] == [("true", DB)]
    assert [(e.tls, e.client_id) for e in received] == [("true", WEB)]


async def _meshed_pair(
    identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    app: tuple[str, int],
    *,
    promised: str = DB,
) -> tuple[MeshProxy, MeshProxy]:
    server = await start_mesh_proxy(app, identity_service.variables(DB))
    client = await start_mesh_proxy(
        server.inbound, identity_service.variables(WEB), endpoints={server.inbound: promised}
    )
    await server.wait_ready()
    await client.wait_ready()
    return client, server


async def test_meshed_http1_request_carries_the_client_identity(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, app_port: int
) -> None:
    client, server = await _meshed_pair(identity_service, start_mesh_proxy, ("127.0.0.1", app_port))
    taps = _tap_both(client, server)
    result = await curl(
        "-H", "meshlet-client-id: spoofed.by.the.app", f"{client.outbound_url}/headers"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _client_ids(result.stdout) == [WEB]
    _assert_tapped_meshed(*taps)
    server_metrics = await server.metrics()
    assert re.search(
        r'request_total\{direction="inbound",authority="[^"]+",tls="true",'
        rf'client_id="{re.escape(WEB)}"\}} 1',
        server_metrics,
    ), server_metrics
    assert re.search(
        r'tcp_open_total\{direction="inbound",peer="src",target_addr="[^"]+",tls="true",'
        rf'client_id="{re.escape(WEB)}"\}} 1',
        server_metrics,
    ), server_metrics
    client_metrics = await client.metrics()
    assert re.search(
        r'tcp_open_total\{direction="outbound",peer="dst",target_addr="[^"]+",tls="true",'
        rf'server_id="{re.escape(DB)}"',
        client_metrics,
    ), client_metrics
    assert f'server_id="{DB}"' in client_metrics


async def test_meshed_http2_request_carries_the_client_identity(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, h2_app: tuple[str, int]
) -> None:
    client, server = await _meshed_pair(identity_service, start_mesh_proxy, h2_app)
    taps = _tap_both(client, server)
    result = await curl(
        "--http2-prior-knowledge",
        "-H", "meshlet-client-id: spoofed.by.the.app",
        f"{client.outbound_url}/headers",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _client_ids(result.stdout) == [WEB]
    _assert_tapped_meshed(*taps)
    server_metrics = await server.metrics()
    assert f'tls="true",client_id="{WEB}"' in server_metrics
    assert f'tls="true",server_id="{DB}"' in await client.metrics()


async def test_plaintext_client_cannot_spoof_the_client_identity(
    identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    app_port: int,
    h2_app: tuple[str, int],
) -> None:
    server = await start_mesh_proxy(("127.0.0.1", app_port), identity_service.variables(DB))
    server2 = await start_mesh_proxy(h2_app, identity_service.variables(DB))
    await server.wait_ready()
    await server2.wait_ready()
    for url, extra in (
        (server.inbound_url, "--http1.1"),
        (server2.inbound_url, "--http2-prior-knowledge"),
    ):
        result = await curl(extra, "-H", f"MeshLet-Client-Id: {WEB}", f"{url}/headers")
        assert result.returncode == 0, result.stderr
        assert _client_ids(result.stdout) == [], result.stdout
        assert "user-agent: curl" in result.stdout.decode().lower()
    metrics = await server.metrics()
    assert 'direction="inbound",peer="src"' in metrics
    assert 'tls="no_identity",no_tls_reason="no_tls_from_remote"' in metrics
    assert 'tls="true"' not in metrics


async def test_peer_that_is_not_the_promised_identity_is_refused(
    identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    # An impostor that terminates TLS for any name with a valid certificate for ADMIN.
    variables = identity_service.variables(ADMIN)
    impostor = IdentityClient(
        IdentityClientSettings.from_env({f"MESHLET_PROXY_{k}": v for k, v in variables.items()}),
        alpn_protocols=MESH_ALPN,
    )
    nursery.start_soon(impostor.run)
    with trio.fail_after(20):
        await impostor.ready.wait()
    reached: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, impostor.server_context, server_side=True)
        try:
            await tls.do_handshake()
            reached.append(await tls.receive_some(65536))
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    client = await start_mesh_proxy(
        address, identity_service.variables(WEB), endpoints={address: DB}
    )
    await client.wait_ready()
    result = await curl("-i", f"{client.outbound_url}/headers")
    head = result.stdout.decode(errors="replace").lower()
    assert head.startswith("http/1.1 502"), head
    assert "meshlet-proxy-error: identity_mismatch" in head
    assert reached == []  # the request never went to the impostor


async def test_client_with_a_foreign_certificate_is_refused(
    identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    app_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.server")
    server = await start_mesh_proxy(("127.0.0.1", app_port), identity_service.variables(DB))
    await server.wait_ready()
    foreign = foreign_identity(tmp_path / "evil", WEB)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=identity_service.pki.anchors_file.read_text())
    context.load_cert_chain(foreign.cert_file, foreign.key_file)
    tcp = await trio.open_tcp_stream(*server.inbound)
    tls = trio.SSLStream(tcp, context, server_hostname=DB)
    answer = b""
    try:
        await tls.do_handshake()
        await tls.send_all(b"GET /headers HTTP/1.1\r\nhost: db\r\n\r\n")
        with trio.fail_after(10):
            answer = await tls.receive_some(65536)
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(tls)
    assert answer == b""
    assert 'client_id="' not in await server.metrics()
    assert "refused (untrusted_peer)" in caplog.text


async def test_ready_only_after_the_first_certificate(
    start_mesh_proxy: StartMeshProxy, pki: PKI, tmp_path: Path
) -> None:
    port = free_port()
    service = IdentityService(port, pki, tmp_path / "proxies")
    proxy = await start_mesh_proxy(("127.0.0.1", 9), service.variables(WEB))
    assert (await proxy.admin("/ready")).status_code == 503
    assert (await proxy.admin("/live")).status_code == 200
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("tok-web shop/web\n")
    _, process = await trio.to_thread.run_sync(
        functools.partial(start_identity, pki, tokens, tmp_path / "identity.log", port=port)
    )
    try:
        await proxy.wait_ready(timeout=30)
        assert (await proxy.admin("/live")).status_code == 200
    finally:
        stop(process)


async def test_opaque_tcp_between_meshed_proxies_is_mtls(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, nursery: trio.Nursery
) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    app = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    client, server = await _meshed_pair(identity_service, start_mesh_proxy, app)
    payload = b"opaque bytes, not HTTP\n" + bytes(range(256)) * (ECHO_BYTES // 256)
    stream = await trio.open_tcp_stream("127.0.0.1", client.addresses.outbound[1])
    async with stream:
        await stream.send_all(payload)
        received = b""
        with trio.fail_after(20):
            while len(received) < len(payload):
                data = await stream.receive_some(65536)
                assert data, "the connection ended early"
                received += data
    assert received == payload
    server_metrics = await server.metrics()
    assert re.search(
        rf'tcp_read_bytes_total\{{direction="inbound",peer="src",target_addr="[^"]+",'
        rf'tls="true",client_id="{re.escape(WEB)}"\}} \d+',
        server_metrics,
    ), server_metrics
    assert f'tls="true",server_id="{DB}"' in await client.metrics()


async def test_opaque_port_over_mtls_with_the_transport_header(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, nursery: trio.Nursery
) -> None:
    """A server-speaks-first app behind the server proxy, reached the way an outbound proxy
    reaches an opaque port: mTLS to the peer proxy's own port plus the transport header."""

    async def banner_then_echo(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 ready\n")
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, banner_then_echo, 0, host="127.0.0.1")
    )
    app_port = listeners[0].socket.getsockname()[1]
    proxy_port = free_port()
    server = await start_mesh_proxy(
        ("127.0.0.1", proxy_port), identity_service.variables(DB), inbound_port=proxy_port
    )
    client = await start_mesh_proxy(("127.0.0.1", 9), identity_service.variables(WEB))
    await server.wait_ready()
    await client.wait_ready()
    via_hook = functools.partial(
        client.mesh.connect_endpoint,
        ("127.0.0.1", app_port),
        DB,
        timeout=5.0,
        metrics=client.context.metrics,
        direction="outbound",
        opaque_transport_port=proxy_port,
    )
    for _ in range(2):
        conn = await via_hook()
        try:
            with trio.fail_after(10):
                assert await conn.receive() == b"220 ready\n"  # no detection wait for it
                await conn.send(b"HELO\n")
                assert await conn.receive() == b"HELO\n"
        finally:
            conn.close()
    metrics = await server.metrics()
    assert re.search(
        rf'tcp_open_total\{{direction="inbound",peer="src",target_addr="127.0.0.1:{proxy_port}",'
        rf'tls="true",client_id="{re.escape(WEB)}"\}} 2',
        metrics,
    ), metrics
    # Plaintext to the proxy port itself is refused (never forwarded anywhere).
    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(10):
            assert await stream.receive_some(100) == b""
    # mTLS to the proxy's identity, but no valid header, or one naming the proxy's own port:
    # closed, and the application sees nothing.
    assert client.mesh.identity is not None
    for header in (b"\x00meshlet.io/nope" + b"." * 8, encode_transport_header(proxy_port)):
        tls = await connect_meshed(
            ("127.0.0.1", proxy_port), DB, client.mesh.identity, settings=client.mesh.settings
        )
        try:
            await tls.send_all(header)
            with trio.fail_after(10):
                assert await _read_to_end(tls) == b""
        finally:
            await trio.aclose_forcefully(tls)


async def _read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def _echo_once(stream: trio.SocketStream, payload: bytes) -> None:
    await stream.send_all(payload)
    received = b""
    with trio.fail_after(10):
        while len(received) < len(payload):
            data = await stream.receive_some(65536)
            assert data, "the connection ended early"
            received += data
    assert received == payload


async def test_rotation_keeps_connections_and_new_ones_use_the_new_certificate(
    short_lived_identity_service: IdentityService,
    start_mesh_proxy: StartMeshProxy,
    nursery: trio.Nursery,
) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    app = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    service = short_lived_identity_service
    server = await start_mesh_proxy(app, service.variables(DB), min_refresh=0.2)
    client = await start_mesh_proxy(
        server.inbound, service.variables(WEB), endpoints={server.inbound: DB}, min_refresh=0.2
    )
    await server.wait_ready()
    await client.wait_ready()
    server_identity, client_identity = server.mesh.identity, client.mesh.identity
    assert server_identity is not None
    assert client_identity is not None
    first_certificates_expire = trio.current_time() + SHORT_LIFETIME

    async def renewed(times: int) -> None:
        start = (server_identity.renewals, client_identity.renewals)
        with trio.fail_after(60):
            while (
                server_identity.renewals < start[0] + times
                or client_identity.renewals < start[1] + times
            ):
                await trio.sleep(0.05)

    outbound = ("127.0.0.1", client.addresses.outbound[1])
    long_lived = await trio.open_tcp_stream(*outbound)
    async with long_lived:
        await _echo_once(long_lived, b"before the renewals\n")
        await renewed(2)
        await trio.sleep_until(first_certificates_expire + 0.5)
        await _echo_once(long_lived, b"after the renewals, same connection\n")
        await renewed(1)  # both hold a fresh certificate (the first ones expired)
        fresh = await trio.open_tcp_stream(*outbound)
        async with fresh:
            await _echo_once(fresh, b"a new connection\n")
    metrics = await server.metrics()
    assert re.search(
        rf'tcp_open_total\{{direction="inbound",peer="src",target_addr="[^"]+",'
        rf'tls="true",client_id="{re.escape(WEB)}"\}} 2',
        metrics,
    ), metrics


async def test_meshed_client_reaches_unmeshed_servers_in_plaintext(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, app_port: int
) -> None:
    app = ("127.0.0.1", app_port)
    # Discovery does not know the destination: the original address, plaintext.
    unknown = await start_mesh_proxy(app, identity_service.variables(WEB))
    # Discovery knows it, without an identity (an unmeshed pod): plaintext to the endpoint.
    unmeshed = await start_mesh_proxy(app, identity_service.variables(WEB), endpoints={app: None})
    for proxy in (unknown, unmeshed):
        await proxy.wait_ready()
        result = await curl(f"{proxy.outbound_url}/headers")
        assert result.returncode == 0, result.stderr
        assert _client_ids(result.stdout) == []
        metrics = await proxy.metrics()
        assert re.search(
            rf'tcp_open_total\{{direction="outbound",peer="dst",target_addr="127.0.0.1:{app_port}",'
            r'tls="no_identity",no_tls_reason="not_provided_by_service_discovery"',
            metrics,
        ), metrics
        assert 'tls="true"' not in metrics


async def test_tls_for_another_name_passes_through_to_the_application(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, nursery: trio.Nursery
) -> None:
    received: list[bytes] = []
    got_hello = trio.Event()

    async def record(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(10):
                while b"app.example" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
            received.append(data)
            got_hello.set()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, record, 0, host="127.0.0.1"))
    app = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    server = await start_mesh_proxy(app, identity_service.variables(DB))
    await server.wait_ready()
    tcp = await trio.open_tcp_stream(*server.inbound)
    tls = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname="app.example")
    async with trio.open_nursery() as handshake:
        handshake.start_soon(_handshake_ignoring_failure, tls)
        with trio.fail_after(10):
            await got_hello.wait()
        handshake.cancel_scope.cancel()
    await trio.aclose_forcefully(tls)
    assert received[0].startswith(b"\x16\x03")  # the application got the ClientHello untouched
    assert b"app.example" in received[0]
    metrics = await server.metrics()
    assert 'tls="no_identity",no_tls_reason="no_tls_from_remote"' in metrics
    assert 'tls="true"' not in metrics


async def _handshake_ignoring_failure(tls: trio.SSLStream[trio.SocketStream]) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        await tls.do_handshake()


async def test_default_opaque_port_between_meshed_proxies_uses_the_transport_header(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy, nursery: trio.Nursery
) -> None:
    """A port opaque by default in both proxies, without discovery's hint (no annotation): the
    client proxy still sends mTLS to the peer's proxy port with the transport header, so a
    server-speaks-first app behind the peer works (its banner comes first)."""

    async def banner_then_echo(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 ready\n")
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, banner_then_echo, 0, host="127.0.0.1")
    )
    app = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    proxy_port = free_port()
    opaque = frozenset({app[1]})
    server = await start_mesh_proxy(
        ("127.0.0.1", proxy_port),
        identity_service.variables(DB),
        inbound_port=proxy_port,
        opaque_ports=opaque,
    )
    client = await start_mesh_proxy(
        app,
        identity_service.variables(WEB),
        endpoints={app: DB},
        peer_proxy_port=proxy_port,
        opaque_ports=opaque,
    )
    await server.wait_ready()
    await client.wait_ready()
    stream = await trio.open_tcp_stream("127.0.0.1", client.addresses.outbound[1])
    async with stream:
        with trio.fail_after(10):
            assert await stream.receive_some(100) == b"220 ready\n"
        await _echo_once(stream, b"HELO\n")
    metrics = await server.metrics()
    assert re.search(
        rf'tcp_open_total\{{direction="inbound",peer="src",target_addr="127.0.0.1:{proxy_port}",'
        rf'tls="true",client_id="{re.escape(WEB)}"\}} 1',
        metrics,
    ), metrics
    assert f'tls="true",server_id="{DB}"' in await client.metrics()
