"""Profile routes: conditions, first match wins, classification, malformed profiles refused."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.balance import (
    DEFAULT_ROUTE,
    BudgetSettings,
    Outcome,
    ProfileError,
    Route,
    RouteTable,
    classify,
)

# One line as destination/profiles.py renders it (docs/destination.md), minus "type".
PROFILE: dict[str, Any] = {
    "fully_qualified_name": "books.shop.svc.cluster.local",
    "exists": True,
    "routes": [
        {
            "name": "GET /books/{id}",
            "condition": {"method": "GET", "path_regex": r"/books/\d+"},
            "response_classes": [],
            "is_retryable": True,
            "timeout": "300ms",
        },
        {
            "name": "write books",
            "condition": {
                "all": [
                    {"path_regex": "/books(/.*)?"},
                    {"any": [{"method": "POST"}, {"method": "PUT"}]},
                ]
            },
            "response_classes": [{"status": {"min": 500, "max": 503}, "is_failure": False}],
            "is_retryable": False,
            "timeout": None,
        },
        {
            "name": "not health",
            "condition": {"not": {"path_regex": "/health.*"}},
            "response_classes": [{"status": {"min": 404, "max": 404}, "is_failure": True}],
            "is_retryable": True,
            "timeout": "2s",
        },
    ],
    "retry_budget": {"retry_ratio": 0.5, "min_retries_per_second": 3, "ttl": "20s"},
}


@pytest.fixture
def table() -> RouteTable:
    return RouteTable.from_profile(PROFILE)


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        pytest.param("GET", "/books/12", "GET /books/{id}", id="get-book"),
        pytest.param("get", "/books/12", "GET /books/{id}", id="method-case"),
        pytest.param("GET", "/books/12?x=1", "GET /books/{id}", id="query-ignored"),
        pytest.param("GET", "/books/12/covers", "not health", id="regex-anchored-end"),
        pytest.param("GET", "/v1/books/12", "not health", id="regex-anchored-start"),
        pytest.param("POST", "/books", "write books", id="all-any-post"),
        pytest.param("PUT", "/books/12", "write books", id="all-any-put"),
        pytest.param("DELETE", "/books/12", "not health", id="any-fails"),
        pytest.param("GET", "/healthz", "", id="no-match-default"),
    ],
)
def test_first_matching_route_wins(table: RouteTable, method: str, path: str, route: str) -> None:
    assert table.match(method, path).name == route


def test_route_fields_are_read(table: RouteTable) -> None:
    get = table.match("GET", "/books/1")
    assert (get.timeout, get.retryable) == (0.3, True)
    write = table.match("POST", "/books")
    assert (write.timeout, write.retryable) == (None, False)


def test_the_retry_budget_is_read() -> None:
    assert RouteTable.from_profile(PROFILE).budget == BudgetSettings(
        retry_ratio=0.5, min_retries_per_second=3, ttl=20.0
    )


def test_a_ttl_outside_tower_range_is_clamped() -> None:
    profile = {**PROFILE, "retry_budget": {**PROFILE["retry_budget"], "ttl": "5m"}}
    assert RouteTable.from_profile(profile).budget.ttl == 60.0


def test_no_profile_yet_and_the_default_profile_have_no_routes() -> None:
    for profile in (None, {"routes": [], "retry_budget": None}):
        table = RouteTable.from_profile(profile)
        assert table.match("GET", "/") is DEFAULT_ROUTE
        assert table.budget == BudgetSettings()


@pytest.mark.parametrize(
    ("route", "status", "grpc", "outcome"),
    [
        pytest.param(DEFAULT_ROUTE, 200, None, Outcome.SUCCESS, id="200"),
        pytest.param(DEFAULT_ROUTE, 404, None, Outcome.SUCCESS, id="404"),
        pytest.param(DEFAULT_ROUTE, 500, None, Outcome.FAILURE, id="500"),
        pytest.param(DEFAULT_ROUTE, 503, None, Outcome.FAILURE, id="503"),
        pytest.param(DEFAULT_ROUTE, 200, 0, Outcome.SUCCESS, id="grpc-ok"),
        pytest.param(DEFAULT_ROUTE, 200, 14, Outcome.FAILURE, id="grpc-unavailable"),
        pytest.param("write books", 502, None, Outcome.SUCCESS, id="class-says-success"),
        pytest.param("write books", 504, None, Outcome.FAILURE, id="outside-class-default"),
        pytest.param("not health", 404, None, Outcome.FAILURE, id="class-says-failure"),
        pytest.param("not health", 200, 2, Outcome.FAILURE, id="grpc-outside-class"),
    ],
)
def test_classify(
    table: RouteTable, route: Route | str, status: int, grpc: int | None, outcome: Outcome
) -> None:
    if isinstance(route, str):
        route = next(r for _, r in table.routes if r.name == route)
    assert classify(route, status, grpc) is outcome


def bad(route_changes: dict[str, Any]) -> dict[str, Any]:
    route = {**PROFILE["routes"][0], **route_changes}
    return {**PROFILE, "routes": [route]}


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        pytest.param({"routes": "x"}, "routes must be a list", id="routes-not-list"),
        pytest.param({"routes": [1]}, "not an object", id="route-not-object"),
        pytest.param(bad({"name": ""}), "no name", id="no-name"),
        pytest.param(bad({"condition": {}}), "non-empty", id="empty-condition"),
        pytest.param(bad({"condition": None}), "non-empty", id="no-condition"),
        pytest.param(bad({"condition": {"host": "x"}}), "unknown field", id="unknown-field"),
        pytest.param(bad({"condition": {"path_regex": "("}}), "compile", id="bad-regex"),
        pytest.param(bad({"condition": {"path_regex": "a" * 2000}}), "at most", id="long-regex"),
        pytest.param(bad({"condition": {"method": 3}}), "method", id="method-not-string"),
        pytest.param(bad({"condition": {"any": []}}), "any", id="empty-any"),
        pytest.param(bad({"timeout": "soon"}), "invalid duration", id="bad-timeout"),
        pytest.param(bad({"response_classes": "x"}), "response_classes", id="classes-not-list"),
        pytest.param(
            bad({"response_classes": [{"status": {"min": 600}}]}), "100-599", id="class-range"
        ),
        pytest.param(
            {**PROFILE, "retry_budget": {"retry_ratio": "a"}}, "retry_ratio", id="budget-ratio"
        ),
        pytest.param(
            {
                **PROFILE,
                "retry_budget": {"retry_ratio": -1, "min_retries_per_second": 1, "ttl": "1s"},
            },
            "retry_ratio",
            id="budget-negative",
        ),
    ],
)
def test_a_malformed_profile_is_refused_with_a_message(
    profile: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProfileError, match=message):
        RouteTable.from_profile(profile)


def test_nesting_deeper_than_eight_is_refused() -> None:
    condition: dict[str, Any] = {"method": "GET"}
    for _ in range(9):
        condition = {"not": condition}
    with pytest.raises(ProfileError, match="deeper"):
        RouteTable.from_profile(bad({"condition": condition}))
