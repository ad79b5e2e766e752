"""The benches' Trio reference (bench/trio_forwarder.py): a pair with mutual TLS between them
carries bytes both ways, and the accepting side refuses a client without a certificate."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_mesh_tls import DB, WEB, bench_issuer, write_leaf
from tests.proxy.conftest import free_ports

SCRIPT = Path(__file__).parents[2] / "bench" / "trio_forwarder.py"


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, "the forwarder exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.02)
        else:
            return


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            while data := connection.recv(65536):
                connection.sendall(data)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                connection, _ = listener.accept()
                threading.Thread(target=echo, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    listener.close()


@pytest.fixture
def pair(tmp_path: Path, echo_port: int) -> Iterator[tuple[int, int, Path]]:
    """(port of the connecting forwarder, port of the accepting one, the certificates' dir)."""
    issuer, anchors = bench_issuer()
    ca = tmp_path / "ca.pem"
    ca.write_text(anchors)
    server_files = [str(f) for f in (*write_leaf(tmp_path, issuer, DB), ca)]
    client_files = [str(f) for f in (*write_leaf(tmp_path, issuer, WEB), ca)]
    inner, outer = free_ports(2)
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--accept-tls", *server_files,
             f"127.0.0.1:{inner}=127.0.0.1:{echo_port}"]
        ),
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--connect-tls", *client_files, DB,
             f"127.0.0.1:{outer}=127.0.0.1:{inner}"]
        ),
    ]  # fmt: skip
    try:
        _wait_port(inner, processes[0])
        _wait_port(outer, processes[1])
        yield outer, inner, tmp_path
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_a_pair_with_mutual_tls_carries_bytes_both_ways(pair: tuple[int, int, Path]) -> None:
    outer, _, _ = pair
    payload = bytes(range(256)) * 1024  # 256 KiB: several reads and TLS records
    with socket.create_connection(("127.0.0.1", outer), timeout=10) as client:
        client.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = client.recv(65536)
            assert chunk, "the forwarders closed before echoing everything"
            received += chunk
    assert received == payload


def test_the_accepting_side_refuses_a_client_without_a_certificate(
    pair: tuple[int, int, Path],
) -> None:
    _, inner, certificates = pair
    context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", inner), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DB) as tls,
    ):
        # TLS 1.3: the server checks the client's certificate after the client's Finished,
        # so the refusal shows on the first read (an alert, a reset or an end of stream).
        try:
            tls.sendall(b"hello")
            answer = tls.recv(10)
        except (ssl.SSLError, ConnectionError):
            answer = b""
    assert answer == b"", "the echo server answered through the forwarder"
