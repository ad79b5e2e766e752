"""What every proxied connection shares (``ProxyContext``) and where it goes (``Route``).

Kept apart from the listeners so the protocol shells (``proxy/http1.py``, ``proxy/http2.py``)
depend on these small types only, not on ``proxy/server.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import trio

from proxy.metrics import Metrics
from proxy.net import Conn, connect
from proxy.settings import ProxySettings

__all__ = [
    "INBOUND",
    "ORIGINAL_DESTINATION",
    "OUTBOUND",
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


@dataclass(frozen=True, slots=True)
class ProxyContext:
    """What every connection shares: settings, metrics and the process lifecycle."""

    settings: ProxySettings
    metrics: Metrics
    lifecycle: Lifecycle


@dataclass(frozen=True, slots=True)
class Route:
    """Where one accepted connection is forwarded."""

    direction: str
    target: tuple[str, int]
    connect_timeout: float

    async def connect(self, metrics: Metrics) -> Conn:
        return await connect(
            self.target, timeout=self.connect_timeout, metrics=metrics, direction=self.direction
        )


class EndpointPicker(Protocol):
    """Chooses the endpoint an outbound connection to ``original`` is forwarded to.

    Today every outbound connection goes to its original destination. Discovery and load
    balancing (the mesh issue) implement this interface: resolve the authority, keep the
    endpoint set fresh, pick one per connection, and the listeners stay as they are.
    """

    async def pick(self, original: tuple[str, int]) -> tuple[str, int]: ...


class OriginalDestinationPicker:
    """The picker without discovery: the original destination itself."""

    async def pick(self, original: tuple[str, int]) -> tuple[str, int]:
        return original


ORIGINAL_DESTINATION: Final = OriginalDestinationPicker()
