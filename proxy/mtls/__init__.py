"""Mutual TLS between proxies: meshed connect and accept, the inbound TLS decision, labels.

See docs/mtls.md. Usage (outbound)::

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
from proxy.mtls.serve import MeshedRoute, serve_inbound_tls
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
from proxy.mtls.transport import (
    MeshedOpaqueRoute,
    TransportHeaderError,
    encode_transport_header,
    parse_transport_header,
    serve_inbound_transport,
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
    "MeshedOpaqueRoute",
    "MeshedRoute",
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
    "TransportHeaderError",
    "UntrustedClient",
    "UntrustedPeer",
    "accept_meshed",
    "connect_meshed",
    "decide_inbound_tls",
    "describe",
    "encode_transport_header",
    "inbound_failure",
    "inbound_request_headers",
    "outbound_failure",
    "parse_client_hello",
    "parse_transport_header",
    "read_client_hello",
    "serve_inbound_tls",
    "serve_inbound_transport",
    "strip_client_id",
]
