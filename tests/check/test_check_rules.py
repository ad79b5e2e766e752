"""The checks of `meshlet check`, row by row, over plain API objects."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest

from meshlet import __version__
from meshlet.check.checks import (
    INSTALL_PERMISSIONS,
    check_control_plane_pods,
    check_issuer,
    check_permissions,
    check_proxies,
    check_version,
    check_webhook,
)
from meshlet.check.model import Status
from tests.check.certs import NOW, make_certificate, pem


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("version", "status"),
    [
        pytest.param({"major": "1", "minor": "31"}, Status.OK, id="1.31"),
        pytest.param({"major": "1", "minor": "28+"}, Status.OK, id="1.28+-eks-style"),
        pytest.param({"major": "1", "minor": "27"}, Status.FAIL, id="too-old"),
        pytest.param({"gitVersion": "?"}, Status.FAIL, id="garbage"),
    ],
)
def test_version(version: dict[str, str], status: Status) -> None:
    assert check_version(version).status is status


def test_permissions_name_each_missing_right() -> None:
    allowed = dict.fromkeys(INSTALL_PERMISSIONS, True)
    denied = ("create", "rbac.authorization.k8s.io", "clusterroles")
    allowed[denied] = False
    results = check_permissions(allowed)
    failed = [r for r in results if r.status is Status.FAIL]
    assert [r.name for r in failed] == ["can create clusterroles.rbac.authorization.k8s.io"]
    assert "RBAC" in failed[0].hint


def pod(
    name: str,
    labels: dict[str, str],
    *,
    ready: bool,
    annotations: dict[str, str] | None = None,
    proxy_ready: bool | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]
    }
    if proxy_ready is not None:
        status["initContainerStatuses"] = [{"name": "meshlet-proxy", "ready": proxy_ready}]
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": labels,
            "annotations": annotations or {},
        },
        "status": status,
    }


def component(name: str, *, ready: bool) -> dict[str, Any]:
    return pod(f"meshlet-{name}-abc", {"meshlet.io/control-plane-component": name}, ready=ready)


def test_control_plane_all_ready() -> None:
    pods = [component(c, ready=True) for c in ("identity", "destination", "webhook")]
    assert {r.status for r in check_control_plane_pods(pods)} == {Status.OK}


def test_control_plane_missing_and_unready_components_fail() -> None:
    results = check_control_plane_pods([component("identity", ready=False)])
    by_name = {r.name: r for r in results}
    assert by_name["meshlet-identity pods are ready"].status is Status.FAIL
    assert by_name["meshlet-identity pods are ready"].detail == "0/1 ready"
    assert by_name["meshlet-webhook pods are ready"].detail == "no pods found"


def webhook_configuration(bundle: bytes) -> dict[str, Any]:
    return {"webhooks": [{"clientConfig": {"caBundle": b64(bundle)}}]}


def secret(**files: bytes) -> dict[str, Any]:
    return {"data": {key.replace("_", "."): b64(value) for key, value in files.items()}}


def test_webhook_missing() -> None:
    (result,) = check_webhook(None, None)
    assert result.status is Status.FAIL


def test_webhook_bundle_matches_served_certificate() -> None:
    served, _ = make_certificate("meshlet-webhook.meshlet.svc", ca=True, days=365)
    results = check_webhook(webhook_configuration(pem(served)), secret(tls_crt=pem(served)))
    assert [r.status for r in results] == [Status.OK, Status.OK]


def test_webhook_bundle_signed_leaf_matches() -> None:
    ca = make_certificate("webhook-ca", ca=True, days=365)
    leaf, _ = make_certificate("meshlet-webhook.meshlet.svc", ca=False, days=90, signer=ca)
    results = check_webhook(webhook_configuration(pem(ca[0])), secret(tls_crt=pem(leaf)))
    assert results[1].status is Status.OK


def test_webhook_bundle_mismatch_fails() -> None:
    served, _ = make_certificate("meshlet-webhook.meshlet.svc", ca=True, days=365)
    other, _ = make_certificate("meshlet-webhook.meshlet.svc", ca=True, days=365)
    results = check_webhook(webhook_configuration(pem(other)), secret(tls_crt=pem(served)))
    assert results[1].status is Status.FAIL
    assert "reject" in results[1].detail


def issuer_objects(issuer: bytes, anchors: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"data": {"crt.pem": b64(issuer)}}, {"data": {"ca-bundle.crt": anchors.decode()}}


def test_issuer_healthy() -> None:
    anchor = make_certificate("root.meshlet", ca=True, days=3650)
    issuer, _ = make_certificate("identity.meshlet.cluster.local", ca=True, days=365, signer=anchor)
    results = check_issuer(*issuer_objects(pem(issuer), pem(anchor[0])), NOW)
    assert {r.status for r in results} == {Status.OK}, results


@pytest.mark.parametrize(
    ("case", "failing_check", "status"),
    [
        pytest.param(
            "expiring",
            "the issuer certificate is valid for at least 60 days",
            Status.WARN,
            id="expiring-soon",
        ),
        pytest.param(
            "expired",
            "the issuer certificate is valid for at least 60 days",
            Status.FAIL,
            id="expired",
        ),
        pytest.param("not-ca", "the issuer is a certificate authority", Status.FAIL, id="not-a-ca"),
        pytest.param(
            "foreign", "the issuer is signed by a trust anchor", Status.FAIL, id="foreign-anchor"
        ),
    ],
)
def test_issuer_problems(case: str, failing_check: str, status: Status) -> None:
    anchor = make_certificate("root.meshlet", ca=True, days=3650)
    days = {"expiring": 30, "expired": -1}.get(case, 365)
    signer = make_certificate("other-root", ca=True, days=3650) if case == "foreign" else anchor
    issuer, _ = make_certificate(
        "identity.meshlet.cluster.local", ca=case != "not-ca", days=days, signer=signer
    )
    results = {r.name: r for r in check_issuer(*issuer_objects(pem(issuer), pem(anchor[0])), NOW)}
    assert results[failing_check].status is status
    others = [r for name, r in results.items() if name != failing_check]
    assert all(r.status is Status.OK for r in others), others


def test_issuer_secret_missing() -> None:
    (result,) = check_issuer(None, None, NOW)
    assert result.status is Status.FAIL


def test_trust_anchor_expiry_is_reported() -> None:
    anchor = make_certificate("root.meshlet", ca=True, days=10)
    issuer, _ = make_certificate("identity.meshlet.cluster.local", ca=True, days=5, signer=anchor)
    later = NOW + datetime.timedelta(days=20)
    results = {r.name: r for r in check_issuer(*issuer_objects(pem(issuer), pem(anchor[0])), later)}
    assert results["the trust anchor is valid for at least 60 days"].status is Status.FAIL


MESHED = {"meshlet.io/control-plane-ns": "meshlet"}
CURRENT = {"meshlet.io/proxy-version": __version__}


def test_proxies_ready_and_current() -> None:
    pods = [pod("web-1", MESHED, ready=True, annotations=CURRENT, proxy_ready=True)]
    assert {r.status for r in check_proxies(pods)} == {Status.OK}


def test_proxies_not_ready_and_stale() -> None:
    pods = [
        pod("web-1", MESHED, ready=True, annotations=CURRENT, proxy_ready=True),
        pod(
            "web-2",
            MESHED,
            ready=False,
            annotations={"meshlet.io/proxy-version": "0.0.1"},
            proxy_ready=False,
        ),
    ]
    ready, current = check_proxies(pods)
    assert ready.status is Status.FAIL
    assert ready.detail == "shop/web-2"
    assert current.status is Status.WARN
    assert current.detail == "shop/web-2"


def test_unmeshed_pods_are_ignored() -> None:
    (result,) = check_proxies([pod("plain", {}, ready=False)])
    assert result.status is Status.OK
    assert result.detail == "no meshed pods"
