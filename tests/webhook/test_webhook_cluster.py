"""ClusterView implementations: the Kubernetes one against a fake API server, the static file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio import client

from tests.webhook.fakeapi import FakeApiServer
from webhook.kube import NamespaceInfo, StaticClusterView, resolve_owner
from webhook.kube_api import KubernetesClusterView
from webhook.patch import Owner
from webhook.samples import sample_review


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    server.set_namespace(
        "shop", {"meshlet.io/inject": "enabled"}, {"config.meshlet.io/proxy-uid": "3000"}
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def view(fake: FakeApiServer) -> AsyncIterator[KubernetesClusterView]:
    api = client.ApiClient(client.Configuration(host=fake.url))
    cluster = KubernetesClusterView(api=api, watch_timeout=2, backoff=0.05, max_backoff=0.2)
    try:
        yield cluster
    finally:
        await cluster.close()
        await api.close()


async def _eventually(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_lists_then_follows_the_watch(
    fake: FakeApiServer, view: KubernetesClusterView
) -> None:
    assert not view.ready()
    await view.start()
    await asyncio.wait_for(view.wait_synced(), 5)
    assert view.ready()
    shop = await view.namespace("shop")
    assert shop == NamespaceInfo(
        "shop", {"meshlet.io/inject": "enabled"}, {"config.meshlet.io/proxy-uid": "3000"}
    )
    await _eventually(lambda: any(r.startswith("watch@") for r in fake.requests))
    assert fake.requests == ["list", "watch@101"]  # answered from the cache, no GET

    fake.set_namespace("new", {"meshlet.io/inject": "disabled"})
    await _eventually(lambda: "new" in view._namespaces)
    fake.set_namespace("new", {"meshlet.io/inject": "enabled"})
    await _eventually(lambda: view._namespaces["new"].labels == {"meshlet.io/inject": "enabled"})
    fake.delete_namespace("new")
    await _eventually(lambda: "new" not in view._namespaces)
    assert "get namespace new" not in fake.requests


@pytest.mark.asyncio
async def test_relists_on_410_and_retries_errors(
    fake: FakeApiServer, view: KubernetesClusterView
) -> None:
    fake.fail_lists = 2
    fake.gone_watches = 1
    await view.start()
    await asyncio.wait_for(view.wait_synced(), 5)
    await _eventually(lambda: fake.requests.count("list") >= 4)
    # two failed lists (backed off), one good list whose watch got 410 Gone, a relist
    assert fake.requests[:5] == ["list", "list", "list", "watch@101", "list"]
    fake.set_namespace("later")
    await _eventually(lambda: "later" in view._namespaces)


@pytest.mark.asyncio
async def test_a_silent_watch_is_abandoned_and_relisted(fake: FakeApiServer) -> None:
    fake.silent_watches = 1
    api = client.ApiClient(client.Configuration(host=fake.url))
    view = KubernetesClusterView(api=api, watch_timeout=1, silence_timeout=1.0, backoff=0.05)
    try:
        await view.start()
        await asyncio.wait_for(view.wait_synced(), 5)
        await _eventually(lambda: fake.requests.count("list") >= 2)
        fake.set_namespace("after-the-silence")
        await _eventually(lambda: "after-the-silence" in view._namespaces)
    finally:
        await view.close()
        await api.close()


@pytest.mark.asyncio
async def test_unknown_namespace_is_read_directly(
    fake: FakeApiServer, view: KubernetesClusterView
) -> None:
    fake.fail_lists = 1000  # the cache never fills: every lookup must GET
    await view.start()
    assert (await view.namespace("shop")) is not None
    assert (await view.namespace("missing")) is None
    assert "get namespace shop" in fake.requests
    assert not view.ready()


@pytest.mark.asyncio
async def test_owners_are_walked_and_cached(
    fake: FakeApiServer, view: KubernetesClusterView
) -> None:
    fake.set_object("replicasets", "shop", "web-7c9d8f6b5", ("Deployment", "web"))
    fake.set_object("jobs", "shop", "report-1", ("CronJob", "report"))
    fake.set_object("replicasets", "shop", "bare", None)
    await view.start()

    def pod(kind: str, name: str) -> dict[str, Any]:
        return {"metadata": {"ownerReferences": [{"kind": kind, "name": name, "controller": True}]}}

    assert await resolve_owner(view, "shop", pod("ReplicaSet", "web-7c9d8f6b5")) == Owner(
        "Deployment", "web"
    )
    assert await resolve_owner(view, "shop", pod("ReplicaSet", "web-7c9d8f6b5")) == Owner(
        "Deployment", "web"
    )
    assert fake.requests.count("get replicasets web-7c9d8f6b5") == 1  # cached
    assert await resolve_owner(view, "shop", pod("Job", "report-1")) == Owner("CronJob", "report")
    assert await resolve_owner(view, "shop", pod("ReplicaSet", "bare")) == Owner(
        "ReplicaSet", "bare"
    )
    assert await resolve_owner(view, "shop", pod("ReplicaSet", "gone")) == Owner(
        "ReplicaSet", "gone"
    )
    assert await resolve_owner(view, "shop", pod("StatefulSet", "db")) == Owner("StatefulSet", "db")
    assert await resolve_owner(view, "shop", {"metadata": {}}) is None
    fake.fail_reads = 1
    fake.set_object("jobs", "shop", "flaky", ("CronJob", "nightly"))
    assert await view.controller_of("shop", "Job", "flaky") is None  # error: unknown, not cached
    assert await view.controller_of("shop", "Job", "flaky") == Owner("CronJob", "nightly")


@pytest.mark.asyncio
async def test_static_view_reads_and_reloads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {kind: Namespace, metadata: {name: shop, labels: {meshlet.io/inject: enabled}}}\n"
        "- kind: Job\n  metadata:\n    name: r-1\n    namespace: shop\n"
        "    ownerReferences: [{kind: CronJob, name: r, controller: true}]\n"
    )
    view = StaticClusterView(path, check_interval=0)
    assert (await view.namespace("shop")) == NamespaceInfo(
        "shop", {"meshlet.io/inject": "enabled"}, {}
    )
    assert (await view.namespace("other")) == NamespaceInfo("other")
    assert await view.controller_of("shop", "Job", "r-1") == Owner("CronJob", "r")
    assert await view.controller_of("shop", "ReplicaSet", "web-7c9d8f6b5") == Owner(
        "Deployment", "web"
    )
    assert await view.controller_of("shop", "ReplicaSet", "plainname") is None
    path.write_text(
        "kind: Namespace\nmetadata: {name: shop, labels: {meshlet.io/inject: disabled}}\n"
    )
    assert (await view.namespace("shop")).labels == {"meshlet.io/inject": "disabled"}  # type: ignore[union-attr]
    path.write_text("kind: [unclosed\n")
    assert (await view.namespace("shop")).labels == {"meshlet.io/inject": "disabled"}  # type: ignore[union-attr]


@pytest.fixture
def fake_in_thread() -> Iterator[tuple[FakeApiServer, asyncio.AbstractEventLoop]]:
    """The fake API server on its own event loop thread, for a webhook in another process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeApiServer()
    server.set_namespace("shop", {"meshlet.io/inject": "enabled"})
    server.set_namespace("legacy")
    server.set_object("replicasets", "shop", "web-7c9d8f6b5", ("Deployment", "storefront"))
    server.set_webhook_configuration("meshlet-webhook", ["c3RhbGU="])
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_webhook_process_uses_the_api_through_a_kubeconfig(
    fake_in_thread: tuple[FakeApiServer, asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    fake, loop = fake_in_thread
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake.url}'}}}}]\n"
        "users: [{name: tester, user: {token: not-a-secret}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: tester}}]\n"
    )
    port = _free_port()
    log = (tmp_path / "webhook.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook",
            "--listen",
            f"127.0.0.1:{port}",
            "--self-signed",
            str(tmp_path / "tls"),
            "--kubeconfig",
            str(kubeconfig),
            "--ca-bundle-config",
            "meshlet-webhook",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cacert = tmp_path / "tls" / "tls.crt"
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                ["curl", "-sf", "--cacert", str(cacert), f"{url}/readyz"],
                capture_output=True,
                check=False,
            ).returncode
            != 0
        ):
            assert process.poll() is None, (tmp_path / "webhook.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)

        def explain(namespace: str) -> dict[str, Any]:
            review = sample_review()
            review["request"]["namespace"] = namespace
            (tmp_path / "review.json").write_text(json.dumps(review))
            result = subprocess.run(
                [
                    "curl",
                    "-sf",
                    "--cacert",
                    str(cacert),
                    "--data-binary",
                    f"@{tmp_path / 'review.json'}",
                    f"{url}/inject?explain=true",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            document: dict[str, Any] = yaml.safe_load(result.stdout)
            return document

        # The stale caBundle was replaced with the certificate the webhook serves.
        deadline = time.monotonic() + 10
        webhooks = fake.webhook_configurations["meshlet-webhook"]["webhooks"]
        while base64.b64decode(webhooks[0]["clientConfig"]["caBundle"]) != cacert.read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "webhook.log").read_text()
            time.sleep(0.1)
            webhooks = fake.webhook_configurations["meshlet-webhook"]["webhooks"]

        shop = explain("shop")
        assert shop["inject"] is True
        assert shop["owner"] == "Deployment/storefront"  # from the API, not the name heuristic
        (reason,) = explain("legacy")["reasons"]
        assert list(reason) == ["injection_not_enabled"]
        loop.call_soon_threadsafe(fake.set_namespace, "legacy", {"meshlet.io/inject": "enabled"})
        deadline = time.monotonic() + 10
        while not explain("legacy")["inject"]:  # the watch delivers the new label
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_no_cluster_configuration_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--self-signed",
            str(tmp_path / "tls"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert (
        "meshlet-webhook: error: cannot configure the Kubernetes client from the in-cluster"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
