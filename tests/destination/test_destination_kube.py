"""The Kubernetes watch layer against a fake API server: list then watch, 410 Gone -> relist,
errors -> backoff, silence -> timeout; the resulting streams asserted line by line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from destination.authority import ServiceTarget
from destination.endpoints import identity_function
from destination.events import Relisted, SourceError, SourceEvent
from destination.hub import Hub
from destination.index import ClusterState
from destination.kube import KubernetesSource, WatchTiming
from destination.metrics import DestinationMetrics
from meshlet.devcert import write_self_signed

from .dst_fakeapi import FakeApi
from .dst_objects import endpoint, endpoint_slice, pod, service
from .dst_server import free_port

WEB = ServiceTarget("shop", "web", 80)
FAST = WatchTiming(watch_timeout=30, idle_timeout=5, backoff_initial=0.02, backoff_max=0.1)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeApi]:
    api = FakeApi()
    api.apply("Service", "ADDED", service("web"))
    for i in range(3):
        api.apply("Pod", "ADDED", pod(f"web-{i}", f"10.1.0.{i + 1}"))
    api.apply("EndpointSlice", "ADDED", endpoint_slice("web-a", "web", []))
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@dataclass
class Running:
    hub: Hub
    events: list[SourceEvent]

    def errors(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, SourceError)]

    def relists(self, kind: str) -> int:
        return sum(1 for e in self.events if isinstance(e, Relisted) and e.kind == kind)


@asynccontextmanager
async def running(fake: FakeApi, timing: WatchTiming = FAST) -> AsyncIterator[Running]:
    async def factory() -> Any:
        configuration = client.Configuration()
        configuration.host = fake.url
        return client.ApiClient(configuration=configuration)

    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    state = ClusterState(cluster_domain="cluster.local", identity_for=identity)
    hub = Hub(state, DestinationMetrics(), keepalive_interval=30)
    result = Running(hub, [])
    source = KubernetesSource(factory, timing=timing)

    async def consume() -> None:
        async for event in source.events():
            result.events.append(event)
            hub.apply(event)

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(hub.synced.wait(), 10)
        yield result
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def line(stream: AsyncIterator[bytes]) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(anext(stream), 10))
        if message["type"] != "keepalive":
            return message  # type: ignore[no-any-return]


def addresses(message: dict[str, Any]) -> list[tuple[str, int]]:
    return [(e["address"], e["port"]) for e in message["endpoints"]]


async def eventually(condition: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_scaling_0_3_1_with_split_slices_and_named_ports(fake: FakeApi) -> None:
    async with running(fake) as run:
        stream = run.hub.endpoint_lines(WEB)
        assert await line(stream) == {"type": "snapshot", "exists": True, "endpoints": []}
        two = [endpoint("10.1.0.1", "web-0"), endpoint("10.1.0.2", "web-1")]
        fake.apply("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", two))
        added = await line(stream)
        assert added["type"] == "add"
        assert addresses(added) == [("10.1.0.1", 8080), ("10.1.0.2", 8080)]
        assert (
            added["endpoints"][0]["identity"]
            == "web.shop.serviceaccount.identity.meshlet.cluster.local"
        )
        fake.apply(
            "EndpointSlice",
            "ADDED",
            endpoint_slice("web-b", "web", [endpoint("10.1.0.3", "web-2")]),
        )
        assert addresses(await line(stream)) == [("10.1.0.3", 8080)]
        # 3 -> 1
        fake.apply(
            "EndpointSlice",
            "MODIFIED",
            endpoint_slice("web-a", "web", [endpoint("10.1.0.2", "web-1")]),
        )
        assert await line(stream) == {
            "type": "remove",
            "endpoints": [{"address": "10.1.0.1", "port": 8080}],
        }
        fake.apply("EndpointSlice", "DELETED", endpoint_slice("web-b", "web", []))
        assert await line(stream) == {
            "type": "remove",
            "endpoints": [{"address": "10.1.0.3", "port": 8080}],
        }
        # The named target port moves: the same pod, a new port.
        moved = endpoint_slice(
            "web-a", "web", [endpoint("10.1.0.2", "web-1")], ports=[("http", 9090)]
        )
        fake.apply("EndpointSlice", "MODIFIED", moved)
        assert await line(stream) == {
            "type": "remove",
            "endpoints": [{"address": "10.1.0.2", "port": 8080}],
        }
        assert addresses(await line(stream)) == [("10.1.0.2", 9090)]
        await stream.aclose()  # type: ignore[attr-defined]
    assert run.errors() == []
    assert run.relists("EndpointSlice") == 1


@pytest.mark.asyncio
async def test_410_gone_mid_watch_relists(fake: FakeApi) -> None:
    async with running(fake) as run:
        stream = run.hub.endpoint_lines(WEB)
        await line(stream)
        # The watch breaks, and meanwhile the API server compacts its history: the watch
        # cannot resume, so the change is only visible through a new LIST.
        fake.end_watches(abort=True)
        fake.compact()
        fake.apply(
            "EndpointSlice",
            "MODIFIED",
            endpoint_slice("web-a", "web", [endpoint("10.1.0.1", "web-0")]),
        )
        added = await line(stream)
        assert addresses(added) == [("10.1.0.1", 8080)]
        await stream.aclose()  # type: ignore[attr-defined]
        assert "gone" in run.errors()
        assert run.relists("EndpointSlice") == 2
        metrics = run.hub.metrics.registry
        assert metrics.get_sample_value(
            "destination_api_errors_total", {"kind": "EndpointSlice", "reason": "gone"}
        )


@pytest.mark.asyncio
async def test_an_api_outage_backs_off_and_recovers(fake: FakeApi) -> None:
    async with running(fake) as run:
        stream = run.hub.endpoint_lines(WEB)
        await line(stream)
        fake.failures_left = 12
        fake.end_watches(abort=True)
        fake.apply(
            "EndpointSlice",
            "MODIFIED",
            endpoint_slice("web-a", "web", [endpoint("10.1.0.3", "web-2")]),
        )
        added = await line(stream)
        assert addresses(added) == [("10.1.0.3", 8080)]
        assert fake.failures_left == 0
        assert run.errors().count("http_500") == 12
        # The dropped streams show up as connection errors (or as an ended watch).
        assert set(run.errors()) <= {"http_500", "connection"}
        # The watch resumed from its resourceVersion: no relist was needed.
        assert run.relists("EndpointSlice") == 1
        # The service keeps serving throughout: nothing was lost.
        assert run.hub.synced.is_set()
        await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_silent_watch_times_out_and_resumes(fake: FakeApi) -> None:
    fake.silent = True
    timing = WatchTiming(watch_timeout=30, idle_timeout=0.3, backoff_initial=0.02, backoff_max=0.05)
    async with running(fake, timing) as run:
        await eventually(lambda: run.errors().count("silent") >= 8)
        assert run.relists("Pod") == 1  # silence means reconnect, not relist
        fake.silent = False
        stream = run.hub.endpoint_lines(WEB)
        await line(stream)
        fake.apply(
            "EndpointSlice",
            "MODIFIED",
            endpoint_slice("web-a", "web", [endpoint("10.1.0.1", "web-0")]),
        )
        assert addresses(await line(stream)) == [("10.1.0.1", 8080)]
        await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_bookmarks_move_the_resume_point(fake: FakeApi) -> None:
    async with running(fake):
        await eventually(lambda: len(fake.watch_requests("Pod")) == 1)
        first = fake.watch_requests("Pod")[0]
        assert first["allowWatchBookmarks"] == "true"
        assert first["timeoutSeconds"] == "30"
        fake.bookmark("Pod")
        bookmarked = str(fake.version)
        await asyncio.sleep(0.1)
        fake.end_watches()  # a clean end, as after timeoutSeconds
        await eventually(lambda: len(fake.watch_requests("Pod")) == 2)
        assert fake.watch_requests("Pod")[1]["resourceVersion"] == bookmarked


@pytest.mark.asyncio
async def test_lists_are_paginated(fake: FakeApi) -> None:
    fake.page_size = 2
    for i in range(3, 7):
        fake.apply("Pod", "ADDED", pod(f"web-{i}", f"10.1.0.{i + 1}"))
    async with running(fake) as run:
        (listed,) = [e for e in run.events if isinstance(e, Relisted) and e.kind == "Pod"]
        assert len(listed.objects) == 7
        continues = [q.get("continue") for k, q in fake.requests if k == "Pod" and "watch" not in q]
        assert continues == [None, "2", "4", "6"]


@pytest.mark.asyncio
async def test_a_missing_crd_does_not_block_readiness(fake: FakeApi) -> None:
    fake.missing.add("ServiceProfile")
    async with running(fake) as run:
        assert "http_404" in run.errors()
        await eventually(lambda: run.errors().count("http_404") >= 3)
        assert run.hub.state.profile(WEB)["exists"] is False
        assert run.relists("ServiceProfile") == 1
        fake.missing.clear()  # the CRD gets installed: profiles start to work
        profile = {
            "metadata": {"name": "web.shop.svc.cluster.local", "namespace": "shop"},
            "spec": {"routes": []},
        }
        fake.apply("ServiceProfile", "ADDED", profile)
        await eventually(lambda: run.hub.state.profile(WEB)["exists"] is True)


@pytest.mark.asyncio
async def test_an_expired_list_is_retried_after_a_pause(fake: FakeApi) -> None:
    fake.list_gone_left = 3
    async with running(fake) as run:
        assert run.errors().count("gone") == 3
        assert all(run.relists(kind) == 1 for kind in ("Service", "EndpointSlice", "Pod"))


@pytest.mark.asyncio
async def test_bad_objects_from_the_api_are_skipped(fake: FakeApi) -> None:
    async with running(fake) as run:
        stream = run.hub.endpoint_lines(WEB)
        await line(stream)
        broken = endpoint_slice("web-x", "web", [endpoint("10.1.0.9")])
        del broken["metadata"]["labels"]
        fake.apply("EndpointSlice", "ADDED", broken)
        fake.apply(
            "EndpointSlice",
            "ADDED",
            endpoint_slice("orphan", "gone-service", [endpoint("10.1.0.8")]),
        )
        fake.apply(
            "EndpointSlice",
            "MODIFIED",
            endpoint_slice("web-a", "web", [endpoint("10.1.0.1", "web-0")]),
        )
        assert addresses(await line(stream)) == [("10.1.0.1", 8080)]
        registry = run.hub.metrics.registry
        skipped = {
            reason: registry.get_sample_value(
                "destination_skipped_objects_total", {"kind": "EndpointSlice", "reason": reason}
            )
            for reason in ("no_service_label", "unknown_service")
        }
        assert skipped == {"no_service_label": 1.0, "unknown_service": 1.0}
        await stream.aclose()  # type: ignore[attr-defined]


def test_no_cluster_and_no_kubeconfig_is_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "destination",
            "--self-signed",
            str(tmp_path),
            "--source",
            "kubernetes",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("meshlet-destination: kubernetes: not in a cluster")
    assert len(result.stderr.strip().splitlines()) == 1


async def _https_get(port: int, ca: Path, path: str) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
    except OSError:
        return (0, "")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split()[1]), body.decode())


@pytest.mark.asyncio
async def test_the_real_service_on_the_kubernetes_source(fake: FakeApi, tmp_path: Path) -> None:
    """meshlet-destination as a process, configured by a kubeconfig pointing at the fake API
    server, read with curl -N while the API changes (and breaks)."""
    files = write_self_signed(tmp_path, ["127.0.0.1"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "t", "user": {"token": "test-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "t"}}],
                "current-context": "fake",
            }
        )
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHLET_")}
    env["KUBECONFIG"] = str(kubeconfig)
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "destination",
        "--source",
        "kubernetes",
        "--tls-cert-file",
        str(files.cert),
        "--tls-key-file",
        str(files.key),
        "--listen-addr",
        f"127.0.0.1:{port}",
        "--keepalive-interval",
        "1s",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    curl = None
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while (await _https_get(port, files.cert, "/readyz"))[0] != 200:
            assert server.returncode is None, "the server exited"
            assert asyncio.get_running_loop().time() < deadline, "never ready"
            await asyncio.sleep(0.05)
        curl = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "-N",
            "--cacert",
            str(files.cert),
            f"https://127.0.0.1:{port}/v1/endpoints?authority=web.shop.svc.cluster.local:80",
            stdout=asyncio.subprocess.PIPE,
        )
        assert curl.stdout is not None

        async def next_line() -> dict[str, Any]:
            while True:
                raw = await asyncio.wait_for(curl.stdout.readline(), 15)  # type: ignore[union-attr]
                message = json.loads(raw)
                if message["type"] != "keepalive":
                    return message  # type: ignore[no-any-return]

        assert await next_line() == {"type": "snapshot", "exists": True, "endpoints": []}
        eps = [endpoint("10.1.0.1", "web-0"), endpoint("10.1.0.2", "web-1")]
        fake.apply("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", eps))
        added = await next_line()
        assert addresses(added) == [("10.1.0.1", 8080), ("10.1.0.2", 8080)]
        assert (
            added["endpoints"][0]["identity"]
            == "web.shop.serviceaccount.identity.meshlet.cluster.local"
        )
        # The API breaks and forgets history; the change made meanwhile still arrives.
        fake.end_watches(abort=True)
        fake.compact()
        fake.apply("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", eps[1:]))
        assert await next_line() == {
            "type": "remove",
            "endpoints": [{"address": "10.1.0.1", "port": 8080}],
        }
        fake.apply("Service", "DELETED", service("web"))
        assert await next_line() == {"type": "snapshot", "exists": False, "endpoints": []}
        status, metrics = await _https_get(port, files.cert, "/metrics")
        assert status == 200
        assert 'destination_api_errors_total{kind="EndpointSlice",reason="gone"}' in metrics
        # SIGTERM: the stream is closed with a reason, the watches stop, the exit status is 0.
        server.send_signal(signal.SIGTERM)
        assert (await next_line())["type"] == "close"
        assert await asyncio.wait_for(server.wait(), 15) == 0
    finally:
        for process in (curl, server):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        assert server.stderr is not None
        log = (await server.stderr.read()).decode()
        assert "test-token" not in log  # the token never reaches a log
        assert "Traceback" not in log
