"""`meshlet check` through its kubernetes-asyncio reader against a fake API server (kmock)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from meshlet import __version__
from meshlet.check import render_table, run_checks
from meshlet.check.cluster import KubeCluster
from meshlet.check.model import Status
from tests.check.certs import make_certificate, pem


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
                "current-context": "fake",
            }
        )
    )
    return str(path)


def ready_pod(name: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "meshlet", "labels": labels, **extra},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "initContainerStatuses": [{"name": "meshlet-proxy", "ready": True}],
        },
    }


def healthy_cluster(fake: kmock.RawHandler, *, allowed: bool = True, webhook: bool = True) -> None:
    anchor = make_certificate("root.meshlet", ca=True, days=3650)
    issuer, _ = make_certificate("identity.meshlet.cluster.local", ca=True, days=365, signer=anchor)
    serving, _ = make_certificate("meshlet-webhook.meshlet.svc", ca=True, days=365)
    fake["get /version/"] << {
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.0",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }
    fake["post /apis/authorization.k8s.io/v1/selfsubjectaccessreviews"] << {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {},
        "status": {"allowed": allowed},
    }
    fake["get /api/v1/namespaces/meshlet/pods"] << {
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {},
        "items": [
            ready_pod(f"meshlet-{c}-1", {"meshlet.io/control-plane-component": c})
            for c in ("identity", "destination", "webhook")
        ],
    }
    fake["get /api/v1/pods"] << {
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {},
        "items": [
            ready_pod(
                "web-1",
                {"meshlet.io/control-plane-ns": "meshlet"},
                annotations={"meshlet.io/proxy-version": __version__},
            )
        ],
    }
    fake["get /api/v1/namespaces/meshlet/secrets"] << {
        "apiVersion": "v1",
        "kind": "SecretList",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": "meshlet-webhook-tls-k8d2f"},
                "data": {"tls.crt": b64(pem(serving))},
            },
            {
                "metadata": {"name": "meshlet-identity-issuer"},
                "data": {"crt.pem": b64(pem(issuer))},
            },
        ],
    }
    fake["get /api/v1/namespaces/meshlet/configmaps/meshlet-identity-trust-anchors"] << {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "meshlet-identity-trust-anchors"},
        "data": {"ca-bundle.crt": pem(anchor[0]).decode()},
    }
    if not webhook:
        return
    fake[
        "get /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/meshlet-webhook"
    ] << {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "meshlet-webhook"},
        "webhooks": [
            {
                "name": "inject.meshlet.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"caBundle": b64(pem(serving))},
            }
        ],
    }


@pytest.mark.asyncio
@pytest.mark.kmock(cls=kmock.RawHandler)
async def test_healthy_install_passes(kmock: kmock.RawHandler, tmp_path: Path) -> None:
    healthy_cluster(kmock)
    async with KubeCluster(kubeconfig=kubeconfig(tmp_path, str(kmock.url))) as cluster:
        results = await run_checks(cluster, pre=False)
    failures = [r for r in results if r.status is not Status.OK]
    assert not failures, failures
    names = {r.name for r in results}
    assert "the webhook's caBundle matches the certificate it serves" in names
    assert "data plane proxies are ready" in names
    assert render_table(results).endswith("Status check results are ✓")


@pytest.mark.asyncio
@pytest.mark.kmock(cls=kmock.RawHandler)
async def test_pre_check_reports_missing_rights(kmock: kmock.RawHandler, tmp_path: Path) -> None:
    healthy_cluster(kmock, allowed=False)
    async with KubeCluster(kubeconfig=kubeconfig(tmp_path, str(kmock.url))) as cluster:
        results = await run_checks(cluster, pre=True)
    assert results[0].status is Status.OK
    failed = [r for r in results if r.status is Status.FAIL]
    assert len(failed) >= 5
    assert any(
        r.name == "can create mutatingwebhookconfigurations.admissionregistration.k8s.io"
        for r in failed
    )
    assert render_table(results).endswith("Status check results are ×")  # noqa: RUF001


@pytest.mark.asyncio
@pytest.mark.kmock(cls=kmock.RawHandler)
async def test_unreachable_api_is_one_clear_failure(tmp_path: Path) -> None:
    async with KubeCluster(kubeconfig=kubeconfig(tmp_path, "http://127.0.0.1:9")) as cluster:
        results = await run_checks(cluster, pre=False)
    (result,) = results
    assert result.status is Status.FAIL
    assert "cannot reach the Kubernetes API" in result.detail


@pytest.mark.asyncio
@pytest.mark.kmock(cls=kmock.RawHandler)
async def test_missing_webhook_configuration_fails(kmock: kmock.RawHandler, tmp_path: Path) -> None:
    healthy_cluster(kmock, webhook=False)
    kmock.fallback << 404
    async with KubeCluster(kubeconfig=kubeconfig(tmp_path, str(kmock.url))) as cluster:
        results = await run_checks(cluster, pre=False)
    failed = [r for r in results if r.status is Status.FAIL]
    assert [r.name for r in failed] == ["the injector webhook is registered"]


def test_command_exit_status_and_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshlet.cli",
            "check",
            "-o",
            "json",
            "--kubeconfig",
            kubeconfig(tmp_path, "http://127.0.0.1:9"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    answer = json.loads(result.stdout)
    assert answer["results"][0]["status"] == "error"
    assert "Traceback" not in result.stderr
