"""Kubernetes watching, as layered async generators (the shape of kopf's ``watching.py``).

Theory of operation, bottom up:

1. ``_lines``: the bytes of one HTTP response cut into lines, each read bounded by the silence
   timeout (a watch with bookmarks enabled hears from the server at least every minute or so).
2. ``_list_all`` / ``_watch_once``: one paginated LIST, returning the objects and the list's
   ``resourceVersion``; one WATCH from a ``resourceVersion``, yielding events and bookmarks.
   HTTP 410, or an ``ERROR`` event with code 410, raises ``_Gone``.
3. ``watch_kind``: forever. LIST, yield ``Relisted``, then WATCH from the newest version seen,
   re-WATCH when the server ends a watch (``timeoutSeconds``), re-LIST on 410 Gone, back off
   (doubling, capped, jittered) on any other error or on silence. Every problem is also
   yielded as a ``SourceError`` so it is logged and counted; nothing ends the loop.
4. ``KubernetesSource.events``: the four kinds merged into one stream (one task per kind).

The raw calls go through kubernetes-asyncio's ``ApiClient.call_api`` (its configuration,
authentication and TLS) with ``_preload_content=False``, so objects stay the API's own
camelCase dictionaries and large lines are never held twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from .events import KINDS, Changed, Relisted, SourceError, SourceEvent
from .model import Kind
from .settings import DestinationSettings

__all__ = ["PATHS", "KubernetesSource", "WatchTiming", "kubernetes_source", "watch_kind"]

PATHS: Final[dict[Kind, str]] = {
    "Service": "/api/v1/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/endpointslices",
    "Pod": "/api/v1/pods",
    "ServiceProfile": "/apis/meshlet.io/v1alpha1/serviceprofiles",
}
_PAGE: Final = 500
_MAX_LINE: Final = 32 * 1024 * 1024
_MAX_ERROR_BODY: Final = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchTiming:
    watch_timeout: float = 300.0  # the server ends each watch after this (timeoutSeconds)
    idle_timeout: float = 330.0  # no line for this long: the watch is dead
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def backoff(self, failures: int) -> float:
        ceiling: float = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures, 30))
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 (jitter)


class _Gone(Exception):
    """410: the resourceVersion is too old (or a list continue token expired)."""


class _ApiError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Bookmark:
    resource_version: str


@dataclass(frozen=True, slots=True)
class _Event:
    type: str
    object: dict[str, Any]
    resource_version: str | None


class _Client:
    """The slice of kubernetes-asyncio's ``ApiClient`` used here."""

    def __init__(self, api_client: Any, timing: WatchTiming) -> None:
        self.api_client = api_client
        self.timing = timing

    async def get(self, path: str, query: list[tuple[str, str]]) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self.api_client.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=(self.timing.connect_timeout, self.timing.idle_timeout),
        )
        return response


async def _fail(response: aiohttp.ClientResponse, what: str) -> None:
    if response.status == 410:
        raise _Gone(f"{what}: 410 Gone")
    if response.status != 200:
        body = (await response.content.read(_MAX_ERROR_BODY)).decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(body).get("message", body)
        raise _ApiError(f"http_{response.status}", f"{what}: HTTP {response.status}: {body}")


async def _lines(response: aiohttp.ClientResponse, idle_timeout: float) -> AsyncIterator[bytes]:
    buffer = b""
    while True:
        async with asyncio.timeout(idle_timeout):
            chunk = await response.content.readany()
        if not chunk:
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        if len(buffer) > _MAX_LINE:
            raise _ApiError("line_too_long", f"a watch line is longer than {_MAX_LINE} bytes")
        for line in complete:
            if line.strip():
                yield line


def _decode(line: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        raise _ApiError("bad_json", f"{what}: a line that is not JSON") from None
    if not isinstance(data, dict):
        raise _ApiError("bad_json", f"{what}: a line that is not an object")
    return data


async def _list_all(client: _Client, kind: Kind) -> tuple[list[Any], str]:
    items: list[Any] = []
    token = ""
    while True:
        query = [("limit", str(_PAGE))] + ([("continue", token)] if token else [])
        response = await client.get(PATHS[kind], query)
        async with response:
            await _fail(response, f"list {kind}")
            body = _decode(await response.read(), f"list {kind}")
        listed = body.get("items")
        meta = body.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        version = meta.get("resourceVersion")
        if not isinstance(listed, list) or not isinstance(version, str):
            raise _ApiError("bad_list", f"list {kind}: no items or no resourceVersion")
        items.extend(listed)
        token = meta.get("continue") or ""
        if not token:
            return items, version


def _object_version(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


async def _watch_once(
    client: _Client, kind: Kind, version: str
) -> AsyncIterator[_Event | _Bookmark]:
    timing = client.timing
    query = [
        ("watch", "true"),
        ("resourceVersion", version),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(int(timing.watch_timeout))),
    ]
    response = await client.get(PATHS[kind], query)
    async with response:
        await _fail(response, f"watch {kind}")
        async for line in _lines(response, timing.idle_timeout):
            event = _decode(line, f"watch {kind}")
            kind_of_event, obj = event.get("type"), event.get("object")
            if kind_of_event == "ERROR":
                status = obj if isinstance(obj, dict) else {}
                if status.get("code") == 410:
                    raise _Gone(f"watch {kind}: {status.get('message', '410 Gone')}")
                code = status.get("code", "unknown")
                raise _ApiError(f"watch_error_{code}", f"watch {kind}: {status.get('message')}")
            if kind_of_event == "BOOKMARK":
                bookmark = _object_version(obj)
                if bookmark is not None:
                    yield _Bookmark(bookmark)
            elif kind_of_event in {"ADDED", "MODIFIED", "DELETED"}:
                yield _Event(
                    kind_of_event, obj if isinstance(obj, dict) else {}, _object_version(obj)
                )
            else:
                raise _ApiError("bad_event", f"watch {kind}: unknown event type {kind_of_event!r}")


async def watch_kind(client: _Client, kind: Kind) -> AsyncIterator[SourceEvent]:
    """Every change of ``kind``, forever: list, watch, relist on 410, back off on errors."""
    timing = client.timing
    version: str | None = None
    failures = 0
    empty_announced = False
    while True:
        try:
            if version is None:
                objects, version = await _list_all(client, kind)
                failures = 0
                yield Relisted(kind, tuple(objects))
            async for item in _watch_once(client, kind, version):
                if isinstance(item, _Event):
                    failures = 0
                    yield Changed(kind, item.type, item.object)  # type: ignore[arg-type]
                if item.resource_version is not None:
                    version = item.resource_version
            continue  # the server ended the watch (timeoutSeconds): watch again from version
        except _Gone as gone:
            if version is not None:
                yield SourceError(kind, "gone", f"{gone}; listing again")
                version = None
                continue  # relist at once: the data is known to be stale
            # The LIST itself expired (a continue token outlived the server's window): that
            # can repeat, so it backs off like any other error.
            error = SourceError(kind, "gone", f"{gone}; listing again after a pause")
        except TimeoutError:
            error = SourceError(kind, "silent", f"no data from the API server for {kind}")
        except _ApiError as api_error:
            error = SourceError(kind, api_error.reason, str(api_error))
            if api_error.reason == "http_404" and version is None and not empty_announced:
                # The resource does not exist (the ServiceProfile CRD is not installed yet):
                # say "none" so the service can become ready, and keep asking.
                empty_announced = True
                yield Relisted(kind, ())
        except (aiohttp.ClientError, OSError) as network:
            error = SourceError(kind, "connection", f"{kind}: {type(network).__name__}: {network}")
        yield error
        await asyncio.sleep(timing.backoff(failures))
        failures += 1


class KubernetesSource:
    """An ``ObjectSource`` watching Services, EndpointSlices, Pods and ServiceProfiles."""

    def __init__(
        self, api_client_factory: Callable[[], Awaitable[Any]], *, timing: WatchTiming
    ) -> None:
        self._factory = api_client_factory
        self.timing = timing

    async def events(self) -> AsyncIterator[SourceEvent]:
        api_client = await self._factory()
        queue: asyncio.Queue[SourceEvent] = asyncio.Queue(maxsize=1024)
        client = _Client(api_client, self.timing)

        async def pump(kind: Kind) -> None:
            async for event in watch_kind(client, kind):
                await queue.put(event)

        tasks = [asyncio.create_task(pump(kind), name=f"watch {kind}") for kind in KINDS]
        try:
            while True:
                yield await queue.get()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api_client.close()


def kubernetes_source(settings: DestinationSettings) -> KubernetesSource:
    """The in-cluster configuration (a pod's ServiceAccount), else ``$KUBECONFIG``.

    Raises ``ValueError`` with a one-line reason when neither is usable.
    """
    from kubernetes_asyncio import client, config  # noqa: PLC0415 (only in Kubernetes mode)

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        files = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        if not any(os.path.isfile(name) for name in files.split(os.pathsep) if name):
            raise ValueError(f"not in a cluster and no kubeconfig at {files}") from None
        try:
            asyncio.run(config.load_kube_config(client_configuration=configuration))
        except (config.ConfigException, OSError, TypeError, ValueError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"not in a cluster and no usable kubeconfig: {message}") from None

    async def factory() -> Any:
        return client.ApiClient(configuration=configuration)

    timing = WatchTiming(
        watch_timeout=settings.watch_timeout,
        idle_timeout=settings.watch_idle_timeout,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
    )
    return KubernetesSource(factory, timing=timing)
