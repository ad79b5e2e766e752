"""Mutual TLS between proxies: meshed connect and accept, the inbound TLS decision, labels.

See docs/mtls.md. This package imports none of the protocol shells, so ``proxy/http1.py`` and
``proxy/http2.py`` may import ``proxy.mtls`` (for the header helpers); the wiring that calls the
shells lives in ``proxy.mtls.transport`` (imported by name); the running proxy wires TLS in
``proxy/tlsglue.py`` and ``proxy/server.py``.

Usage (outbound)::

    stream = await connect_meshed(address, server_id, identity, settings=mtls_settings)

and inbound, after ``proxy.detect`` said ``TLS``::

    hello, prefix = await read_client_hello(receive, prefix, timeout=...)
    decision = decide_inbound_tls(hello, identity.settings.local_name)
    if decision.action is InboundTlsAction.TERMINATE:
        meshed = await accept_meshed(tcp, prefix, identity, settings=mtls_settings)
"""

from __future__ import annotations

from proxy.mtls.conn import TlsConn
from proxy.mtls.errors import (
    ClientTlsError,
    ClientTlsHandshakeFailed,
    MeshTlsError,
    NoClientCertificate,
    NoLocalIdentity,
    PeerIdentityMismatch,
    PeerTlsError,
    TlsHandshakeFailed,
    UntrustedClient,
    UntrustedPeer,
)
from proxy.mtls.hello import (
    ClientHello,
    InboundTlsAction,
    InboundTlsDecision,
    MalformedClientHello,
    decide_inbound_tls,
    describe,
    parse_client_hello,
)
from proxy.mtls.labels import (
    CLIENT_ID_HEADER,
    NoTlsReason,
    TlsLabels,
    inbound_request_headers,
    strip_client_id,
)
from proxy.mtls.settings import MtlsSettings
from proxy.mtls.streams import (
    MESH_ALPN,
    InboundMeshed,
    PrefixedStream,
    accept_meshed,
    connect_meshed,
    inbound_failure,
    outbound_failure,
    read_client_hello,
)

__all__ = [
    "CLIENT_ID_HEADER",
    "MESH_ALPN",
    "ClientHello",
    "ClientTlsError",
    "ClientTlsHandshakeFailed",
    "InboundMeshed",
    "InboundTlsAction",
    "InboundTlsDecision",
    "MalformedClientHello",
    "MeshTlsError",
    "MtlsSettings",
    "NoClientCertificate",
    "NoLocalIdentity",
    "NoTlsReason",
    "PeerIdentityMismatch",
    "PeerTlsError",
    "PrefixedStream",
    "TlsConn",
    "TlsHandshakeFailed",
    "TlsLabels",
    "UntrustedClient",
    "UntrustedPeer",
    "accept_meshed",
    "connect_meshed",
    "decide_inbound_tls",
    "describe",
    "inbound_failure",
    "inbound_request_headers",
    "outbound_failure",
    "parse_client_hello",
    "read_client_hello",
    "strip_client_id",
]
