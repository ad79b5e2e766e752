"""Mutual TLS between two Trio "proxies" certified by a real ``meshlet-identity`` process.

Everything is real: the identity service over HTTPS issues the certificates, the proxies' identity
clients build the contexts, and every connection is TLS 1.3 over loopback TCP.
"""

from __future__ import annotations

import datetime
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from cryptography import x509

from proxy.errors import UpstreamConnectRefused
from proxy.identity import IdentityClient, client_context, peer_identity, server_context
from proxy.identity.keywork import run_in_process
from proxy.mtls import (
    MtlsSettings,
    NoLocalIdentity,
    PeerIdentityMismatch,
    TlsHandshakeFailed,
    UntrustedPeer,
    connect_meshed,
    parse_client_hello,
)

from .conftest import ADMIN, DB, WEB, Identity, foreign_identity, free_port, two_name_identity
from .inbound import Inbound, serve_inbound

SETTINGS = MtlsSettings(connect_timeout=2.0, handshake_timeout=5.0)
LOCAL = "127.0.0.1"


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            if not chunk:
                break
            data += chunk
    return data


async def _echo(stream: trio.abc.Stream, payload: bytes) -> bytes:
    await stream.send_all(payload)
    return await _receive_exactly(stream, len(payload))


async def _talk(tls: trio.SSLStream[trio.SocketStream], payload: bytes) -> bytes:
    """Handshake, send, read the answer: how a client meets a refusal that comes late."""
    await tls.do_handshake()
    await tls.send_all(payload)
    return await _receive_exactly(tls, len(payload))


async def _ready(*clients: IdentityClient) -> None:
    with trio.fail_after(20):
        for client in clients:
            await client.ready.wait()


async def _wait_for(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.02)


def _peer_serial(stream: trio.SSLStream[trio.SocketStream]) -> int:
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def _serve_raw_tls(
    nursery: trio.Nursery, context_factory: Callable[[], ssl.SSLContext]
) -> tuple[int, list[str]]:
    """A server that terminates TLS with ``context_factory()`` whatever the SNI (an impostor)."""
    listeners = await trio.open_tcp_listeners(0, host=LOCAL)
    outcomes: list[str] = []

    async def handle(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, context_factory(), server_side=True)
        try:
            await tls.do_handshake()
            outcomes.append("handshake_done")
            await tls.send_all(b"secret")
        except trio.BrokenResourceError as exc:
            outcomes.append(repr(exc.__cause__))
        finally:
            await trio.aclose_forcefully(tls)

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port, outcomes


async def _with_pair(
    identity: Identity,
    tmp_path: Path,
    body: Callable[[trio.Nursery, IdentityClient, IdentityClient, Inbound], Awaitable[None]],
    *,
    mode: str = "echo",
) -> None:
    """Run ``body(nursery, web, db, db_inbound)`` with both proxies certified and db serving."""
    web = identity.client(tmp_path, WEB, "tok-web")
    db = identity.client(tmp_path, DB, "tok-db")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run)
        nursery.start_soon(db.run)
        await _ready(web, db)
        db_inbound = Inbound(db, SETTINGS, mode=mode)
        await nursery.start(serve_inbound, db_inbound)
        await body(nursery, web, db, db_inbound)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_meshed_connections_both_ways_see_each_others_identity(
    identity: Identity, tmp_path: Path
) -> None:
    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        web_in = Inbound(web, SETTINGS)
        await nursery.start(serve_inbound, web_in)

        stream = await connect_meshed((LOCAL, db_in.port), DB, web, settings=SETTINGS)
        assert peer_identity(stream) == DB
        assert stream.version() == "TLSv1.3"
        assert stream.selected_alpn_protocol() == "h2"
        assert await _echo(stream, b"hello db") == b"hello db"
        await stream.aclose()
        await _wait_for(lambda: bool(db_in.events))
        assert db_in.events[0]["outcome"] == "meshed"
        assert db_in.events[0]["client_id"] == WEB
        assert db_in.events[0]["alpn"] == "h2"
        assert db_in.events[0]["decision"] == "sni_is_local_identity"

        stream = await connect_meshed((LOCAL, web_in.port), WEB, db, settings=SETTINGS)
        assert peer_identity(stream) == WEB
        assert await _echo(stream, b"hello web") == b"hello web"
        await stream.aclose()
        await _wait_for(lambda: bool(web_in.events))
        assert (web_in.events[0]["outcome"], web_in.events[0]["client_id"]) == ("meshed", DB)

    await _with_pair(identity, tmp_path, body)
    assert "tok-web" not in identity.logs()


@pytest.mark.trio
async def test_a_peer_certified_as_another_identity_is_refused(
    identity: Identity, tmp_path: Path
) -> None:
    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        # A pod holding a valid mesh certificate for db answers where web expects admin.
        port, outcomes = await _serve_raw_tls(nursery, lambda: db.server_context)
        with pytest.raises(PeerIdentityMismatch) as caught:
            await connect_meshed((LOCAL, port), ADMIN, web, settings=SETTINGS)
        assert caught.value.slug == "identity_mismatch"
        assert ADMIN in str(caught.value)
        await _wait_for(lambda: bool(outcomes))
        assert "handshake_done" not in outcomes  # no byte of ours reached the impostor

    await _with_pair(identity, tmp_path, body)


@pytest.mark.trio
async def test_a_certificate_with_more_than_the_identity_is_refused_both_ways(
    identity: Identity, tmp_path: Path
) -> None:
    cert, key = two_name_identity(tmp_path / "two", identity.pki, [DB, ADMIN])
    anchors = identity.pki.anchors_file.read_text()

    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        # The hostname check alone would accept it (one of its names is db's).
        port, _ = await _serve_raw_tls(nursery, lambda: server_context(anchors, cert, key))
        with pytest.raises(PeerIdentityMismatch, match="exactly"):
            await connect_meshed((LOCAL, port), DB, web, settings=SETTINGS)
        # As a client certificate, it proves no single identity.
        tcp = await trio.open_tcp_stream(LOCAL, db_in.port)
        tls = trio.SSLStream(tcp, client_context(anchors, cert, key), server_hostname=DB)
        with pytest.raises(trio.BrokenResourceError):
            await _talk(tls, b"two names")
        await trio.aclose_forcefully(tls)
        await _wait_for(lambda: bool(db_in.events))
        assert (db_in.events[0]["outcome"], db_in.events[0]["slug"]) == (
            "refused",
            "untrusted_peer",
        )

    await _with_pair(identity, tmp_path, body)


@pytest.mark.trio
async def test_tls_not_addressed_to_the_proxy_passes_through_untouched(
    identity: Identity, tmp_path: Path
) -> None:
    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        # web's proxy expects admin there: SNI admin is not db's identity, so db's inbound
        # hands the ClientHello to the application as opaque bytes (which here just closes).
        with pytest.raises(TlsHandshakeFailed):
            await connect_meshed((LOCAL, db_in.port), ADMIN, web, settings=SETTINGS)
        await _wait_for(lambda: bool(db_in.events))
        event = db_in.events[0]
        assert (event["outcome"], event["decision"]) == ("passthrough", "sni_not_local_identity")
        passed = event["passed_bytes"]
        assert isinstance(passed, bytes)
        hello = parse_client_hello(passed)
        assert hello is not None
        assert hello.server_name == ADMIN

    await _with_pair(identity, tmp_path, body)


@pytest.mark.trio
async def test_foreign_ca_is_refused_both_ways(identity: Identity, tmp_path: Path) -> None:
    foreign = foreign_identity(tmp_path / "evil", DB)

    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        both = identity.pki.anchors_file.read_text() + foreign.anchor_pem
        # An impostor server claiming db with a certificate from another CA.
        port, outcomes = await _serve_raw_tls(
            nursery, lambda: server_context(both, foreign.cert_file, foreign.key_file)
        )
        with pytest.raises(UntrustedPeer) as caught:
            await connect_meshed((LOCAL, port), DB, web, settings=SETTINGS)
        assert caught.value.slug == "untrusted_peer"
        assert "handshake_done" not in outcomes

        # An impostor client claiming db with that certificate, calling web's... db's inbound.
        tcp = await trio.open_tcp_stream(LOCAL, db_in.port)
        impostor = client_context(both, foreign.cert_file, foreign.key_file)
        tls = trio.SSLStream(tcp, impostor, server_hostname=DB)
        with pytest.raises(trio.BrokenResourceError):
            await _talk(tls, b"let me in")
        await trio.aclose_forcefully(tls)
        await _wait_for(lambda: bool(db_in.events))
        assert db_in.events[0]["outcome"] == "refused"
        assert db_in.events[0]["slug"] == "untrusted_peer"

    await _with_pair(identity, tmp_path, body)


@pytest.mark.trio
async def test_a_client_without_a_certificate_is_refused_inbound(
    identity: Identity, tmp_path: Path
) -> None:
    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        context = ssl.create_default_context(cadata=identity.pki.anchors_file.read_text())
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        tcp = await trio.open_tcp_stream(LOCAL, db_in.port)
        tls = trio.SSLStream(tcp, context, server_hostname=DB)
        # TLS 1.3: the client finishes its handshake before the server checks its certificate,
        # so the refusal arrives as an alert on the first read.
        with pytest.raises(trio.BrokenResourceError):
            await _talk(tls, b"anonymous")
        await trio.aclose_forcefully(tls)
        await _wait_for(lambda: bool(db_in.events))
        assert db_in.events[0]["outcome"] == "refused"
        assert db_in.events[0]["slug"] == "no_client_certificate"

    await _with_pair(identity, tmp_path, body)


async def _http_headers(stream: trio.abc.Stream, request: bytes) -> list[list[str]]:
    await stream.send_all(request)
    response = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    headers: list[list[str]] = json.loads(body)
    return headers


@pytest.mark.trio
async def test_client_supplied_client_id_is_replaced_by_the_proven_one(
    identity: Identity, tmp_path: Path
) -> None:
    request = (
        b"GET / HTTP/1.1\r\nHost: db\r\nMeshlet-Client-Id: "
        + ADMIN.encode()
        + b"\r\nmeshlet-client-id: forged\r\nX-Other: 1\r\n\r\n"
    )

    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        stream = await connect_meshed((LOCAL, db_in.port), DB, web, settings=SETTINGS)
        headers = await _http_headers(stream, request)
        await trio.aclose_forcefully(stream)
        assert [v for n, v in headers if n == "meshlet-client-id"] == [WEB]
        assert ["x-other", "1"] in headers

        # Plaintext (an unmeshed client) still works, and gets no client id at all.
        plain = await trio.open_tcp_stream(LOCAL, db_in.port)
        headers = await _http_headers(plain, request)
        await trio.aclose_forcefully(plain)
        assert [n for n, _ in headers if n == "meshlet-client-id"] == []
        assert [e["outcome"] for e in db_in.events] == ["meshed", "plaintext"]

    await _with_pair(identity, tmp_path, body, mode="http")


@pytest.mark.trio
async def test_without_a_local_identity_outbound_fails_fast_or_waits_its_bound(
    identity: Identity, tmp_path: Path
) -> None:
    web = identity.client(tmp_path, WEB, "tok-web")
    db = identity.client(tmp_path, DB, "tok-db")
    with pytest.raises(NoLocalIdentity) as caught:
        await connect_meshed((LOCAL, 9), DB, web, settings=SETTINGS)
    assert caught.value.slug == "no_local_identity"
    assert caught.value.status == 503
    waiting = MtlsSettings(connect_timeout=2.0, handshake_timeout=5.0, identity_wait=0.05)
    with pytest.raises(NoLocalIdentity, match="waited"):
        await connect_meshed((LOCAL, 9), DB, web, settings=waiting)

    patient = MtlsSettings(connect_timeout=2.0, handshake_timeout=5.0, identity_wait=20.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run)
        await _ready(db)
        db_in = Inbound(db, SETTINGS)
        await nursery.start(serve_inbound, db_in)
        nursery.start_soon(web.run)  # certified while connect_meshed already waits
        stream = await connect_meshed((LOCAL, db_in.port), DB, web, settings=patient)
        assert await _echo(stream, b"late") == b"late"
        await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_connect_and_handshake_failures_are_named(identity: Identity, tmp_path: Path) -> None:
    async def body(
        nursery: trio.Nursery, web: IdentityClient, db: IdentityClient, db_in: Inbound
    ) -> None:
        with pytest.raises(UpstreamConnectRefused):
            await connect_meshed((LOCAL, free_port()), DB, web, settings=SETTINGS)

        async def silent(tcp: trio.SocketStream) -> None:
            await trio.sleep_forever()

        async def plaintext(tcp: trio.SocketStream) -> None:
            await tcp.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await tcp.aclose()

        quick = MtlsSettings(connect_timeout=2.0, handshake_timeout=0.3)
        for handler, settings, expected in (
            (silent, quick, "took longer"),
            (plaintext, SETTINGS, "failed: .*WRONG_VERSION_NUMBER|closed"),
        ):
            listeners = await trio.open_tcp_listeners(0, host=LOCAL)
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            with pytest.raises(TlsHandshakeFailed, match=expected) as caught:
                await connect_meshed((LOCAL, port), DB, web, settings=settings)
            assert caught.value.slug == "tls_handshake_failed"

    await _with_pair(identity, tmp_path, body)


@pytest.mark.trio
async def test_rotation_keeps_a_long_lived_connection_while_new_ones_use_new_certificates(
    short_lived_identity: Identity, tmp_path: Path
) -> None:
    identity = short_lived_identity
    # In-process key work: a worker's start-up is a fair share of a 2 s lifetime (the worker
    # path through rotation is tests/mesh_tls, with 4 s certificates).
    web = identity.client(tmp_path, WEB, "tok-web", min_refresh=0.2, keywork=run_in_process)
    db = identity.client(tmp_path, DB, "tok-db", min_refresh=0.2, keywork=run_in_process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run)
        nursery.start_soon(db.run)
        await _ready(web, db)
        db_in = Inbound(db, SETTINGS)
        await nursery.start(serve_inbound, db_in)

        long_lived = await connect_meshed((LOCAL, db_in.port), DB, web, settings=SETTINGS)
        first_serial = _peer_serial(long_lived)
        first_expiry = db.certificate.valid_until
        web_start, db_start = web.renewals, db.renewals
        pings = 0
        with trio.fail_after(20):
            # Two renewals on both sides, and past the expiry of the certificates the
            # long-lived connection was made with, exchanging data all along.
            while (
                web.renewals < web_start + 2
                or db.renewals < db_start + 2
                or datetime.datetime.now(datetime.UTC) <= first_expiry
            ):
                payload = b"ping %d" % pings
                assert await _echo(long_lived, payload) == payload
                pings += 1
                await trio.sleep(0.1)
        assert web.failures == 0
        assert db.failures == 0

        fresh = await connect_meshed((LOCAL, db_in.port), DB, web, settings=SETTINGS)
        assert _peer_serial(fresh) != first_serial
        assert await _echo(fresh, b"new") == b"new"
        assert await _echo(long_lived, b"still here") == b"still here"
        await fresh.aclose()
        await long_lived.aclose()
        await _wait_for(lambda: len(db_in.events) == 2 and "echo_broken" not in db_in.events[0])
        assert [(e["outcome"], e["client_id"]) for e in db_in.events] == [("meshed", WEB)] * 2
        nursery.cancel_scope.cancel()
    assert pings >= 10


@pytest.mark.trio
async def test_inbound_tls_before_the_first_certificate_is_refused(
    identity: Identity, tmp_path: Path
) -> None:
    web = identity.client(tmp_path, WEB, "tok-web")
    db = identity.client(tmp_path, DB, "tok-db")  # never started: no certificate
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run)
        await _ready(web)
        db_in = Inbound(db, SETTINGS)
        await nursery.start(serve_inbound, db_in)
        with pytest.raises(TlsHandshakeFailed):
            await connect_meshed((LOCAL, db_in.port), DB, web, settings=SETTINGS)
        await _wait_for(lambda: bool(db_in.events))
        assert db_in.events[0]["slug"] == "no_local_identity"
        assert db_in.events[0]["decision"] == "sni_is_local_identity"
        nursery.cancel_scope.cancel()
