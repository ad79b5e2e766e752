"""What the kubelet does with an injected pod, on one machine: the sidecar's settings.

A pod is meshed here exactly as the injector says: :func:`pod_manifest` builds the Pod the API
server would send to the webhook, an :data:`Injector` turns it into the injected Pod (the
webhook's own code in this process, :func:`in_process_injector`, or the running webhook over
HTTPS, ``meshlet.localmesh.webhookclient``), and :func:`sidecar_settings` does what the kubelet
does with the containers it finds there: resolves the downward-API ``fieldRef`` values, expands
``$(VAR)``, maps the volume mounts (identity scratch dir, projected token) to per-pod
directories and the cluster DNS names of the control plane to where it runs on the node. So a
change in the injector's env contract shows up in every local mesh.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from meshlet.localmesh.netns import LocalMeshError
from meshlet.localmesh.node import GATEWAY
from meshlet.names import (
    DEFAULT_CONTROL_PLANE_NS,
    DEFAULT_TRUST_DOMAIN,
    DESTINATION_PORT,
    IDENTITY_PORT,
    PROXY_CONTAINER_NAME,
    PROXY_INIT_CONTAINER_NAME,
)
from webhook.config import ProxyConfig
from webhook.patch import MeshParams, Owner, inject_pod

__all__ = [
    "CLUSTER_DOMAIN",
    "Injector",
    "PodFacts",
    "in_process_injector",
    "injected_env",
    "pod_manifest",
    "sidecar_settings",
]

CLUSTER_DOMAIN: Final = "cluster.local"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Injector = Callable[[dict[str, Any]], dict[str, Any]]
"""A Pod manifest in, the injected Pod out (raises ``LocalMeshError`` when not injected)."""


class PodFacts:
    """What the kubelet knows of a running pod: its name, namespace, address, ServiceAccount."""

    def __init__(self, name: str, namespace: str, pod_ip: str, serviceaccount: str) -> None:
        self.fields = {
            "metadata.name": name,
            "metadata.namespace": namespace,
            "status.podIP": pod_ip,
            "spec.serviceAccountName": serviceaccount,
        }


def pod_manifest(
    *,
    name: str,
    namespace: str,
    serviceaccount: str,
    ports: list[int],
    replicaset: str | None = None,
) -> dict[str, Any]:
    """A Pod with one application container exposing ``ports``; owned by ``replicaset`` (a
    Deployment's ``<deployment>-<hash>``) when given, as a Deployment's pods are."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if replicaset is not None:
        metadata["labels"] = {"app": replicaset.rpartition("-")[0]}
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": replicaset,
                "uid": f"00000000-0000-4000-8000-{zlib.crc32(replicaset.encode()):012d}",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "serviceAccountName": serviceaccount,
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"containerPort": port} for port in ports],
                }
            ],
        },
    }


def in_process_injector(
    trust_anchors: str,
    *,
    log_level: str = "info",
    created_by: str = "meshlet-e2e",
    owner: Callable[[dict[str, Any]], Owner | None] | None = None,
) -> Injector:
    """The webhook's ``inject_pod`` called directly (no admission round trip); the owner is a
    Deployment named like the pod unless ``owner`` says otherwise."""
    mesh = MeshParams(
        control_plane_ns=DEFAULT_CONTROL_PLANE_NS,
        trust_domain=DEFAULT_TRUST_DOMAIN,
        cluster_domain=CLUSTER_DOMAIN,
        trust_anchors_pem=trust_anchors,
        trust_root_sha256=None,
        created_by=created_by,
    )

    def inject(manifest: dict[str, Any]) -> dict[str, Any]:
        metadata = manifest["metadata"]
        found = owner(manifest) if owner else Owner("deployment", metadata["name"])
        return inject_pod(
            manifest,
            namespace=metadata["namespace"],
            config=ProxyConfig(log_level=log_level),
            mesh=mesh,
            owner=found,
        )

    return inject


def _resolve_container_env(
    container: Mapping[str, Any], fields: Mapping[str, str], mounts: Mapping[str, Path]
) -> dict[str, str]:
    """What the kubelet gives a container: fieldRefs resolved, ``$(VAR)`` of earlier variables
    expanded, paths under a volume mount mapped to where ``mounts`` puts that volume."""
    mount_paths = {m["mountPath"]: mounts[m["name"]] for m in container.get("volumeMounts", ())}
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            # A label the pod does not have reads as empty, as in Kubernetes.
            value = fields.get(path, "") if path.startswith("metadata.labels[") else fields[path]
        else:
            value = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"])
        for mount_path, host_path in mount_paths.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                value = str(host_path) + value[len(mount_path) :]
        env[item["name"]] = value
    return env


def sidecar_settings(
    injected: Mapping[str, Any],
    facts: PodFacts,
    mounts: Mapping[str, Path],
    control_plane_host: str,
) -> tuple[dict[str, str], list[str]]:
    """``(proxy env, proxy-init args)`` of an injected Pod, resolved as the kubelet would; the
    control plane's Service names resolve to ``control_plane_host`` (cluster DNS)."""
    init_containers = injected.get("spec", {}).get("initContainers") or []
    containers = {c.get("name"): c for c in init_containers}
    if PROXY_CONTAINER_NAME not in containers or PROXY_INIT_CONTAINER_NAME not in containers:
        raise LocalMeshError(
            f"the injected pod has no {PROXY_CONTAINER_NAME} and {PROXY_INIT_CONTAINER_NAME} "
            f"init containers (found: {', '.join(map(str, containers)) or 'none'})"
        )
    labels = injected.get("metadata", {}).get("labels") or {}
    fields = {**{f"metadata.labels['{k}']": str(v) for k, v in labels.items()}, **facts.fields}
    env = _resolve_container_env(containers[PROXY_CONTAINER_NAME], fields, mounts)
    svc = f"{DEFAULT_CONTROL_PLANE_NS}.svc.{CLUSTER_DOMAIN}"
    dns = {
        f"meshlet-identity.{svc}:{IDENTITY_PORT}": f"{control_plane_host}:{IDENTITY_PORT}",
        f"meshlet-destination.{svc}:{DESTINATION_PORT}": f"{control_plane_host}:{DESTINATION_PORT}",
    }
    env = {key: dns.get(value, value) for key, value in env.items()}
    init_args = [str(arg) for arg in containers[PROXY_INIT_CONTAINER_NAME]["args"]]
    return env, init_args


def injected_env(
    *,
    name: str,
    namespace: str,
    serviceaccount: str,
    pod_ip: str,
    ports: list[int],
    trust_anchors: str,
    mounts: Mapping[str, Path],
    log_level: str = "info",
    control_plane_host: str = GATEWAY,
) -> tuple[dict[str, str], list[str]]:
    """``(proxy env, proxy-init args)`` of the in-process injection of a pod like this one."""
    manifest = pod_manifest(name=name, namespace=namespace, serviceaccount=serviceaccount,
                            ports=ports)  # fmt: skip
    injected = in_process_injector(trust_anchors, log_level=log_level)(manifest)
    facts = PodFacts(name, namespace, pod_ip, serviceaccount)
    return sidecar_settings(injected, facts, mounts, control_plane_host)
