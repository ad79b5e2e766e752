"""Fixtures: a real ``meshlet-identity`` (local mode), meshed proxies in-process on loopback.

Each proxy is ``proxy.__main__.run_proxy`` with its identity configured exactly as in a pod
(``MESHLET_PROXY_IDENTITY_*``, through ``load_mesh_tls``) and a fixed original-destination
resolver (the loopback seam of tests/proxy). A client proxy's discovery is a static endpoint set
(the one interface ``Outbound`` uses of the destination client), naming the server proxy's
inbound listener and the identity discovery would promise for it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from meshlet.names import workload_identity
from proxy.__main__ import ProxyAddresses, run_proxy
from proxy.context import Lifecycle, ProxyContext
from proxy.discovery import Endpoint, EndpointSet, EndpointView, ProfileState, ProfileView
from proxy.identity import IdentityClient
from proxy.metrics import Metrics
from proxy.mtls import MESH_ALPN
from proxy.outbound import Outbound
from proxy.settings import Address, ProxySettings
from proxy.tlsglue import MeshTls, load_mesh_tls
from tests.identity.conftest import PKI, free_port, start_identity, stop
from tests.identity.pki import make_ca, write_issuer_files
from tests.proxy.conftest import spawn_backend
from tests.proxy.conftest import stop as stop_backend

WEB = workload_identity("web", "shop")
DB = workload_identity("db", "shop")
ADMIN = workload_identity("admin", "kube-system")
TOKENS = {WEB: "tok-web", DB: "tok-db", ADMIN: "tok-admin"}
SHORT_LIFETIME = 4.0  # seconds: renewals within a test, and slack on a busy machine
BACKEND = Path(__file__).parent.parent / "proxy" / "backend_http1.py"


@dataclass
class IdentityService:
    port: int
    pki: PKI
    directory: Path

    def variables(self, name: str) -> dict[str, str]:
        """``settings.extra`` (``MESHLET_PROXY_`` stripped) for a proxy whose identity is
        ``name``: its token file, scratch directory, the anchors and this service."""
        directory = self.directory / name.split(".", maxsplit=1)[0]
        directory.mkdir(parents=True, exist_ok=True)
        token_file = directory / "token"
        token_file.write_text(TOKENS[name] + "\n")
        return {
            "IDENTITY_DIR": str(directory / "end-entity"),
            "IDENTITY_TOKEN_FILE": str(token_file),
            "IDENTITY_TRUST_ANCHORS": self.pki.anchors_file.read_text(),
            "IDENTITY_LOCAL_NAME": name,
            "IDENTITY_SVC_ADDR": f"127.0.0.1:{self.port}",
        }


def _pki(directory: Path) -> PKI:
    anchor, issuer = make_ca(datetime.datetime.now(datetime.UTC))
    anchors, cert, key = write_issuer_files(directory, anchor, issuer)
    return PKI(directory, anchor, issuer, anchors, cert, key)


def _token_file(directory: Path) -> Path:
    path = directory / "tokens.txt"
    path.write_text("tok-web shop/web\ntok-db shop/db\ntok-admin kube-system/admin\n")
    return path


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return _pki(tmp_path / "pki")


def _identity_service(
    tmp_path: Path, pki: PKI, extra_env: dict[str, str]
) -> Iterator[IdentityService]:
    port, process = start_identity(
        pki, _token_file(tmp_path), tmp_path / "identity.log", extra_env=extra_env
    )
    try:
        yield IdentityService(port, pki, tmp_path / "proxies")
    finally:
        stop(process)


@pytest.fixture
def identity_service(tmp_path: Path, pki: PKI) -> Iterator[IdentityService]:
    """A real ``meshlet-identity`` in local mode (static token file) on loopback."""
    yield from _identity_service(tmp_path, pki, {})


@pytest.fixture
def short_lived_identity_service(tmp_path: Path, pki: PKI) -> Iterator[IdentityService]:
    """The same, issuing certificates that live ``SHORT_LIFETIME`` (no clock-skew padding)."""
    env = {
        "MESHLET_IDENTITY_LEAF_LIFETIME": f"{SHORT_LIFETIME:g}s",
        "MESHLET_IDENTITY_CLOCK_SKEW": "0s",
    }
    yield from _identity_service(tmp_path, pki, env)


@pytest.fixture(scope="session")
def app_port() -> Iterator[int]:
    """tests/proxy/backend_http1.py (``GET /headers`` echoes the request headers)."""
    process, port = spawn_backend(str(BACKEND))
    try:
        yield port
    finally:
        stop_backend(process)


class _StaticView:
    """A discovery view that never changes (what ``Outbound`` reads of one)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def current(self) -> Any:
        return self._state

    async def wait_changed(self, version: int) -> Any:
        await trio.sleep_forever()


class StaticDiscovery:
    """Every authority resolves to ``endpoints`` (address → identity or ``None``)."""

    def __init__(self, endpoints: Mapping[tuple[str, int], str | None]) -> None:
        self.state = EndpointSet(
            resolved=True,
            exists=True,
            connected=True,
            version=1,
            endpoints=MappingProxyType(
                {
                    address: Endpoint(
                        address=address[0],
                        port=address[1],
                        weight=10000,
                        identity=identity,
                        protocol_hint=None,
                        labels={"pod": "server-0"},
                    )
                    for address, identity in endpoints.items()
                }
            ),
        )

    async def endpoints(self, authority: str) -> EndpointView:
        return cast(EndpointView, _StaticView(self.state))

    async def profile(self, authority: str) -> ProfileView:
        return cast(ProfileView, _StaticView(ProfileState(resolved=True, connected=True)))

    def release(self, authority: str) -> None:
        pass


@dataclass
class MeshProxy:
    addresses: ProxyAddresses
    context: ProxyContext
    mesh: MeshTls

    @property
    def inbound(self) -> tuple[str, int]:
        return ("127.0.0.1", self.addresses.inbound[1])

    @property
    def outbound_url(self) -> str:
        return f"http://127.0.0.1:{self.addresses.outbound[1]}"

    @property
    def inbound_url(self) -> str:
        return f"http://127.0.0.1:{self.addresses.inbound[1]}"

    async def admin(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.addresses.admin[1]}") as c:
            return await c.get(path)

    async def metrics(self) -> str:
        return (await self.admin("/metrics")).text

    async def wait_ready(self, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while (await self.admin("/ready")).status_code != 200:
                await trio.sleep(0.05)


StartMeshProxy = Callable[..., Awaitable[MeshProxy]]


@pytest.fixture
async def start_mesh_proxy(nursery: trio.Nursery) -> StartMeshProxy:
    """``await start_mesh_proxy(original, variables, endpoints=None)``: a proxy whose every
    connection's original destination is ``original``, configured by ``variables`` (the
    ``MESHLET_PROXY_`` suffixes), with static discovery when ``endpoints`` is given."""

    async def start(
        original: tuple[str, int],
        variables: Mapping[str, str],
        *,
        endpoints: Mapping[tuple[str, int], str | None] | None = None,
        inbound_port: int = 0,
        min_refresh: float | None = None,
        peer_proxy_port: int | None = None,
        **overrides: Any,
    ) -> MeshProxy:
        settings = ProxySettings(
            inbound_listen=Address("127.0.0.1", inbound_port),
            outbound_listen=Address("127.0.0.1", 0),
            admin_listen=Address("127.0.0.1", 0),
            extra=dict(variables),
            **overrides,
        )
        mesh = load_mesh_tls(settings)
        if peer_proxy_port is not None:  # on loopback every proxy has its own port
            mesh = dataclasses.replace(mesh, peer_proxy_port=peer_proxy_port)
        if min_refresh is not None and mesh.identity is not None:
            # The one tunable the environment does not set: renew within a 2 s lifetime.
            quick = dataclasses.replace(mesh.identity.settings, min_refresh=min_refresh)
            mesh = dataclasses.replace(
                mesh, identity=IdentityClient(quick, alpn_protocols=MESH_ALPN)
            )
        outbound = None
        if endpoints is not None:
            outbound = Outbound(
                settings, StaticDiscovery(endpoints), connector=mesh.connect_endpoint
            )
        context = ProxyContext(settings, Metrics(), Lifecycle(), outbound=outbound)
        addresses = await nursery.start(
            functools.partial(
                run_proxy, settings, resolver=lambda _sock: original, context=context, mesh=mesh
            )
        )
        return MeshProxy(addresses, context, mesh)

    return start


__all__ = [
    "ADMIN",
    "DB",
    "WEB",
    "SHORT_LIFETIME",
    "IdentityService",
    "MeshProxy",
    "StartMeshProxy",
    "StaticDiscovery",
    "free_port",
]


async def _serve_h2_headers(stream: trio.SocketStream) -> None:
    """One HTTP/2 (prior knowledge) connection: every request is answered 200 with its
    headers, one ``name: value`` a line (as ``backend_http1.py``'s ``GET /headers``)."""
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    connection.initiate_connection()
    async with stream:
        await stream.send_all(connection.data_to_send())
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    body = b"".join(
                        bytes(name) + b": " + bytes(value) + b"\n"
                        for name, value in event.headers or []
                        if not bytes(name).startswith(b":")
                    )
                    connection.send_headers(
                        event.stream_id,
                        [(b":status", b"200"), (b"content-length", str(len(body)).encode())],
                    )
                    connection.send_data(event.stream_id, body, end_stream=True)
            await stream.send_all(connection.data_to_send())


@pytest.fixture
async def h2_app(nursery: trio.Nursery) -> tuple[str, int]:
    """An HTTP/2 app on loopback answering every request with its headers."""
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, _serve_h2_headers, 0, host="127.0.0.1")
    )
    return ("127.0.0.1", listeners[0].socket.getsockname()[1])
