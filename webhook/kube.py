"""What the injector needs to know about the cluster, behind one small interface.

:class:`ClusterView` answers two questions: a namespace's labels and annotations, and the
controller of an object (ReplicaSet -> Deployment, Job -> CronJob). Two implementations:
:class:`StaticClusterView` reads a YAML file of Kubernetes objects (for local runs, the demo and
tests; no cluster needed) and ``webhook.kube_api.KubernetesClusterView`` asks the API server,
caching namespaces with a list+watch. :func:`resolve_owner` walks a pod's owners through either.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from webhook.patch import Owner

__all__ = [
    "ClusterView",
    "ClusterViewError",
    "NamespaceInfo",
    "StaticClusterView",
    "controller_ref",
    "resolve_owner",
]

log = logging.getLogger("meshlet.webhook.cluster")

# Kinds whose controller names the workload better than they do (Linkerd's choice too).
_WALK_UP = frozenset({"ReplicaSet", "Job"})
# A Deployment's ReplicaSets are named <deployment>-<pod-template-hash>; the hash uses
# Kubernetes' SafeEncodeString alphabet (no vowels, no 0/1/3).
_RS_NAME = re.compile(r"^(?P<deployment>.+)-[bcdfghjklmnpqrstvwxz2456789]{5,10}$")


class ClusterViewError(RuntimeError):
    """The cluster source cannot be read (bad file, unreachable API at start)."""


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


class ClusterView(Protocol):
    async def namespace(self, name: str) -> NamespaceInfo | None:
        """The namespace's labels and annotations; ``None`` if it is unknown."""

    async def controller_of(self, namespace: str, kind: str, name: str) -> Owner | None:
        """The controller (ownerReference with controller=true) of an object, if any."""

    def ready(self) -> bool:
        """Whether the view has its first full picture (for ``/readyz``)."""

    async def start(self) -> None:
        """Begin watching (called once the event loop runs)."""

    async def close(self) -> None:
        """Stop watching and release connections."""


def controller_ref(metadata: Any) -> Owner | None:
    """The controlling ownerReference in ``metadata`` (or the first one), as an Owner."""
    refs = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    if not isinstance(refs, list):
        return None
    refs = [r for r in refs if isinstance(r, Mapping)]
    chosen = next((r for r in refs if r.get("controller") is True), refs[0] if refs else None)
    if chosen is None:
        return None
    kind, name = chosen.get("kind"), chosen.get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        return None
    return Owner(kind, name)


async def resolve_owner(view: ClusterView, namespace: str, pod: Mapping[str, Any]) -> Owner | None:
    """The workload owning ``pod``: its controller, walked up from ReplicaSet or Job."""
    owner = controller_ref(pod.get("metadata"))
    while owner is not None and owner.kind in _WALK_UP:
        parent = await view.controller_of(namespace, owner.kind, owner.name)
        if parent is None or parent.kind in _WALK_UP:  # a bare ReplicaSet/Job is the workload
            break
        owner = parent
    return owner


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _objects(documents: list[Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        if document.get("kind") == "List" or str(document.get("kind", "")).endswith("List"):
            found += _objects(list(document.get("items") or []))
        else:
            found.append(document)
    return found


class StaticClusterView:
    """Namespaces and owners from a YAML file of Kubernetes objects, re-read when it changes.

    The file holds Namespaces (``kubectl get ns -o yaml`` output works as is) and optionally the
    ReplicaSets and Jobs whose owners pods should name. A namespace missing from the file counts
    as an existing namespace without labels. A ReplicaSet missing from the file is assumed to
    belong to the Deployment its name comes from (``web-7c9d8f6b5`` -> ``web``), as Kubernetes
    names them.
    """

    def __init__(self, path: Path, *, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._stamp: tuple[float, int, int] | None = None
        self._next_check = 0.0
        self._namespaces: dict[str, NamespaceInfo] = {}
        self._controllers: dict[tuple[str, str, str], Owner | None] = {}
        self._load()

    def _load(self) -> None:
        try:
            info = os.stat(self.path)
            documents = list(yaml.safe_load_all(self.path.read_text(encoding="utf-8")))
        except OSError as error:
            raise ClusterViewError(f"cannot read {self.path}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise ClusterViewError(
                f"{self.path} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
                f"offset {error.start}); give a YAML file"
            ) from None
        except RecursionError:  # the YAML composer recurses once per nesting level
            raise ClusterViewError(f"{self.path} is nested too deeply to be a cluster") from None
        except yaml.YAMLError as error:
            raise ClusterViewError(f"{self.path} is not valid YAML: {error}") from None
        namespaces: dict[str, NamespaceInfo] = {}
        controllers: dict[tuple[str, str, str], Owner | None] = {}
        for obj in _objects(documents):
            metadata = obj.get("metadata")
            if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
                continue
            name = metadata["name"]
            if obj.get("kind") == "Namespace":
                labels = _string_map(metadata.get("labels"))
                annotations = _string_map(metadata.get("annotations"))
                namespaces[name] = NamespaceInfo(name, labels, annotations)
            else:
                key = (str(metadata.get("namespace", "default")), str(obj.get("kind")), name)
                controllers[key] = controller_ref(metadata)
        self._namespaces, self._controllers = namespaces, controllers
        self._stamp = (info.st_mtime, info.st_size, info.st_ino)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            info = os.stat(self.path)
            if (info.st_mtime, info.st_size, info.st_ino) != self._stamp:
                self._load()
                log.info("reloaded cluster file %s", self.path)
        except (OSError, ClusterViewError) as error:
            log.error("keeping the previous cluster view: %s", error)

    async def namespace(self, name: str) -> NamespaceInfo | None:
        self._refresh()
        return self._namespaces.get(name, NamespaceInfo(name))

    async def controller_of(self, namespace: str, kind: str, name: str) -> Owner | None:
        self._refresh()
        key = (namespace, kind, name)
        if key in self._controllers:
            return self._controllers[key]
        if kind == "ReplicaSet" and (match := _RS_NAME.match(name)):
            return Owner("Deployment", match["deployment"])
        return None

    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
