"""The tap records of one HTTP/1 client connection (docs/tap.md): one exchange at a time.

``start`` publishes the request when someone taps (``TapHub.active``; nothing is prepared
otherwise), ``current`` receives the response head and body bytes from the relay, ``end`` closes
the record with the proxy's error slug when it answered itself, and ``finish`` ends a record the
exchange left open (``aborted``: the client went away, a cancellation) before the next request.
"""

from __future__ import annotations

from proxy.h1 import RequestHead
from proxy.net import Conn
from proxy.tap import TapHub, TapStream, next_connection_id

__all__ = ["ExchangeTap"]


class ExchangeTap:
    __slots__ = ("_client", "_conn", "_direction", "_hub", "_inbound", "_requests", "current")

    def __init__(self, hub: TapHub, client: Conn, direction: str, *, inbound: bool) -> None:
        self._hub = hub
        self._client = client
        self._direction = direction
        self._inbound = inbound
        self._conn = next_connection_id()
        self._requests = 0
        self.current: TapStream | None = None
        """The record of the exchange in progress (``None`` when nobody taps)."""

    def start(
        self, request: RequestHead, authority: bytes, dst: tuple[str, int], upstream: Conn | None
    ) -> None:
        """Publish the request; ``upstream`` gives the outbound side's server identity, the
        client connection the inbound side's client identity. Once per exchange."""
        if not self._hub.active or self.current is not None:
            return
        peer = self._client.peer_id if upstream is None else upstream.peer_id
        inbound = self._inbound
        self.current = self._hub.request_start(
            conn=self._conn,
            stream=self._requests,
            direction=self._direction,
            method=request.method,
            authority=authority,
            path=request.target,
            src=self._client.stream.socket.getpeername()[:2],
            dst=dst,
            tls="true" if peer else "no_identity",
            client_id=(peer or "") if inbound else "",
            server_id="" if inbound else (peer or ""),
        )

    def end(self, status: int | None = None, error: str = "") -> None:
        """The exchange is over (``status``: the proxy's own answer, if it made one)."""
        if self.current is not None:
            if status is not None:
                self.current.response_start(status)
            self.current.end(error=error)

    def finish(self) -> None:
        """After each exchange: a record still open was cut short; the next gets a new id."""
        self._requests += 1
        if self.current is not None:
            self.current.end(error="aborted")  # no-op after a clean end
            self.current = None
