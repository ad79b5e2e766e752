"""Fixtures: a real ``meshlet-identity`` (local mode) and two Trio "proxies" certified by it.

The identity process helpers come from ``tests/identity/conftest.py`` (same PKI, same token file
format), so these tests exercise exactly what the identity tests started.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from identity.ca import Issuer, create_issuer, create_trust_anchor, sign_leaf
from identity.pemfiles import certificate_pem, private_key_pem
from meshlet.names import workload_identity
from proxy.identity import IdentityClient, IdentityClientSettings
from proxy.identity.keywork import KeyWork, run_keywork
from proxy.mtls import MESH_ALPN
from tests.identity.conftest import PKI, free_port, start_identity, stop
from tests.identity.pki import make_ca, pem, write_issuer_files

WEB = workload_identity("web", "shop")
DB = workload_identity("db", "shop")
ADMIN = workload_identity("admin", "kube-system")
TOKENS = "tok-web shop/web\ntok-db shop/db\ntok-admin kube-system/admin\n"


@dataclass
class Identity:
    port: int
    pki: PKI
    token_file: Path
    log_file: Path

    def client(
        self,
        tmp_path: Path,
        name: str,
        token: str,
        *,
        keywork: KeyWork = run_keywork,
        **extra: object,
    ) -> IdentityClient:
        """An identity client for ``name`` (not running yet), offering the mesh's ALPN.
        ``keywork=run_in_process`` skips the worker process (for 2 s certificates, where its
        start-up is a noticeable part of the lifetime)."""
        directory = tmp_path / name.split(".", maxsplit=1)[0]
        directory.mkdir(parents=True, exist_ok=True)
        token_file = directory / "token"
        token_file.write_text(token + "\n")
        values: dict[str, object] = {
            "identity_dir": directory / "end-entity",
            "token_file": token_file,
            "trust_anchors_pem": self.pki.anchors_file.read_text(),
            "local_name": name,
            "svc_host": "127.0.0.1",
            "svc_port": self.port,
            "backoff_min": 0.05,
            "backoff_max": 0.3,
            "request_timeout": 5.0,
            **extra,
        }
        settings = IdentityClientSettings(**values)  # type: ignore[arg-type]
        return IdentityClient(settings, alpn_protocols=MESH_ALPN, keywork=keywork)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")


def _run_identity(tmp_path: Path, extra_env: dict[str, str]) -> Iterator[Identity]:
    anchor, issuer = make_ca(datetime.datetime.now(datetime.UTC))
    anchors, cert, key = write_issuer_files(tmp_path / "pki", anchor, issuer)
    pki = PKI(tmp_path / "pki", anchor, issuer, anchors, cert, key)
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(TOKENS)
    log_file = tmp_path / "identity.log"
    port, process = start_identity(pki, token_file, log_file, extra_env=extra_env)
    try:
        yield Identity(port, pki, token_file, log_file)
    finally:
        stop(process)


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[Identity]:
    yield from _run_identity(tmp_path, {})


@pytest.fixture
def short_lived_identity(tmp_path: Path) -> Iterator[Identity]:
    """Leaves that live 2 s (no clock-skew padding), so renewals happen within the test."""
    env = {"MESHLET_IDENTITY_LEAF_LIFETIME": "2s", "MESHLET_IDENTITY_CLOCK_SKEW": "0s"}
    yield from _run_identity(tmp_path, env)


@dataclass
class Foreign:
    """A certificate for ``name`` from a CA the mesh does not trust, and that CA's anchor."""

    cert_file: Path
    key_file: Path
    anchor_pem: str


def foreign_identity(directory: Path, name: str) -> Foreign:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    anchor = create_trust_anchor(name="root.evil", now=now, lifetime=day)
    issuer = create_issuer(anchor, name="identity.evil", now=now, lifetime=day)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = sign_leaf(
        Issuer(certificate=issuer.certificate, key=issuer.key, anchors=(anchor.certificate,)),
        key.public_key(),
        name,
        now=now,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "crt.pem").write_bytes(certificate_pem(leaf, issuer.certificate))
    (directory / "key.pem").write_bytes(private_key_pem(key))
    return Foreign(directory / "crt.pem", directory / "key.pem", pem(anchor.certificate).decode())


def two_name_identity(directory: Path, pki: PKI, names: list[str]) -> tuple[Path, Path]:
    """A leaf signed by the mesh's own issuer but carrying several DNS names (the identity
    service never issues one; an attacker holding the issuer key could)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(pki.issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(pki.issuer.key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "crt.pem").write_bytes(certificate_pem(leaf, pki.issuer.certificate))
    (directory / "key.pem").write_bytes(private_key_pem(key))
    return directory / "crt.pem", directory / "key.pem"


__all__ = [
    "ADMIN",
    "DB",
    "WEB",
    "Foreign",
    "Identity",
    "foreign_identity",
    "free_port",
    "two_name_identity",
]
