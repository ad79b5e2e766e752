"""The outbound mesh client: discovery per authority, a balancer per destination, endpoint pools.

Theory of operation. ``Outbound`` is one object per process, holding the one ``DiscoveryClient``
and a ``Target`` per outbound authority in use (a Service ``host:port``, or the original
destination ``ip:port`` of a connection, which the destination service resolves for ClusterIPs).
``resolve(authority)`` returns the ``Target`` when discovery knows the authority, ``None`` when it
does not (the snapshot says it does not exist, or the destination service did not answer within
its initial timeout): the caller then forwards to the original address exactly as without a mesh.

A ``Target`` (``proxy/target.py``, re-exported here with ``Lease`` and the no-endpoint errors)
owns the authority's balancer, routes, retry budget and idle HTTP/1.1 connections per endpoint.

``run`` releases authorities nobody used for ``outbound_discovery_idle_timeout`` (their streams
end, their pools close). Connections to endpoints go through the TLS side's ``EndpointConnector``
(mTLS when the endpoint has an identity), or plaintext ``proxy.net.connect`` without one.
"""

from __future__ import annotations

import logging
import random
from typing import Final, Protocol

import trio

from proxy.balance import BalanceSettings
from proxy.context import OUTBOUND, EndpointConnector
from proxy.discovery import Endpoint, EndpointView, ProfileView
from proxy.h1upgradeconvert import endpoint_refusal
from proxy.h2upstream import UpstreamPool
from proxy.metrics import Metrics, escape_label
from proxy.mtls.transport import Session
from proxy.net import Conn, connect, format_address
from proxy.settings import ProxySettings
from proxy.target import (
    AllEndpointsEjected,
    Lease,
    NoEndpoints,
    RouteTimeout,
    Target,
    no_endpoint_error,
)

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
        self.h2_upstreams = UpstreamPool(
            settings.http2_keepalive_interval,
            settings.http2_keepalive_timeout,
            settings.outbound_discovery_idle_timeout,
        )
        """The per-stream HTTP/2 path's upstream connections, shared by all its clients."""
        self.local_identity = False
        """Whether this proxy has an identity (``run_proxy`` sets it from its ``MeshTls``): the
        HTTP/1 upgrade to a meshed peer needs mTLS both ways."""
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

    def upgrades_http1(self, endpoint: Endpoint) -> bool:
        """Whether an upgradable HTTP/1 request picked for ``endpoint`` travels as an HTTP/2
        stream to its proxy (``proxy/h1upgrade.py``; ``endpoint_refusal`` says why not)."""
        refusal = endpoint_refusal(
            enabled=self.settings.outbound_http1_upgrade and self.connector is not None,
            local_identity=self.local_identity,
            endpoint=endpoint,
        )
        return refusal is None

    async def connect(
        self, endpoint: Endpoint, metrics: Metrics, session: Session = Session.OPAQUE
    ) -> Conn:
        address = (endpoint.address, endpoint.port)
        timeout = self.settings.outbound_connect_timeout
        if self.connector is not None:
            if session is not Session.OPAQUE:  # HTTP/2 to the peer's proxy, for HTTP/1 requests
                return await self.connector(
                    address,
                    endpoint.identity,
                    timeout=timeout,
                    metrics=metrics,
                    direction=OUTBOUND,
                    session=session,
                )
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
        """Release idle authorities and hold the shared HTTP/2 upstream connections until
        cancelled; then close every pooled connection."""
        period = max(self.settings.outbound_discovery_idle_timeout / 2, 0.05)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.h2_upstreams.run)
                task_status.started()
                while True:
                    await trio.sleep(period)
                    for authority in self.release_idle(trio.current_time()):
                        log.debug("released outbound authority %s (idle)", authority)
        finally:
            self.closed = True
            for target in self.targets.values():
                target.close()
