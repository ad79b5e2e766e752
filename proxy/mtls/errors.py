"""Why a meshed (mTLS) connection was refused, in the proxy's error tree (``proxy/errors.py``).

One base, ``MeshTlsError`` (``except MeshTlsError`` catches every refusal of either side), and
one class per reason whatever the side, so each slug is defined once; the side is the second
base, which says whose fault it was and the HTTP status a client hears:

- outbound, the peer's fault (``PeerTlsError``, an ``UpstreamError``, 502): ``identity_mismatch``,
  ``untrusted_peer``, ``tls_handshake_failed``;
- inbound, the client's fault (``ClientTlsError``, a ``ClientError``): ``no_client_certificate``,
  ``untrusted_peer``, ``tls_handshake_failed``, ``transport_header_invalid``;
- ours (``ProxyConfigError``): ``no_local_identity`` (no certificate from the identity service
  yet), answered with 503 because it is transient.

``slug`` is the ``meshlet-proxy-error`` header value and a log field.
"""

from __future__ import annotations

from proxy.errors import ClientError, ProxyConfigError, ProxyError, UpstreamError

__all__ = [
    "ClientTlsError",
    "ClientTlsHandshakeFailed",
    "HandshakeFailed",
    "MeshTlsError",
    "NoClientCertificate",
    "NoLocalIdentity",
    "PeerIdentityMismatch",
    "PeerTlsError",
    "TlsHandshakeFailed",
    "TransportHeaderError",
    "Untrusted",
    "UntrustedClient",
    "UntrustedPeer",
]


class MeshTlsError(ProxyError):
    """A meshed connection could not be established or accepted (either side)."""

    slug = "tls_handshake_failed"


# -- the reasons (shared by both sides) ----------------------------------------------------------


class HandshakeFailed(MeshTlsError):
    """The TLS handshake did not complete (closed, bad bytes, no common version, timeout)."""

    slug = "tls_handshake_failed"


class Untrusted(MeshTlsError):
    """The other side's certificate does not chain to our trust anchors (foreign CA, expired,
    ...) or does not carry exactly one identity."""

    slug = "untrusted_peer"


# -- the sides ----------------------------------------------------------------------------------


class NoLocalIdentity(MeshTlsError, ProxyConfigError):
    """This proxy holds no certificate yet, so it can neither prove who it is nor verify peers."""

    slug = "no_local_identity"
    status = 503


class PeerTlsError(MeshTlsError, UpstreamError):
    """Outbound: the meshed peer could not be authenticated as the identity discovery promised."""

    status = 502


class ClientTlsError(MeshTlsError, ClientError):
    """Inbound: a client's TLS connection addressed to us could not be accepted."""

    status = 400


class TlsHandshakeFailed(HandshakeFailed, PeerTlsError):
    """Outbound handshake failure."""


class UntrustedPeer(Untrusted, PeerTlsError):
    """The server's certificate is not trusted."""


class PeerIdentityMismatch(PeerTlsError):
    """The peer's certificate is trusted but does not carry exactly the expected identity."""

    slug = "identity_mismatch"


class ClientTlsHandshakeFailed(HandshakeFailed, ClientTlsError):
    """Inbound handshake failure."""


class UntrustedClient(Untrusted, ClientTlsError):
    """The client's certificate is not trusted."""


class NoClientCertificate(ClientTlsError):
    """The client sent no certificate; meshed connections require one."""

    slug = "no_client_certificate"


class TransportHeaderError(ClientTlsError):
    """A connection to the proxy's own port was not mTLS to us followed by a valid transport
    header (``proxy/mtls/transport.py``)."""

    slug = "transport_header_invalid"
