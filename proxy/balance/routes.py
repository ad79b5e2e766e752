"""ServiceProfile routes as the destination streams them: match a request, classify a response.

The wire shape (``destination/profiles.py``, docs/destination.md)::

    {"routes": [{"name": "GET /books/{id}",
                 "condition": {"method": "GET", "path_regex": "/books/\\d+",
                               "all": [...], "any": [...], "not": {...}},
                 "response_classes": [{"status": {"min": 500, "max": 599}, "is_failure": true}],
                 "is_retryable": true, "timeout": "300ms"}],
     "retry_budget": {"retry_ratio": 0.2, "min_retries_per_second": 10, "ttl": "10s"}}

A condition's fields are all required to hold (an implicit ``all``). ``path_regex`` must match the
whole path, query excluded (Linkerd anchors it). Routes are tried in order: the first match wins;
no match gives :data:`DEFAULT_ROUTE` (no timeout, not retryable). The destination service already
validates profiles, but the proxy trusts no peer: a malformed profile raises :class:`ProfileError`
(the caller keeps the previous table and logs the message).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from meshlet.durations import DurationError, parse_duration

from .budget import BudgetSettings
from .outcome import Outcome

__all__ = [
    "DEFAULT_ROUTE",
    "ProfileError",
    "ResponseClass",
    "Route",
    "RouteTable",
    "classify",
]

_MAX_DEPTH: Final = 8
_MAX_ROUTES: Final = 500
_MAX_REGEX: Final = 1024
_DEFAULT_BUDGET: Final = BudgetSettings()

Condition = Callable[[str, str], bool]


class ProfileError(ValueError):
    """A profile line from the destination service does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class ResponseClass:
    min_status: int
    max_status: int
    is_failure: bool


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    """The ``rt_route`` metric label; "" for the default route."""
    timeout: float | None
    """Seconds for the whole request, retries included; None: no route timeout."""
    retryable: bool
    response_classes: tuple[ResponseClass, ...] = ()


DEFAULT_ROUTE: Final = Route(name="", timeout=None, retryable=False)


def classify(route: Route, status: int, grpc_status: int | None = None) -> Outcome:
    """Linkerd's classification: the route's first response class containing ``status`` decides;
    otherwise 5xx, or a ``grpc-status`` other than 0, is a failure."""
    for response_class in route.response_classes:
        if response_class.min_status <= status <= response_class.max_status:
            return Outcome.FAILURE if response_class.is_failure else Outcome.SUCCESS
    if status >= 500 or (grpc_status is not None and grpc_status != 0):
        return Outcome.FAILURE
    return Outcome.SUCCESS


class _Method:
    __slots__ = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method

    def __call__(self, method: str, path: str) -> bool:
        return method.upper() == self.method


class _Path:
    __slots__ = ("pattern",)

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def __call__(self, method: str, path: str) -> bool:
        return self.pattern.fullmatch(path) is not None


class _All:
    __slots__ = ("members",)

    def __init__(self, members: Sequence[Condition]) -> None:
        self.members = tuple(members)

    def __call__(self, method: str, path: str) -> bool:
        return all(member(method, path) for member in self.members)


class _Any(_All):
    __slots__ = ()

    def __call__(self, method: str, path: str) -> bool:
        return any(member(method, path) for member in self.members)


class _Not:
    __slots__ = ("inner",)

    def __init__(self, inner: Condition) -> None:
        self.inner = inner

    def __call__(self, method: str, path: str) -> bool:
        return not self.inner(method, path)


def _path(value: Any) -> Condition:
    if not isinstance(value, str) or len(value) > _MAX_REGEX:
        raise ProfileError(f"path_regex must be a string of at most {_MAX_REGEX} characters")
    try:
        return _Path(re.compile(value))
    except re.error as error:
        raise ProfileError(f"path_regex {value!r} does not compile: {error}") from None


def _condition(raw: Any, depth: int) -> Condition:
    """Compile one condition; its fields must all hold (an implicit ``all``)."""
    if depth > _MAX_DEPTH:
        raise ProfileError(f"conditions nest deeper than {_MAX_DEPTH}")
    if not isinstance(raw, Mapping) or not raw:
        raise ProfileError(f"condition {str(raw)[:100]!r} is not a non-empty object")
    parts: list[Condition] = []
    for field, value in raw.items():
        if field == "method":
            if not isinstance(value, str):
                raise ProfileError("condition.method is not a string")
            parts.append(_Method(value.upper()))
        elif field == "path_regex":
            parts.append(_path(value))
        elif field in {"all", "any"}:
            if not isinstance(value, list) or not value:
                raise ProfileError(f"condition.{field} is not a non-empty list")
            members = [_condition(item, depth + 1) for item in value]
            parts.append(_All(members) if field == "all" else _Any(members))
        elif field == "not":
            parts.append(_Not(_condition(value, depth + 1)))
        else:
            raise ProfileError(f"condition has an unknown field {field!r}")
    return parts[0] if len(parts) == 1 else _All(parts)


def _response_class(raw: Any) -> ResponseClass:
    status = raw.get("status") if isinstance(raw, Mapping) else None
    low = status.get("min", 100) if isinstance(status, Mapping) else None
    high = status.get("max", 599) if isinstance(status, Mapping) else None
    if not (isinstance(low, int) and isinstance(high, int) and 100 <= low <= high <= 599):
        raise ProfileError(f"response class {str(raw)[:100]!r} has no status range in 100-599")
    return ResponseClass(low, high, raw.get("is_failure") is True)


def _route(raw: Any) -> tuple[Condition, Route]:
    if not isinstance(raw, Mapping):
        raise ProfileError("a route is not an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError("a route has no name")
    timeout = raw.get("timeout")
    seconds: float | None = None
    if timeout is not None:
        try:
            seconds = parse_duration(str(timeout))
        except DurationError as error:
            raise ProfileError(f"route {name!r}: {error}") from None
    classes = raw.get("response_classes") or []
    if not isinstance(classes, list):
        raise ProfileError(f"route {name!r}: response_classes is not a list")
    route = Route(
        name=name,
        timeout=seconds if seconds else None,
        retryable=raw.get("is_retryable") is True,
        response_classes=tuple(_response_class(item) for item in classes),
    )
    return _condition(raw.get("condition"), 0), route


def _budget(raw: Any) -> BudgetSettings:
    if raw is None:
        return _DEFAULT_BUDGET
    if not isinstance(raw, Mapping):
        raise ProfileError("retry_budget is not an object")
    ratio, per_second, ttl = (
        raw.get("retry_ratio"),
        raw.get("min_retries_per_second"),
        raw.get("ttl"),
    )
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise ProfileError("retry_budget.retry_ratio is not a number")
    if isinstance(per_second, bool) or not isinstance(per_second, int):
        raise ProfileError("retry_budget.min_retries_per_second is not a whole number")
    try:
        # tower accepts a ttl of 1-60 s only; the CRD does not say, so clamp rather than refuse.
        seconds = min(max(parse_duration(str(ttl)), 1.0), 60.0)
        return BudgetSettings(
            retry_ratio=float(ratio), min_retries_per_second=per_second, ttl=seconds
        )
    except ValueError as error:  # DurationError, BudgetSettingsError
        raise ProfileError(f"retry_budget: {error}") from None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routes of one profile, in order, and its retry budget."""

    routes: Sequence[tuple[Condition, Route]] = ()
    budget: BudgetSettings = _DEFAULT_BUDGET

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any] | None) -> RouteTable:
        """Build from ``ProfileState.profile`` (None, before the first line: no routes)."""
        if profile is None:
            return cls()
        routes = profile.get("routes")
        if not isinstance(routes, list) or len(routes) > _MAX_ROUTES:
            raise ProfileError(f"routes must be a list of at most {_MAX_ROUTES}")
        return cls(tuple(_route(raw) for raw in routes), _budget(profile.get("retry_budget")))

    def match(self, method: str, path: str) -> Route:
        """The first route whose condition holds for this request, else the default route."""
        path = path.split("?", 1)[0]
        for condition, route in self.routes:
            if condition(method, path):
                return route
        return DEFAULT_ROUTE
