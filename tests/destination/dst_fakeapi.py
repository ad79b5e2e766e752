"""A tiny fake Kubernetes API server (aiohttp) that the tests control completely.

It serves LIST (with limit/continue pages) and WATCH (history replay from resourceVersion,
then live events, bookmarks on request) for the four paths the destination watches, and can
be told to answer 500s, to end or drop open watches, to answer 410 for old versions, or to go
silent. Only what ``destination.kube`` uses is implemented, so the fake covers exactly that.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from destination.kube import PATHS

KIND_BY_PATH = {path: kind for kind, path in PATHS.items()}


@dataclass
class FakeApi:
    version: int = 100
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(
        default_factory=lambda: {kind: {} for kind in PATHS}
    )
    history: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    watchers: dict[str, list[asyncio.Queue[Any]]] = field(
        default_factory=lambda: {kind: [] for kind in PATHS}
    )
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    gone_below: int = 0  # watches from an older resourceVersion get an ERROR 410 event
    failures_left: int = 0  # answer this many requests with 500
    silent: bool = False  # watches send nothing at all
    page_size: int | None = None
    missing: set[str] = field(default_factory=set)  # kinds whose resource does not exist (404)
    list_gone_left: int = 0  # answer this many LISTs with 410 (an expired continue token)
    url: str = ""
    _runner: web.AppRunner | None = None

    # -- driving it ------------------------------------------------------------------------

    def apply(self, kind: str, type_: str, obj: dict[str, Any]) -> int:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if type_ == "DELETED":
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = obj
        self.history.append((self.version, kind, type_, obj))
        for queue in self.watchers[kind]:
            queue.put_nowait({"type": type_, "object": obj})
        return self.version

    def bookmark(self, kind: str) -> None:
        self.version += 1
        event = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.version)}}}
        for queue in self.watchers[kind]:
            queue.put_nowait(event)

    def end_watches(self, *, abort: bool = False) -> None:
        """End every open watch: cleanly (like timeoutSeconds) or by dropping the connection."""
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait("abort" if abort else None)

    def compact(self) -> None:
        """Forget history: watches from any version seen so far get 410 Gone."""
        self.gone_below = self.version + 1

    def watch_requests(self, kind: str) -> list[dict[str, str]]:
        return [q for k, q in self.requests if k == kind and q.get("watch") == "true"]

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        for path in PATHS.values():
            app.router.add_get(path, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self.end_watches(abort=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = KIND_BY_PATH[request.path]
        query = dict(request.query)
        self.requests.append((kind, query))
        if kind in self.missing:
            return web.json_response(
                {
                    "kind": "Status",
                    "code": 404,
                    "message": "the server could not find the requested resource",
                },
                status=404,
            )
        if self.failures_left > 0:
            self.failures_left -= 1
            return web.json_response(
                {"kind": "Status", "code": 500, "message": "etcdserver: request timed out"},
                status=500,
            )
        if query.get("watch") == "true":
            return await self._watch(request, kind, int(query["resourceVersion"]))
        return self._list(kind, query)

    def _list(self, kind: str, query: dict[str, str]) -> web.Response:
        if self.list_gone_left > 0:
            self.list_gone_left -= 1
            gone = {"kind": "Status", "code": 410, "message": "the continue token has expired"}
            return web.json_response(gone, status=410)
        items = [self.objects[kind][key] for key in sorted(self.objects[kind])]
        start = int(query.get("continue") or 0)
        size = self.page_size or len(items) or 1
        page = items[start : start + size]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + size < len(items):
            meta["continue"] = str(start + size)
        return web.json_response({"kind": f"{kind}List", "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, kind: str, since: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        if since < self.gone_below:
            gone = {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": "too old resource version",
            }
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if not self.silent:
            for version, k, type_, obj in self.history:
                if k == kind and version > since:
                    queue.put_nowait({"type": type_, "object": obj})
        self.watchers[kind].append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return response
                if event == "abort":
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if not self.silent:
                    await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watchers[kind].remove(queue)
