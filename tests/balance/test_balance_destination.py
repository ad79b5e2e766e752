"""The per-request façade, fed by discovery's own trackers as the proxy will feed it."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from proxy.balance import Destination, GiveUp, NoEndpoint, Outcome, Pick, Retry
from proxy.discovery import Endpoint
from proxy.discovery.state import EndpointTracker, ProfileTracker, parse_line

PROFILE_LINE: dict[str, Any] = {
    "type": "profile",
    "fully_qualified_name": "books.shop.svc.cluster.local",
    "routes": [
        {
            "name": "GET /books/{id}",
            "condition": {"method": "GET", "path_regex": r"/books/\d+"},
            "response_classes": [],
            "is_retryable": True,
            "timeout": "300ms",
        }
    ],
    "retry_budget": {"retry_ratio": 0.2, "min_retries_per_second": 10, "ttl": "10s"},
    "exists": True,
}


def line(message: dict[str, Any]) -> dict[str, Any]:
    return parse_line(json.dumps(message).encode())


def ep(address: str) -> dict[str, Any]:
    return {"address": address, "port": 80, "weight": 10000, "identity": None, "labels": {}}


@pytest.fixture
def wired() -> tuple[Destination[Endpoint], EndpointTracker, ProfileTracker]:
    endpoints, profiles = EndpointTracker(), ProfileTracker()
    endpoints.apply(line({"type": "snapshot", "exists": True, "endpoints": [ep("a"), ep("b")]}))
    profiles.apply(line(PROFILE_LINE))
    destination: Destination[Endpoint] = Destination(rng=random.Random(5))
    assert destination.sync_endpoints(endpoints.current, 0.0)
    assert destination.sync_profile(profiles.current) is None
    return destination, endpoints, profiles


def picked(choice: Pick[Endpoint] | NoEndpoint) -> Pick[Endpoint]:
    assert isinstance(choice, Pick), choice
    return choice


def test_a_failed_retryable_request_is_retried_on_the_other_endpoint(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("GET", "/books/7", 1.0)
    assert attempts.route.name == "GET /books/{id}"
    assert attempts.deadline == pytest.approx(1.3)
    first = picked(attempts.pick(1.0))
    assert attempts.finished(first, 1.01, status=503) == Retry(2)
    second = picked(attempts.pick(1.01))
    assert second.endpoint != first.endpoint
    assert attempts.finished(second, 1.02, status=200) == GiveUp("response_succeeded")
    assert destination.retries.budget.totals(1.02) == (1, 1)
    assert all(s.pending == 0 for s in destination.balancer.stats())


def test_a_request_on_an_unknown_route_is_not_retried(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("POST", "/books", 0.0)
    assert attempts.route.name == ""
    assert attempts.deadline is None
    choice = picked(attempts.pick(0.0))
    assert attempts.finished(choice, 0.1, status=500) == GiveUp("route_not_retryable")


def test_a_connect_failure_is_retried_on_any_route(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("POST", "/books", 0.0)
    choice = picked(attempts.pick(0.0))
    assert attempts.finished(choice, 0.0, outcome=Outcome.CONNECT_FAILED) == Retry(2)


def test_grpc_status_is_classified(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("GET", "/books/1", 0.0)
    choice = picked(attempts.pick(0.0))
    assert attempts.finished(choice, 0.01, status=200, grpc_status=14) == Retry(2)


def test_a_body_too_large_to_replay_is_not_retried(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("GET", "/books/1", 0.0)
    attempts.replayable = False
    choice = picked(attempts.pick(0.0))
    assert attempts.finished(choice, 0.01, status=502) == GiveUp("request_body_not_replayable")


def test_the_route_timeout_ends_retries(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("GET", "/books/1", 0.0)
    choice = picked(attempts.pick(0.0))
    assert attempts.finished(choice, 0.3, outcome=Outcome.FAILURE) == GiveUp("route_timeout")


def test_finished_needs_a_status_or_an_outcome(wired: Any) -> None:
    destination, _, _ = wired
    attempts = destination.begin("GET", "/", 0.0)
    with pytest.raises(ValueError, match="status or an outcome"):
        attempts.finished(picked(attempts.pick(0.0)), 0.0)


def test_endpoint_changes_are_followed_by_version(wired: Any) -> None:
    destination, endpoints, _ = wired
    assert not destination.sync_endpoints(endpoints.current, 1.0)  # same version: no work
    endpoints.apply(line({"type": "remove", "endpoints": [{"address": "a", "port": 80}]}))
    assert destination.sync_endpoints(endpoints.current, 1.0)
    for _ in range(5):
        assert picked(destination.begin("GET", "/", 1.0).pick(1.0)).endpoint.address == "b"
    endpoints.apply(line({"type": "remove", "endpoints": [{"address": "b", "port": 80}]}))
    destination.sync_endpoints(endpoints.current, 2.0)
    assert destination.begin("GET", "/", 2.0).pick(2.0) == NoEndpoint("no_endpoints")


def test_a_malformed_profile_keeps_the_previous_routes(wired: Any) -> None:
    destination, _, profiles = wired
    broken = {**PROFILE_LINE, "routes": [{"name": "x", "condition": {"path_regex": "("}}]}
    profiles.apply(line(broken))
    message = destination.sync_profile(profiles.current)
    assert message is not None
    assert "does not compile" in message
    assert destination.begin("GET", "/books/1", 0.0).route.name == "GET /books/{id}"


def test_a_new_budget_replaces_the_old_one(wired: Any) -> None:
    destination, _, profiles = wired
    budget = {"retry_ratio": 0.5, "min_retries_per_second": 1, "ttl": "5s"}
    profiles.apply(line({**PROFILE_LINE, "retry_budget": budget}))
    assert destination.sync_profile(profiles.current) is None
    assert destination.retries.budget.settings.ttl == 5.0
    assert destination.retries.budget.settings.reserve == 5.0
