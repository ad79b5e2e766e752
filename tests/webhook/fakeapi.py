"""A tiny fake Kubernetes API server (aiohttp) covering exactly what KubernetesClusterView uses:
list and watch namespaces, get a namespace, get a ReplicaSet or a Job, and get and JSON-patch a
MutatingWebhookConfiguration (the caBundle keeper).

kmock 0.8 cannot serve the cluster-scoped ``namespaces`` resource itself (its path parser takes
``/api/v1/namespaces`` for a namespaced prefix and fails with a 500), hence this fake.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonpatch
import jsonpointer
from aiohttp import web

__all__ = ["FakeApiServer"]


class FakeApiServer:
    def __init__(self) -> None:
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.version = 100
        self.watchers: list[asyncio.Queue[dict[str, Any]]] = []
        self.requests: list[str] = []
        self.fail_lists = 0  # answer this many namespace lists with 500
        self.gone_watches = 0  # answer this many watches with a 410 Gone ERROR event
        self.fail_reads = 0  # answer this many object reads with 500
        self.silent_watches = 0  # this many watches hang, sending nothing, ignoring timeouts
        self.webhook_configurations: dict[str, dict[str, Any]] = {}
        self.fail_patches = 0  # answer this many patches with 500
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces", self._namespaces)
        app.router.add_get("/api/v1/namespaces/{name}", self._namespace)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/replicasets/{name}", self._object)
        app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self._object)
        configurations = (
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        )
        app.router.add_get(configurations, self._get_configuration)
        app.router.add_patch(configurations, self._patch_configuration)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._closing.set()
        for queue in self.watchers:
            queue.put_nowait({"type": "_CLOSE"})
        if self._runner is not None:
            await self._runner.cleanup()

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def _broadcast(self, kind: str, obj: dict[str, Any]) -> None:
        for queue in self.watchers:
            queue.put_nowait({"type": kind, "object": obj})

    def set_namespace(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        kind = "MODIFIED" if name in self.namespaces else "ADDED"
        obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": labels or {},
                "annotations": annotations or {},
                "resourceVersion": self._bump(),
            },
        }
        self.namespaces[name] = obj
        self._broadcast(kind, obj)

    def delete_namespace(self, name: str) -> None:
        obj = self.namespaces.pop(name)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._broadcast("DELETED", obj)

    def set_object(
        self, plural: str, namespace: str, name: str, owner: tuple[str, str] | None
    ) -> None:
        refs = (
            []
            if owner is None
            else [
                {
                    "apiVersion": "v1",
                    "kind": owner[0],
                    "name": owner[1],
                    "uid": "u",
                    "controller": True,
                }
            ]
        )
        self.objects[(plural, namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": refs}
        }

    async def _namespaces(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch", "").lower() == "true":
            return await self._watch(request)
        self.requests.append("list")
        if self.fail_lists:
            self.fail_lists -= 1
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(self.version)},
                "items": list(self.namespaces.values()),
            }
        )

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"watch@{request.query.get('resourceVersion')}")
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        if self.gone_watches:
            self.gone_watches -= 1
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "code": 410,
                    "reason": "Expired",
                    "message": "too old",
                },
            }
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        if self.silent_watches:
            self.silent_watches -= 1
            await self._closing.wait()  # a half-open connection, as far as the client can tell
            return response
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.watchers.append(queue)
        timeout = float(request.query.get("timeoutSeconds", "30"))
        try:
            async with asyncio.timeout(timeout):
                while (event := await queue.get())["type"] != "_CLOSE":
                    await response.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            pass
        finally:
            self.watchers.remove(queue)
        return response

    async def _namespace(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append(f"get namespace {name}")
        if name not in self.namespaces:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(self.namespaces[name])

    async def _object(self, request: web.Request) -> web.Response:
        plural = "replicasets" if "/replicasets/" in request.path else "jobs"
        key = (plural, request.match_info["ns"], request.match_info["name"])
        self.requests.append(f"get {plural} {key[2]}")
        if self.fail_reads:
            self.fail_reads -= 1
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        if key not in self.objects:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(self.objects[key])

    def set_webhook_configuration(self, name: str, ca_bundles: list[str | None]) -> None:
        webhooks = []
        for index, bundle in enumerate(ca_bundles):
            client_config: dict[str, Any] = {"service": {"name": "meshlet-webhook"}}
            if bundle is not None:
                client_config["caBundle"] = bundle
            webhooks.append({"name": f"hook{index}.meshlet.io", "clientConfig": client_config})
        self.webhook_configurations[name] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name, "resourceVersion": self._bump()},
            "webhooks": webhooks,
        }

    async def _get_configuration(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append(f"get mwc {name}")
        if name not in self.webhook_configurations:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(self.webhook_configurations[name])

    async def _patch_configuration(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append(f"patch mwc {name} {request.content_type}")
        if self.fail_patches:
            self.fail_patches -= 1
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        if name not in self.webhook_configurations:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        if request.content_type != "application/json-patch+json":
            return web.json_response({"kind": "Status", "code": 415}, status=415)
        try:
            patched = jsonpatch.apply_patch(self.webhook_configurations[name], await request.json())
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
            return web.json_response({"kind": "Status", "code": 422}, status=422)
        patched["metadata"]["resourceVersion"] = self._bump()
        self.webhook_configurations[name] = patched
        return web.json_response(patched)
