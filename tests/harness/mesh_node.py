"""The harness's mesh node (control plane as processes, pods meshed the injector's way):
``meshlet.localmesh.meshnode`` and ``meshlet.localmesh.kubelet`` (product code, also used by
``meshlet demo``)."""

from __future__ import annotations

from meshlet.localmesh.kubelet import CLUSTER_DOMAIN, injected_env
from meshlet.localmesh.meshnode import MESH_APP, MeshNode, MeshPod, MeshService

__all__ = ["CLUSTER_DOMAIN", "MESH_APP", "MeshNode", "MeshPod", "MeshService", "injected_env"]
