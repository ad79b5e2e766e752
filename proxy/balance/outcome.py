"""How one request to an endpoint ended, as the balancer, accrual and retries see it."""

from __future__ import annotations

import enum

__all__ = ["Outcome"]


class Outcome(enum.Enum):
    SUCCESS = "success"
    """A response the classifier calls a success."""
    FAILURE = "failure"
    """A response the classifier calls a failure (5xx, grpc-status != 0, a failure class), or
    the connection broke after the request was (maybe partly) sent."""
    CONNECT_FAILED = "connect_failed"
    """The endpoint could not be reached (refused, timed out, TLS refused): nothing was sent, so
    any request may be retried elsewhere. Counts as a failure for accrual."""
    CANCELLED = "cancelled"
    """The client went away before the response: says nothing about the endpoint. (A route
    timeout that fires is a FAILURE: the endpoint was too slow.)"""
