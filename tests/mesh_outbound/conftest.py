"""Fixtures for the outbound mesh tests: three in-process backends on 127.0.0.2-4, a real
``meshlet-destination`` process in local mode listing them, and the proxy in-process with the
outbound mesh client (a real ``DiscoveryClient`` over TLS) and a settable original destination."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from proxy.__main__ import ProxyAddresses, run_proxy
from proxy.balance import BalanceSettings
from proxy.context import Lifecycle, ProxyContext
from proxy.discovery import DiscoveryClient, DiscoverySettings
from proxy.metrics import Metrics
from proxy.outbound import Outbound
from proxy.settings import Address, ProxySettings
from tests.destination.dst_server import (
    DESTINATION_NAME,
    DestinationProcess,
    destination,
    write_yaml,
)
from tests.mesh_outbound.mo_backend import Backend
from tests.mesh_outbound.mo_h2backend import H2Backend
from tests.mesh_outbound.mo_h2client import H2Client
from tests.mesh_outbound.mo_served import ServedBackend

SERVICE_IP = "127.0.10.1"  # the Service's ClusterIP (nothing listens there)
EMPTY_IP = "127.0.10.2"  # a Service without ready endpoints
SERVICE_PORT = 8080
SERVICE_AUTHORITY = "web.shop.svc.cluster.local:8080"

_PROFILE = """
profiles:
  - name: web.shop.svc.cluster.local
    namespace: shop
    routes:
      - name: GET /retry
        condition: {method: GET, pathRegex: '/retry'}
        isRetryable: true
      - name: POST /retry
        condition: {method: POST, pathRegex: '/retry'}
      - name: GET /timeout
        condition: {method: GET, pathRegex: '/timeout'}
        timeout: 200ms
"""


def render_yaml(backends: Sequence[ServedBackend], *, meshed: bool = False) -> str:
    flag = str(meshed).lower()
    listed = "".join(
        f"\n      - {{address: {b.host}, port: {b.port}, pod: {b.name}, meshed: {flag}}}"
        for b in backends
    )
    endpoints = (listed or " []") + "\n"
    return (
        "services:\n"
        f"  - name: web\n    namespace: shop\n    clusterIP: {SERVICE_IP}\n"
        f"    ports:\n      - {{name: http, port: {SERVICE_PORT}}}\n"
        f"    endpoints:{endpoints}"
        f"  - name: empty\n    namespace: shop\n    clusterIP: {EMPTY_IP}\n"
        f"    ports:\n      - {{name: http, port: {SERVICE_PORT}}}\n"
        "    endpoints:\n      - {address: 127.0.0.9, port: 9, ready: false}\n" + _PROFILE
    )


@dataclasses.dataclass
class Mesh:
    backends: list[Backend]
    outside: Backend
    destination: DestinationProcess
    outbound: Outbound
    context: ProxyContext
    addresses: ProxyAddresses
    original: list[tuple[str, int]]
    """``original[0]``: the original destination every accepted connection reports."""

    @property
    def port(self) -> int:
        return self.addresses.outbound[1]

    def set_endpoints(self, backends: Sequence[ServedBackend], *, meshed: bool = False) -> None:
        write_yaml(self.destination.yaml_file, render_yaml(backends, meshed=meshed))

    def by_name(self) -> dict[str, Backend]:
        return {b.name: b for b in self.backends}


@dataclasses.dataclass
class RunningProxy:
    """The proxy in-process with its outbound mesh client, and the destination it reads."""

    destination: DestinationProcess
    outbound: Outbound
    context: ProxyContext
    addresses: ProxyAddresses
    original: list[tuple[str, int]]  # the original destination the resolver answers


@contextlib.asynccontextmanager
async def outbound_proxy(
    tmp_path: Path, listed: Sequence[ServedBackend], param: dict[str, Any]
) -> AsyncIterator[RunningProxy]:
    """A destination process listing ``listed`` and the proxy in-process using it; ``param``
    overrides ``ProxySettings`` fields, plus ``decay`` and ``min_backoff`` of the balancer."""
    overrides = dict(param)
    balance = BalanceSettings(
        decay=overrides.pop("decay", 10.0), min_backoff=overrides.pop("min_backoff", 1.0)
    )
    with destination(tmp_path, render_yaml(listed)) as server:
        settings = ProxySettings(
            inbound_listen=Address("127.0.0.1", 0),
            outbound_listen=Address("127.0.0.1", 0),
            admin_listen=Address("127.0.0.1", 0),
            outbound_failfast_timeout=0.5,
            **overrides,
        )
        discovery_settings = DiscoverySettings(
            host="127.0.0.1",
            port=server.port,
            server_name=DESTINATION_NAME,
            trust_anchors_pem=server.ca.read_text(),
        )
        async with DiscoveryClient(discovery_settings) as discovery:
            outbound = Outbound(settings, discovery, balance=balance, rng=random.Random(7))
            context = ProxyContext(settings, Metrics(), Lifecycle(), outbound=outbound)
            original = [(SERVICE_IP, SERVICE_PORT)]
            async with trio.open_nursery() as inner:
                addresses = await inner.start(
                    functools.partial(
                        run_proxy,
                        settings,
                        resolver=lambda _sock: original[0],
                        context=context,
                        tap=None,
                    )
                )
                yield RunningProxy(server, outbound, context, addresses, original)
                inner.cancel_scope.cancel()


@pytest.fixture
async def mesh(
    nursery: trio.Nursery, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Mesh]:
    backends = [Backend(f"web-{i}", f"127.0.0.{i + 2}") for i in range(3)]
    outside = Backend("outside", "127.0.0.1")  # not in discovery
    for backend in [*backends, outside]:
        await nursery.start(backend.serve)
    async with outbound_proxy(tmp_path, backends, getattr(request, "param", {})) as run:
        yield Mesh(
            backends,
            outside,
            run.destination,
            run.outbound,
            run.context,
            run.addresses,
            run.original,
        )


@dataclasses.dataclass
class H2Mesh:
    backends: list[H2Backend]
    destination: DestinationProcess
    context: ProxyContext
    addresses: ProxyAddresses
    original: list[tuple[str, int]]

    @property
    def port(self) -> int:
        return self.addresses.outbound[1]

    def set_endpoints(self, backends: list[H2Backend]) -> None:
        write_yaml(self.destination.yaml_file, render_yaml(backends))

    def balancer_pending(self) -> int:
        assert self.context.outbound is not None
        target = self.context.outbound.targets[f"{SERVICE_IP}:{SERVICE_PORT}"]
        return sum(s.pending for s in target.destination.balancer.stats())


@pytest.fixture
async def h2mesh(
    nursery: trio.Nursery, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[H2Mesh]:
    backends = [H2Backend(f"web-{i}", f"127.0.0.{i + 2}") for i in range(3)]
    for backend in backends:
        await nursery.start(backend.serve)
    async with outbound_proxy(tmp_path, backends, getattr(request, "param", {})) as run:
        yield H2Mesh(backends, run.destination, run.context, run.addresses, run.original)


async def h2_answers(mesh: H2Mesh, paths: list[str], **kwargs: Any) -> list[Any]:
    """Every path as a request on ONE connection, all at once."""
    async with trio.open_nursery() as nursery:
        client = await H2Client.connect(nursery, mesh.port)
        answers: list[Any] = [None] * len(paths)

        async def one(index: int, path: str) -> None:
            answers[index] = await client.request(path, **kwargs)

        async with trio.open_nursery() as inner:
            for index, path in enumerate(paths):
                inner.start_soon(one, index, path)
        await client.aclose()
        nursery.cancel_scope.cancel()
    return answers
