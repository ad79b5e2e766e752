"""Example inputs shipped with the webhook (``webhook/examples/``): a realistic AdmissionReview
for a Deployment's pod and a cluster file. The demo, the benchmark and the docs' dry-run
commands use them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

__all__ = ["EXAMPLES", "cluster_file", "sample_review"]

EXAMPLES = Path(__file__).parent / "examples"


def cluster_file() -> Path:
    return EXAMPLES / "cluster.yaml"


def sample_review() -> dict[str, Any]:
    """A fresh copy of ``review-deployment-pod.json`` (three containers, probes, volumes)."""
    review: dict[str, Any] = json.loads((EXAMPLES / "review-deployment-pod.json").read_text())
    return copy.deepcopy(review)
