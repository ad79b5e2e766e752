"""Check an injected pod the way the API server would: the Kubernetes OpenAPI schema (strict,
from the ``kubernetes-validate`` package, since ``kubectl --validate`` needs a live server) plus
the cross-field rules the schema cannot express (unique names, mounts naming volumes, ...)."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate

__all__ = ["KUBERNETES_VERSION", "check_pod"]

KUBERNETES_VERSION = "1.33"  # native sidecars (initContainers restartPolicy Always) are GA
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_QUALIFIED = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _unique(names: list[str], what: str) -> None:
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"duplicate {what}: {sorted(duplicates)}"


def check_pod(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    spec = pod["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    _unique([c["name"] for c in containers], "container names")
    volumes = [v["name"] for v in spec.get("volumes", [])]
    _unique(volumes, "volume names")
    for container in containers:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']} mounts unknown {mount['name']}"
        ports = [p["name"] for p in container.get("ports", []) if "name" in p]
        _unique(ports, f"port names in {container['name']}")
        assert all(len(p) <= 15 for p in ports), ports
        _unique([e["name"] for e in container.get("env", [])], "env names")
        restart = container.get("restartPolicy")
        if restart is not None:
            assert container in spec.get("initContainers", []), "restartPolicy on a container"
            assert restart == "Always"
    metadata = pod["metadata"]
    for key, value in metadata.get("labels", {}).items():
        assert _QUALIFIED.match(key), key
        assert len(value) <= 63, (key, value)
        assert _LABEL_VALUE.match(value), (key, value)
    for key in metadata.get("annotations", {}):
        assert _QUALIFIED.match(key.lower()) or "~" in key, key
