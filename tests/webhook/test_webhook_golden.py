"""Golden files: ``fixtures/<case>.yaml`` holds a pod, its namespace and owner, and the expected
decision, reasons, warnings and patch. Compared as parsed data. To regenerate after a deliberate
change, run with ``MESHLET_REGENERATE_GOLDEN=1`` and review ``git diff tests/webhook/fixtures``."""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.webhook.podcheck import check_pod
from webhook.inject import Injector
from webhook.patch import Owner, encode_patch, make_patch, patch_json
from webhook.settings import WebhookSettings

FIXTURES = Path(__file__).parent / "fixtures"
REGENERATE = os.environ.get("MESHLET_REGENERATE_GOLDEN") == "1"
TRUST_ANCHORS = "-----BEGIN CERTIFICATE-----\nMIIBfixturetrustanchor\n-----END CERTIFICATE-----\n"
CASES = sorted(path.stem for path in FIXTURES.glob("*.yaml"))


def _injector() -> Injector:
    settings = WebhookSettings(trust_anchors_pem=TRUST_ANCHORS)
    return Injector(settings, created_by="meshlet/proxy-injector v0.1.0")


def _run(case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    namespace = case["namespace"]
    owner = Owner(**case["owner"]) if case.get("owner") else None
    pod = case["pod"]
    before = copy.deepcopy(pod)
    outcome = _injector().run(
        pod,
        namespace=namespace["name"],
        namespace_labels=namespace.get("labels", {}),
        namespace_annotations=namespace.get("annotations", {}),
        owner=owner,
    )
    assert pod == before, "the injector mutated its input"
    result = {
        "inject": outcome.decision.inject,
        "reasons": [reason.value for reason in outcome.decision.reasons],
        "warnings": list(outcome.warnings),
        "patch": copy.deepcopy(outcome.patch),
    }
    return result, outcome.pod


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    path = FIXTURES / f"{name}.yaml"
    case = yaml.safe_load(path.read_text())
    result, injected = _run(case)
    if REGENERATE:
        case["expected"] = result
        path.write_text(yaml.safe_dump(case, sort_keys=False, width=100))
    assert "expected" in case, f"{path} has no expected result: regenerate it"
    assert result == case["expected"]
    if not result["inject"]:
        assert injected is None
        assert result["patch"] == []
        return
    assert injected is not None
    # The patch, applied by an independent implementation, yields exactly the injected pod...
    assert jsonpatch.apply_patch(case["pod"], result["patch"]) == injected
    # ...and jsonpatch's own diff describes the same change.
    assert (
        jsonpatch.apply_patch(case["pod"], jsonpatch.make_patch(case["pod"], injected)) == injected
    )
    check_pod(injected)
    check_pod(case["pod"])


@pytest.mark.parametrize("name", CASES)
def test_patch_text_with_precomputed_parts_is_the_plain_encoding(name: str) -> None:
    case = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())
    _, injected = _run(case)
    if injected is None:
        return
    operations = make_patch(case["pod"], injected)
    assert json.loads(patch_json(operations)) == operations
    decoded = json.loads(base64.b64decode(encode_patch(operations)))
    assert jsonpatch.apply_patch(case["pod"], decoded) == injected


def test_marker_text_in_a_pod_is_left_alone() -> None:
    case = yaml.safe_load((FIXTURES / "deployment-ns-enabled.yaml").read_text())
    case["pod"]["metadata"]["annotations"]["x"] = "\x00meshlet-static-0000000000000000-0"
    _, injected = _run(case)
    assert injected is not None
    operations = make_patch(case["pod"], injected)
    assert json.loads(patch_json(operations)) == operations


@pytest.mark.parametrize(
    "owner",
    [Owner("Deployment", "x" * 64), Owner("Deployment", "-bad-"), Owner("Odd Kind!", "web")],
    ids=["name-too-long", "name-invalid", "kind-invalid"],
)
def test_owner_that_does_not_fit_a_label_is_left_out_with_a_warning(owner: Owner) -> None:
    case = yaml.safe_load((FIXTURES / "deployment-ns-enabled.yaml").read_text())
    outcome = _injector().run(
        case["pod"],
        namespace="shop",
        namespace_labels={"meshlet.io/inject": "enabled"},
        namespace_annotations={},
        owner=owner,
    )
    assert outcome.pod is not None
    assert not [k for k in outcome.pod["metadata"]["labels"] if k.startswith("meshlet.io/proxy-")]
    assert "does not fit a label" in outcome.warnings[0]
    check_pod(outcome.pod)
