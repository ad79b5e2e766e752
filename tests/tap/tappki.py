"""Mesh certificates for tap clients (and a tap server in another namespace), signed by a test
issuer the way ``meshlet-identity`` signs workload leaves."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import CertificateAuthority, sign_leaf
from identity.pemfiles import certificate_pem, private_key_pem
from tests.identity.pki import as_issuer


def leaf_files(
    directory: Path, anchor: CertificateAuthority, issuer: CertificateAuthority, name: str
) -> tuple[Path, Path]:
    """``(crt.pem with the issuer, key.pem)`` of a leaf for ``name`` under ``directory/<sa>``."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = sign_leaf(as_issuer(anchor, issuer), key.public_key(), name, now=now)
    home = directory / name.split(".", maxsplit=1)[0]
    home.mkdir(parents=True, exist_ok=True)
    (home / "crt.pem").write_bytes(certificate_pem(leaf, issuer.certificate))
    (home / "key.pem").write_bytes(private_key_pem(key))
    return home / "crt.pem", home / "key.pem"
