"""The proxy's identity client (Trio): certificate from the identity service, TLS contexts.

Usage::

    settings = IdentityClientSettings.from_env(os.environ)
    identity = IdentityClient(settings)
    nursery.start_soon(identity.run)
    await identity.ready.wait()           # the proxy is not ready before this
    tls = trio.SSLStream(tcp, identity.server_context, server_side=True)
    await tls.do_handshake()
    client_id = peer_identity(tls)
"""

from __future__ import annotations

from proxy.identity.client import IdentityClient, NotReadyError, Transport, https_transport
from proxy.identity.protocol import (
    Certified,
    CertifyRefused,
    IdentityClientError,
    InvalidAnswer,
    TransportError,
    refresh_delay,
)
from proxy.identity.settings import IdentityClientSettings, IdentitySettingsError
from proxy.identity.tls import client_context, peer_identity, server_context

__all__ = [
    "CertifyRefused",
    "Certified",
    "IdentityClient",
    "IdentityClientError",
    "IdentityClientSettings",
    "IdentitySettingsError",
    "InvalidAnswer",
    "NotReadyError",
    "Transport",
    "TransportError",
    "client_context",
    "https_transport",
    "peer_identity",
    "refresh_delay",
    "server_context",
]
