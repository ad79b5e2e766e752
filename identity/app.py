"""The identity service's HTTP API (FastAPI): ``POST /v1/certify``, health and metrics.

Every refusal is a 4xx/503 JSON body ``{"reason": <slug>, "message": <sentence>}`` with the slugs
of identity/reasons.py; nothing a client sends can produce a 500. Tokens and keys are never
logged: refusals log the reason and the requested identity only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from identity.issuer import IssuerStore
from identity.reasons import REASONS, describe, status_for
from identity.service import Authority, Certified
from identity.serving import SelfServing

__all__ = ["Metrics", "create_app"]

log = logging.getLogger("meshlet.identity")

Clock = Callable[[], datetime.datetime]
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_MAX_LOGGED_IDENTITY = 256


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.issued = Counter(
            "identity_certificates_issued",
            "Leaf certificates issued.",
            registry=self.registry,
        )
        self.refusals = Counter(
            "identity_refusals",
            "Certify requests refused, by reason slug.",
            ["reason"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.refusals.labels(reason=reason)
        self.latency = Histogram(
            "identity_certify_duration_seconds",
            "Time to answer POST /v1/certify, including the token review.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.issuer_ttl = Gauge(
            "issuer_cert_ttl_seconds",
            "Seconds until the issuer certificate expires (negative once expired).",
            registry=self.registry,
        )
        self.issuer_ready = Gauge(
            "identity_issuer_ready",
            "1 when the issuer can sign (a CA, valid now, chained to an anchor), else 0.",
            registry=self.registry,
        )
        self.issuer_reloads = Gauge(
            "identity_issuer_loads",
            "Times the issuer files were (re)loaded from disk.",
            registry=self.registry,
        )

    def observe_issuer(self, store: IssuerStore, now: datetime.datetime) -> None:
        certificate = store.state.certificate
        if certificate is not None:
            self.issuer_ttl.set((certificate.not_valid_after_utc - now).total_seconds())
        self.issuer_ready.set(1 if store.state.issuer else 0)
        self.issuer_reloads.set(store.reloads)


def _refusal(slug: str, metrics: Metrics, identity: str = "") -> JSONResponse:
    metrics.refusals.labels(reason=slug).inc()
    shown = identity[:_MAX_LOGGED_IDENTITY]
    log.info("certify refused: %s (%s) identity=%r", slug, describe(slug), shown)
    return JSONResponse(
        {"reason": slug, "message": describe(slug)},
        status_code=status_for(slug),
        headers={"WWW-Authenticate": "Bearer"} if slug == "token_missing" else None,
    )


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _request_fields(body: bytes) -> tuple[str, str] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    identity, csr = document.get("identity"), document.get("csr")
    if not isinstance(identity, str) or not isinstance(csr, str):
        return None
    return identity, csr


class _Refresher:
    """Follows the issuer files and keeps the serving certificate and the gauges current."""

    def __init__(
        self, store: IssuerStore, metrics: Metrics, serving: SelfServing | None, clock: Clock
    ) -> None:
        self.store, self.metrics, self.serving, self.clock = store, metrics, serving, clock

    def tick(self) -> None:
        now = self.clock()
        changed = self.store.refresh(now)
        issuer = self.store.state.issuer
        serving = self.serving
        if serving is not None and issuer is not None and (changed or serving.due(now)):
            try:
                serving.issue(issuer, now)
            except OSError as error:
                log.error("cannot write the serving certificate: %s", error)
        self.metrics.observe_issuer(self.store, now)

    async def run_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.tick()


def create_app(
    authority: Authority,
    *,
    serving: SelfServing | None = None,
    clock: Clock = _utc_now,
) -> FastAPI:
    """The ASGI app; ``serving`` (when given) is re-issued as the issuer changes or ages."""
    settings = authority.settings
    store = authority.store
    metrics = Metrics()
    refresher = _Refresher(store, metrics, serving, clock)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        metrics.observe_issuer(store, clock())
        task = asyncio.create_task(refresher.run_forever(settings.reload_interval))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await authority.reviewer.aclose()

    app = FastAPI(
        title="meshlet identity",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.metrics = metrics
    app.state.refresher = refresher

    @app.post("/v1/certify")
    async def certify(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await _certify(request)
        finally:
            metrics.latency.observe(time.perf_counter() - started)

    async def _certify(request: Request) -> Response:
        if store.state.issuer is None:
            return _refusal(store.state.problems[0], metrics)
        body = await _read_body(request, settings.max_body_bytes)
        if body is None:
            return _refusal("body_too_large", metrics)
        fields = _request_fields(body)
        if fields is None:
            return _refusal("body_malformed", metrics)
        identity, csr = fields
        try:
            outcome = await authority.certify(
                identity=identity, csr_text=csr, token=_bearer(request), now=clock()
            )
        except Exception as error:  # a bug must not become a 500 nor log a token: type only
            log.error("certify failed unexpectedly: %s", type(error).__name__)
            return _refusal("internal_error", metrics, identity)
        if not isinstance(outcome, Certified):
            return _refusal(outcome.reason, metrics, identity)
        metrics.issued.inc()
        log.info("issued %s, valid until %s", identity, outcome.valid_until.isoformat())
        return JSONResponse(outcome.as_json())

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz")
    async def readyz() -> Response:
        state = store.state
        if state.issuer is not None:
            return PlainTextResponse("ready\n")
        return JSONResponse(
            {"reason": state.problems[0], "message": state.detail or describe(state.problems[0])},
            status_code=503,
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.observe_issuer(store, clock())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
