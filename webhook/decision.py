"""Inject or not: a pure function over the namespace and the pod, answering with reasons.

Truth table (``ns`` = the namespace's ``meshlet.io/inject`` label, ``pod`` = the pod's
``meshlet.io/inject`` annotation; ``-`` = absent, ``bogus`` = any other value):

====================  ==========  ==========  =======  ====================================
row id                ns          pod         inject?  reason
====================  ==========  ==========  =======  ====================================
ns-enabled/pod-none   enabled     -           yes      injection_enabled_at_namespace
ns-enabled/pod-en     enabled     enabled     yes      injection_enabled_at_pod
ns-enabled/pod-dis    enabled     disabled    no       injection_disabled_at_pod
ns-enabled/pod-bogus  enabled     bogus       no       invalid_inject_annotation_at_pod
ns-none/pod-none      -           -           no       injection_not_enabled
ns-none/pod-en        -           enabled     yes      injection_enabled_at_pod
ns-none/pod-dis       -           disabled    no       injection_disabled_at_pod
ns-none/pod-bogus     -           bogus       no       invalid_inject_annotation_at_pod
ns-dis/pod-none       disabled    -           no       injection_disabled_at_namespace
ns-dis/pod-en         disabled    enabled     yes      injection_enabled_at_pod
ns-dis/pod-dis        disabled    disabled    no       injection_disabled_at_pod
ns-dis/pod-bogus      disabled    bogus       no       invalid_inject_annotation_at_pod
ns-bogus/pod-none     bogus       -           no       invalid_inject_label_at_namespace
ns-bogus/pod-en       bogus       enabled     no       invalid_inject_label_at_namespace
ns-bogus/pod-dis      bogus       disabled    no       injection_disabled_at_pod
ns-bogus/pod-bogus    bogus       bogus       no       invalid_inject_annotation_at_pod
====================  ==========  ==========  =======  ====================================

``disabled`` on the pod always wins; an invalid value is never guessed at (Linkerd does the same:
a typo must not mesh a pod nobody asked to mesh). The namespace row is ignored when the caller
says so (``meshlet inject --manual``: the CLI cannot see the namespace; only the pod counts, and
an absent pod annotation means "yes" there, as in ``linkerd inject``).

Whatever the table says, these never inject, and every one that applies is reported:
``host_network_enabled`` (the pod shares the node's network: iptables rules would capture the
node's traffic), ``sidecar_already_exists`` (a meshlet, Linkerd or Istio proxy or init container,
by name or image), ``namespace_kube_system``, ``namespace_control_plane``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshlet.names import INJECT_ANNOTATION, INJECT_LABEL

__all__ = [
    "FOREIGN_PROXY_IMAGE_PREFIXES",
    "FOREIGN_PROXY_NAMES",
    "SENTENCES",
    "Decision",
    "Reason",
    "decide",
    "explain",
    "has_existing_proxy",
]

ENABLED = "enabled"
DISABLED = "disabled"


class Reason(StrEnum):
    """Stable slugs: metric label values and the keys of :data:`SENTENCES`. Never rename one."""

    INJECTION_ENABLED_AT_NAMESPACE = "injection_enabled_at_namespace"
    INJECTION_ENABLED_AT_POD = "injection_enabled_at_pod"
    INJECTION_NOT_ENABLED = "injection_not_enabled"
    INJECTION_DISABLED_AT_POD = "injection_disabled_at_pod"
    INJECTION_DISABLED_AT_NAMESPACE = "injection_disabled_at_namespace"
    INVALID_INJECT_ANNOTATION_AT_POD = "invalid_inject_annotation_at_pod"
    INVALID_INJECT_LABEL_AT_NAMESPACE = "invalid_inject_label_at_namespace"
    HOST_NETWORK_ENABLED = "host_network_enabled"
    SIDECAR_ALREADY_EXISTS = "sidecar_already_exists"
    NAMESPACE_KUBE_SYSTEM = "namespace_kube_system"
    NAMESPACE_CONTROL_PLANE = "namespace_control_plane"
    UNSUPPORTED_RESOURCE = "unsupported_resource"
    UNSUPPORTED_OPERATION = "unsupported_operation"
    INJECTOR_ERROR = "injector_error"


SENTENCES: Mapping[Reason, str] = {
    Reason.INJECTION_ENABLED_AT_NAMESPACE: f"the namespace is labelled {INJECT_LABEL}=enabled",
    Reason.INJECTION_ENABLED_AT_POD: f"the pod is annotated {INJECT_ANNOTATION}: enabled",
    Reason.INJECTION_NOT_ENABLED: (
        f"neither the namespace label {INJECT_LABEL} nor the pod annotation enables injection"
    ),
    Reason.INJECTION_DISABLED_AT_POD: f"the pod is annotated {INJECT_ANNOTATION}: disabled",
    Reason.INJECTION_DISABLED_AT_NAMESPACE: f"the namespace is labelled {INJECT_LABEL}=disabled",
    Reason.INVALID_INJECT_ANNOTATION_AT_POD: (
        f"the pod annotation {INJECT_ANNOTATION} is neither 'enabled' nor 'disabled'"
    ),
    Reason.INVALID_INJECT_LABEL_AT_NAMESPACE: (
        f"the namespace label {INJECT_LABEL} is neither 'enabled' nor 'disabled'"
    ),
    Reason.HOST_NETWORK_ENABLED: "hostNetwork is enabled",
    Reason.SIDECAR_ALREADY_EXISTS: "the pod already has a meshlet, Linkerd or Istio proxy",
    Reason.NAMESPACE_KUBE_SYSTEM: "pods in kube-system are never injected",
    Reason.NAMESPACE_CONTROL_PLANE: "pods in the control-plane namespace are never injected",
    Reason.UNSUPPORTED_RESOURCE: "only Pods are injected",
    Reason.UNSUPPORTED_OPERATION: "only CREATE operations are injected",
    Reason.INJECTOR_ERROR: "the injector failed on this pod; it is admitted unchanged",
}

# Container names and image prefixes of proxies already in a pod (reference: Linkerd's
# HasExistingSidecars, plus our own names).
FOREIGN_PROXY_NAMES = frozenset(
    {"meshlet-proxy", "meshlet-init", "linkerd-proxy", "linkerd-init", "istio-proxy", "istio-init"}
)
FOREIGN_PROXY_IMAGE_PREFIXES = (
    "cr.l5d.io/linkerd/proxy:",
    "cr.l5d.io/linkerd/proxy-init:",
    "gcr.io/istio-release/proxyv2:",
    "gcr.io/istio-release/proxy_init:",
)


@dataclass(frozen=True, slots=True)
class Decision:
    inject: bool
    reasons: tuple[Reason, ...]

    def sentences(self) -> list[str]:
        return [SENTENCES[reason] for reason in self.reasons]


def explain(reasons: Sequence[Reason]) -> str:
    """One line for logs and reports: ``slug (sentence); ...``."""
    return "; ".join(f"{reason.value} ({SENTENCES[reason]})" for reason in reasons)


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        if isinstance(items, list):
            found += [item for item in items if isinstance(item, Mapping)]
    return found


def has_existing_proxy(spec: Mapping[str, Any], own_image_prefixes: Sequence[str] = ()) -> bool:
    """Whether any container or init container is a meshlet, Linkerd or Istio proxy."""
    prefixes = (*FOREIGN_PROXY_IMAGE_PREFIXES, *own_image_prefixes)
    for container in _containers(spec):
        if container.get("name") in FOREIGN_PROXY_NAMES:
            return True
        image = container.get("image")
        if isinstance(image, str) and image.startswith(prefixes):
            return True
    return False


def _hard_skips(
    *,
    namespace: str,
    spec: Mapping[str, Any],
    control_plane_ns: str,
    own_image_prefixes: Sequence[str],
) -> list[Reason]:
    reasons: list[Reason] = []
    if spec.get("hostNetwork") is True:
        reasons.append(Reason.HOST_NETWORK_ENABLED)
    if has_existing_proxy(spec, own_image_prefixes):
        reasons.append(Reason.SIDECAR_ALREADY_EXISTS)
    if namespace == "kube-system":
        reasons.append(Reason.NAMESPACE_KUBE_SYSTEM)
    if namespace == control_plane_ns:
        reasons.append(Reason.NAMESPACE_CONTROL_PLANE)
    return reasons


def _by_table(  # noqa: PLR0911 (one return per row group of the truth table)
    ns_value: str | None, pod_value: str | None, *, ignore_namespace: bool
) -> Decision:
    if pod_value == DISABLED:
        return Decision(False, (Reason.INJECTION_DISABLED_AT_POD,))
    if pod_value is not None and pod_value != ENABLED:
        return Decision(False, (Reason.INVALID_INJECT_ANNOTATION_AT_POD,))
    if ignore_namespace:
        return Decision(True, (Reason.INJECTION_ENABLED_AT_POD,))
    if ns_value is not None and ns_value not in (ENABLED, DISABLED):
        return Decision(False, (Reason.INVALID_INJECT_LABEL_AT_NAMESPACE,))
    if pod_value == ENABLED:
        return Decision(True, (Reason.INJECTION_ENABLED_AT_POD,))
    if ns_value == ENABLED:
        return Decision(True, (Reason.INJECTION_ENABLED_AT_NAMESPACE,))
    if ns_value == DISABLED:
        return Decision(False, (Reason.INJECTION_DISABLED_AT_NAMESPACE,))
    return Decision(False, (Reason.INJECTION_NOT_ENABLED,))


def decide(
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    pod: Mapping[str, Any],
    control_plane_ns: str,
    ignore_namespace: bool = False,
    own_image_prefixes: Sequence[str] = (),
) -> Decision:
    """Decide whether to inject ``pod`` (a Pod object as parsed JSON) created in ``namespace``.

    ``own_image_prefixes`` adds the configured meshlet proxy image (``repo:``) to the images that
    mark a pod as already injected. Inputs of the wrong type count as absent: the caller checks
    the pod's shape; this function never raises on data.
    """
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    pod_value = annotations.get(INJECT_ANNOTATION) if isinstance(annotations, Mapping) else None
    spec = pod.get("spec")
    hard = _hard_skips(
        namespace=namespace,
        spec=spec if isinstance(spec, Mapping) else {},
        control_plane_ns=control_plane_ns,
        own_image_prefixes=own_image_prefixes,
    )
    if hard:
        return Decision(False, tuple(hard))
    ns_value = namespace_labels.get(INJECT_LABEL)
    return _by_table(
        ns_value if isinstance(ns_value, str) else None,
        pod_value if isinstance(pod_value, str) else None,
        ignore_namespace=ignore_namespace,
    )
