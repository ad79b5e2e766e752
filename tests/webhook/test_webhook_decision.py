"""The truth table of webhook.decision, row by row, and the never-inject rules."""

from __future__ import annotations

from typing import Any

import pytest

from webhook import decision
from webhook.decision import SENTENCES, Reason, decide

R = Reason
NS = {"enabled": "enabled", "disabled": "disabled", "bogus": "yes", "none": None}
POD = {"en": "enabled", "dis": "disabled", "bogus": "true", "none": None}


def _pod(value: str | None, **spec: Any) -> dict[str, Any]:
    annotations = {} if value is None else {"meshlet.io/inject": value}
    return {
        "metadata": {"annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def _labels(value: str | None) -> dict[str, str]:
    return {} if value is None else {"meshlet.io/inject": value}


TABLE = [
    ("enabled", "none", True, R.INJECTION_ENABLED_AT_NAMESPACE),
    ("enabled", "en", True, R.INJECTION_ENABLED_AT_POD),
    ("enabled", "dis", False, R.INJECTION_DISABLED_AT_POD),
    ("enabled", "bogus", False, R.INVALID_INJECT_ANNOTATION_AT_POD),
    ("none", "none", False, R.INJECTION_NOT_ENABLED),
    ("none", "en", True, R.INJECTION_ENABLED_AT_POD),
    ("none", "dis", False, R.INJECTION_DISABLED_AT_POD),
    ("none", "bogus", False, R.INVALID_INJECT_ANNOTATION_AT_POD),
    ("disabled", "none", False, R.INJECTION_DISABLED_AT_NAMESPACE),
    ("disabled", "en", True, R.INJECTION_ENABLED_AT_POD),
    ("disabled", "dis", False, R.INJECTION_DISABLED_AT_POD),
    ("disabled", "bogus", False, R.INVALID_INJECT_ANNOTATION_AT_POD),
    ("bogus", "none", False, R.INVALID_INJECT_LABEL_AT_NAMESPACE),
    ("bogus", "en", False, R.INVALID_INJECT_LABEL_AT_NAMESPACE),
    ("bogus", "dis", False, R.INJECTION_DISABLED_AT_POD),
    ("bogus", "bogus", False, R.INVALID_INJECT_ANNOTATION_AT_POD),
]
ROW_IDS = [f"ns-{'dis' if ns == 'disabled' else ns}/pod-{pod}" for ns, pod, _, _ in TABLE]


@pytest.mark.parametrize(
    ("ns", "pod", "inject", "reason"),
    [pytest.param(*row, id=row_id) for row, row_id in zip(TABLE, ROW_IDS, strict=True)],
)
def test_truth_table(ns: str, pod: str, inject: bool, reason: Reason) -> None:
    result = decide(
        namespace="shop",
        namespace_labels=_labels(NS[ns]),
        pod=_pod(POD[pod]),
        control_plane_ns="meshlet",
    )
    assert (result.inject, result.reasons) == (inject, (reason,))


def test_the_docstring_table_matches_the_tested_table() -> None:
    doc = decision.__doc__ or ""
    for row_id, (_, _, inject, reason) in zip(ROW_IDS, TABLE, strict=True):
        line = next(line for line in doc.splitlines() if line.startswith(row_id + " "))
        assert line.split()[-2:] == ["yes" if inject else "no", reason.value], line


@pytest.mark.parametrize(
    ("pod", "inject", "reason"),
    [
        pytest.param("none", True, R.INJECTION_ENABLED_AT_POD, id="cli/pod-none"),
        pytest.param("en", True, R.INJECTION_ENABLED_AT_POD, id="cli/pod-en"),
        pytest.param("dis", False, R.INJECTION_DISABLED_AT_POD, id="cli/pod-dis"),
        pytest.param("bogus", False, R.INVALID_INJECT_ANNOTATION_AT_POD, id="cli/pod-bogus"),
    ],
)
def test_ignore_namespace_for_the_cli(pod: str, inject: bool, reason: Reason) -> None:
    result = decide(
        namespace="shop",
        namespace_labels=_labels("disabled"),
        pod=_pod(POD[pod]),
        control_plane_ns="meshlet",
        ignore_namespace=True,
    )
    assert (result.inject, result.reasons) == (inject, (reason,))


@pytest.mark.parametrize(
    ("namespace", "spec", "reasons"),
    [
        pytest.param("shop", {"hostNetwork": True}, (R.HOST_NETWORK_ENABLED,), id="host-network"),
        pytest.param("kube-system", {}, (R.NAMESPACE_KUBE_SYSTEM,), id="kube-system"),
        pytest.param("meshlet", {}, (R.NAMESPACE_CONTROL_PLANE,), id="control-plane"),
        pytest.param(
            "shop",
            {"initContainers": [{"name": "meshlet-init", "image": "x:1"}]},
            (R.SIDECAR_ALREADY_EXISTS,),
            id="meshlet-init-by-name",
        ),
        pytest.param(
            "shop",
            {"initContainers": [{"name": "istio-init", "image": "x:1"}]},
            (R.SIDECAR_ALREADY_EXISTS,),
            id="istio-init-by-name",
        ),
        pytest.param(
            "shop",
            {"containers": [{"name": "p", "image": "cr.l5d.io/linkerd/proxy:2"}]},
            (R.SIDECAR_ALREADY_EXISTS,),
            id="linkerd-by-image",
        ),
        pytest.param(
            "shop",
            {"containers": [{"name": "p", "image": "ghcr.io/meshlet/proxy:v9"}]},
            (R.SIDECAR_ALREADY_EXISTS,),
            id="meshlet-by-own-image",
        ),
        pytest.param(
            "kube-system",
            {"hostNetwork": True},
            (R.HOST_NETWORK_ENABLED, R.NAMESPACE_KUBE_SYSTEM),
            id="every-reason-reported",
        ),
    ],
)
def test_never_inject(namespace: str, spec: dict[str, Any], reasons: tuple[Reason, ...]) -> None:
    result = decide(
        namespace=namespace,
        namespace_labels=_labels("enabled"),
        pod=_pod("enabled", **spec),
        control_plane_ns="meshlet",
        own_image_prefixes=("ghcr.io/meshlet/proxy:",),
    )
    assert (result.inject, result.reasons) == (False, reasons)


def test_hostnetwork_false_and_other_images_inject() -> None:
    result = decide(
        namespace="shop",
        namespace_labels={},
        pod=_pod("enabled", hostNetwork=False, containers=[{"name": "p", "image": "cr.l5d.io/x"}]),
        control_plane_ns="meshlet",
    )
    assert result.inject


def test_every_reason_has_a_sentence_and_a_stable_slug() -> None:
    assert set(SENTENCES) == set(Reason)
    assert all(reason.value == reason.name.lower() for reason in Reason)
    assert (
        decision.explain([R.HOST_NETWORK_ENABLED])
        == "host_network_enabled (hostNetwork is enabled)"
    )


@pytest.mark.parametrize(
    "pod", [{}, {"metadata": None, "spec": []}, {"metadata": {"annotations": 3}}]
)
def test_garbage_never_raises(pod: dict[str, Any]) -> None:
    assert not decide(namespace="shop", namespace_labels={}, pod=pod, control_plane_ns="m").inject
