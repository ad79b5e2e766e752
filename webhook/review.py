"""AdmissionReview (admission.k8s.io/v1) in and out, with no I/O: bytes -> request -> dict.

Whatever the bytes, :func:`parse_review` returns an :class:`AdmissionRequest` or raises
:class:`BadReview` carrying the HTTP status (400, or 413 for size) and a message naming the
problem. Plain ``json.loads`` and explicit checks, not a pydantic model: the webhook reads six
fields of a document that can be a megabyte, and validating the whole pod would cost more than
injecting it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.patch import encode_patch
from webhook.shape import pod_shape_error

__all__ = [
    "API_VERSION",
    "AdmissionRequest",
    "BadReview",
    "parse_review",
    "review_response",
]

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class BadReview(ValueError):
    """The client's fault: the body is not an AdmissionReview we can answer."""

    def __init__(self, message: str, *, slug: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.slug = slug  # metric label: malformed_json, invalid_review, invalid_pod, too_large
        self.status = status


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    uid: str
    kind: tuple[str, str, str]  # group, version, kind of the object under admission
    operation: str
    namespace: str
    pod: dict[str, Any]  # checked with pod_shape_error when kind is a core/v1 Pod
    dry_run: bool

    @property
    def is_pod(self) -> bool:
        return self.kind == ("", "v1", "Pod")

    @property
    def pod_name(self) -> str:
        metadata = self.pod.get("metadata") or {}
        return str(metadata.get("name") or metadata.get("generateName") or "<unnamed>")


def _kind(request: Mapping[str, Any]) -> tuple[str, str, str]:
    kind = request.get("kind")
    if not isinstance(kind, Mapping):
        raise BadReview(
            "request.kind must be an object {group, version, kind}", slug="invalid_review"
        )
    parts = (kind.get("group", ""), kind.get("version"), kind.get("kind"))
    if not all(isinstance(part, str) for part in parts):
        raise BadReview("request.kind needs string group, version and kind", slug="invalid_review")
    return parts  # type: ignore[return-value]


def parse_review(body: bytes) -> AdmissionRequest:
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise BadReview(f"the body is not valid JSON: {error}", slug="malformed_json") from None
    if not isinstance(review, dict):
        raise BadReview(
            "the body must be a JSON object (an AdmissionReview)", slug="invalid_review"
        )
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise BadReview(
            f"expected apiVersion {API_VERSION} and kind {KIND}, got "
            f"{review.get('apiVersion')!r} and {review.get('kind')!r}",
            slug="invalid_review",
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("request must be an object", slug="invalid_review")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing or not a non-empty string", slug="invalid_review")
    kind = _kind(request)
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise BadReview("request.operation must be a string", slug="invalid_review")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise BadReview("request.object (the pod) must be a JSON object", slug="invalid_pod")
    problem = pod_shape_error(pod) if kind == ("", "v1", "Pod") and operation == "CREATE" else None
    if problem is not None:
        raise BadReview(f"request.object is not a valid Pod: {problem}", slug="invalid_pod")
    metadata = pod.get("metadata") or {}
    namespace = request.get("namespace") or metadata.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise BadReview("request.namespace is missing", slug="invalid_review")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise BadReview("request.dryRun must be a boolean", slug="invalid_review")
    return AdmissionRequest(uid, kind, operation, namespace, pod, dry_run)


def review_response(
    uid: str, *, patch: list[dict[str, Any]], warnings: tuple[str, ...] | list[str] = ()
) -> dict[str, Any]:
    """The AdmissionReview answer: always allowed; a JSONPatch when there is something to add."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = encode_patch(patch)
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
