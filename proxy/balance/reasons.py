"""Stable slugs for every refusal this package returns, and the sentence for each.

A slug is a metric label and the value of the ``meshlet-proxy-error`` header; the sentence is
for logs. Slugs never change meaning once released.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ALL_ENDPOINTS_EJECTED",
    "BODY_NOT_REPLAYABLE",
    "BUDGET_EXHAUSTED",
    "MAX_RETRIES",
    "NO_ENDPOINTS",
    "REASONS",
    "REQUEST_CANCELLED",
    "RESPONSE_SUCCEEDED",
    "ROUTE_NOT_RETRYABLE",
    "ROUTE_TIMEOUT",
    "describe",
]

NO_ENDPOINTS: Final = "no_endpoints"
ALL_ENDPOINTS_EJECTED: Final = "all_endpoints_ejected"
BUDGET_EXHAUSTED: Final = "retry_budget_exhausted"
ROUTE_NOT_RETRYABLE: Final = "route_not_retryable"
RESPONSE_SUCCEEDED: Final = "response_succeeded"
MAX_RETRIES: Final = "max_retries_reached"
BODY_NOT_REPLAYABLE: Final = "request_body_not_replayable"
ROUTE_TIMEOUT: Final = "route_timeout"
REQUEST_CANCELLED: Final = "request_cancelled"

REASONS: Final = {
    NO_ENDPOINTS: "discovery lists no endpoint for this destination",
    ALL_ENDPOINTS_EJECTED: (
        "every endpoint is ejected after consecutive failures (or its single probe is in flight)"
    ),
    BUDGET_EXHAUSTED: "the retry budget (ratio x requests + minimum per second x ttl) is spent",
    ROUTE_NOT_RETRYABLE: "the route is not marked isRetryable and the request was sent",
    RESPONSE_SUCCEEDED: "the response is not a failure: nothing to retry",
    MAX_RETRIES: "the request was already retried the maximum number of times",
    BODY_NOT_REPLAYABLE: "the request body was larger than the retry buffer",
    ROUTE_TIMEOUT: "the route's timeout has elapsed",
    REQUEST_CANCELLED: "the client went away: nobody is waiting for a retry",
}


def describe(slug: str) -> str:
    """The sentence for a slug (the slug itself if unknown)."""
    return REASONS.get(slug, slug)
