"""A real uvicorn over real TLS: the served certificate follows the files on disk."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from fastapi import FastAPI

from meshlet.devcert import CertificateFiles, write_self_signed
from meshlet.tlsserve import ReloadingServerTLS, TLSFilesError, serve_app


def _served_serial(port: int) -> int:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(1024).startswith(b"HTTP/1.1 200")
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def files(tmp_path: Path) -> CertificateFiles:
    return write_self_signed(tmp_path, ["localhost", "127.0.0.1"])


@pytest.fixture
def server(files: CertificateFiles) -> Iterator[tuple[int, ReloadingServerTLS]]:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    tls = ReloadingServerTLS(files.cert, files.key, check_interval=0.05)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = asyncio.Event()
    shutdown = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(
            serve_app(
                app,
                host="127.0.0.1",
                port=port,
                tls=tls,
                sockets=[sock],
                started=started,
                shutdown=shutdown,
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not started.is_set():
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield port, tls
    finally:
        loop.call_soon_threadsafe(shutdown.set)
        thread.join(timeout=10)
        assert not thread.is_alive(), "server did not stop"
        sock.close()
        loop.close()


def test_serves_and_reloads_a_rotated_certificate(
    server: tuple[int, ReloadingServerTLS], files: CertificateFiles
) -> None:
    port, tls = server
    first = _served_serial(port)
    write_self_signed(files.cert.parent, ["localhost", "127.0.0.1"])
    time.sleep(0.1)
    second = _served_serial(port)
    assert second != first
    assert tls.reloads == 1


def test_a_broken_rotation_keeps_the_old_certificate(
    server: tuple[int, ReloadingServerTLS], files: CertificateFiles
) -> None:
    port, tls = server
    first = _served_serial(port)
    files.cert.write_text("not a certificate")
    time.sleep(0.1)
    assert _served_serial(port) == first
    assert tls.reloads == 0


def test_unloadable_files_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("nope")
    (tmp_path / "k").write_text("nope")
    with pytest.raises(TLSFilesError, match="cannot load TLS certificate"):
        ReloadingServerTLS(tmp_path / "c", tmp_path / "k")


def test_tls_below_1_2_is_refused(server: tuple[int, ReloadingServerTLS]) -> None:
    port, _ = server
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    # Offer only TLS 1.0/1.1 (and lower the client's own security level so it can), so the
    # refusal comes from the server's minimum version.
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        client.wrap_socket(raw, server_hostname="localhost")
