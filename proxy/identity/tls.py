"""TLS contexts for meshed connections, built from the current certificate, and peer identity.

Between proxies it is TLS 1.3 only, the client presents its certificate and the server requires
it, and both verify the other against the trust anchors. The client names the server it expects
(SNI and hostname check = the server's identity, as discovery promised). The peer's identity is
the single DNS SAN of its verified certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol

__all__ = ["PeerCertificateSource", "client_context", "peer_identity", "server_context"]


class PeerCertificateSource(Protocol):
    """``ssl.SSLSocket``, ``ssl.SSLObject`` and ``trio.SSLStream`` all have this."""

    def getpeercert(self, binary_form: bool = ...) -> Any: ...


def _base(protocol: int, anchors_pem: str, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=anchors_pem)
    context.load_cert_chain(cert_file, key_file)
    return context


def server_context(anchors_pem: str, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """For the inbound side: presents our certificate, requires and verifies the client's."""
    return _base(ssl.PROTOCOL_TLS_SERVER, anchors_pem, cert_file, key_file)


def client_context(anchors_pem: str, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """For the outbound side: pass ``server_hostname=<the peer's identity>`` when wrapping."""
    context = _base(ssl.PROTOCOL_TLS_CLIENT, anchors_pem, cert_file, key_file)
    context.check_hostname = True
    return context


def peer_identity(connection: PeerCertificateSource) -> str | None:
    """The verified peer's identity: its only SAN, a DNS name; ``None`` without exactly that."""
    certificate = connection.getpeercert()
    if not certificate:
        return None
    sans = certificate.get("subjectAltName", ())
    if len(sans) != 1:
        return None
    kind, value = sans[0]
    return str(value) if kind == "DNS" else None
