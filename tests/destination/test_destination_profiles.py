"""ServiceProfiles: parsed, rendered for proxies, defaulted, and refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from destination.authority import IPTarget, ServiceTarget
from destination.endpoints import identity_function
from destination.events import Changed
from destination.index import ClusterState, topics_for
from destination.model import BadObject
from destination.profiles import parse_profile

from .dst_objects import service, service_profile

FQDN = "web.shop.svc.cluster.local"
ROUTES = [
    {
        "name": "GET /books/{id}",
        "condition": {"method": "get", "pathRegex": r"/books/\d+"},
        "responseClasses": [{"condition": {"status": {"min": 500, "max": 599}}, "isFailure": True}],
        "isRetryable": True,
        "timeout": "300ms",
    },
    {
        "name": "not POST",
        "condition": {
            "all": [
                {"not": {"method": "POST"}},
                {"any": [{"pathRegex": "/a"}, {"pathRegex": "/b"}]},
            ]
        },
    },
]


def new_state() -> ClusterState:
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    return ClusterState(cluster_domain="cluster.local", identity_for=identity)


def test_default_profile_when_none_exists() -> None:
    state = new_state()
    state.apply(Changed("Service", "ADDED", service("web")))
    assert state.profile(ServiceTarget("shop", "web", 80)) == {
        "fully_qualified_name": FQDN,
        "routes": [],
        "retry_budget": {"retry_ratio": 0.2, "min_retries_per_second": 10, "ttl": "10s"},
        "exists": False,
    }


def test_profile_routes_and_budget_rendered() -> None:
    state = new_state()
    state.apply(Changed("Service", "ADDED", service("web")))
    budget = {"retryRatio": 0.5, "minRetriesPerSecond": 3, "ttl": "1m"}
    applied = state.apply(
        Changed("ServiceProfile", "ADDED", service_profile(FQDN, routes=ROUTES, retryBudget=budget))
    )
    assert topics_for(ServiceTarget("shop", "web", 80)) <= applied.topics
    assert ("ip", "10.96.0.10") in applied.topics
    rendered = state.profile(IPTarget("10.96.0.10", 80))  # the ClusterIP finds it too
    assert rendered["exists"] is True
    assert rendered["retry_budget"] == {
        "retry_ratio": 0.5,
        "min_retries_per_second": 3,
        "ttl": "1m",
    }
    first, second = rendered["routes"]
    assert first == {
        "name": "GET /books/{id}",
        "condition": {"method": "GET", "path_regex": r"/books/\d+"},
        "response_classes": [{"status": {"min": 500, "max": 599}, "is_failure": True}],
        "is_retryable": True,
        "timeout": "300ms",
    }
    assert second["condition"] == {
        "all": [{"not": {"method": "POST"}}, {"any": [{"path_regex": "/a"}, {"path_regex": "/b"}]}]
    }
    assert second["timeout"] is None
    assert second["is_retryable"] is False


def test_profile_in_the_wrong_namespace_does_not_apply() -> None:
    state = new_state()
    state.apply(Changed("Service", "ADDED", service("web")))
    applied = state.apply(
        Changed("ServiceProfile", "ADDED", service_profile(FQDN, "elsewhere", routes=[]))
    )
    assert applied.topics == set()
    assert state.profile(ServiceTarget("shop", "web", 80))["exists"] is False


def test_pod_ip_gets_the_default_profile() -> None:
    rendered = new_state().profile(IPTarget("10.1.0.1", 8080))
    assert rendered["fully_qualified_name"] == "10.1.0.1:8080"
    assert rendered["exists"] is False


def route(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "condition": {"method": "GET"}, **fields}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        pytest.param({"routes": "nope"}, "routes must be a list", id="routes-not-list"),
        pytest.param({"routes": [{"condition": {"method": "GET"}}]}, "has no name", id="no-name"),
        pytest.param({"routes": [{"name": "r"}]}, "has no condition", id="no-condition"),
        pytest.param(
            {"routes": [route(condition={})]}, "not a non-empty mapping", id="empty-condition"
        ),
        pytest.param(
            {"routes": [route(condition={"method": "FETCH"})]},
            "not an HTTP method",
            id="bad-method",
        ),
        pytest.param(
            {"routes": [route(condition={"pathRegex": "("})]}, "does not compile", id="bad-regex"
        ),
        pytest.param(
            {"routes": [route(condition={"host": "x"})]}, "unknown fields", id="unknown-field"
        ),
        pytest.param({"routes": [route(condition={"all": []})]}, "non-empty list", id="empty-all"),
        pytest.param({"routes": [route(timeout="soon")]}, "invalid duration", id="bad-timeout"),
        pytest.param({"routes": [route(isRetryable="yes")]}, "true or false", id="bad-retryable"),
        pytest.param(
            {"routes": [route(responseClasses=[{"condition": {"status": {"min": 600}}}])]},
            "100-599",
            id="bad-status",
        ),
        pytest.param({"retryBudget": {"retryRatio": "lots"}}, "retryRatio", id="bad-ratio"),
        pytest.param(
            {"retryBudget": {"minRetriesPerSecond": -1}}, "minRetriesPerSecond", id="bad-min"
        ),
        pytest.param({"retryBudget": {"ttl": "forever"}}, "retryBudget.ttl", id="bad-ttl"),
    ],
)
def test_invalid_profiles_are_refused_with_a_reason(spec: dict[str, Any], fragment: str) -> None:
    parsed = parse_profile(service_profile(FQDN, **spec))
    assert isinstance(parsed, BadObject)
    assert parsed.reason == "invalid_spec"
    assert fragment in parsed.detail


def test_deeply_nested_condition_is_refused() -> None:
    condition: dict[str, Any] = {"method": "GET"}
    for _ in range(20):
        condition = {"not": condition}
    parsed = parse_profile(service_profile(FQDN, routes=[route(condition=condition)]))
    assert isinstance(parsed, BadObject)
    assert "deeper" in parsed.detail


def test_an_invalid_update_falls_back_to_the_default() -> None:
    state = new_state()
    state.apply(Changed("Service", "ADDED", service("web")))
    state.apply(Changed("ServiceProfile", "ADDED", service_profile(FQDN, routes=ROUTES)))
    assert state.profile(ServiceTarget("shop", "web", 80))["exists"] is True
    applied = state.apply(
        Changed("ServiceProfile", "MODIFIED", service_profile(FQDN, routes=[{"name": "x"}]))
    )
    assert [bad.reason for bad in applied.skipped] == ["invalid_spec"]
    assert state.profile(ServiceTarget("shop", "web", 80))["exists"] is False
