"""The FastAPI app in process: answers, explain mode, dry runs, metrics, every bad input, fuzz."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonpatch
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.podcheck import check_pod
from webhook.app import create_app
from webhook.kube import StaticClusterView
from webhook.samples import cluster_file, sample_review
from webhook.settings import WebhookSettings


class AppClient:
    """A synchronous in-process client (httpx over ASGI; no sockets, no threads)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as c:
                return await c.request(method, url, **options)

        return asyncio.run(send())

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def get(self, url: str) -> httpx.Response:
        return self.request("GET", url)


@pytest.fixture(scope="module")
def client() -> AppClient:
    settings = WebhookSettings(max_body_bytes=64 * 1024)
    return AppClient(create_app(settings, StaticClusterView(cluster_file())))


def _patch(answer: dict[str, Any]) -> list[dict[str, Any]]:
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return ops


def test_injects_the_sample_pod(client: AppClient) -> None:
    review = sample_review()
    reply = client.post("/inject", json=review)
    assert reply.status_code == 200
    answer = reply.json()
    assert (answer["apiVersion"], answer["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is True
    pod = jsonpatch.apply_patch(review["request"]["object"], _patch(answer))
    check_pod(pod)
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names == ["meshlet-init", "meshlet-proxy"]
    # namespace override from examples/cluster.yaml and the owner walked from the ReplicaSet
    assert pod["metadata"]["annotations"]["config.meshlet.io/proxy-log-level"] == "debug"
    assert pod["metadata"]["labels"]["meshlet.io/proxy-deployment"] == "web"


def test_cronjob_owner_from_the_cluster_file(client: AppClient) -> None:
    review = sample_review()
    pod = review["request"]["object"]
    review["request"]["namespace"] = pod["metadata"]["namespace"] = "batch"
    pod["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "report-29001234",
            "uid": "u",
            "controller": True,
        }
    ]
    pod = jsonpatch.apply_patch(pod, _patch(client.post("/inject", json=review).json()))
    assert pod["metadata"]["labels"]["meshlet.io/proxy-cronjob"] == "report"


def test_skipped_pod_has_no_patch(client: AppClient) -> None:
    review = sample_review()
    review["request"]["namespace"] = "legacy"
    answer = client.post("/inject", json=review).json()
    assert answer["response"] == {"uid": review["request"]["uid"], "allowed": True}


def test_dry_run_answers_the_same(client: AppClient) -> None:
    review = sample_review()
    dry = copy.deepcopy(review)
    dry["request"]["dryRun"] = True
    assert client.post("/inject", json=dry).json() == client.post("/inject", json=review).json()


def test_warnings_for_bad_overrides(client: AppClient) -> None:
    review = sample_review()
    review["request"]["object"]["metadata"]["annotations"]["config.meshlet.io/proxy-uid"] = "root"
    warnings = client.post("/inject", json=review).json()["response"]["warnings"]
    assert len(warnings) == 1
    assert "config.meshlet.io/proxy-uid='root'" in warnings[0]


def test_explain_is_readable_yaml(client: AppClient) -> None:
    reply = client.post("/inject?explain=true", json=sample_review())
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/yaml")
    document = yaml.safe_load(reply.text)
    assert "&id0" not in reply.text  # shared objects are written out, not as YAML aliases
    assert document["inject"] is True
    assert document["reasons"] == [
        {"injection_enabled_at_namespace": "the namespace is labelled meshlet.io/inject=enabled"}
    ]
    assert document["owner"] == "Deployment/web"
    check_pod(document["injectedPod"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(
            {"kind": {"group": "", "version": "v1", "kind": "Service"}},
            "unsupported_resource",
            id="service",
        ),
        pytest.param({"operation": "UPDATE"}, "unsupported_operation", id="update"),
    ],
)
def test_not_a_pod_creation_is_allowed_unchanged(
    client: AppClient, change: dict[str, Any], reason: str
) -> None:
    review = sample_review()
    review["request"].update(change)
    assert "patch" not in client.post("/inject", json=review).json()["response"]
    assert f'reason="{reason}"' in client.get("/metrics").text


def _with_request(**fields: Any) -> bytes:
    review = sample_review()
    for key, value in fields.items():
        if value is None:
            del review["request"][key]
        else:
            review["request"][key] = value
    return json.dumps(review).encode()


BAD = [
    pytest.param(b"{not json", 400, "not valid JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe", 400, "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", 400, "must be a JSON object", id="array"),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
        400,
        "expected apiVersion admission.k8s.io/v1",
        id="wrong-api-version",
    ),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}',
        400,
        "kind AdmissionReview",
        id="wrong-kind",
    ),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        400,
        "request must be an object",
        id="no-request",
    ),
    pytest.param(_with_request(uid=None), 400, "request.uid", id="missing-uid"),
    pytest.param(_with_request(uid=""), 400, "request.uid", id="empty-uid"),
    pytest.param(
        _with_request(object=[1]),
        400,
        "request.object (the pod) must be a JSON object",
        id="pod-not-object",
    ),
    pytest.param(_with_request(object="pod"), 400, "must be a JSON object", id="pod-string"),
    pytest.param(
        _with_request(object={"spec": {"containers": {}}}),
        400,
        "spec.containers must be a non-empty list",
        id="pod-bad-containers",
    ),
    pytest.param(_with_request(kind="Pod"), 400, "request.kind must be an object", id="bad-kind"),
    pytest.param(_with_request(dryRun="yes"), 400, "dryRun", id="bad-dry-run"),
    pytest.param(b"[" * 50000, 400, "not valid JSON", id="deep-nesting"),
    pytest.param(b"x" * (64 * 1024 + 1), 413, "larger than 65536 bytes", id="too-large"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_input(client: AppClient, body: bytes, status: int, message: str) -> None:
    reply = client.post("/inject", content=body)
    assert reply.status_code == status
    assert message in reply.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_too_large_without_content_length_is_cut_while_reading(client: AppClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # 100 KiB in total, streamed (chunked), past the 64 KiB limit
            yield b" " * 1024

    reply = client.post("/inject", content=chunks())
    assert reply.status_code == 413


def test_health_ready_and_metrics(client: AppClient) -> None:
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/readyz").status_code == 200
    client.post("/inject", json=sample_review())
    client.post("/inject", content=b"{")
    text = client.get("/metrics").text
    assert 'meshlet_inject_admission_requests_total{dry_run="false"}' in text
    assert (
        'meshlet_inject_admission_responses_total{outcome="injected",'
        'reason="injection_enabled_at_namespace"}' in text
    )
    assert 'outcome="rejected",reason="malformed_json"' in text
    assert "meshlet_inject_admission_duration_seconds_bucket" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _review_like(data: st.DataObject) -> Any:
    """Mostly-valid reviews with random holes, so the fuzz reaches the pod checks too."""
    review = sample_review()
    request = review["request"]
    pod = request["object"]
    targets = [review, request, pod, pod["metadata"], pod["spec"], pod["spec"]["containers"][0]]
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(targets))
        key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=6))
        target[key] = data.draw(json_values)
    return review


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_fuzz_every_answer_is_a_review_or_4xx(client: AppClient, data: st.DataObject) -> None:
    document = data.draw(json_values | st.builds(_review_like, st.data()))
    reply = client.post("/inject", content=json.dumps(document).encode())
    if reply.status_code == 200:
        answer = reply.json()
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["allowed"] is True
        assert answer["response"]["uid"] == document["request"]["uid"]
        if "patch" in answer["response"]:
            jsonpatch.apply_patch(document["request"]["object"], _patch(answer))
    else:
        assert reply.status_code in (400, 413), reply.text
        assert reply.json()["error"]


class _NeverSynced(StaticClusterView):
    def ready(self) -> bool:
        return False


def test_readyz_waits_for_the_cluster_view() -> None:
    app = AppClient(create_app(WebhookSettings(), _NeverSynced(cluster_file())))
    reply = app.get("/readyz")
    assert reply.status_code == 503
    assert "not synced" in reply.text


def test_an_injector_bug_admits_the_pod_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr("webhook.inject.Injector.run", broken)
    app = AppClient(create_app(WebhookSettings(), StaticClusterView(cluster_file())))
    reply = app.post("/inject", json=sample_review())
    assert reply.status_code == 200
    response = reply.json()["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert "admitted unchanged" in response["warnings"][0]
    assert 'outcome="skipped",reason="injector_error"' in app.get("/metrics").text
