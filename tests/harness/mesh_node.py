"""The harness's mesh node (control plane as processes, pods meshed the injector's way):
``meshlet.localmesh.meshnode`` and ``meshlet.localmesh.kubelet`` (product code, also used by
``meshlet demo``), and ``open_mesh_node``, the set-up and clean-up every mesh suite shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from meshlet.localmesh.kubelet import CLUSTER_DOMAIN, injected_env
from meshlet.localmesh.meshnode import MESH_APP, MeshNode, MeshPod, MeshService
from meshlet.localmesh.node import Node

__all__ = [
    "CLUSTER_DOMAIN",
    "MESH_APP",
    "MeshNode",
    "MeshPod",
    "MeshService",
    "injected_env",
    "open_mesh_node",
]


@contextlib.contextmanager
def open_mesh_node(log_dir: Path) -> Iterator[MeshNode]:
    """A fresh node with the control plane running in it, process logs in ``log_dir``. On exit,
    even after a failure (of the set-up too): the node's namespaces and their processes first,
    then the mesh node's temporary directory."""
    node = Node()
    mesh_node: MeshNode | None = None
    try:
        mesh_node = MeshNode(node, log_dir)
        yield mesh_node
    finally:
        try:
            node.close()
        finally:
            if mesh_node is not None:
                mesh_node.close()
