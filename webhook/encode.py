"""Encode a JSON patch fast, reusing the precomputed JSON text of its static parts.

The injected containers and volumes are built once per distinct (settings, overrides, ports)
and shared read-only by every pod that needs them (``webhook.patch``); :func:`static` records
their JSON text beside them. :func:`patch_json` swaps those objects for unique marker strings,
encodes the rest with one ``json.dumps`` call, and splices the recorded text back in.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any, TypeVar

__all__ = ["encode_patch", "patch_json", "static"]

_T = TypeVar("_T")
_STATIC_JSON: dict[int, tuple[Any, str]] = {}
_STATIC_LIMIT = 4096


def static(value: _T) -> _T:
    """Record ``value``'s JSON text; ``value`` must never be mutated afterwards."""
    if len(_STATIC_JSON) >= _STATIC_LIMIT:
        _STATIC_JSON.clear()  # entries hold their objects, so an id is never reused meanwhile
    _STATIC_JSON[id(value)] = (value, json.dumps(value, separators=(",", ":")))
    return value


_MARKER = f"\x00meshlet-static-{secrets.token_hex(8)}-"  # never in a real pod: random per process


def patch_json(operations: list[dict[str, Any]]) -> str:
    """The JSON text of ``operations``, reusing the precomputed text of the static parts.

    Static values (and static items of list values) are swapped for unique marker strings, the
    rest is encoded by one ``json.dumps`` call, and each marker's JSON is then replaced by the
    static part's precomputed text.
    """
    texts: list[str] = []

    def swap(value: Any) -> Any:
        hit = _STATIC_JSON.get(id(value))
        if hit is not None and hit[0] is value:
            texts.append(hit[1])
            return f"{_MARKER}{len(texts) - 1}"
        return value

    swapped = []
    for operation in operations:
        if "value" not in operation:
            swapped.append(operation)
            continue
        value = operation["value"]
        value = [swap(item) for item in value] if type(value) is list else swap(value)
        swapped.append({**operation, "value": value})
    encoded = json.dumps(swapped, separators=(",", ":"))
    marker = json.dumps(_MARKER)[:-1]  # the marker as it appears in JSON, without the closing quote
    for index, text in enumerate(texts):
        encoded = encoded.replace(f'{marker}{index}"', text, 1)
    return encoded


def encode_patch(operations: list[dict[str, Any]]) -> str:
    """Base64 of the JSON patch, as AdmissionResponse.patch carries it."""
    return base64.b64encode(patch_json(operations).encode()).decode()
