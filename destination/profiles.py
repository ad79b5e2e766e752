"""ServiceProfiles (``meshlet.io/v1alpha1``): parse the custom resource and render what proxies get.

The spec has Linkerd's shape: ``routes[{name, condition{method, pathRegex, all, any, not},
responseClasses[{condition{status{min, max}}, isFailure}], isRetryable, timeout}]`` and
``retryBudget{retryRatio, minRetriesPerSecond, ttl}``. A profile that does not validate is skipped
as a whole (the service then gets the default), as Linkerd's admission validator would refuse it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from meshlet.durations import DurationError, format_duration, parse_duration

from .model import BadObject, ObjectKey, object_key

__all__ = [
    "DEFAULT_RETRY_BUDGET",
    "Profile",
    "RetryBudget",
    "default_profile_json",
    "parse_profile",
    "profile_json",
]

_MAX_CONDITION_DEPTH: Final = 8
_MAX_ROUTES: Final = 500
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


@dataclass(frozen=True, slots=True)
class RetryBudget:
    retry_ratio: float
    min_retries_per_second: int
    ttl: float  # seconds


# Linkerd's default (controller/api/destination/profile_translator.go).
DEFAULT_RETRY_BUDGET: Final = RetryBudget(retry_ratio=0.2, min_retries_per_second=10, ttl=10.0)


@dataclass(frozen=True, slots=True)
class Profile:
    key: ObjectKey
    routes_json: str  # the rendered routes, canonical JSON (frozen and comparable)
    retry_budget: RetryBudget


class _Invalid(ValueError):
    pass


def _condition(raw: Any, depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_CONDITION_DEPTH:
        raise _Invalid(f"conditions nest deeper than {_MAX_CONDITION_DEPTH}")
    if not isinstance(raw, dict) or not raw:
        raise _Invalid(f"condition {raw!r} is not a non-empty mapping")
    unknown = set(raw) - {"method", "pathRegex", "all", "any", "not"}
    if unknown:
        raise _Invalid(f"condition has unknown fields {sorted(unknown)}")
    out: dict[str, Any] = {}
    if "method" in raw:
        method = raw["method"]
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise _Invalid(f"method {method!r} is not an HTTP method")
        out["method"] = method.upper()
    if "pathRegex" in raw:
        pattern = raw["pathRegex"]
        if not isinstance(pattern, str) or len(pattern) > 1024:
            raise _Invalid("pathRegex must be a string of at most 1024 characters")
        try:
            re.compile(pattern)
        except re.error as error:
            raise _Invalid(f"pathRegex {pattern!r} does not compile: {error}") from None
        out["path_regex"] = pattern
    for group in ("all", "any"):
        if group in raw:
            items = raw[group]
            if not isinstance(items, list) or not items:
                raise _Invalid(f"{group} must be a non-empty list of conditions")
            out[group] = [_condition(item, depth + 1) for item in items]
    if "not" in raw:
        out["not"] = _condition(raw["not"], depth + 1)
    return out


def _response_class(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Invalid(f"response class {raw!r} is not a mapping")
    status = (
        raw.get("condition", {}).get("status") if isinstance(raw.get("condition"), dict) else None
    )
    if not isinstance(status, dict):
        raise _Invalid("a response class needs condition.status{min, max}")
    low, high = status.get("min", 100), status.get("max", 599)
    if not all(isinstance(v, int) and 100 <= v <= 599 for v in (low, high)) or low > high:
        raise _Invalid(f"status range {status!r} is not within 100-599")
    return {"status": {"min": low, "max": high}, "is_failure": raw.get("isFailure") is True}


def _route(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Invalid(f"route {raw!r} is not a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid("a route has no name")
    if "condition" not in raw:
        raise _Invalid(f"route {name!r} has no condition")
    timeout = raw.get("timeout")
    seconds: float | None = None
    if timeout is not None:
        try:
            seconds = parse_duration(str(timeout))
        except DurationError as error:
            raise _Invalid(f"route {name!r}: {error}") from None
    retryable = raw.get("isRetryable", False)
    if not isinstance(retryable, bool):
        raise _Invalid(f"route {name!r}: isRetryable must be true or false")
    classes = raw.get("responseClasses", [])
    if not isinstance(classes, list):
        raise _Invalid(f"route {name!r}: responseClasses must be a list")
    return {
        "name": name,
        "condition": _condition(raw["condition"]),
        "response_classes": [_response_class(item) for item in classes],
        "is_retryable": retryable,
        "timeout": format_duration(seconds) if seconds is not None else None,
    }


def _routes(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or len(raw) > _MAX_ROUTES:
        raise _Invalid(f"routes must be a list of at most {_MAX_ROUTES}")
    return [_route(route) for route in raw]


def _retry_budget(raw: Any) -> RetryBudget:
    if raw is None:
        return DEFAULT_RETRY_BUDGET
    if not isinstance(raw, dict):
        raise _Invalid("retryBudget is not a mapping")
    ratio = raw.get("retryRatio", DEFAULT_RETRY_BUDGET.retry_ratio)
    per_second = raw.get("minRetriesPerSecond", DEFAULT_RETRY_BUDGET.min_retries_per_second)
    ttl = raw.get("ttl", format_duration(DEFAULT_RETRY_BUDGET.ttl))
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1000:
        raise _Invalid(f"retryBudget.retryRatio {ratio!r} is not a number in 0-1000")
    if isinstance(per_second, bool) or not isinstance(per_second, int) or per_second < 0:
        raise _Invalid(f"retryBudget.minRetriesPerSecond {per_second!r} is not a whole number")
    try:
        ttl_seconds = parse_duration(str(ttl))
    except DurationError as error:
        raise _Invalid(f"retryBudget.ttl: {error}") from None
    return RetryBudget(float(ratio), per_second, ttl_seconds)


def parse_profile(raw: Any) -> Profile | BadObject:
    """A ServiceProfile object, or why it is skipped."""
    key = object_key(raw)
    if key is None:
        return BadObject("ServiceProfile", "missing_metadata", "it has no metadata.name/namespace")
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        return BadObject("ServiceProfile", "missing_spec", "it has no spec", *key)
    try:
        rendered = _routes(spec.get("routes", []))
        budget = _retry_budget(spec.get("retryBudget"))
    except _Invalid as error:
        return BadObject("ServiceProfile", "invalid_spec", str(error), *key)
    return Profile(key=key, routes_json=json.dumps(rendered, sort_keys=True), retry_budget=budget)


def _budget_json(budget: RetryBudget) -> dict[str, Any]:
    return {
        "retry_ratio": budget.retry_ratio,
        "min_retries_per_second": budget.min_retries_per_second,
        "ttl": format_duration(budget.ttl),
    }


def profile_json(profile: Profile, fully_qualified_name: str) -> dict[str, Any]:
    return {
        "fully_qualified_name": fully_qualified_name,
        "routes": json.loads(profile.routes_json),
        "retry_budget": _budget_json(profile.retry_budget),
    }


def default_profile_json(fully_qualified_name: str) -> dict[str, Any]:
    """What a service without a ServiceProfile gets: no routes, Linkerd's retry budget."""
    return {
        "fully_qualified_name": fully_qualified_name,
        "routes": [],
        "retry_budget": _budget_json(DEFAULT_RETRY_BUDGET),
    }
