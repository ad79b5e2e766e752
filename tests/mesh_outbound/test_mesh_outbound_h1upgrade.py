"""Outbound HTTP/1 requests to a meshed endpoint whose proxy speaks HTTP/2 travel as streams on
one shared mTLS HTTP/2 connection to that proxy (docs/mesh-outbound.md, "HTTP/1 over HTTP/2
between proxies"). The real outbound proxy (identity from a real ``meshlet-identity``) is driven
by curl and raw HTTP/1 clients; the server proxy is played by ``mo_h1h2peer.H1H2Peer``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import cast

import pytest
import trio

from proxy.__main__ import run_proxy
from proxy.context import Lifecycle, ProxyContext
from proxy.discovery import ProfileState, ProfileView
from proxy.metrics import Metrics
from proxy.mtls.transport import Session
from proxy.outbound import Outbound
from proxy.settings import Address, ProxySettings
from proxy.tap import TapEnd, TapFilter, TapRequest, TapResponse
from proxy.tlsglue import load_mesh_tls
from tests.identity.conftest import PKI
from tests.mesh_outbound.mo_h1h2peer import NOLENGTH_BYTES, H1H2Peer
from tests.mesh_tls.conftest import (
    DB,
    WEB,
    IdentityService,
    StaticDiscovery,
    _identity_service,
    _pki,
    _StaticView,
)

pytestmark = pytest.mark.trio

HOST = "web.shop.svc.cluster.local:8080"
PROFILE = {
    "routes": [
        {
            "name": "POST /fail-once",
            "condition": {"method": "POST", "path_regex": "/fail-once"},
            "is_retryable": True,
        },
        {
            "name": "GET /stall",
            "condition": {"method": "GET", "path_regex": "/stall"},
            "timeout": "300ms",
        },
    ]
}


class _Discovery(StaticDiscovery):
    """The peer's endpoint with the ``h2`` hint (or ``hint``), and ``PROFILE``'s routes."""

    def __init__(self, address: tuple[str, int], hint: str | None) -> None:
        super().__init__({address: DB})
        self.state = dataclasses.replace(
            self.state,
            endpoints=MappingProxyType(
                {
                    k: dataclasses.replace(e, protocol_hint=hint)
                    for k, e in self.state.endpoints.items()
                }
            ),
        )

    async def profile(self, authority: str) -> ProfileView:
        state = ProfileState(resolved=True, connected=True, profile=PROFILE, version=1)
        return cast(ProfileView, _StaticView(state))


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityService]:
    """One real ``meshlet-identity`` for the module (its start is the slow part)."""
    directory = tmp_path_factory.mktemp("h1upgrade")
    pki: PKI = _pki(directory / "pki")
    yield from _identity_service(directory, pki, {})


@dataclasses.dataclass
class Upgrade:
    peer: H1H2Peer
    port: int  # the client proxy's outbound listener
    context: ProxyContext


async def _start(
    nursery: trio.Nursery, identity: IdentityService, *, upgrade: bool, hint: str | None = "h2"
) -> Upgrade:
    server_mesh = load_mesh_tls(ProxySettings(extra=identity.variables(DB)))
    assert server_mesh.identity is not None
    nursery.start_soon(server_mesh.identity.run)
    peer = H1H2Peer(server_mesh.identity)
    await nursery.start(peer.serve)
    settings = ProxySettings(
        inbound_listen=Address("127.0.0.1", 0),
        outbound_listen=Address("127.0.0.1", 0),
        admin_listen=Address("127.0.0.1", 0),
        extra=identity.variables(WEB),
        outbound_http1_upgrade=upgrade,
    )
    mesh = dataclasses.replace(load_mesh_tls(settings), peer_proxy_port=peer.port)
    discovery = _Discovery(("127.0.0.1", peer.plain_port), hint)
    outbound = Outbound(settings, discovery, connector=mesh.connect_endpoint)
    context = ProxyContext(settings, Metrics(), Lifecycle(), outbound=outbound)
    addresses = await nursery.start(
        functools.partial(
            run_proxy,
            settings,
            resolver=lambda _sock: ("127.0.10.1", 8080),
            context=context,
            mesh=mesh,
        )
    )
    with trio.fail_after(20):
        assert mesh.identity is not None
        while not (mesh.identity.is_ready and server_mesh.identity.is_ready):
            await trio.sleep(0.05)
    return Upgrade(peer, addresses.outbound[1], context)


@pytest.fixture
async def upgrade(nursery: trio.Nursery, identity: IdentityService) -> Upgrade:
    return await _start(nursery, identity, upgrade=True)


async def _curl(port: int, path: str, *args: str) -> tuple[bytes, bytes]:
    """(response head, body) of one curl request through the proxy."""
    result = await trio.run_process(
        [
            "curl",
            "-sS",
            "--http1.1",
            "-i",
            "--max-time",
            "10",
            "-H",
            f"Host: {HOST}",
            *args,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_stdout=True,
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    return head, body


async def _raw(port: int, request: bytes) -> bytes:
    """Everything the proxy sends back on one connection until it closes."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            return data


def _fields(head: bytes) -> dict[bytes, bytes]:
    lines = head.split(b"\r\n")[1:]
    return {n.strip().lower(): v.strip() for n, _, v in (line.partition(b":") for line in lines)}


async def test_get_is_a_stream_on_the_peers_proxy_port(upgrade: Upgrade) -> None:
    head, body = await _curl(
        upgrade.port, "/?q=1", "-H", "X-Trace: abc", "-H", "Connection: x-hop", "-H", "X-Hop: 1"
    )
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"hello"
    assert _fields(head)[b"content-length"] == b"5"
    peer = upgrade.peer
    assert [(h.port, h.session) for h in peer.transport] == [
        (peer.plain_port, Session.HTTP1_OVER_H2)
    ]
    assert peer.plain == []
    (stream,) = peer.streams
    assert stream.headers[:4] == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", HOST.encode()),
        (b":path", b"/?q=1"),
    ]
    assert stream.field(b"meshlet-orig-proto") == b"HTTP/1.1"
    assert stream.field(b"x-trace") == b"abc"
    assert stream.end_on_headers
    for hop in (b"host", b"connection", b"x-hop", b"transfer-encoding", b"keep-alive"):
        assert hop not in stream.names
    metrics = upgrade.context.metrics.render().decode()
    assert f'tls="true",server_id="{DB}"' in metrics
    assert upgrade.context.outbound is not None
    pool = upgrade.context.outbound.h2_upstreams
    (up,) = pool.all()  # kept apart from native HTTP/2 streams' connections
    assert up.session is Session.HTTP1_OVER_H2
    assert pool.with_room(up.endpoint, Session.HTTP1_OVER_H2) is up
    assert pool.with_room(up.endpoint) is None


async def test_post_with_content_length_and_head(upgrade: Upgrade) -> None:
    head, body = await _curl(upgrade.port, "/echo", "--data-binary", "abc")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == f"3 {hashlib.sha256(b'abc').hexdigest()}".encode()
    head, body = await _curl(upgrade.port, "/", "-I")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert _fields(head)[b"content-length"] == b"5"
    assert body == b""
    post, head_request = upgrade.peer.streams
    assert post.field(b":method") == b"POST"
    assert post.field(b"content-length") == b"3"
    assert bytes(post.body) == b"abc"
    assert not post.end_on_headers
    assert head_request.field(b":method") == b"HEAD"


async def test_a_chunked_upload_of_a_mebibyte_arrives_whole(
    upgrade: Upgrade, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096 + b"tail"
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    head, body = await _curl(
        upgrade.port,
        "/echo",
        *("-H", "Transfer-Encoding: chunked", "-H", "Expect:"),  # curl would ask to continue
        *("--data-binary", f"@{upload}"),
    )
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    (stream,) = upgrade.peer.streams
    assert stream.field(b"content-length") is None
    assert b"transfer-encoding" not in stream.names


async def test_a_response_without_length_is_chunked_to_http11_and_closed_to_http10(
    upgrade: Upgrade,
) -> None:
    expected = bytes(range(256)) * (NOLENGTH_BYTES // 256) + b"x" * (NOLENGTH_BYTES % 256)
    head, body = await _curl(upgrade.port, "/nolength", "--raw")
    fields = _fields(head)
    assert fields[b"transfer-encoding"] == b"chunked"
    assert b"content-length" not in fields
    assert body.endswith(b"0\r\n\r\n")
    _, body = await _curl(upgrade.port, "/nolength")  # curl decodes the chunks
    assert body == expected
    answer = await _raw(upgrade.port, f"GET /nolength HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    fields = _fields(head)
    assert b"transfer-encoding" not in fields
    assert fields[b"connection"] == b"close"
    assert body == expected
    assert upgrade.peer.streams[-1].field(b"meshlet-orig-proto") == b"HTTP/1.0"


async def test_ten_client_connections_share_one_upstream_connection(upgrade: Upgrade) -> None:
    answers: list[tuple[bytes, bytes]] = []

    async def one() -> None:
        answers.append(await _curl(upgrade.port, "/slow"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert [body for _, body in answers] == [b"hello"] * 10
    assert upgrade.peer.connections == 1
    assert len(upgrade.peer.streams) == 10


async def test_a_refused_stream_is_sent_again(upgrade: Upgrade) -> None:
    upgrade.peer.refuse = 1
    head, body = await _curl(upgrade.port, "/echo", "--data-binary", "again")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == f"5 {hashlib.sha256(b'again').hexdigest()}".encode()
    first, second = upgrade.peer.streams
    assert first.refused
    assert not second.refused
    assert bytes(second.body) == b"again"


async def test_upgrade_and_expect_continue_stay_on_http1(upgrade: Upgrade) -> None:
    websocket = (
        f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    expect = (
        f"POST /up HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\n"
        "Content-Length: 3\r\nConnection: close\r\n\r\n"
    )
    for request in (websocket, expect):
        answer = await _raw(upgrade.port, request.encode())
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"plain"), answer
    assert upgrade.peer.streams == []
    assert upgrade.peer.connections == 0
    assert [head.split(b"\r\n")[0] for head in upgrade.peer.plain] == [
        b"GET /ws HTTP/1.1",
        b"POST /up HTTP/1.1",
    ]
    assert b"upgrade: websocket" in upgrade.peer.plain[0].lower()


async def test_with_the_setting_off_nothing_is_upgraded(
    nursery: trio.Nursery, identity: IdentityService
) -> None:
    off = await _start(nursery, identity, upgrade=False)
    head, body = await _curl(off.port, "/")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"plain"
    assert off.peer.connections == 0
    assert len(off.peer.plain) == 1


async def test_without_the_h2_hint_nothing_is_upgraded(
    nursery: trio.Nursery, identity: IdentityService
) -> None:
    plain = await _start(nursery, identity, upgrade=True, hint=None)
    head, body = await _curl(plain.port, "/")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"plain"
    assert plain.peer.connections == 0
    assert len(plain.peer.plain) == 1


async def test_a_retryable_route_is_retried_with_its_body(upgrade: Upgrade) -> None:
    head, body = await _curl(upgrade.port, "/fail-once", "--data-binary", "twice")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == f"5 {hashlib.sha256(b'twice').hexdigest()}".encode()
    assert [bytes(s.body) for s in upgrade.peer.streams] == [b"twice", b"twice"]
    metrics = upgrade.context.metrics.render().decode()
    assert 'rt_route="POST /fail-once"' in metrics


async def test_the_route_timeout_answers_504_and_resets_the_stream(upgrade: Upgrade) -> None:
    head, _ = await _curl(upgrade.port, "/stall")
    assert head.startswith(b"HTTP/1.1 504"), head
    assert _fields(head)[b"meshlet-proxy-error"] == b"route_timeout"
    with trio.fail_after(5):
        while upgrade.peer.streams[0].reset is None:
            await trio.sleep(0.02)
    assert upgrade.peer.streams[0].reset == 0x8  # CANCEL
    _, body = await _curl(upgrade.port, "/")  # the shared connection still serves
    assert body == b"hello"
    assert upgrade.peer.connections == 1


async def test_an_upgraded_request_is_tapped_with_its_endpoint(upgrade: Upgrade) -> None:
    subscriber = upgrade.context.tap.subscribe(TapFilter(direction="outbound"))
    _, body = await _curl(upgrade.port, "/nolength?x=1")
    assert len(body) == NOLENGTH_BYTES
    events = subscriber.take()
    assert [type(e) for e in events] == [TapRequest, TapResponse, TapEnd]
    started, response, end = events
    assert isinstance(started, TapRequest)
    assert (started.method, started.path, started.authority) == ("GET", "/nolength?x=1", HOST)
    assert started.dst == f"127.0.0.1:{upgrade.peer.plain_port}"
    assert (started.tls, started.server_id) == ("true", DB)
    assert isinstance(response, TapResponse)
    assert response.status == 200
    assert isinstance(end, TapEnd)
    assert (end.error, end.response_bytes) == ("", NOLENGTH_BYTES)


async def test_a_stream_reset_before_its_head_is_answered_502(upgrade: Upgrade) -> None:
    head, _ = await _curl(upgrade.port, "/reset")
    assert head.startswith(b"HTTP/1.1 502"), head
    assert _fields(head)[b"meshlet-proxy-error"] == b"upstream_closed"
    assert len(upgrade.peer.streams) == 1  # GET /reset is on no retryable route


async def test_a_connection_ending_mid_response_resets_the_client(upgrade: Upgrade) -> None:
    request = f"GET /break HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    received = b""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", upgrade.port)
        async with stream:
            await stream.send_all(request)
            with contextlib.suppress(trio.BrokenResourceError):  # reset: what we expect
                while chunk := await stream.receive_some(65536):
                    received += chunk
    assert not received.endswith(b"0\r\n\r\n")  # never a clean end of the response
    if received:  # the head may have arrived before the reset
        assert received.startswith(b"HTTP/1.1 200"), received
    _, body = await _curl(upgrade.port, "/")  # a new connection serves the next request
    assert body == b"hello"
    assert upgrade.peer.connections == 2
