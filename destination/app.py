"""The HTTP API: ``/v1/endpoints`` and ``/v1/profiles`` NDJSON streams, health and metrics.

Requests are checked before any stream starts: exactly one ``authority`` query parameter and
nothing else, a valid authority (see ``authority.py``), and room for one more stream. Refusals are
``{"error": <slug>, "message": <sentence>}`` with 400 (or 503 when full), counted by reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .authority import AuthorityRefused, Target, parse_authority
from .endpoints import identity_function
from .events import ObjectSource
from .hub import Api, Hub
from .index import ClusterState
from .metrics import DestinationMetrics
from .settings import DestinationSettings
from .shutdown import chain_to_server
from .stream import App, LineStream

__all__ = ["create_app"]

log = logging.getLogger("meshlet.destination")

_MAX_QUERY: Final = 1024
_STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _refuse(
    metrics: DestinationMetrics, api: Api, status: int, reason: str, message: str
) -> Response:
    metrics.requests_refused.labels(api, reason).inc()
    return JSONResponse({"error": reason, "message": message}, status_code=status)


def _target_of(request: Request, cluster_domain: str) -> Target | tuple[str, str]:
    """The requested target, or (reason, message) for a 400."""
    if len(request.url.query) > _MAX_QUERY:
        return ("query_too_long", f"the query string is longer than {_MAX_QUERY} bytes")
    unknown = sorted(set(request.query_params.keys()) - {"authority"})
    if unknown:
        return ("unknown_parameter", f"unknown query parameter(s) {unknown}: only 'authority'")
    values = request.query_params.getlist("authority")
    if len(values) != 1:
        return ("missing_authority", "exactly one authority=<host>:<port> parameter is required")
    target = parse_authority(values[0], cluster_domain=cluster_domain)
    if isinstance(target, AuthorityRefused):
        return (target.reason, target.message)
    return target


def create_app(
    settings: DestinationSettings,
    source: ObjectSource,
    *,
    metrics: DestinationMetrics | None = None,
    handle_signals: bool = False,
) -> FastAPI:
    """The destination app; it consumes ``source`` for as long as it runs."""
    metrics = metrics or DestinationMetrics()
    identity_for = identity_function(
        control_plane_ns=settings.control_plane_ns, trust_domain=settings.trust_domain
    )
    state = ClusterState(cluster_domain=settings.cluster_domain, identity_for=identity_for)
    hub_box: list[Hub] = []

    async def consume(hub: Hub) -> None:
        try:
            async for event in source.events():
                hub.apply(event)
        except Exception:
            # A bug, not bad input (sources report those as events): say so loudly.
            log.exception("the object source failed; streams keep the last known state")
            raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = Hub(state, metrics, keepalive_interval=settings.keepalive_interval)
        hub_box.append(hub)
        app.state.hub = hub
        if handle_signals:
            chain_to_server(hub.close)
        task = asyncio.create_task(consume(hub), name="destination-source")
        try:
            yield
        finally:
            hub.close()
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    app = App(title="meshlet-destination", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics

    def check(request: Request, api: Api) -> Target | Response:
        hub = hub_box[-1]
        target = _target_of(request, settings.cluster_domain)
        if isinstance(target, tuple):
            return _refuse(metrics, api, 400, *target)
        if hub.closing:
            return _refuse(metrics, api, 503, "shutting_down", "the service is shutting down")
        if hub.active >= settings.max_streams:
            message = f"too many open streams ({settings.max_streams}); retry later"
            return _refuse(metrics, api, 503, "too_many_streams", message)
        return target

    @app.get("/v1/endpoints", response_model=None)
    async def endpoints(request: Request) -> Response:
        target = check(request, "endpoints")
        if isinstance(target, Response):
            return target
        hub = hub_box[-1]
        return LineStream(lambda sink: hub.endpoint_lines(target, sink), _STREAM_HEADERS)

    @app.get("/v1/profiles", response_model=None)
    async def profiles(request: Request) -> Response:
        target = check(request, "profiles")
        if isinstance(target, Response):
            return target
        hub = hub_box[-1]
        return LineStream(lambda _: hub.profile_lines(target), _STREAM_HEADERS)

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        if hub_box and hub_box[-1].synced.is_set():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: initial sync not complete\n", status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
