"""The outbound mesh client: discovery per authority, a balancer per destination, endpoint pools.

Theory of operation. ``Outbound`` is one object per process, holding the one ``DiscoveryClient``
and a ``Target`` per outbound authority in use (a Service ``host:port``, or the original
destination ``ip:port`` of a connection, which the destination service resolves for ClusterIPs).
``resolve(authority)`` returns the ``Target`` when discovery knows the authority, ``None`` when it
does not (the snapshot says it does not exist, or the destination service did not answer within
its initial timeout): the caller then forwards to the original address exactly as without a mesh.

A ``Target`` owns one ``proxy.balance.Destination`` (balancer, routes, retry budget), fed from the
discovery views before every pick (``sync``: a version compare when nothing changed), and the idle
HTTP/1.1 connections per endpoint (``checkout``/``checkin``). Picks wait up to the failfast
timeout while discovery lists no endpoint; an endpoint discovery removes is drained by the
balancer (no new picks, in-flight requests finish) and its idle pooled connections are closed.

``run`` releases authorities nobody used for ``outbound_discovery_idle_timeout`` (their streams
end, their pools close). Connections to endpoints go through the TLS side's ``EndpointConnector``
(mTLS when the endpoint has an identity), or plaintext ``proxy.net.connect`` without one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import ClassVar, Final, Protocol

import trio

from proxy.balance import (
    Attempts,
    BalanceSettings,
    Destination,
    Key,
    NoEndpoint,
    Outcome,
    Pick,
    key_of,
)
from proxy.context import OUTBOUND, EndpointConnector
from proxy.discovery import Endpoint, EndpointView, ProfileView
from proxy.errors import UpstreamError
from proxy.h1 import ResponseReader
from proxy.metrics import Metrics, dst_labels, escape_label
from proxy.net import Conn, connect, format_address
from proxy.settings import ProxySettings

__all__ = [
    "AllEndpointsEjected",
    "DiscoveryLike",
    "Lease",
    "NoEndpoints",
    "Outbound",
    "RouteTimeout",
    "Target",
    "mesh_authority",
    "no_endpoint_error",
]

log = logging.getLogger(__name__)

_SERVICE_SUFFIX: Final = ".svc.cluster.local"
_DEFAULT_HTTP_PORT: Final = 80
_MAX_CACHED_HOSTS: Final = 1000
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


def mesh_authority(host: bytes) -> str | None:
    """The Service authority a ``Host`` header names (``web.shop.svc.cluster.local[:port]``,
    port 80 by default), or ``None`` when it names no in-cluster service."""
    try:
        text = host.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    name, sep, port = text.rpartition(":")
    if not sep:
        name, port = text, str(_DEFAULT_HTTP_PORT)
    name = name.rstrip(".")
    if not name.endswith(_SERVICE_SUFFIX) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if name.count(".") < 4:  # service.namespace.svc.cluster.local at least
        return None
    return f"{name}:{int(port)}"


class DiscoveryLike(Protocol):
    """What ``Outbound`` uses of ``proxy.discovery.DiscoveryClient``."""

    async def endpoints(self, authority: str) -> EndpointView: ...
    async def profile(self, authority: str) -> ProfileView: ...
    def release(self, authority: str) -> None: ...


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

    async def connect(self, endpoint: Endpoint, metrics: Metrics) -> Conn:
        return await self.outbound.connect(endpoint, metrics)

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


class Outbound:
    """The process's outbound mesh client (see the module docstring)."""

    def __init__(
        self,
        settings: ProxySettings,
        discovery: DiscoveryLike,
        *,
        connector: EndpointConnector | None = None,
        balance: BalanceSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.discovery = discovery
        self.connector = connector
        self.balance = balance or BalanceSettings()
        self.rng = rng or random.Random()  # noqa: S311 (load balancing, not cryptography)
        self.targets: dict[str, Target] = {}
        self.closed = False
        self._hosts: dict[bytes, str | None] = {}

    def service_authority(self, host: bytes) -> str | None:
        """``mesh_authority(host)``, cached (bounded: clients choose the hosts)."""
        try:
            return self._hosts[host]
        except KeyError:
            authority = mesh_authority(host)
            if len(self._hosts) < _MAX_CACHED_HOSTS:
                self._hosts[host] = authority
            return authority

    async def resolve(self, authority: str, *, http: bool = False) -> Target | None:
        """The ``Target`` of ``authority`` when discovery knows it, else ``None`` (forward to
        the original address). Subscribes on first use; ``http`` also follows the profile."""
        target = self.targets.get(authority)
        if target is None:
            target = self.targets[authority] = Target(self, authority)
            try:
                target.endpoints = await self.discovery.endpoints(authority)
            finally:
                target.ready.set()
        elif not target.ready.is_set():
            await target.ready.wait()
        target.last_used = trio.current_time()
        if not target.known:
            return None
        if http:
            await target.ensure_profile()
        return target

    async def lease(self, original: tuple[str, int]) -> Lease | None:
        """A per-connection ``Lease`` when discovery knows ``original`` (an ``ip:port``)."""
        target = await self.resolve(format_address(original))
        return None if target is None else Lease(target)

    async def resolve_request(self, host: bytes, original: tuple[str, int]) -> Target | None:
        """An HTTP request's ``Target``: the Service its ``Host`` names, else the connection's
        original destination; ``None`` when discovery knows neither."""
        service = self.service_authority(host) if host else None
        if service is not None:
            target = await self.resolve(service, http=True)
            if target is not None:
                return target
        return await self.resolve(format_address(original), http=True)

    async def connect(self, endpoint: Endpoint, metrics: Metrics) -> Conn:
        address = (endpoint.address, endpoint.port)
        timeout = self.settings.outbound_connect_timeout
        if self.connector is not None:
            if endpoint.opaque_transport_port is not None:  # an opaque port of a meshed pod
                return await self.connector(
                    address,
                    endpoint.identity,
                    timeout=timeout,
                    metrics=metrics,
                    direction=OUTBOUND,
                    opaque_transport_port=endpoint.opaque_transport_port,
                )
            return await self.connector(
                address, endpoint.identity, timeout=timeout, metrics=metrics, direction=OUTBOUND
            )
        return await connect(address, timeout=timeout, metrics=metrics, direction=OUTBOUND)

    def render_metrics(self, lines: list[str]) -> None:
        """Balancer gauges per endpoint of every discovered authority in use (at scrape time)."""
        families = (
            ("outbound_balancer_endpoint_pending", "Requests or connections in flight."),
            ("outbound_balancer_endpoint_rtt_ms", "The endpoint's last peak-EWMA RTT estimate."),
        )
        rows: list[tuple[str, int, float]] = []
        for authority, target in self.targets.items():
            if not target.known:
                continue
            for stats in target.destination.balancer.stats():
                state = "draining" if stats.draining else stats.health
                labels = (
                    f'dst="{escape_label(authority)}",endpoint="{format_address(stats.key)}",'
                    f'state="{state}"'
                )
                rows.append((labels, stats.pending, stats.rtt_estimate * 1000))
        for index, (name, text) in enumerate(families):
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} gauge")
            for labels, pending, rtt_ms in rows:
                value = pending if index == 0 else round(rtt_ms, 3)
                lines.append(f"{name}{{{labels}}} {value}")

    def release_idle(self, now: float) -> list[str]:
        """Forget authorities unused for the idle timeout with nothing in flight."""
        idle = self.settings.outbound_discovery_idle_timeout
        released = [
            authority
            for authority, target in self.targets.items()
            if target.ready.is_set() and target.users == 0 and now - target.last_used >= idle
        ]
        for authority in released:
            self.targets.pop(authority).close()
            self.discovery.release(authority)
        return released

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Release idle authorities until cancelled; then close every pooled connection."""
        task_status.started()
        period = max(self.settings.outbound_discovery_idle_timeout / 2, 0.05)
        try:
            while True:
                await trio.sleep(period)
                for authority in self.release_idle(trio.current_time()):
                    log.debug("released outbound authority %s (idle)", authority)
        finally:
            self.closed = True
            for target in self.targets.values():
                target.close()
