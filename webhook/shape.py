"""Check that a parsed Pod has the shape the injector relies on, before touching it.

The API server only ever sends valid pods, but the webhook's endpoint is reachable by anything
that can reach the service: a body that is JSON yet not a pod must get a 400 naming the field,
never a 500. Only the fields the injector reads or writes are checked; the rest is passed
through untouched (the API server validates the final pod anyway). ``null`` counts as absent,
as it does for Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["pod_shape_error"]


def _string_map_error(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{where} must be an object of strings"
    for key, item in value.items():
        if not isinstance(item, str):
            return f"{where}[{key!r}] must be a string"
    return None


def _list_of_objects_error(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return f"{where} must be a list"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"{where}[{index}] must be an object"
    return None


def _container_error(container: Mapping[str, Any], where: str) -> str | None:
    if not isinstance(container.get("name"), str):
        return f"{where}.name must be a string"
    ports = container.get("ports")
    if error := _list_of_objects_error(ports, f"{where}.ports"):
        return error
    for index, port in enumerate(ports or ()):
        number = port.get("containerPort")
        if isinstance(number, bool) or not isinstance(number, int):
            return f"{where}.ports[{index}].containerPort must be an integer"
        if not isinstance(port.get("protocol", "TCP"), str):
            return f"{where}.ports[{index}].protocol must be a string"
    return None


def _metadata_error(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    for key in ("annotations", "labels"):
        if error := _string_map_error(metadata.get(key), f"metadata.{key}"):
            return error
    owners = metadata.get("ownerReferences")
    if error := _list_of_objects_error(owners, "metadata.ownerReferences"):
        return error
    for index, ref in enumerate(owners or ()):
        if not isinstance(ref.get("kind"), str) or not isinstance(ref.get("name"), str):
            return f"metadata.ownerReferences[{index}] needs string kind and name"
    return None


def _spec_error(spec: Any) -> str | None:  # noqa: PLR0911 (one return per check)
    if not isinstance(spec, dict):
        return "spec must be an object"
    if not isinstance(spec.get("hostNetwork", False), bool | None):
        return "spec.hostNetwork must be a boolean"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.containers must be a non-empty list"
    for key in ("containers", "initContainers", "volumes"):
        if error := _list_of_objects_error(spec.get(key), f"spec.{key}"):
            return error
    for key in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(key) or ()):
            if error := _container_error(container, f"spec.{key}[{index}]"):
                return error
    for index, volume in enumerate(spec.get("volumes") or ()):
        if not isinstance(volume.get("name"), str):
            return f"spec.volumes[{index}].name must be a string"
    return None


def pod_shape_error(pod: Any) -> str | None:
    """``None`` if ``pod`` can be injected, else what is wrong with it, naming the field."""
    if not isinstance(pod, dict):
        return "the pod must be a JSON object"
    return _metadata_error(pod.get("metadata")) or _spec_error(pod.get("spec"))
