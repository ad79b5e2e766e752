"""Test helpers: trust anchors, issuers and CSRs made with the cryptography API."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from identity.ca import CertificateAuthority, Issuer, create_issuer, create_trust_anchor
from meshlet.names import workload_identity

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
IDENTITY = workload_identity("web", "shop")
DAY = datetime.timedelta(days=1)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def make_ca(now: datetime.datetime = NOW) -> tuple[CertificateAuthority, CertificateAuthority]:
    anchor = create_trust_anchor(name="root.meshlet.cluster.local", now=now, lifetime=365 * DAY)
    issuer = create_issuer(
        anchor, name="identity.meshlet.cluster.local", now=now, lifetime=90 * DAY
    )
    return anchor, issuer


def as_issuer(anchor: CertificateAuthority, issuer: CertificateAuthority) -> Issuer:
    return Issuer(certificate=issuer.certificate, key=issuer.key, anchors=(anchor.certificate,))


def make_csr(
    *,
    key: PrivateKey | None = None,
    sans: list[x509.GeneralName] | None = None,
    common_name: str | None = None,
    ca: bool = False,
) -> bytes:
    """A PEM CSR; by default a P-256 key with the single DNS SAN ``IDENTITY``."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    sans = [x509.DNSName(IDENTITY)] if sans is None else sans
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def ip_san(text: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(text))


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_issuer_files(
    directory: Path, anchor: CertificateAuthority, issuer: CertificateAuthority
) -> tuple[Path, Path, Path]:
    """``ca.crt`` (anchors), ``issuer.crt``, ``issuer.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    anchors = directory / "ca.crt"
    cert = directory / "issuer.crt"
    key = directory / "issuer.key"
    anchors.write_bytes(pem(anchor.certificate))
    cert.write_bytes(pem(issuer.certificate))
    key.write_bytes(key_pem(issuer.key))
    return anchors, cert, key
