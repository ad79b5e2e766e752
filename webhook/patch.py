"""Build the injected pod, then derive the RFC 6902 patch from (original, injected).

The patch is never written by hand: :func:`inject_pod` returns the pod as it must run and
:func:`make_patch` diffs it against the original (:mod:`webhook.diff`, checked against jsonpatch
in the tests), so the patch the API server applies and the pod the tests inspect cannot disagree.

Placement: the proxy is a *native sidecar* (Kubernetes 1.29+): it goes into ``initContainers``
right after ``meshlet-init``, with ``restartPolicy: Always`` and a ``startupProbe`` on
``/ready``. The kubelet starts the next init container -- and the application containers --
only once that startup probe passes, so applications never start before their proxy is ready;
the proxy also starts before the application's own init containers, so those have the network;
and it no longer keeps Jobs running once their containers exit. Linkerd made the same choice
the default in 2026.

``meshlet-init`` runs first (index 0): it installs the iptables rules, so it must finish before
anything in the pod opens a connection. It runs as root with every capability dropped but
NET_ADMIN and NET_RAW (iptables needs both and nothing else). Inputs are never mutated: the
injected pod shares untouched subtrees with the original and copies only what it changes, and
the injected containers and volumes are shared between pods (cached): treat the result as
read-only, and dump it to YAML without aliases (:data:`webhook.yamlout.dump_all`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshlet.names import (
    DESTINATION_PORT,
    IDENTITY_PORT,
    IDENTITY_TOKEN_AUDIENCE,
    PROXY_ADMIN_PORT,
    PROXY_CONTAINER_NAME,
    PROXY_INBOUND_PORT,
    PROXY_INIT_CONTAINER_NAME,
    PROXY_OUTBOUND_PORT,
    PROXY_TAP_PORT,
    control_plane_identity,
    workload_identity,
)
from webhook.config import ProxyConfig
from webhook.diff import diff
from webhook.encode import encode_patch, patch_json, static

__all__ = [
    "ANNOTATION_CREATED_BY",
    "ANNOTATION_PROXY_VERSION",
    "ANNOTATION_TRUST_ROOT",
    "IDENTITY_DIR",
    "LABEL_CONTROL_PLANE_NS",
    "LABEL_WORKLOAD_NS",
    "TOKEN_DIR",
    "MeshParams",
    "Owner",
    "encode_patch",
    "inject_pod",
    "make_patch",
    "owner_label",
    "patch_json",
]

ANNOTATION_PROXY_VERSION = "meshlet.io/proxy-version"
ANNOTATION_TRUST_ROOT = "meshlet.io/trust-root-sha256"
ANNOTATION_CREATED_BY = "meshlet.io/created-by"
LABEL_CONTROL_PLANE_NS = "meshlet.io/control-plane-ns"
LABEL_WORKLOAD_NS = "meshlet.io/workload-ns"

IDENTITY_DIR = "/var/run/meshlet/identity/end-entity"
TOKEN_DIR = "/var/run/secrets/tokens"  # noqa: S105 (a path)
TOKEN_FILE_NAME = "meshlet-identity-token"  # noqa: S105 (a file name)
VOLUME_XTABLES = "meshlet-proxy-init-xtables-lock"
VOLUME_IDENTITY = "meshlet-identity-end-entity"
VOLUME_TOKEN = "meshlet-identity-token"  # noqa: S105 (a volume name)
TOKEN_LIFETIME_SECONDS = 86400  # the kubelet refreshes at 80%; the proxy rereads the file

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True, slots=True)
class Owner:
    """The workload a pod belongs to, after walking ReplicaSet -> Deployment, Job -> CronJob."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class MeshParams:
    """What is the same for every pod this injector touches (from WebhookSettings)."""

    control_plane_ns: str
    trust_domain: str
    cluster_domain: str
    trust_anchors_pem: str | None
    trust_root_sha256: str | None
    created_by: str


def owner_label(owner: Owner) -> str:
    return f"meshlet.io/proxy-{owner.kind.lower()}"


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": f"MESHLET_PROXY_{name}", "value": value}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": f"MESHLET_PROXY_{name}", "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _inbound_ports(spec: Mapping[str, Any]) -> str:
    ports: set[int] = set()
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            number = port.get("containerPort")
            if isinstance(number, int) and port.get("protocol", "TCP") == "TCP":
                ports.add(number)
    return ",".join(map(str, sorted(ports)))


def _workload_env(owner_kind: str | None) -> dict[str, Any]:
    """The pod's workload name (``meshlet_proxy_info``): the owner label the patch sets, read
    with the downward API (empty if the name did not fit a label); a bare pod is its own."""
    if owner_kind is None:
        return _env("WORKLOAD", "$(MESHLET_PROXY_POD_NAME)")
    label = owner_label(Owner(owner_kind, ""))
    return _field_env("WORKLOAD", f"metadata.labels['{label}']")


def _proxy_env(
    inbound_ports: str, config: ProxyConfig, mesh: MeshParams, owner_kind: str | None
) -> list[Any]:
    svc = f"{mesh.control_plane_ns}.svc.{mesh.cluster_domain}"
    names = {"control_plane_ns": mesh.control_plane_ns, "trust_domain": mesh.trust_domain}
    env: list[Any] = [
        # Downward API first: LOCAL_NAME below refers to two of them with $(VAR).
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _workload_env(owner_kind),
        _env("INBOUND_LISTEN_ADDR", f"0.0.0.0:{PROXY_INBOUND_PORT}"),
        _env("OUTBOUND_LISTEN_ADDR", f"127.0.0.1:{PROXY_OUTBOUND_PORT}"),
        _env("ADMIN_LISTEN_ADDR", f"0.0.0.0:{PROXY_ADMIN_PORT}"),
        _env("TAP_LISTEN_ADDR", f"0.0.0.0:{PROXY_TAP_PORT}"),
        _env("LOG_LEVEL", config.log_level),
        _env("LOG_FORMAT", "plain"),
        _env("INBOUND_PORTS", inbound_ports),
        _env("OPAQUE_PORTS", config.opaque_ports),
        _env("DETECT_TIMEOUT", "10s"),
        _env("INBOUND_CONNECT_TIMEOUT", "100ms"),
        _env("OUTBOUND_CONNECT_TIMEOUT", "1s"),
        _env("SHUTDOWN_GRACE_PERIOD", "30s"),
        _env("SHUTDOWN_ENDPOINT_ENABLED", "false"),
        _env("DEFAULT_INBOUND_POLICY", config.default_inbound_policy),
        _env("IDENTITY_DIR", IDENTITY_DIR),
        _env("IDENTITY_TOKEN_FILE", f"{TOKEN_DIR}/{TOKEN_FILE_NAME}"),
    ]
    if config.tap_authorized_identities:
        env.append(_env("TAP_AUTHORIZED_IDENTITIES", config.tap_authorized_identities))
    if mesh.trust_anchors_pem is not None:
        env.append(_env("IDENTITY_TRUST_ANCHORS", mesh.trust_anchors_pem))
    env += [
        _env(
            "IDENTITY_LOCAL_NAME",
            workload_identity(
                "$(MESHLET_PROXY_SERVICE_ACCOUNT)", "$(MESHLET_PROXY_POD_NAMESPACE)", **names
            ),
        ),
        _env("IDENTITY_SVC_ADDR", f"meshlet-identity.{svc}:{IDENTITY_PORT}"),
        _env("IDENTITY_SVC_NAME", control_plane_identity("identity", **names)),
        _env("DESTINATION_SVC_ADDR", f"meshlet-destination.{svc}:{DESTINATION_PORT}"),
        _env("DESTINATION_SVC_NAME", control_plane_identity("destination", **names)),
    ]
    return env


def _resources(config: ProxyConfig) -> dict[str, Any]:
    requests = {"cpu": config.cpu_request, "memory": config.memory_request}
    limits = {"cpu": config.cpu_limit, "memory": config.memory_limit}
    resources: dict[str, Any] = {}
    if any(requests.values()):
        resources["requests"] = {k: v for k, v in requests.items() if v}
    if any(limits.values()):
        resources["limits"] = {k: v for k, v in limits.items() if v}
    return resources


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PROXY_ADMIN_PORT}, "timeoutSeconds": 1, **timing}


def _init_container(config: ProxyConfig) -> dict[str, Any]:
    ignore_inbound = ",".join(
        p for p in (f"{PROXY_TAP_PORT},{PROXY_ADMIN_PORT}", config.skip_inbound_ports) if p
    )
    args = [
        "--incoming-proxy-port", str(PROXY_INBOUND_PORT),
        "--outgoing-proxy-port", str(PROXY_OUTBOUND_PORT),
        "--proxy-uid", str(config.proxy_uid),
        "--inbound-ports-to-ignore", ignore_inbound,
    ]  # fmt: skip
    if config.skip_outbound_ports:
        args += ["--outbound-ports-to-ignore", config.skip_outbound_ports]
    return {
        "name": PROXY_INIT_CONTAINER_NAME,
        "image": f"{config.image}:{config.version}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["meshlet-proxy-init"],
        "args": args,
        "resources": _resources(config),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": VOLUME_XTABLES, "mountPath": "/run"}],
    }


def _proxy_container(
    inbound_ports: str, config: ProxyConfig, mesh: MeshParams, owner_kind: str | None
) -> dict[str, Any]:
    return {
        "name": PROXY_CONTAINER_NAME,
        "image": f"{config.image}:{config.version}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["meshlet-proxy"],
        "restartPolicy": "Always",
        "ports": [
            {"name": "meshlet-proxy", "containerPort": PROXY_INBOUND_PORT, "protocol": "TCP"},
            {"name": "meshlet-admin", "containerPort": PROXY_ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": _proxy_env(inbound_ports, config, mesh, owner_kind),
        "startupProbe": _probe("/ready", periodSeconds=1, failureThreshold=120),
        "livenessProbe": _probe("/live", initialDelaySeconds=10),
        "readinessProbe": _probe("/ready", initialDelaySeconds=2),
        "resources": _resources(config),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": config.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": VOLUME_IDENTITY, "mountPath": IDENTITY_DIR},
            {"name": VOLUME_TOKEN, "mountPath": TOKEN_DIR, "readOnly": True},
        ],
    }


def _volumes() -> list[dict[str, Any]]:
    return [
        {"name": VOLUME_XTABLES, "emptyDir": {}},
        {"name": VOLUME_IDENTITY, "emptyDir": {"medium": "Memory"}},
        {
            "name": VOLUME_TOKEN,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": IDENTITY_TOKEN_AUDIENCE,
                            "expirationSeconds": TOKEN_LIFETIME_SECONDS,
                            "path": TOKEN_FILE_NAME,
                        }
                    }
                ]
            },
        },
    ]


def inject_pod(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    config: ProxyConfig,
    mesh: MeshParams,
    owner: Owner | None,
    inherited_annotations: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Return ``pod`` with meshlet injected; ``pod`` itself is left as it was.

    The pod must have the shape :func:`webhook.shape.pod_shape_error` accepts. A warning is
    appended to ``warnings`` for anything left out (an owner name too long for a label value).
    """
    metadata = dict(pod.get("metadata") or {})
    spec = dict(pod["spec"])

    annotations = dict(metadata.get("annotations") or {})
    for key, value in (inherited_annotations or {}).items():
        annotations.setdefault(key, value)
    annotations[ANNOTATION_PROXY_VERSION] = config.version
    if mesh.trust_root_sha256 is not None:
        annotations[ANNOTATION_TRUST_ROOT] = mesh.trust_root_sha256
    annotations[ANNOTATION_CREATED_BY] = mesh.created_by
    metadata["annotations"] = annotations

    labels = dict(metadata.get("labels") or {})
    labels[LABEL_CONTROL_PLANE_NS] = mesh.control_plane_ns
    labels[LABEL_WORKLOAD_NS] = namespace
    if owner is not None:
        key_name = owner_label(owner).partition("/")[2]
        if all(len(text) <= 63 and _LABEL_VALUE.match(text) for text in (key_name, owner.name)):
            labels[owner_label(owner)] = owner.name
        elif warnings is not None:
            warnings.append(
                f"owner {owner.kind} {owner.name!r} does not fit a label: "
                f"label {owner_label(owner)} not set"
            )
    metadata["labels"] = labels

    ours = {VOLUME_XTABLES, VOLUME_IDENTITY, VOLUME_TOKEN}
    existing = [v for v in spec.get("volumes") or () if v.get("name") not in ours]
    spec["volumes"] = existing + list(_VOLUMES)
    spec["initContainers"] = [
        _cached_init_container(config),
        _cached_proxy_container(
            _inbound_ports(spec), config, mesh, owner.kind if owner is not None else None
        ),
        *(spec.get("initContainers") or ()),
    ]

    injected = dict(pod)
    injected["metadata"] = metadata
    injected["spec"] = spec
    return injected


def make_patch(original: Mapping[str, Any], injected: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The RFC 6902 operations turning ``original`` into ``injected`` (keys escaped ~0 / ~1)."""
    return diff(original, injected)


# The injected containers and volumes depend only on the settings, the overrides and the pod's
# ports: they are built once per distinct combination and shared, read-only, by every pod that
# needs them, and their JSON text is kept beside them, so encoding a patch mostly joins strings
# (see docs/performance.md).
@functools.lru_cache(maxsize=256)
def _cached_init_container(config: ProxyConfig) -> dict[str, Any]:
    return static(_init_container(config))


@functools.lru_cache(maxsize=1024)
def _cached_proxy_container(
    inbound_ports: str, config: ProxyConfig, mesh: MeshParams, owner_kind: str | None
) -> dict[str, Any]:
    return static(_proxy_container(inbound_ports, config, mesh, owner_kind))


_VOLUMES = tuple(static(volume) for volume in _volumes())
