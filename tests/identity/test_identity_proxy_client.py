"""The proxy's Trio identity client against a real ``meshlet-identity`` over real TLS."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import Issuer, create_issuer, create_trust_anchor, sign_leaf
from identity.pemfiles import certificate_pem, private_key_pem
from meshlet.names import workload_identity
from proxy.identity import (
    CertifyRefused,
    IdentityClient,
    IdentityClientSettings,
    NotReadyError,
    TransportError,
    client_context,
    peer_identity,
    server_context,
)

from .conftest import PKI, SERVICE_NAME, IdentityServer, free_port, start_identity, stop
from .pki import pem

WEB = workload_identity("web", "shop")
DB = workload_identity("db", "shop")


def client_settings(
    tmp_path: Path, anchors_file: Path, port: int, name: str, token: str, **extra: object
) -> IdentityClientSettings:
    directory = tmp_path / name.split(".", maxsplit=1)[0]
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "token"
    token_file.write_text(token + "\n")
    values: dict[str, object] = {
        "identity_dir": directory / "end-entity",
        "token_file": token_file,
        "trust_anchors_pem": anchors_file.read_text(),
        "local_name": name,
        "svc_host": "127.0.0.1",
        "svc_port": port,
        "backoff_min": 0.05,
        "backoff_max": 0.3,
        "request_timeout": 5.0,
        **extra,
    }
    return IdentityClientSettings(**values)  # type: ignore[arg-type]


async def _wait_until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_name: str
) -> dict[str, str | None]:
    """Mutual TLS over loopback TCP: the identities each side saw, the version, or the failure."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    seen: dict[str, str | None] = {}

    async def serve_one() -> None:
        stream = await listeners[0].accept()
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
            seen["server_saw"] = peer_identity(tls)
            await tls.send_all(b"hello")
        except trio.BrokenResourceError as error:
            seen["server_error"] = repr(error.__cause__)
        finally:
            await trio.aclose_forcefully(tls)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(tcp, client_ctx, server_hostname=server_name)
        try:
            await tls.do_handshake()
            seen["client_saw"] = peer_identity(tls)
            seen["version"] = tls.version()
            if tls.selected_alpn_protocol():
                seen["alpn"] = tls.selected_alpn_protocol()
            seen["data"] = (await tls.receive_some(5)).decode()
        except trio.BrokenResourceError as error:
            seen["client_error"] = repr(error.__cause__)
        finally:
            await trio.aclose_forcefully(tls)
    await listeners[0].aclose()
    return seen


@pytest.mark.trio
async def test_two_proxies_certify_and_complete_mutual_tls(
    identity_server: IdentityServer, tmp_path: Path
) -> None:
    anchors = identity_server.pki.anchors_file
    alpn = ["h2", "http/1.1"]
    web_settings = client_settings(tmp_path, anchors, identity_server.port, WEB, "tok-web")
    web = IdentityClient(web_settings, alpn_protocols=alpn)
    db_settings = client_settings(tmp_path, anchors, identity_server.port, DB, "tok-db")
    db = IdentityClient(db_settings, alpn_protocols=alpn)
    assert not web.is_ready
    with pytest.raises(NotReadyError):
        _ = web.server_context
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run)
        nursery.start_soon(db.run)
        with trio.fail_after(20):
            await web.ready.wait()
            await db.ready.wait()
        seen = await _handshake(web.server_context, db.client_context, WEB)
        assert seen == {
            "server_saw": DB,
            "client_saw": WEB,
            "version": "TLSv1.3",
            "alpn": "h2",
            "data": "hello",
        }
        # The other way around, too.
        seen = await _handshake(db.server_context, web.client_context, DB)
        assert (seen["server_saw"], seen["client_saw"]) == (WEB, DB)
        # A client expecting another identity refuses the server.
        seen = await _handshake(web.server_context, db.client_context, DB)
        assert "Hostname mismatch" in str(seen["client_error"])
        assert "client_saw" not in seen
        nursery.cancel_scope.cancel()
    assert (tmp_path / "web" / "end-entity" / "key.p8").stat().st_mode & 0o077 == 0
    assert "tok-web" not in identity_server.logs()


def _foreign_files(directory: Path) -> tuple[Path, Path, str]:
    """A leaf for WEB from a CA the mesh does not trust (cert chain file, key file, anchor)."""
    now = datetime.datetime.now(datetime.UTC)
    anchor = create_trust_anchor(name="root.evil", now=now, lifetime=datetime.timedelta(days=1))
    issuer = create_issuer(
        anchor, name="identity.evil", now=now, lifetime=datetime.timedelta(days=1)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = sign_leaf(
        Issuer(certificate=issuer.certificate, key=issuer.key, anchors=(anchor.certificate,)),
        key.public_key(),
        DB,
        now=now,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "crt.pem").write_bytes(certificate_pem(leaf, issuer.certificate))
    (directory / "key.pem").write_bytes(private_key_pem(key))
    return directory / "crt.pem", directory / "key.pem", pem(anchor.certificate).decode()


@pytest.mark.trio
async def test_certificate_from_a_foreign_ca_is_rejected(
    identity_server: IdentityServer, tmp_path: Path
) -> None:
    anchors = identity_server.pki.anchors_file
    web = IdentityClient(client_settings(tmp_path, anchors, identity_server.port, WEB, "tok-web"))
    cert, key, foreign_anchor = _foreign_files(tmp_path / "evil")
    both_anchors = anchors.read_text() + foreign_anchor
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.run)
        with trio.fail_after(20):
            await web.ready.wait()
        # An impostor client (claims DB, signed by another CA) is refused by our server.
        impostor_client = client_context(both_anchors, cert, key)
        seen = await _handshake(web.server_context, impostor_client, WEB)
        assert "certificate verify failed" in str(seen["server_error"])
        assert "server_saw" not in seen
        assert "data" not in seen
        # An impostor server is refused by our client.
        impostor_server = server_context(both_anchors, cert, key)
        seen = await _handshake(impostor_server, web.client_context, DB)
        assert "certificate verify failed" in str(seen["client_error"])
        assert "client_saw" not in seen
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_renews_before_a_short_lifetime_ends(
    pki: PKI, token_file: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "identity.log"
    env = {"MESHLET_IDENTITY_LEAF_LIFETIME": "2s", "MESHLET_IDENTITY_CLOCK_SKEW": "0s"}
    port, process = start_identity(pki, token_file, log_file, extra_env=env)
    try:
        settings = client_settings(
            tmp_path, pki.anchors_file, port, WEB, "tok-web", min_refresh=0.2
        )
        web = IdentityClient(settings)
        serials: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(web.run)
            await web.ready.wait()
            serials.append(web.certificate.leaf.serial_number)
            await _wait_until(lambda: web.renewals >= 3)
            serials.append(web.certificate.leaf.serial_number)
            lifetime = web.certificate.valid_until - web.certificate.leaf.not_valid_before_utc
            assert lifetime == datetime.timedelta(seconds=2)
            # The renewed contexts still work end to end.
            seen = await _handshake(web.server_context, web.client_context, WEB)
            assert (seen["server_saw"], seen["client_saw"]) == (WEB, WEB)
            nursery.cancel_scope.cancel()
        assert serials[0] != serials[1]
        assert web.failures == 0
    finally:
        stop(process)


@pytest.mark.trio
async def test_keeps_retrying_while_the_service_is_down(
    pki: PKI, token_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    web = IdentityClient(client_settings(tmp_path, pki.anchors_file, port, WEB, "tok-web"))
    process = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(web.run)
            await _wait_until(lambda: web.failures >= 3)
            assert not web.is_ready
            _, process = await trio.to_thread.run_sync(
                lambda: start_identity(pki, token_file, tmp_path / "identity.log", port=port)
            )
            with trio.fail_after(20):
                await web.ready.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process is not None:
            stop(process)


@pytest.mark.trio
async def test_refusals_and_wrong_service_name(
    identity_server: IdentityServer, tmp_path: Path
) -> None:
    anchors = identity_server.pki.anchors_file
    port = identity_server.port
    stolen = IdentityClient(client_settings(tmp_path / "a", anchors, port, WEB, "tok-admin"))
    with pytest.raises(CertifyRefused) as refused:
        await stolen.certify_once()
    assert (refused.value.status, refused.value.reason) == (403, "identity_mismatch")
    impostor = IdentityClient(
        client_settings(tmp_path / "b", anchors, port, WEB, "tok-web", svc_name=DB)
    )
    with pytest.raises(TransportError, match="certificate verify failed"):
        await impostor.certify_once()
    assert SERVICE_NAME != DB
    assert not stolen.is_ready
    assert not impostor.is_ready
