"""The ServiceProfile CRD agrees with what meshlet-destination reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from destination.local import objects_from_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "base" / "crds" / "serviceprofile.yaml"
EXAMPLE = ROOT / "destination" / "example-local.yaml"


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "serviceprofiles.meshlet.io"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def check(value: Any, node: dict[str, Any], where: str) -> None:
    """A small structural-schema check: types, enums, patterns, required, known fields."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    kind = node["type"]
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    if kind == "number":
        assert isinstance(value, int | float), where
    else:
        assert isinstance(value, python[kind]), where
    if "enum" in node:
        assert value in node["enum"], where
    if "pattern" in node:
        assert re.fullmatch(node["pattern"], value), where
    if kind == "object":
        for field in node.get("required", []):
            assert field in value, f"{where}.{field} is required"
        for key, item in value.items():
            assert key in node["properties"], f"{where}.{key} is not in the schema"
            check(item, node["properties"][key], f"{where}.{key}")
    if kind == "array":
        for i, item in enumerate(value):
            check(item, node["items"], f"{where}[{i}]")


def test_every_schema_node_is_structural() -> None:
    def walk(node: dict[str, Any], where: str) -> None:
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), where
        for key, child in node.get("properties", {}).items():
            walk(child, f"{where}.{key}")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    walk(schema(), "")


def test_the_example_profile_validates() -> None:
    objects = objects_from_yaml(EXAMPLE.read_text(), control_plane_ns="meshlet")
    (profile,) = objects["ServiceProfile"]
    check({"spec": profile["spec"]}, schema(), "")


def test_condition_fields_match_the_parser() -> None:
    route = schema()["properties"]["spec"]["properties"]["routes"]["items"]["properties"]
    assert set(route) == {"name", "condition", "responseClasses", "isRetryable", "timeout"}
    assert set(route["condition"]["properties"]) == {"method", "pathRegex", "all", "any", "not"}
    budget = schema()["properties"]["spec"]["properties"]["retryBudget"]["properties"]
    assert set(budget) == {"retryRatio", "minRetriesPerSecond", "ttl"}
