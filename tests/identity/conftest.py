"""Fixtures: a PKI on disk, a token file, and a real ``meshlet-identity`` process over TLS."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from identity.ca import CertificateAuthority
from meshlet.names import control_plane_identity

from .pki import make_ca, write_issuer_files

SERVICE_NAME = control_plane_identity("identity")
TOKENS = "tok-web shop/web\ntok-db shop/db\ntok-admin kube-system/admin\n"


@dataclass
class PKI:
    directory: Path
    anchor: CertificateAuthority
    issuer: CertificateAuthority
    anchors_file: Path
    cert_file: Path
    key_file: Path


@dataclass
class IdentityServer:
    port: int
    pki: PKI
    token_file: Path
    process: subprocess.Popen[bytes]
    log_file: Path

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.anchors_file))
        return context

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    now = datetime.datetime.now(datetime.UTC)
    anchor, issuer = make_ca(now)
    anchors, cert, key = write_issuer_files(tmp_path / "pki", anchor, issuer)
    return PKI(tmp_path / "pki", anchor, issuer, anchors, cert, key)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text(TOKENS)
    return path


def wait_ready(port: int, process: subprocess.Popen[bytes], log_file: Path, cafile: Path) -> None:
    context = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"meshlet-identity exited {process.returncode}: {log_file.read_text()}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname=SERVICE_NAME),
            ):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"meshlet-identity did not start: {log_file.read_text()}")


def start_identity(
    pki: PKI,
    token_file: Path,
    log_file: Path,
    *,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    wait: bool = True,
) -> tuple[int, subprocess.Popen[bytes]]:
    port = port or free_port()
    env = {
        **os.environ,
        "MESHLET_IDENTITY_LISTEN_ADDR": f"127.0.0.1:{port}",
        "MESHLET_IDENTITY_ISSUER_CERT_FILE": str(pki.cert_file),
        "MESHLET_IDENTITY_ISSUER_KEY_FILE": str(pki.key_file),
        "MESHLET_IDENTITY_TRUST_ANCHORS_FILE": str(pki.anchors_file),
        "MESHLET_IDENTITY_TOKEN_SOURCE": str(token_file),
        "MESHLET_IDENTITY_RELOAD_INTERVAL": "100ms",
        "MESHLET_IDENTITY_LOG_LEVEL": "debug",
        **(extra_env or {}),
    }
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "identity"], env=env, stdout=log, stderr=log
        )
    if wait:
        try:
            wait_ready(port, process, log_file, pki.anchors_file)
        except BaseException:
            stop(process)
            raise
    return port, process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def identity_server(pki: PKI, token_file: Path, tmp_path: Path) -> Iterator[IdentityServer]:
    log_file = tmp_path / "identity.log"
    port, process = start_identity(pki, token_file, log_file)
    try:
        yield IdentityServer(port, pki, token_file, process, log_file)
    finally:
        stop(process)
