"""Why a meshed (mTLS) connection was refused, in the proxy's error tree (``proxy/errors.py``).

Each class names whose fault it was and carries a stable ``slug`` (the ``meshlet-proxy-error``
header value and a log field):

- outbound, the peer's fault (``UpstreamError``): ``identity_mismatch``, ``untrusted_peer``,
  ``tls_handshake_failed``;
- inbound, the client's fault (``ClientError``): ``no_client_certificate``, ``untrusted_peer``,
  ``tls_handshake_failed``;
- ours (``ProxyConfigError``): ``no_local_identity`` (no certificate from the identity service
  yet), answered with 503 because it is transient.
"""

from __future__ import annotations

from proxy.errors import ClientError, ProxyConfigError, UpstreamError

__all__ = [
    "ClientTlsError",
    "ClientTlsHandshakeFailed",
    "NoClientCertificate",
    "NoLocalIdentity",
    "PeerIdentityMismatch",
    "PeerTlsError",
    "TlsHandshakeFailed",
    "UntrustedClient",
    "UntrustedPeer",
]


class NoLocalIdentity(ProxyConfigError):
    """This proxy holds no certificate yet, so it can neither prove who it is nor verify peers."""

    slug = "no_local_identity"
    status = 503


class PeerTlsError(UpstreamError):
    """Outbound: the meshed peer could not be authenticated as the identity discovery promised."""

    slug = "tls_handshake_failed"
    status = 502


class TlsHandshakeFailed(PeerTlsError):
    """The TLS handshake did not complete (peer closed, spoke something else, no common version,
    or took longer than the handshake timeout)."""

    slug = "tls_handshake_failed"


class UntrustedPeer(PeerTlsError):
    """The peer's certificate does not chain to our trust anchors (foreign CA, expired, ...)."""

    slug = "untrusted_peer"


class PeerIdentityMismatch(PeerTlsError):
    """The peer's certificate is trusted but does not carry exactly the expected identity."""

    slug = "identity_mismatch"


class ClientTlsError(ClientError):
    """Inbound: a client's TLS connection addressed to us could not be accepted."""

    slug = "tls_handshake_failed"
    status = 400


class ClientTlsHandshakeFailed(ClientTlsError):
    """The client's handshake did not complete (closed, bad bytes, timeout, no common version)."""

    slug = "tls_handshake_failed"


class NoClientCertificate(ClientTlsError):
    """The client sent no certificate; meshed connections require one."""

    slug = "no_client_certificate"


class UntrustedClient(ClientTlsError):
    """The client's certificate does not chain to our anchors or does not carry one identity."""

    slug = "untrusted_peer"
