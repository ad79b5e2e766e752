"""The proxy's own shells (``serve_http1``, opaque ``splice``) over a meshed hop.

Two in-process "pods": web's outbound listener sends every connection through a ``MeshedRoute``
(mTLS to db, expecting db's identity) and db's inbound listener hands TLS to
``serve_inbound_tls``, wired as docs/mtls.md tells ``proxy/server.py`` to be. Real clients
(curl, a socket with half-close) on one end, a real HTTP/1.1 application process on the other.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from proxy.context import INBOUND, OUTBOUND, Lifecycle, ProxyContext, Route
from proxy.detect import Protocol
from proxy.http1 import serve_http1
from proxy.metrics import Metrics
from proxy.mtls import MtlsSettings
from proxy.mtls.serve import MeshedRoute, detect_plaintext, serve_inbound_tls
from proxy.net import Conn, format_address
from proxy.settings import Address, ProxySettings
from proxy.tcp import splice
from tests.proxy.conftest import HERE as PROXY_TESTS
from tests.proxy.conftest import curl, spawn_backend, stop

from .conftest import DB, WEB, Identity

MTLS = MtlsSettings(connect_timeout=2.0, handshake_timeout=5.0)
LOCAL = "127.0.0.1"


def _settings() -> ProxySettings:
    loopback = Address(LOCAL, 0)
    return ProxySettings(
        inbound_listen=loopback, outbound_listen=loopback, admin_listen=loopback, detect_timeout=2
    )


@dataclass
class Pods:
    outbound: int
    """web's outbound listener: connect here as web's application would."""
    web_context: ProxyContext
    db_context: ProxyContext
    meshed: list[str]
    """The client identity db's inbound proved for each meshed connection."""


async def _listen(nursery: trio.Nursery, handler: object) -> int:
    listeners = await trio.open_tcp_listeners(0, host=LOCAL)
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _outbound(client: Conn, route: Route, context: ProxyContext) -> None:
    protocol, prefix = await detect_plaintext(client, context.settings.detect_timeout)
    if protocol is Protocol.HTTP1:
        await serve_http1(client, prefix, route, context)
    else:
        upstream = await route.connect(context.metrics)
        try:
            await splice(client, upstream, prefix=prefix)
        finally:
            upstream.close()


@pytest.fixture
def app_port() -> Iterator[int]:
    process, port = spawn_backend(str(PROXY_TESTS / "backend_http1.py"))
    try:
        yield port
    finally:
        stop(process)


async def _start(nursery: trio.Nursery, identity: Identity, tmp_path: Path, app: int) -> Pods:
    web = identity.client(tmp_path, WEB, "tok-web")
    db = identity.client(tmp_path, DB, "tok-db")
    nursery.start_soon(web.run)
    nursery.start_soon(db.run)
    with trio.fail_after(20):
        await web.ready.wait()
        await db.ready.wait()
    web_context = ProxyContext(_settings(), Metrics(), Lifecycle())
    db_context = ProxyContext(_settings(), Metrics(), Lifecycle())
    meshed: list[str] = []

    async def db_inbound(stream: trio.SocketStream) -> None:
        metrics = db_context.metrics
        client = Conn(stream, metrics, metrics.tcp_open(INBOUND, "src", "db"), upstream=False)
        route = Route(INBOUND, (LOCAL, app), 1.0)
        try:
            protocol, prefix = await detect_plaintext(client, 2)
            assert protocol is Protocol.TLS
            proven = await serve_inbound_tls(
                client, prefix, route, db_context, identity=db, mtls=MTLS
            )
            if proven is not None:
                meshed.append(proven.client_id)
        finally:
            client.close()

    db_port = await _listen(nursery, db_inbound)

    async def web_outbound(stream: trio.SocketStream) -> None:
        metrics = web_context.metrics
        client = Conn(stream, metrics, metrics.tcp_open(OUTBOUND, "src", "app"), upstream=False)
        route = MeshedRoute(OUTBOUND, (LOCAL, db_port), 1.0, server_id=DB, identity=web, mtls=MTLS)
        try:
            await _outbound(client, route, web_context)
        finally:
            client.close()

    return Pods(await _listen(nursery, web_outbound), web_context, db_context, meshed)


@pytest.fixture
async def pods(nursery: trio.Nursery, identity: Identity, tmp_path: Path, app_port: int) -> Pods:
    return await _start(nursery, identity, tmp_path, app_port)


@pytest.mark.trio
async def test_http1_through_the_meshed_hop_with_curl(pods: Pods, tmp_path: Path) -> None:
    base = f"http://{LOCAL}:{pods.outbound}"
    # Two requests on one keep-alive connection, then a 1 MiB upload on another.
    result = await curl("-i", f"{base}/headers", f"{base}/bytes/300000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.1 200")
    assert len(result.stdout) > 300000
    body = tmp_path / "body.bin"
    body.write_bytes(bytes(range(256)) * 4096)
    result = await curl("--data-binary", f"@{body}", f"{base}/sha256")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(body.read_bytes()).hexdigest().encode() in result.stdout
    assert pods.meshed == [WEB, WEB]  # one meshed connection per curl run, web's identity


def _half_close_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection((LOCAL, port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.trio
async def test_opaque_tcp_with_half_close_through_the_meshed_hop(
    nursery: trio.Nursery, identity: Identity, tmp_path: Path
) -> None:
    # An application that answers only after the client's end-of-stream (like `nc -N` users).
    async def digest_after_eof(stream: trio.SocketStream) -> None:
        received = hashlib.sha256()
        size = 0
        while data := await stream.receive_some(65536):
            received.update(data)
            size += len(data)
        await stream.send_all(f"{size} {received.hexdigest()}\n".encode() + b"z" * 500_000)
        await stream.aclose()

    app = await _listen(nursery, digest_after_eof)
    pods = await _start(nursery, identity, tmp_path, app)
    payload = b"\x00opaque" + bytes(range(256)) * 2000
    answer = await trio.to_thread.run_sync(_half_close_exchange, pods.outbound, payload)
    line, _, rest = answer.partition(b"\n")
    assert line.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert rest == b"z" * 500_000
    assert pods.meshed == [WEB]
    metrics = pods.db_context.metrics.render().decode()
    assert f'direction="inbound",peer="dst",target_addr="{format_address((LOCAL, app))}"' in metrics
