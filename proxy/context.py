"""What every proxied connection shares (``ProxyContext``) and where it goes (``Route``).

Kept apart from the listeners so the protocol shells (``proxy/http1.py``, ``proxy/http2.py``)
depend on these small types only, not on ``proxy/server.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import trio

from proxy.metrics import Metrics
from proxy.net import Conn, connect
from proxy.settings import ProxySettings
from proxy.tap import TapHub

if TYPE_CHECKING:
    from proxy.mtls.transport import Session
    from proxy.outbound import Outbound

__all__ = [
    "INBOUND",
    "ORIGINAL_DESTINATION",
    "OUTBOUND",
    "EndpointConnector",
    "EndpointPicker",
    "Lifecycle",
    "OriginalDestinationPicker",
    "ProxyContext",
    "Route",
]

INBOUND: Final = "inbound"
OUTBOUND: Final = "outbound"


class Lifecycle:
    """Process-wide state the admin server reports and changes: readiness and draining."""

    def __init__(self) -> None:
        self.draining = trio.Event()
        self.listening: set[str] = set()
        self.idle: set[trio.CancelScope] = set()
        """Scopes of connections waiting for their next request; cancelled when draining."""

    @property
    def ready(self) -> bool:
        return {INBOUND, OUTBOUND} <= self.listening and not self.draining.is_set()

    def drain(self) -> None:
        """Stop accepting; idle keep-alive connections close, busy ones finish first."""
        self.draining.set()
        for scope in self.idle:
            scope.cancel()


class EndpointConnector(Protocol):
    """The TLS side's hook: open a connection to an endpoint discovery named.

    ``identity`` is the endpoint's TLS identity from discovery (``None``: not meshed, connect in
    plaintext). The returned ``Conn``'s ``stats.labels`` carry the TLS metric labels of the
    connection (``tls="true",server_id=...`` or ``tls="no_identity",no_tls_reason=...``); a
    refused handshake raises an ``UpstreamError`` (answered 502 with its slug).
    ``opaque_transport_port`` is discovery's hint for an opaque port (mTLS to the peer's proxy
    port with a transport header, ``proxy.tlsglue``). ``session`` other than opaque: an mTLS
    connection to the peer's proxy port whose transport header names that session (HTTP/2
    carrying HTTP/1 requests, ``proxy/h1upgrade.py``); passed only when not opaque.
    """

    async def __call__(
        self,
        address: tuple[str, int],
        identity: str | None,
        *,
        timeout: float,
        metrics: Metrics,
        direction: str,
        opaque_transport_port: int | None = None,
        session: Session = ...,
    ) -> Conn: ...


@dataclass(frozen=True, slots=True)
class ProxyContext:
    """What every connection shares: settings, metrics and the process lifecycle.

    ``tap`` is the live-request hub (``proxy/tap.py``); ``outbound`` the mesh client (discovery,
    balancing, routes; ``proxy/outbound.py``), ``None`` without discovery: outbound connections
    then go to their original destination exactly as before.
    """

    settings: ProxySettings
    metrics: Metrics
    lifecycle: Lifecycle
    tap: TapHub = field(default_factory=TapHub)
    outbound: Outbound | None = None

    def __post_init__(self) -> None:
        if self.outbound is not None:
            self.metrics.collect("outbound", self.outbound.render_metrics)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one accepted connection is forwarded.

    ``connector``, when set, replaces the plain connect to ``target``: the outbound mesh client
    picks a discovered endpoint for the whole connection there (``proxy.outbound.Lease``), and
    ``dst_labels`` then names that endpoint in the request metrics.
    """

    direction: str
    target: tuple[str, int]
    connect_timeout: float
    connector: Callable[[Metrics], Awaitable[Conn]] | None = None
    dst_labels: Callable[[], str] | None = None
    """The connected endpoint's ``dst_*`` metric labels (mesh), asked after ``connect``."""

    async def connect(self, metrics: Metrics) -> Conn:
        if self.connector is not None:
            return await self.connector(metrics)
        return await connect(
            self.target, timeout=self.connect_timeout, metrics=metrics, direction=self.direction
        )


class EndpointPicker(Protocol):
    """Chooses the endpoint an outbound connection to ``original`` is forwarded to.

    ``ORIGINAL_DESTINATION`` is the default. Discovery and balancing do not go through this
    interface (they need a pick per HTTP/1 request, not per connection): see
    ``ProxyContext.outbound`` and docs/mesh-outbound.md.
    """

    async def pick(self, original: tuple[str, int]) -> tuple[str, int]: ...


class OriginalDestinationPicker:
    """The picker without discovery: the original destination itself."""

    async def pick(self, original: tuple[str, int]) -> tuple[str, int]:
        return original


ORIGINAL_DESTINATION: Final = OriginalDestinationPicker()
