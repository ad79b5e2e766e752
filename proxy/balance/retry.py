"""Whether to retry a request that just ended, per route (Linkerd's ServiceProfile retries).

Decision table, evaluated top to bottom; the first matching row answers::

    attempt ended with ...                         -> answer
    SUCCESS                                        -> GiveUp(response_succeeded)
    CANCELLED                                      -> GiveUp(request_cancelled)
    FAILURE, body not replayable                   -> GiveUp(request_body_not_replayable)
    a failure, attempt > max_retries               -> GiveUp(max_retries_reached)
    a failure, route timeout elapsed since start   -> GiveUp(route_timeout)
    FAILURE on a route not isRetryable             -> GiveUp(route_not_retryable)
    a failure (CONNECT_FAILED: on any route, as
      nothing was sent), budget spent              -> GiveUp(retry_budget_exhausted)
    a failure, budget left                         -> Retry(attempt + 1), one withdrawal

``attempt`` counts from 1 (the original request). Original requests deposit into the budget with
``RetryPolicy.started``; retries are not deposits.
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import RetryBudget
from .outcome import Outcome
from .reasons import (
    BODY_NOT_REPLAYABLE,
    MAX_RETRIES,
    REQUEST_CANCELLED,
    RESPONSE_SUCCEEDED,
    ROUTE_NOT_RETRYABLE,
    ROUTE_TIMEOUT,
)
from .routes import Route

__all__ = ["GiveUp", "Retry", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the request again (to a fresh ``Balancer.pick``)."""

    attempt: int
    """The number of the attempt about to be sent (2 for the first retry)."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Answer the client with what the last attempt got; ``reason`` is a slug."""

    reason: str


class RetryPolicy:
    """Retries of one destination: its budget and a hard cap on attempts per request."""

    __slots__ = ("budget", "max_retries")

    def __init__(self, budget: RetryBudget | None = None, *, max_retries: int = 3) -> None:
        self.budget = budget or RetryBudget()
        self.max_retries = max_retries
        """Not in Linkerd's profiles (the budget alone bounds them): a per-request cap so one
        request cannot take the whole reserve."""

    def started(self, now: float) -> None:
        """An original request is being sent: deposit once into the budget."""
        self.budget.deposit(now)

    def decide(  # noqa: PLR0911 - one return per row of the table above
        self,
        route: Route,
        attempt: int,
        outcome: Outcome,
        now: float,
        *,
        replayable: bool = True,
        started: float | None = None,
    ) -> Retry | GiveUp:
        """Decide after attempt number ``attempt`` ended with ``outcome`` (see the table)."""
        if outcome is Outcome.SUCCESS:
            return GiveUp(RESPONSE_SUCCEEDED)
        if outcome is Outcome.CANCELLED:
            return GiveUp(REQUEST_CANCELLED)
        if not replayable and outcome is Outcome.FAILURE:  # a failed connect consumed no body
            return GiveUp(BODY_NOT_REPLAYABLE)
        if attempt > self.max_retries:
            return GiveUp(MAX_RETRIES)
        if route.timeout is not None and started is not None and now - started >= route.timeout:
            return GiveUp(ROUTE_TIMEOUT)
        if outcome is Outcome.FAILURE and not route.retryable:
            return GiveUp(ROUTE_NOT_RETRYABLE)
        refusal = self.budget.withdraw(now)
        if refusal is not None:
            return GiveUp(refusal)
        return Retry(attempt + 1)
