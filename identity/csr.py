"""Decide whether a certificate signing request may be signed for a requested identity.

Pure functions: bytes and a name in, a verdict with stable reason slugs out (identity/reasons.py).
The rules are Linkerd's (``pkg/identity/service.go``): the CSR's signature verifies with its own
key; it carries exactly one subject alternative name, a DNS name equal to the requested identity;
no email, IP, URI or other SAN; the common name is empty or that identity; the key is ECDSA P-256
or RSA of at least 2048 bits. A CSR never gets to ask for a CA certificate.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from identity.ca import LeafKey

__all__ = [
    "MAX_CSR_BYTES",
    "CsrVerdict",
    "check_csr",
    "check_identity",
    "csr_bytes_from_text",
    "load_csr",
]

# A P-256 CSR is ~400 bytes of PEM, a 4096-bit RSA one ~1.7 KB; 16 KiB leaves room, no more.
MAX_CSR_BYTES = 16 * 1024
_MIN_RSA_BITS = 2048
# Verifying a huge RSA key is a cheap way to burn the CA's CPU.
_MAX_RSA_BITS = 8192
_MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class CsrVerdict:
    """``reasons`` is empty exactly when ``public_key`` may be signed for the identity."""

    reasons: list[str] = field(default_factory=list)
    public_key: LeafKey | None = None

    @property
    def ok(self) -> bool:
        return not self.reasons and self.public_key is not None


def check_identity(identity: str) -> list[str]:
    """``[]`` when ``identity`` is a lower-case DNS name a leaf can carry."""
    if not identity or len(identity) > _MAX_NAME:
        return ["identity_malformed"]
    if not all(_LABEL.fullmatch(label) for label in identity.split(".")):
        return ["identity_malformed"]
    return []


def csr_bytes_from_text(text: str) -> bytes | None:
    """The CSR bytes from the JSON ``csr`` field (PEM text or base64 DER); ``None`` if neither."""
    if len(text) > MAX_CSR_BYTES * 2:
        return None
    if "-----BEGIN" in text:
        return text.encode("utf-8", errors="replace")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def load_csr(data: bytes) -> x509.CertificateSigningRequest | str:
    """Parse PEM or DER; a reason slug if the bytes are not a PKCS#10 request."""
    if len(data) > MAX_CSR_BYTES:
        return "csr_too_large"
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion):
        return "csr_malformed"


def _key_reasons(key: object) -> list[str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return [] if isinstance(key.curve, ec.SECP256R1) else ["csr_key_unsupported"]
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            return ["csr_key_too_weak"]
        return [] if key.key_size <= _MAX_RSA_BITS else ["csr_key_unsupported"]
    return ["csr_key_unsupported"]


def _san_reasons(csr: x509.CertificateSigningRequest, identity: str) -> list[str]:
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return ["csr_missing_san"]
    if any(not isinstance(name, x509.DNSName) for name in sans):
        return ["csr_forbidden_san"]
    if not sans:
        return ["csr_missing_san"]
    if len(sans) > 1:
        return ["csr_extra_sans"]
    dns_name = sans[0]
    assert isinstance(dns_name, x509.DNSName)
    return [] if dns_name.value == identity else ["csr_san_mismatch"]


def _asks_for_ca(csr: x509.CertificateSigningRequest) -> bool:
    try:
        return csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _common_name_ok(csr: x509.CertificateSigningRequest, identity: str) -> bool:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return all(attribute.value in ("", identity) for attribute in names) and len(names) <= 1


def check_csr(data: bytes, identity: str) -> CsrVerdict:
    """Every reason ``data`` may not be signed for ``identity``; the key when there is none."""
    loaded = load_csr(data)
    if isinstance(loaded, str):
        return CsrVerdict(reasons=[loaded])
    try:
        if not loaded.is_signature_valid:
            return CsrVerdict(reasons=["csr_bad_signature"])
        key = loaded.public_key()
        reasons = _san_reasons(loaded, identity)
        if not _common_name_ok(loaded, identity):
            reasons.append("csr_common_name_mismatch")
        if _asks_for_ca(loaded):
            reasons.append("csr_requests_ca")
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion):
        # Malformed or duplicate extensions, unknown key types: cryptography parses lazily.
        return CsrVerdict(reasons=["csr_malformed"])
    reasons += _key_reasons(key)
    if reasons:
        return CsrVerdict(reasons=reasons)
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return CsrVerdict(public_key=key)
