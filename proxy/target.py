"""One discovered outbound authority (``Target``) and a pick held for a whole connection
(``Lease``), for the outbound mesh client (``proxy/outbound.py``).

A ``Target`` owns one ``proxy.balance.Destination`` (balancer, routes, retry budget), fed from the
discovery views before every pick (``sync``: a version compare when nothing changed), and the idle
HTTP/1.1 connections per endpoint (``checkout``/``checkin``). Picks wait up to the failfast
timeout while discovery lists no endpoint; an endpoint discovery removes is drained by the
balancer (no new picks, in-flight requests finish) and its idle pooled connections are closed.
No endpoint to pick answers ``NoEndpoints`` / ``AllEndpointsEjected`` (503), an expired route
timeout ``RouteTimeout`` (504).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final

import trio

from proxy.balance import Attempts, Destination, Key, NoEndpoint, Outcome, Pick, key_of
from proxy.discovery import Endpoint, EndpointView, ProfileView
from proxy.errors import UpstreamError
from proxy.h1 import ResponseReader
from proxy.metrics import Metrics, dst_labels
from proxy.mtls.transport import Session
from proxy.net import Conn

if TYPE_CHECKING:
    from proxy.outbound import Outbound

__all__ = [
    "AllEndpointsEjected",
    "Lease",
    "NoEndpoints",
    "RouteTimeout",
    "Target",
    "no_endpoint_error",
]

log = logging.getLogger(__name__)

_CONNECT_TRIES: Final = 3  # endpoints one connection tries before its connect fails


class NoEndpoints(UpstreamError):
    """Discovery lists no endpoint for the destination (after the failfast wait)."""

    slug: ClassVar[str] = "no_endpoints"
    status: ClassVar[int] = 503


class AllEndpointsEjected(UpstreamError):
    """Every endpoint of the destination is ejected by failure accrual."""

    slug: ClassVar[str] = "all_endpoints_ejected"
    status: ClassVar[int] = 503


class RouteTimeout(UpstreamError):
    """The ServiceProfile route's timeout expired before the response."""

    slug: ClassVar[str] = "route_timeout"
    status: ClassVar[int] = 504


def no_endpoint_error(choice: NoEndpoint, authority: str) -> UpstreamError:
    if choice.reason == "all_endpoints_ejected":
        return AllEndpointsEjected(f"every endpoint of {authority} is failing (ejected)")
    return NoEndpoints(f"no endpoint of {authority} is available")


class Target:
    """One discovered outbound authority: its balancer, routes and endpoint pools."""

    def __init__(self, outbound: Outbound, authority: str) -> None:
        self.outbound = outbound
        self.authority = authority
        self.ready = trio.Event()
        self.endpoints: EndpointView | None = None
        self.profile: ProfileView | None = None
        self.destination: Destination[Endpoint] = Destination(
            outbound.balance, rng=outbound.rng, now=trio.current_time()
        )
        self.users = 0
        self.last_used = trio.current_time()
        self._pools: dict[Key, list[tuple[Conn, ResponseReader]]] = {}
        self._labels: dict[Key, tuple[Endpoint, str]] = {}

    @property
    def known(self) -> bool:
        """Whether discovery says the authority exists (and so the mesh handles it)."""
        if self.endpoints is None:
            return False
        current = self.endpoints.current()
        return current.resolved and current.exists

    def sync(self, now: float) -> None:
        """Follow discovery (cheap when unchanged); close idle connections to removed ones."""
        assert self.endpoints is not None
        current = self.endpoints.current()
        if self.destination.sync_endpoints(current, now):
            for key in [k for k in self._pools if k not in current.endpoints]:
                for conn, _ in self._pools.pop(key):
                    conn.close()
        if self.profile is not None:
            message = self.destination.sync_profile(self.profile.current())
            if message is not None:
                log.warning("ignoring the profile of %s: %s", self.authority, message)

    async def ensure_profile(self) -> None:
        if self.profile is None:
            self.profile = await self.outbound.discovery.profile(self.authority)

    def begin(self, method: bytes, target: bytes, now: float) -> Attempts[Endpoint]:
        """A request arrives: its route (from the profile) and its attempts."""
        if self.profile is not None:
            message = self.destination.sync_profile(self.profile.current())
            if message is not None:
                log.warning("ignoring the profile of %s: %s", self.authority, message)
        path = target.split(b"?", 1)[0].decode("latin-1")
        return self.destination.begin(method.decode("latin-1"), path, now)

    async def pick(
        self, choose: Callable[[float], Pick[Endpoint] | NoEndpoint]
    ) -> Pick[Endpoint] | NoEndpoint:
        """``choose(now)`` until it picks; while discovery lists no endpoint, wait for a change
        up to the failfast timeout (``all_endpoints_ejected`` answers at once)."""
        assert self.endpoints is not None
        deadline = trio.current_time() + self.outbound.settings.outbound_failfast_timeout
        while True:
            now = trio.current_time()
            self.sync(now)
            choice = choose(now)
            if isinstance(choice, Pick) or choice.reason != "no_endpoints" or now >= deadline:
                return choice
            with trio.move_on_at(deadline):
                await self.endpoints.wait_changed(self.endpoints.current().version)

    def dst_labels(self, endpoint: Endpoint) -> str:
        """The endpoint's ``dst_*`` metric label text (computed once per endpoint version)."""
        key = key_of(endpoint)
        cached = self._labels.get(key)
        if cached is not None and cached[0] is endpoint:
            return cached[1]
        text = dst_labels(endpoint.labels)
        self._labels[key] = (endpoint, text)
        return text

    # -- connections ------------------------------------------------------------------------------

    async def connect(
        self, endpoint: Endpoint, metrics: Metrics, session: Session = Session.OPAQUE
    ) -> Conn:
        return await self.outbound.connect(endpoint, metrics, session)

    async def checkout(self, endpoint: Endpoint, metrics: Metrics) -> tuple[Conn, ResponseReader]:
        """An idle keep-alive connection to ``endpoint`` if one is still good, else a new one."""
        pool = self._pools.get(key_of(endpoint))
        while pool:
            conn, conn_h11 = pool.pop()
            if not conn.readable_now():  # the server closed it (or sent junk) while idle
                return conn, conn_h11
            conn.close()
        return await self.connect(endpoint, metrics), ResponseReader()

    def checkin(self, endpoint: Endpoint, conn: Conn, conn_h11: ResponseReader) -> None:
        """Keep a connection whose exchange completed for the next request to ``endpoint``."""
        key = key_of(endpoint)
        assert self.endpoints is not None
        if key not in self.endpoints.current().endpoints or self.outbound.closed:
            conn.close()
            return
        pool = self._pools.setdefault(key, [])
        if len(pool) >= self.outbound.settings.outbound_max_idle_per_endpoint:
            conn.close()
            return
        conn_h11.start_next_cycle()
        pool.append((conn, conn_h11))

    def close(self) -> None:
        for pool in self._pools.values():
            for conn, _ in pool:
                conn.close()
        self._pools.clear()

    def idle_connections(self) -> dict[Key, int]:
        return {key: len(pool) for key, pool in self._pools.items() if pool}


class Lease:
    """One pick held for a whole connection (opaque TCP, HTTP/2): ``connect`` picks (waiting up
    to the failfast timeout), connects (another endpoint when a connect fails, up to
    ``_CONNECT_TRIES``), and ``finish`` reports the pick once when the connection ends: pending
    is then the number of open connections, the right load for long-lived streams."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pick: Pick[Endpoint] | None = None
        self.rtt = 0.0
        target.users += 1

    def dst_labels(self) -> str:
        """The connected endpoint's ``dst_*`` label text (empty before ``connect``)."""
        return "" if self.pick is None else self.target.dst_labels(self.pick.endpoint)

    async def connect(self, metrics: Metrics) -> Conn:
        target = self.target
        balancer = target.destination.balancer
        tried: set[Key] = set()
        while True:
            choice = await target.pick(lambda now: balancer.pick(now, avoid=tried))
            if not isinstance(choice, Pick):
                raise no_endpoint_error(choice, target.authority)
            tried.add(key_of(choice.endpoint))
            started = trio.current_time()
            try:
                conn = await target.connect(choice.endpoint, metrics)
            except UpstreamError as exc:
                balancer.finished(choice, trio.current_time(), Outcome.CONNECT_FAILED)
                if len(tried) >= _CONNECT_TRIES or len(tried) >= len(balancer):
                    raise
                log.info(
                    "outbound connect to %s failed (%s); trying another", target.authority, exc
                )
                continue
            except BaseException:  # not the endpoint's fault (no local identity, cancellation)
                balancer.finished(choice, trio.current_time(), Outcome.CANCELLED)
                raise
            self.pick, self.rtt = choice, trio.current_time() - started
            return conn

    def finish(self) -> None:
        if self.pick is not None:
            pick, self.pick = self.pick, None
            self.target.destination.balancer.finished(
                pick, trio.current_time(), Outcome.SUCCESS, self.rtt
            )
        self.target.users -= 1
        self.target.last_used = trio.current_time()
