"""The mesh's certificate authority, as pure functions over the ``cryptography`` X.509 API.

Theory of operation: a trust anchor (root CA, long-lived, its key kept offline) signs an issuer
(intermediate CA named ``identity.<control-ns>.<trust-domain>``, whose key the identity service
holds). The issuer signs short-lived leaves whose only SAN is a workload identity. Every CA key is
ECDSA P-256 and every signature ECDSA-SHA256, as in Linkerd (``pkg/tls/ca.go``).

Nothing here reads files, sockets or the clock: callers pass ``now`` so tests control time.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_LEAF_LIFETIME",
    "CertificateAuthority",
    "Issuer",
    "LeafKey",
    "anchor_name",
    "create_issuer",
    "create_trust_anchor",
    "issuer_name",
    "sign_leaf",
    "validate_issuer",
]

DEFAULT_LEAF_LIFETIME = datetime.timedelta(hours=24)
# Linkerd backdates leaves by 20 s so that a peer whose clock runs a little behind accepts them.
DEFAULT_CLOCK_SKEW = datetime.timedelta(seconds=20)
# X.509 limits a common name to 64 characters; longer identities live in the SAN only.
_MAX_COMMON_NAME = 64

LeafKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA certificate with its private key (a trust anchor, or an issuer)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issuer:
    """What the identity service signs with: the issuer, its key, and the anchors it chains to."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    anchors: tuple[x509.Certificate, ...]

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def chain_pem(self) -> list[str]:
        """The intermediate chain a leaf is served with (the issuer only)."""
        return [self.certificate.public_bytes(serialization.Encoding.PEM).decode()]


def anchor_name(*, control_plane_ns: str, trust_domain: str) -> str:
    """The trust anchor's common name (Linkerd's is ``root.linkerd.cluster.local``)."""
    return f"root.{control_plane_ns}.{trust_domain}"


def issuer_name(*, control_plane_ns: str, trust_domain: str) -> str:
    """The issuer's common name: ``identity.<control-ns>.<trust-domain>``."""
    return f"identity.{control_plane_ns}.{trust_domain}"


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,  # Linkerd sets it on leaves for RSA peers; harmless for ECDSA
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _build_ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    signer: CertificateAuthority | None,
    now: datetime.datetime,
    not_after: datetime.datetime,
    path_length: int,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if signer is None else signer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DEFAULT_CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer is not None:
        builder = builder.add_extension(_authority_key_id(signer.certificate), critical=False)
    return builder.sign(key if signer is None else signer.key, hashes.SHA256())


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def create_trust_anchor(
    *, name: str, now: datetime.datetime, lifetime: datetime.timedelta
) -> CertificateAuthority:
    """A self-signed root CA (ECDSA P-256) valid from ``now`` (minus the clock skew)."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _build_ca(
        name, key, signer=None, now=now, not_after=now + lifetime, path_length=1
    )
    return CertificateAuthority(certificate=certificate, key=key)


def create_issuer(
    anchor: CertificateAuthority,
    *,
    name: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> CertificateAuthority:
    """An intermediate CA signed by ``anchor``; never valid beyond the anchor itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + lifetime, anchor.certificate.not_valid_after_utc)
    certificate = _build_ca(name, key, signer=anchor, now=now, not_after=not_after, path_length=0)
    return CertificateAuthority(certificate=certificate, key=key)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    if not constraints.value.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _valid_at(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def _signed_by(certificate: x509.Certificate, anchor: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _same_public_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return certificate.public_key().public_bytes(der, spki) == key.public_key().public_bytes(
        der, spki
    )


def validate_issuer(
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    anchors: tuple[x509.Certificate, ...],
    *,
    now: datetime.datetime,
) -> list[str]:
    """Why this issuer cannot sign (stable slugs), or ``[]`` when it can.

    The issuer must be a CA, within its validity period, hold the key that matches it, and be
    signed directly by one of the trust anchors that is itself a CA valid now.
    """
    reasons: list[str] = []
    if not _is_ca(certificate):
        reasons.append("issuer_not_ca")
    if certificate.not_valid_after_utc < now:
        reasons.append("issuer_expired")
    elif certificate.not_valid_before_utc > now:
        reasons.append("issuer_not_yet_valid")
    if not _same_public_key(certificate, key):
        reasons.append("issuer_key_mismatch")
    usable_anchors = [a for a in anchors if _is_ca(a) and _valid_at(a, now)]
    if not any(_signed_by(certificate, anchor) for anchor in usable_anchors):
        reasons.append("issuer_not_chained")
    return reasons


def sign_leaf(
    issuer: Issuer,
    public_key: LeafKey,
    identity: str,
    *,
    now: datetime.datetime,
    lifetime: datetime.timedelta = DEFAULT_LEAF_LIFETIME,
    clock_skew: datetime.timedelta = DEFAULT_CLOCK_SKEW,
) -> x509.Certificate:
    """A leaf for ``identity`` (its only SAN), usable as both TLS server and client.

    Valid from ``now - clock_skew`` to ``now + lifetime + clock_skew`` (Linkerd's window), but
    never beyond the issuer's own expiry. The caller has already checked the CSR and the token.
    """
    not_after = min(now + lifetime + clock_skew, issuer.not_after)
    short_name = len(identity) <= _MAX_COMMON_NAME
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)] if short_name else [])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - clock_skew)
        .not_valid_after(not_after)
        # RFC 5280: with an empty subject the SAN extension must be critical.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), not short_name)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_authority_key_id(issuer.certificate), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
