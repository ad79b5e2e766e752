"""The webhook's HTTP surface (FastAPI): ``POST /inject``, ``/healthz``, ``/readyz``, ``/metrics``.

``POST /inject`` takes an AdmissionReview for a Pod and answers with an AdmissionReview: always
``allowed: true``, with a base64 JSONPatch when the pod is injected. ``?explain=true`` answers
instead with YAML for people: decision, reasons, warnings, the patch and the injected pod.
Reviews with ``dryRun: true`` get the same answer; the webhook has no side effects at all
(``sideEffects: None``), so there is nothing to skip for them.

Bad input is the client's fault and gets a 4xx naming the problem (413 past the body limit,
enforced while reading); a failure of the injector on a well-formed pod is ours: the pod is
admitted unchanged with a warning (like ``failurePolicy: Ignore``), never a 500.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from meshlet import __version__
from webhook import yamlout
from webhook.decision import SENTENCES, Decision, Reason
from webhook.inject import Injector, Outcome
from webhook.kube import ClusterView, resolve_owner
from webhook.metrics import WebhookMetrics
from webhook.review import AdmissionRequest, BadReview, parse_review, review_response
from webhook.settings import WebhookSettings

__all__ = ["create_app"]

log = logging.getLogger("meshlet.webhook")
_JSON = "application/json"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadReview(f"the body is larger than {limit} bytes", slug="too_large", status=413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadReview(
                    f"the body is larger than {limit} bytes", slug="too_large", status=413
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadReview("the client went away mid-body", slug="malformed_json") from None
    return b"".join(chunks)


def _explain(admission: AdmissionRequest, outcome: Outcome, owner: str | None) -> str:
    document = {
        "uid": admission.uid,
        "pod": f"{admission.namespace}/{admission.pod_name}",
        "owner": owner,
        "dryRun": admission.dry_run,
        "inject": outcome.decision.inject,
        "reasons": [{r.value: SENTENCES[r]} for r in outcome.decision.reasons],
        "warnings": list(outcome.warnings),
        "patch": outcome.patch,
        "injectedPod": outcome.pod,
    }
    return yamlout.dump(document)


class _InjectEndpoint:
    """``POST /inject``: parse, look up the namespace and owner, inject, answer, count."""

    def __init__(self, settings: WebhookSettings, view: ClusterView, metrics: WebhookMetrics):
        self.settings = settings
        self.view = view
        self.metrics = metrics
        self.injector = Injector(settings, created_by=f"meshlet/proxy-injector v{__version__}")

    def reject(self, error: BadReview, started: float) -> Response:
        self.metrics.responses.labels("rejected", error.slug).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        log.warning("rejected review: %s", error.message)
        body = json.dumps({"error": error.message, "reason": error.slug})
        return Response(body, status_code=error.status, media_type=_JSON)

    async def admit(self, admission: AdmissionRequest) -> tuple[Outcome, str | None]:
        if not admission.is_pod:
            return Outcome(Decision(False, (Reason.UNSUPPORTED_RESOURCE,)), (), None, []), None
        if admission.operation != "CREATE":
            return Outcome(Decision(False, (Reason.UNSUPPORTED_OPERATION,)), (), None, []), None
        namespace = await self.view.namespace(admission.namespace)
        owner = await resolve_owner(self.view, admission.namespace, admission.pod)
        outcome = self.injector.run(
            admission.pod,
            namespace=admission.namespace,
            namespace_labels=namespace.labels if namespace else {},
            namespace_annotations=namespace.annotations if namespace else {},
            owner=owner,
        )
        return outcome, f"{owner.kind}/{owner.name}" if owner else None

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            admission = parse_review(await _read_body(request, self.settings.max_body_bytes))
        except BadReview as error:
            return self.reject(error, started)
        self.metrics.requests.labels(str(admission.dry_run).lower()).inc()
        try:
            outcome, owner = await self.admit(admission)
        except Exception:  # a bug of ours must not block pod creation cluster-wide
            log.exception("injector failed on pod %s/%s", admission.namespace, admission.pod_name)
            decision = Decision(False, (Reason.INJECTOR_ERROR,))
            outcome, owner = Outcome(decision, (SENTENCES[Reason.INJECTOR_ERROR],), None, []), None
        decision = outcome.decision
        label = "injected" if decision.inject else "skipped"
        self.metrics.responses.labels(label, decision.reasons[0].value).inc()
        log.info(
            "%s pod %s/%s%s%s: %s",
            label,
            admission.namespace,
            admission.pod_name,
            f" ({owner})" if owner else "",
            " [dry run]" if admission.dry_run else "",
            ", ".join(reason.value for reason in decision.reasons),
        )
        if request.query_params.get("explain", "").lower() in {"1", "true", "yes"}:
            body, media = _explain(admission, outcome, owner), "application/yaml"
        else:
            answer = review_response(admission.uid, patch=outcome.patch, warnings=outcome.warnings)
            body, media = json.dumps(answer, separators=(",", ":")), _JSON
        self.metrics.latency.observe(time.perf_counter() - started)
        return Response(body, media_type=media)


def create_app(settings: WebhookSettings, view: ClusterView) -> FastAPI:
    """The FastAPI app; its metrics are in ``app.state.metrics.registry``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await view.start()
        # Everything built at start-up (modules, settings, caches) is permanent: keep the
        # collector from walking it again on every full collection, which shows as p99 spikes.
        gc.freeze()
        try:
            yield
        finally:
            await view.close()

    app = FastAPI(
        title="meshlet-webhook", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    metrics = WebhookMetrics.create()
    app.state.metrics = metrics
    # A plain Starlette route: the handler reads the raw request itself, so FastAPI's parameter
    # and dependency machinery would only add time to every admission.
    app.add_route("/inject", _InjectEndpoint(settings, view, metrics).handle, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        if view.ready():
            return Response("ready\n", media_type="text/plain")
        return Response("cluster view not synced yet\n", status_code=503, media_type="text/plain")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
