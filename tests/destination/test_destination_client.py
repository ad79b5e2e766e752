"""The proxy's Trio client against the real service: it follows changes, and keeps serving
the last known endpoints while the service is killed and restarted."""

from __future__ import annotations

import signal
import ssl
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio

from meshlet.devcert import write_self_signed
from proxy.discovery import DiscoveryClient, DiscoverySettings, EndpointSet, EndpointView

from .dst_server import DESTINATION_NAME, DestinationProcess, free_port, write_yaml

WEB = "web.shop.svc.cluster.local:80"


def web_yaml(*addresses: str) -> str:
    endpoints = "".join(
        f"      - {{address: {a}, pod: web-{a.replace('.', '-')}, serviceAccount: web}}\n"
        for a in addresses
    )
    return (
        "services:\n  - name: web\n    namespace: shop\n    ports: [{port: 80}]\n"
        "    endpoints:\n" + (endpoints or "      []\n")
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DestinationProcess]:
    write_self_signed(tmp_path, ["127.0.0.1", DESTINATION_NAME])
    yaml_file = tmp_path / "local.yaml"
    yaml_file.write_text(web_yaml("127.0.0.1"))
    process = DestinationProcess(tmp_path, yaml_file, free_port())
    try:
        process.start()
        yield process
    finally:
        process.stop(signal.SIGKILL)


def settings_for(server: DestinationProcess, **changes: object) -> DiscoverySettings:
    settings = DiscoverySettings(
        host="127.0.0.1",
        port=server.port,
        server_name=DESTINATION_NAME,
        trust_anchors_pem=server.ca.read_text(),
        backoff_initial=0.05,
        backoff_max=0.5,
        idle_timeout=5.0,
        initial_timeout=10.0,
    )
    return replace(settings, **changes)  # type: ignore[arg-type]


def addresses(state: EndpointSet) -> list[str]:
    return sorted(address for address, _ in state.endpoints)


async def until(view: EndpointView, predicate: Callable[[EndpointSet], bool]) -> EndpointSet:
    with trio.fail_after(20):
        state = view.current()
        while not predicate(state):
            state = await view.wait_changed(state.version)
        return state


@pytest.mark.trio
async def test_follows_changes_and_survives_a_restart(server: DestinationProcess) -> None:
    async with DiscoveryClient(settings_for(server)) as discovery:
        view = await discovery.endpoints(WEB)
        first = view.current()
        assert first.resolved
        assert first.connected
        assert addresses(first) == ["127.0.0.1"]
        (endpoint,) = first.endpoints.values()
        assert endpoint.identity == "web.shop.serviceaccount.identity.meshlet.cluster.local"
        assert endpoint.labels["pod"] == "web-127-0-0-1"

        write_yaml(server.yaml_file, web_yaml("127.0.0.1", "127.0.0.2"))
        await until(view, lambda s: addresses(s) == ["127.0.0.1", "127.0.0.2"])

        # The control plane dies: the proxy keeps balancing over what it knew.
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)
        down = await until(view, lambda s: not s.connected)
        assert addresses(down) == ["127.0.0.1", "127.0.0.2"]
        await trio.sleep(1.0)  # several failed reconnects later, still the same endpoints
        assert addresses(view.current()) == ["127.0.0.1", "127.0.0.2"]
        assert view.current().error is not None

        # While it is down, the world changes; when it is back, the client catches up.
        write_yaml(server.yaml_file, web_yaml("127.0.0.3"))
        await trio.to_thread.run_sync(server.start)
        back = await until(view, lambda s: s.connected and addresses(s) == ["127.0.0.3"])
        assert back.error is None


@pytest.mark.trio
async def test_unknown_then_appears_and_profiles(server: DestinationProcess) -> None:
    async with DiscoveryClient(settings_for(server)) as discovery:
        view = await discovery.endpoints("api.shop.svc.cluster.local:9000")
        assert view.current().resolved
        assert not view.current().exists
        profile = await discovery.profile(WEB)
        assert profile.current().profile is not None
        assert profile.current().profile["retry_budget"]["retry_ratio"] == 0.2
        write_yaml(
            server.yaml_file,
            web_yaml("127.0.0.1")
            + "  - name: api\n    namespace: shop\n    ports: [{port: 9000}]\n"
            "    endpoints: [{address: 127.0.0.7}]\n",
        )
        state = await until(view, lambda s: s.exists)
        assert addresses(state) == ["127.0.0.7"]
        assert await discovery.endpoints("api.shop.svc.cluster.local:9000") is view
        assert discovery.subscriptions == 2
        discovery.release("api.shop.svc.cluster.local:9000")
        assert discovery.subscriptions == 1
        with trio.fail_after(10):
            while (
                'destination_streams_active{api="endpoints"} 0.0'
                not in (await trio.to_thread.run_sync(server.get, "/metrics"))[1]
            ):
                await trio.sleep(0.05)
        fresh = await discovery.endpoints("api.shop.svc.cluster.local:9000")
        assert fresh is not view
        assert addresses(fresh.current()) == ["127.0.0.7"]


@pytest.mark.trio
async def test_a_refused_authority_is_final(server: DestinationProcess) -> None:
    async with DiscoveryClient(settings_for(server)) as discovery:
        view = await discovery.endpoints("example.com:443")
        state = view.current()
        assert not state.resolved
        assert state.error is not None
        assert "HTTP 400" in state.error
        assert "not_cluster_name" in state.error


@pytest.mark.trio
async def test_the_server_name_is_verified(server: DestinationProcess, tmp_path: Path) -> None:
    wrong_name = settings_for(server, server_name="someone-else.example", initial_timeout=1.0)
    async with DiscoveryClient(wrong_name) as discovery:
        view = await discovery.endpoints(WEB)
        assert not view.current().resolved
        assert view.current().error is not None
        assert "certificate" in view.current().error.lower()
    other_ca = write_self_signed(tmp_path / "other", ["127.0.0.1", DESTINATION_NAME])
    wrong_anchor = settings_for(
        server, trust_anchors_pem=other_ca.cert.read_text(), initial_timeout=1.0
    )
    async with DiscoveryClient(wrong_anchor) as discovery:
        view = await discovery.endpoints(WEB)
        assert not view.current().resolved
        assert "certificate verify failed" in (view.current().error or "")


@pytest.mark.trio
async def test_a_silent_server_is_detected_by_the_idle_timeout(tmp_path: Path) -> None:
    """A server that answers with a snapshot and then goes silent (no keepalives): the client
    reopens the stream after idle_timeout, and keeps the endpoints meanwhile."""
    files = write_self_signed(tmp_path, ["127.0.0.1", DESTINATION_NAME])
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert, files.key)
    connections = 0
    snapshot = b'{"type":"snapshot","exists":true,"endpoints":[{"address":"10.0.0.1","port":80}]}\n'

    async def silent(tcp: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        stream = trio.SSLStream(tcp, server_context, server_side=True)
        await stream.do_handshake()
        await stream.receive_some(65536)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
        chunk = b"%x\r\n%s\r\n" % (len(snapshot), snapshot)
        await stream.send_all(head + b"transfer-encoding: chunked\r\n\r\n" + chunk)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        settings = DiscoverySettings(
            host="127.0.0.1",
            port=port,
            server_name=DESTINATION_NAME,
            trust_anchors_pem=files.cert.read_text(),
            idle_timeout=0.3,
            backoff_initial=0.01,
            backoff_max=0.02,
        )
        async with DiscoveryClient(settings) as discovery:
            view = await discovery.endpoints(WEB)
            assert addresses(view.current()) == ["10.0.0.1"]
            down = await until(view, lambda s: not s.connected)
            assert "TooSlowError" in (down.error or "")
            assert addresses(down) == ["10.0.0.1"]
            with trio.fail_after(10):
                while connections < 3:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
