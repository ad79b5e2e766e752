"""The ClusterView backed by the Kubernetes API (kubernetes-asyncio).

Theory of operation: namespaces are few and read on every admission, so they are cached: list,
then watch from the list's resourceVersion; when the watch ends (server timeout) or fails
(410 Gone, network), list again, backing off exponentially on errors. Until the first list
succeeds ``ready()`` is false, so ``/readyz`` keeps the pod out of the Service. A namespace not
in the cache yet (created a moment ago) is read directly.

Owners (ReplicaSet -> Deployment, Job -> CronJob) are read on demand with a GET and cached for
``owner_ttl`` seconds: an object's controller practically never changes, and a Deployment's
rollout creates pods from the same ReplicaSet by the hundred. Any API error makes the answer
"unknown" (``None``): the pod is still injected, only without the owner label.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.kube import ClusterViewError, NamespaceInfo, controller_ref
from webhook.patch import Owner

__all__ = ["KubernetesClusterView"]

log = logging.getLogger("meshlet.webhook.cluster")
# Errors that mean "try again later": network trouble, timeouts, a garbled body.
_TRANSIENT = (OSError, TimeoutError, ValueError, aiohttp.ClientError)


def _info(raw: Mapping[str, Any]) -> NamespaceInfo | None:
    metadata = raw.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str):
        return None
    return NamespaceInfo(
        name, dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
    )


async def _json(response: Any) -> Any:
    """Body of a ``_preload_content=False`` call (an aiohttp response), released after.

    Such calls do not raise on error statuses: this does, as ApiException like the others.
    """
    try:
        body = await response.read()
        if response.status >= 400:
            raise ApiException(status=response.status, reason=str(response.reason))
        return json.loads(body)
    finally:
        response.release()


class KubernetesClusterView:
    def __init__(
        self,
        *,
        kubeconfig: Path | None = None,
        api: client.ApiClient | None = None,
        watch_timeout: int = 300,  # seconds per watch request; the API server caps it anyway
        # Seconds of silence after which a watch connection counts as dead (a half-open TCP
        # connection would otherwise block forever): the server timeout plus a margin.
        silence_timeout: float | None = None,
        # Seconds for a GET in the admission path; the API server gives the whole admission
        # 10 s, and an answer without the owner label beats a timed-out admission.
        request_timeout: float = 2.0,
        backoff: float = 0.5,  # first retry delay after an error, seconds; doubles to max_backoff
        max_backoff: float = 30.0,
        owner_ttl: float = 300.0,
        owner_cache_size: int = 4096,  # entries; one per ReplicaSet/Job seen recently
    ) -> None:
        self._kubeconfig = kubeconfig
        self._api = api
        self._owns_api = api is None
        self.watch_timeout = watch_timeout
        self.silence_timeout = silence_timeout or watch_timeout + 30.0
        self.request_timeout = request_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.owner_ttl = owner_ttl
        self.owner_cache_size = owner_cache_size
        self._namespaces: dict[str, NamespaceInfo] = {}
        self._owners: OrderedDict[tuple[str, str, str], tuple[float, Owner | None]] = OrderedDict()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.lists = 0  # how many times the namespace cache was (re)built

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            raise RuntimeError("start() the view first")
        return self._api

    async def start(self) -> None:
        """Load the client configuration and start the namespace watch; idempotent."""
        if self._task is not None:
            return
        if self._api is None:
            try:
                if self._kubeconfig is not None:
                    await config.load_kube_config(config_file=str(self._kubeconfig))
                else:
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
            except Exception as error:  # any kubeconfig trouble is the operator's: one line
                where = self._kubeconfig or "the in-cluster ServiceAccount"
                first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                raise ClusterViewError(
                    f"cannot configure the Kubernetes client from {where}: {first}"
                ) from None
            self._api = client.ApiClient()
        self._task = asyncio.create_task(self._keep_namespaces(), name="namespace-watch")

    async def close(self) -> None:
        """Stop the watch and close the client; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_api and self._api is not None:
            api, self._api = self._api, None
            await api.close()

    def ready(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def _list(self, core: client.CoreV1Api) -> str:
        listing = await _json(await core.list_namespace(_preload_content=False))
        fresh = {info.name: info for raw in listing.get("items") or () if (info := _info(raw))}
        self._namespaces = fresh
        self.lists += 1
        self._synced.set()
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _apply(self, event: Mapping[str, Any]) -> None:
        info = _info(event.get("raw_object") or {})
        if info is None:
            return
        if event.get("type") == "DELETED":
            self._namespaces.pop(info.name, None)
        elif event.get("type") in ("ADDED", "MODIFIED"):
            self._namespaces[info.name] = info

    async def _keep_namespaces(self) -> None:
        core = client.CoreV1Api(self.api)
        delay = self.backoff
        while True:
            try:
                version = await self._list(core)
                watcher = watch.Watch()
                async with watcher.stream(
                    core.list_namespace,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                    _request_timeout=self.silence_timeout,
                ) as stream:
                    async for event in stream:
                        self._apply(event)
                delay = self.backoff
            except ApiException as error:
                if error.status == 410:  # our resourceVersion is too old: relist now
                    continue
                log.warning(
                    "namespace watch failed (HTTP %s); retrying in %.1fs", error.status, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except (TimeoutError, OSError, ValueError) as error:
                log.warning("namespace watch failed (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def namespace(self, name: str) -> NamespaceInfo | None:
        cached = self._namespaces.get(name)
        if cached is not None:
            return cached
        try:
            raw = await _json(
                await client.CoreV1Api(self.api).read_namespace(
                    name, _preload_content=False, _request_timeout=self.request_timeout
                )
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("cannot read namespace %s: HTTP %s", name, error.status)
            return None
        except (TimeoutError, OSError, ValueError) as error:
            log.warning("cannot read namespace %s: %s", name, error)
            return None
        return _info(raw)

    def _reader(self, kind: str) -> Callable[..., Awaitable[Any]] | None:
        if kind == "ReplicaSet":
            return client.AppsV1Api(self.api).read_namespaced_replica_set
        if kind == "Job":
            return client.BatchV1Api(self.api).read_namespaced_job
        return None

    async def controller_of(self, namespace: str, kind: str, name: str) -> Owner | None:
        key = (namespace, kind, name)
        now = time.monotonic()
        hit = self._owners.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        read = self._reader(kind)
        if read is None:
            return None
        try:
            raw = await _json(
                await read(
                    name, namespace, _preload_content=False, _request_timeout=self.request_timeout
                )
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("cannot read %s %s/%s: HTTP %s", kind, namespace, name, error.status)
                return None
            owner = None  # gone already: remember that too
        except (TimeoutError, OSError, ValueError) as error:
            log.warning("cannot read %s %s/%s: %s", kind, namespace, name, error)
            return None
        else:
            owner = controller_ref(raw.get("metadata"))
        self._owners[key] = (now + self.owner_ttl, owner)
        self._owners.move_to_end(key)
        while len(self._owners) > self.owner_cache_size:
            self._owners.popitem(last=False)
        return owner
