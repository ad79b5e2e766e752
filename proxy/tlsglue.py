"""The proxy's mutual TLS, wired: identity configuration, meshed connects, inbound termination.

``MeshTls`` is the one process-wide object (``proxy/__main__.py`` builds it from the
``MESHLET_PROXY_IDENTITY_*`` variables and runs its identity client in the process nursery):

- ``connect_endpoint(address, identity, ...)`` is the outbound side's hook
  (``proxy.context.EndpointConnector``): plaintext through ``proxy.net.connect`` when the
  endpoint has no identity or this proxy runs without identity, otherwise TLS 1.3 through
  ``proxy.mtls.connect_meshed`` (SNI = the identity, the peer must prove exactly it). The
  returned ``Conn`` carries its TLS metric labels in ``tls_labels`` and in ``stats.labels``.
- ``accept_inbound(...)`` terminates a TLS connection whose ClientHello names this proxy's
  identity (client certificate required) and returns a ``TlsConn`` whose ``peer_id`` is the
  client's proven identity; TLS for any other name is left alone (the caller passes it through).
- ``ready`` is false until the first certificate (only when identity is configured).

Contexts are taken from the identity client per connection (inside ``proxy.mtls``), so a renewed
certificate serves the next connection and established ones keep theirs. Servers send no TLS 1.3
session tickets (``num_tickets = 0``): nothing resumes sessions, and an unsolicited ticket would
make an idle pooled client connection look closed (``Conn.readable_now``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from meshlet.names import PROXY_INBOUND_PORT
from proxy.context import OUTBOUND
from proxy.identity import IdentityClient, IdentityClientSettings, IdentitySettingsError
from proxy.metrics import TLS_DISABLED, Metrics
from proxy.mtls import (
    MESH_ALPN,
    InboundTlsAction,
    MtlsSettings,
    NoTlsReason,
    TlsLabels,
    accept_meshed,
    connect_meshed,
    decide_inbound_tls,
    read_client_hello,
)
from proxy.mtls.conn import TlsConn
from proxy.mtls.transport import Session, encode_transport_header
from proxy.net import Conn, connect, format_address
from proxy.settings import PREFIX, ProxySettings, SettingsError

__all__ = [
    "NO_TLS_FROM_REMOTE",
    "NOT_PROVIDED_BY_DISCOVERY",
    "MeshTls",
    "load_mesh_tls",
]

log = logging.getLogger(__name__)

NO_TLS_FROM_REMOTE: Final = TlsLabels.plaintext(NoTlsReason.NO_TLS_FROM_REMOTE).text
"""Inbound, identity on: the client spoke plaintext (or TLS for the application), Linkerd's."""
NOT_PROVIDED_BY_DISCOVERY: Final = TlsLabels.plaintext(
    NoTlsReason.NOT_PROVIDED_BY_SERVICE_DISCOVERY
).text
"""Outbound, identity on: discovery gave the endpoint no identity, so plaintext."""
_IDENTITY_PREFIX: Final = "IDENTITY_"
_NOT_IDENTITY_CLIENT: Final = frozenset({"IDENTITY_WAIT_TIMEOUT"})
# Set for discovery too (it verifies the destination service against them): not a switch.
_SHARED: Final = frozenset({"IDENTITY_TRUST_ANCHORS"})


@dataclass(frozen=True, slots=True)
class MeshTls:
    """This proxy's mutual TLS: ``identity`` is ``None`` when identity is not configured."""

    identity: IdentityClient | None = None
    settings: MtlsSettings = field(default_factory=MtlsSettings)
    opaque_ports: frozenset[int] = frozenset()
    """This proxy's opaque ports (``MESHLET_PROXY_OPAQUE_PORTS``); the mesh's defaults are the
    same in every proxy, so a meshed peer skips detection on them too."""
    peer_proxy_port: int = PROXY_INBOUND_PORT
    """Where a meshed peer's proxy accepts the transport header (4143 in every meshed pod)."""

    @property
    def enabled(self) -> bool:
        return self.identity is not None

    @property
    def ready(self) -> bool:
        """False only while identity is configured and no certificate has arrived yet."""
        return self.identity is None or self.identity.is_ready

    @property
    def local_name(self) -> str | None:
        return None if self.identity is None else self.identity.settings.local_name

    def inbound_plaintext_labels(self) -> str:
        return TLS_DISABLED if self.identity is None else NO_TLS_FROM_REMOTE

    async def connect_endpoint(
        self,
        address: tuple[str, int],
        identity: str | None,
        *,
        timeout: float,
        metrics: Metrics,
        direction: str,
        opaque_transport_port: int | None = None,
        session: Session = Session.OPAQUE,
    ) -> Conn:
        """A connection to ``address``: mTLS to ``identity`` when both sides are meshed.

        ``opaque_transport_port`` (discovery's hint for an opaque application port; implied for
        this proxy's own opaque ports): the mTLS connection goes to that port of the peer (its
        proxy's inbound port) and first carries the transport header naming ``address``'s port
        (``proxy/mtls/transport.py``), so the peer forwards without protocol detection. Ignored
        for plaintext.

        Raises the connect errors of ``proxy.net.connect``, ``NoLocalIdentity`` (no certificate
        yet) or a ``PeerTlsError`` (``identity_mismatch``, ``untrusted_peer``,
        ``tls_handshake_failed``): all ``ProxyError``s with a status and slug.
        """
        if self.identity is None or identity is None:
            labels = TLS_DISABLED if self.identity is None else NOT_PROVIDED_BY_DISCOVERY
            return await connect(
                address, timeout=timeout, metrics=metrics, direction=direction, tls_labels=labels
            )
        settings = MtlsSettings(
            connect_timeout=timeout,
            handshake_timeout=self.settings.handshake_timeout,
            identity_wait=self.settings.identity_wait,
        )
        if session is not Session.OPAQUE:
            opaque_transport_port = self.peer_proxy_port
        elif opaque_transport_port is None and address[1] in self.opaque_ports:
            # Discovery hints only annotated ports; the peer's proxy skips detection on the
            # default opaque ports as well, so TLS sent there would reach its application.
            opaque_transport_port = self.peer_proxy_port
        peer = address if opaque_transport_port is None else (address[0], opaque_transport_port)
        tls = await connect_meshed(peer, identity, self.identity, settings=settings)
        labels = TlsLabels.outbound_meshed(identity).text
        stats = metrics.tcp_open(direction, "dst", format_address(address), tls=labels)
        conn = _labelled(
            TlsConn(tls, tls.transport_stream, metrics, stats, upstream=True), labels, identity
        )
        if opaque_transport_port is not None:
            try:
                await conn.send(encode_transport_header(address[1], session))
            except BaseException:
                conn.close()
                raise
        return conn

    def plain_connector(
        self, address: tuple[str, int], timeout: float
    ) -> Callable[[Metrics], Awaitable[Conn]]:
        """``Route.connector`` for an outbound destination discovery does not know, identity on:
        plaintext, labelled ``not_provided_by_service_discovery``."""

        async def connect_plain(metrics: Metrics) -> Conn:
            return await self.connect_endpoint(
                address, None, timeout=timeout, metrics=metrics, direction=OUTBOUND
            )

        return connect_plain

    async def accept_inbound(
        self, client: Conn, prefix: bytes, *, metrics: Metrics, source: str
    ) -> tuple[Conn | None, bytes]:
        """For a connection whose first bytes (``prefix``) are a ClientHello: the terminated
        ``TlsConn`` when it is addressed to this proxy's identity, else ``(None, prefix)`` with
        ``prefix`` grown to the whole ClientHello (to be passed on untouched).

        Raises ``NoLocalIdentity`` or a ``ClientTlsError`` when the handshake fails.
        """
        if self.identity is None:
            return None, prefix
        hello, prefix = await read_client_hello(
            client.receive, prefix, timeout=self.settings.handshake_timeout
        )
        decision = decide_inbound_tls(hello, self.identity.settings.local_name)
        if decision.action is not InboundTlsAction.TERMINATE:
            log.debug("TLS from %s passed through: %s", source, decision.reason)
            return None, prefix
        if self.identity.is_ready:
            self.identity.server_context.num_tickets = 0
        meshed = await accept_meshed(
            client.stream, prefix, self.identity, settings=self.settings, peer=source
        )
        labels = TlsLabels.inbound_meshed(meshed.client_id).text
        conn = TlsConn(meshed.stream, client.stream, metrics, client.stats, upstream=False)
        return _labelled(conn, labels, meshed.client_id), b""


def _labelled(conn: TlsConn, labels: str, peer_id: str) -> TlsConn:
    conn.tls_labels = labels
    conn.peer_id = peer_id
    return conn


def load_mesh_tls(settings: ProxySettings) -> MeshTls:
    """The process's ``MeshTls`` from ``settings.extra`` (``MESHLET_PROXY_IDENTITY_*``).

    Without any identity-client variable (the trust anchors alone, which discovery also reads,
    do not count) identity is off and the proxy behaves as before it existed. ``SettingsError``
    names a bad or missing variable.
    """
    mtls = MtlsSettings.from_proxy_settings(settings)
    environ: Mapping[str, str] = {
        PREFIX + suffix: value
        for suffix, value in settings.extra.items()
        if suffix.startswith(_IDENTITY_PREFIX) and suffix not in _NOT_IDENTITY_CLIENT
    }
    if not environ.keys() - {PREFIX + name for name in _SHARED}:
        return MeshTls(settings=mtls)
    try:
        client_settings = IdentityClientSettings.from_env(environ)
    except IdentitySettingsError as exc:
        raise SettingsError(str(exc)) from None
    return MeshTls(
        IdentityClient(client_settings, alpn_protocols=MESH_ALPN),
        mtls,
        opaque_ports=settings.opaque_ports,
    )
