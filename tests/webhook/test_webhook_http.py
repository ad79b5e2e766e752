"""``meshlet-webhook`` as a real process over real TLS, driven by curl."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from meshlet.devcert import write_self_signed
from tests.webhook.podcheck import check_pod
from webhook.samples import EXAMPLES, cluster_file, sample_review

REVIEW_FILE = EXAMPLES / "review-deployment-pod.json"


@dataclass(frozen=True)
class Webhook:
    url: str
    cacert: Path
    anchors: Path
    workdir: Path

    def curl(self, path: str, *args: str) -> tuple[int, str]:
        """(HTTP status, body) of ``curl`` against the webhook, certificate verified."""
        result = subprocess.run(
            [
                "curl",
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--cacert",
                str(self.cacert),
                "--write-out",
                "\n%{http_code}",
                *args,
                self.url + path,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        body, _, status = result.stdout.rpartition("\n")
        return int(status), body

    def post_file(self, path: str, body: Path, *headers: str) -> tuple[int, str]:
        extra = [arg for header in headers for arg in ("-H", header)]
        return self.curl(
            path, "-H", "Content-Type: application/json", *extra, "--data-binary", f"@{body}"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    workdir = tmp_path_factory.mktemp("webhook")
    anchors = write_self_signed(workdir / "anchors", ["root.meshlet.test"], stem="ca").cert
    port = _free_port()
    log = (workdir / "webhook.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook",
            "--listen",
            f"127.0.0.1:{port}",
            "--self-signed",
            str(workdir / "tls"),
            "--cluster",
            str(cluster_file()),
            "--trust-anchors",
            str(anchors),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MESHLET_WEBHOOK_LOG_LEVEL": "info"},
    )
    try:
        hook = Webhook(f"https://127.0.0.1:{port}", workdir / "tls" / "tls.crt", anchors, workdir)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "webhook.log").read_text()
            if hook.cacert.exists():
                probe = subprocess.run(
                    ["curl", "-sf", "--cacert", str(hook.cacert), hook.url + "/readyz"],
                    capture_output=True,
                    check=False,
                )
                if probe.returncode == 0:
                    break
            assert time.monotonic() < deadline, "webhook did not become ready"
            time.sleep(0.1)
        yield hook
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _decode(answer: dict[str, Any]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(answer["response"]["patch"]))
    return ops


def test_injects_the_sample_review(webhook: Webhook) -> None:
    status, body = webhook.post_file("/inject", REVIEW_FILE)
    assert status == 200
    answer = json.loads(body)
    review = sample_review()
    assert answer["response"]["uid"] == review["request"]["uid"]
    pod = jsonpatch.apply_patch(review["request"]["object"], _decode(answer))
    check_pod(pod)
    proxy = pod["spec"]["initContainers"][1]
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["MESHLET_PROXY_IDENTITY_TRUST_ANCHORS"] == webhook.anchors.read_text()
    digest = hashlib.sha256(webhook.anchors.read_bytes()).hexdigest()
    assert pod["metadata"]["annotations"]["meshlet.io/trust-root-sha256"] == digest


def test_explain_and_dry_run(webhook: Webhook, tmp_path: Path) -> None:
    status, body = webhook.post_file("/inject?explain=true", REVIEW_FILE)
    assert status == 200
    explained = yaml.safe_load(body)
    assert explained["inject"] is True
    assert [c["name"] for c in explained["injectedPod"]["spec"]["initContainers"]] == [
        "meshlet-init",
        "meshlet-proxy",
    ]
    dry = sample_review()
    dry["request"]["dryRun"] = True
    (tmp_path / "dry.json").write_text(json.dumps(dry))
    assert webhook.post_file("/inject", tmp_path / "dry.json") == webhook.post_file(
        "/inject", REVIEW_FILE
    )


def test_tls_only_and_verified(webhook: Webhook) -> None:
    plain = subprocess.run(
        ["curl", "-s", "--max-time", "5", webhook.url.replace("https", "http") + "/healthz"],
        capture_output=True,
        check=False,
    )
    assert plain.returncode != 0 or b"ok" not in plain.stdout
    old = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "5",
            "--cacert",
            str(webhook.cacert),
            "--tls-max",
            "1.1",
            webhook.url + "/healthz",
        ],
        capture_output=True,
        check=False,
    )
    assert old.returncode != 0
    unverified = subprocess.run(
        ["curl", "-s", "--max-time", "5", webhook.url + "/healthz"],
        capture_output=True,
        check=False,
    )
    assert unverified.returncode == 60  # the self-signed certificate is not in the system store


def _review_with(**request: Any) -> bytes:
    review = sample_review()
    for key, value in request.items():
        if value is None:
            review["request"].pop(key)
        else:
            review["request"][key] = value
    return json.dumps(review).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "req',
            "not valid JSON",
            id="malformed-json",
        ),
        pytest.param(_review_with(uid=None), "request.uid is missing", id="missing-uid"),
        pytest.param(
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
            "expected apiVersion admission.k8s.io/v1",
            id="wrong-api-version",
        ),
        pytest.param(
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "ConfigMap"}',
            "kind AdmissionReview",
            id="wrong-kind",
        ),
        pytest.param(
            _review_with(object=["not", "a", "pod"]),
            "request.object (the pod) must be a JSON object",
            id="pod-not-object",
        ),
    ],
)
def test_bad_input_gets_400(webhook: Webhook, tmp_path: Path, body: bytes, message: str) -> None:
    (tmp_path / "body").write_bytes(body)
    status, text = webhook.post_file("/inject", tmp_path / "body")
    assert status == 400
    assert message in json.loads(text)["error"]
    assert webhook.curl("/healthz") == (200, "ok\n")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_10_mib_gets_413(webhook: Webhook, chunked: bool) -> None:
    big = webhook.workdir / "big.json"
    if not big.exists():
        big.write_bytes(b" " * (10 * 1024 * 1024 + 1))
    headers = ("Transfer-Encoding: chunked",) if chunked else ()
    status, text = webhook.post_file("/inject", big, *headers)
    assert status == 413
    assert "larger than 10485760 bytes" in json.loads(text)["error"]
    assert webhook.curl("/healthz") == (200, "ok\n")


def test_metrics_count_outcomes(webhook: Webhook) -> None:
    webhook.post_file("/inject", REVIEW_FILE)
    status, text = webhook.curl("/metrics")
    assert status == 200
    assert 'outcome="injected",reason="injection_enabled_at_namespace"' in text
    assert "meshlet_inject_admission_duration_seconds_count" in text


def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "--tls-cert",
            str(tmp_path / "missing.crt"),
            "--tls-key",
            str(tmp_path / "missing.key"),
            "--cluster",
            str(cluster_file()),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("meshlet-webhook: error: cannot load TLS certificate")
    assert result.stderr.count("\n") == 1
