"""Opaque TCP on opaque ports: mTLS to the peer's proxy port plus the transport header."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from proxy.context import OUTBOUND, Lifecycle, ProxyContext
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.mtls import MtlsSettings, connect_meshed
from proxy.mtls.transport import (
    TRANSPORT_HEADER_SIZE,
    MeshedOpaqueRoute,
    TransportHeaderError,
    encode_transport_header,
    parse_transport_header,
    serve_inbound_transport,
)
from proxy.net import Conn
from proxy.server import _detect as detect_plaintext
from proxy.settings import Address, ProxySettings
from proxy.tcp import splice

from .conftest import DB, WEB, Identity

MTLS = MtlsSettings(connect_timeout=2.0, handshake_timeout=5.0)
LOCAL = "127.0.0.1"


def test_header_round_trip_and_partial_input() -> None:
    header = encode_transport_header(5432)
    assert len(header) == TRANSPORT_HEADER_SIZE == 24
    assert parse_transport_header(header + b"rest") == (5432, b"rest")
    for end in range(len(header)):
        assert parse_transport_header(header[:end]) is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(b"\x00meshlet.io/other", id="other-magic"),
        pytest.param(encode_transport_header(80)[:-3] + b"\x00\x00\n", id="port-0"),
        pytest.param(encode_transport_header(80)[:-1] + b"x", id="no-newline"),
    ],
)
def test_bad_headers_are_refused_early(data: bytes) -> None:
    with pytest.raises(TransportHeaderError):
        parse_transport_header(data)
    with pytest.raises(ValueError, match="out of range"):
        encode_transport_header(0)


def _settings() -> ProxySettings:
    loopback = Address(LOCAL, 0)
    return ProxySettings(inbound_listen=loopback, outbound_listen=loopback, admin_listen=loopback)


async def _listen(nursery: trio.Nursery, handler: object) -> int:
    listeners = await trio.open_tcp_listeners(0, host=LOCAL)
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _server_speaks_first(port: int) -> tuple[bytes, bytes]:
    with socket.create_connection((LOCAL, port), timeout=10) as sock:
        banner = sock.recv(100)  # nothing sent yet: the application speaks first
        sock.sendall(b"QUIT\n")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    return banner, rest


@pytest.mark.trio
async def test_server_speaks_first_protocol_through_the_proxy_port(
    nursery: trio.Nursery, identity: Identity, tmp_path: Path
) -> None:
    web = identity.client(tmp_path, WEB, "tok-web")
    db = identity.client(tmp_path, DB, "tok-db")
    nursery.start_soon(web.run)
    nursery.start_soon(db.run)
    with trio.fail_after(20):
        await web.ready.wait()
        await db.ready.wait()

    async def database(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 ready\n")
        while data := await stream.receive_some(65536):
            await stream.send_all(b"echo " + data)
        await stream.aclose()

    app_port = await _listen(nursery, database)
    db_context = ProxyContext(_settings(), Metrics(), Lifecycle())
    outcomes: list[str] = []
    proxy_port = 0

    async def db_proxy_port(stream: trio.SocketStream) -> None:
        client = Conn(
            stream,
            db_context.metrics,
            db_context.metrics.tcp_open("inbound", "src", "x"),
            upstream=False,
        )
        try:
            _, prefix = await detect_plaintext(client, 2)
            meshed = await serve_inbound_transport(
                client, prefix, db_context, identity=db, mtls=MTLS, proxy_port=proxy_port
            )
            outcomes.append(meshed.client_id)
        except ProxyError as exc:
            outcomes.append(exc.slug)
        finally:
            client.close()

    proxy_port = await _listen(nursery, db_proxy_port)
    web_context = ProxyContext(_settings(), Metrics(), Lifecycle())

    async def web_outbound(stream: trio.SocketStream) -> None:
        metrics = web_context.metrics
        client = Conn(stream, metrics, metrics.tcp_open(OUTBOUND, "src", "x"), upstream=False)
        route = MeshedOpaqueRoute(
            OUTBOUND, (LOCAL, app_port), 1.0, server_id=DB, identity=web, mtls=MTLS,
            proxy_port=proxy_port,
        )  # fmt: skip
        try:
            # An opaque port: no detection, the connection is spliced at once.
            upstream = await route.connect(metrics)
            try:
                await splice(client, upstream)
            finally:
                upstream.close()
        finally:
            client.close()

    outbound_port = await _listen(nursery, web_outbound)
    banner, rest = await trio.to_thread.run_sync(_server_speaks_first, outbound_port)
    assert (banner, rest) == (b"220 ready\n", b"echo QUIT\n")
    with trio.fail_after(5):
        while not outcomes:
            await trio.sleep(0.02)
    assert outcomes == [WEB]

    # A meshed client that sends no valid header, or names the proxy port, is refused.
    for expected, header in enumerate(
        (b"\x00meshlet.io/nope" + b"." * 8, encode_transport_header(proxy_port)), start=2
    ):
        tls = await connect_meshed((LOCAL, proxy_port), DB, web, settings=MTLS)
        await tls.send_all(header)
        with trio.fail_after(5):
            while len(outcomes) < expected:
                await trio.sleep(0.02)
        await trio.aclose_forcefully(tls)
    assert outcomes[1:] == ["transport_header_invalid", "transport_header_invalid"]
