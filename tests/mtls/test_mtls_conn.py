"""``TlsConn``: TLS 1.3 half-close that loses nothing, and end-of-stream meaning TCP's."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from identity.pemfiles import certificate_pem, private_key_pem
from proxy.errors import UpstreamClosed
from proxy.metrics import Metrics
from proxy.mtls.conn import TlsConn, send_close_notify

NAME = "peer.test"
BIG = bytes(range(256)) * 240  # 60 KiB: four TLS records, small enough for socket buffers


def _contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / "crt.pem").write_bytes(certificate_pem(certificate))
    (directory / "key.pem").write_bytes(private_key_pem(key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(directory / "crt.pem", directory / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(directory / "crt.pem")
    return server, client


async def _pair(
    nursery: trio.Nursery, tmp_path: Path, serve: object
) -> tuple[TlsConn, trio.SSLStream[trio.SocketStream]]:
    server_ctx, client_ctx = _contexts(tmp_path)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, server_ctx, server_side=True)
        await serve(tls)  # type: ignore[operator]

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    tcp = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
    tls = trio.SSLStream(tcp, client_ctx, server_hostname=NAME)
    await tls.do_handshake()
    metrics = Metrics()
    stats = metrics.tcp_open("outbound", "dst", "peer")
    return TlsConn(tls, tcp, metrics, stats, upstream=True), tls


async def _read_all(conn: TlsConn) -> bytes:
    data = b""
    while chunk := await conn.receive():
        data += chunk
    return data


@pytest.mark.trio
async def test_half_close_while_records_are_still_buffered_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sent = trio.Event()

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await tls.send_all(BIG)
        sent.set()
        while await tls.receive_some(65536):  # until our peer's close_notify
            pass
        await tls.send_all(b"bye")
        await send_close_notify(tls)

    conn, tls = await _pair(nursery, tmp_path, serve)
    with trio.fail_after(10):
        await sent.wait()  # all of BIG is on its way (loopback buffers hold it)
    first = await conn.receive(1000)
    # 1000 of a 16 KiB record were read: the rest waits, decrypted or not, inside the stream.
    assert tls._incoming.pending or tls._ssl_object.pending()
    rest: list[bytes] = []

    async def reader() -> None:
        rest.append(await _read_all(conn))

    async with trio.open_nursery() as both:
        both.start_soon(reader)
        both.start_soon(conn.send_eof)
    assert first + rest[0] == BIG + b"bye"
    assert conn.stats.read == len(BIG) + 3
    conn.close()


@pytest.mark.trio
async def test_a_bare_fin_reads_as_end_of_stream_and_a_reset_as_an_error(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def fin(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await tls.send_all(b"partial")
        await trio.aclose_forcefully(tls.transport_stream)

    conn, _ = await _pair(nursery, tmp_path, fin)
    assert await _read_all(conn) == b"partial"
    conn.close()

    async def broken(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await tls.do_handshake()
        await tls.transport_stream.send_all(b"\x17\x03\x03\x00\x05notls")  # undecryptable
        await trio.sleep(1)

    conn, _ = await _pair(nursery, tmp_path, broken)
    with pytest.raises(UpstreamClosed, match="TLS receive failed"):
        await _read_all(conn)
    conn.close()


@pytest.mark.trio
async def test_concurrent_sends_through_a_full_socket_keep_their_records_whole(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Each payload is far bigger than loopback's socket buffers, so both senders reach the
    # slow path (waiting for the socket) while the other one has records queued.
    first, second = b"a" * 4_000_000, b"b" * 4_000_000
    received: list[bytes] = []
    go = trio.Event()

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await tls.do_handshake()
        await go.wait()
        data = bytearray()
        while len(data) < len(first) + len(second):
            chunk = await tls.receive_some(65536)
            if not chunk:
                break
            data += chunk
        received.append(bytes(data))

    conn, _ = await _pair(nursery, tmp_path, serve)
    with trio.fail_after(30):
        async with trio.open_nursery() as both:
            both.start_soon(conn.send, first)
            both.start_soon(conn.send, second)
            await trio.sleep(0.2)  # both are waiting for the socket now
            go.set()
        while not received:
            await trio.sleep(0.01)
    assert received[0] in (first + second, second + first)
    assert conn.stats.written == len(first) + len(second)
    conn.close()


@pytest.mark.trio
async def test_an_answer_is_read_after_waiting_and_a_last_frame_goes_without_waiting(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    lines: list[bytes] = []

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        request = await tls.receive_some(100)
        await tls.send_all(b"answer to " + request)
        lines.append(await tls.receive_some(100))

    conn, _ = await _pair(nursery, tmp_path, serve)
    with trio.fail_after(10):
        await conn.send(b"ping")
        assert await conn.receive_answer() == b"answer to ping"
        conn.send_nowait(b"goaway")
        while not lines:
            await trio.sleep(0.01)
    assert lines == [b"goaway"]
    conn.close()


@pytest.mark.trio
async def test_reading_goes_on_while_writers_wait_for_a_full_socket(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The peer sends all of its data before it reads ours. Our first sender fills the socket,
    # a second one queues its records behind it: the reader must not wait behind them, or
    # neither side ever reads again.
    ours, theirs = b"o" * 4_000_000, b"t" * 4_000_000
    heard: list[int] = []

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await tls.send_all(theirs)
        size = 0
        while size < len(ours) + 1:
            chunk = await tls.receive_some(65536)
            if not chunk:
                break
            size += len(chunk)
        heard.append(size)

    conn, _ = await _pair(nursery, tmp_path, serve)
    received = bytearray()

    async def read() -> None:
        while len(received) < len(theirs):
            received.extend(await conn.receive())

    with trio.fail_after(30):
        async with trio.open_nursery() as all_of_them:
            all_of_them.start_soon(conn.send, ours)
            await trio.sleep(0.1)  # the first sender waits for the socket now
            all_of_them.start_soon(conn.send, b"!")
            await trio.sleep(0.1)
            all_of_them.start_soon(read)
        while not heard:
            await trio.sleep(0.01)
    assert bytes(received) == theirs
    assert heard == [len(ours) + 1]
    conn.close()
