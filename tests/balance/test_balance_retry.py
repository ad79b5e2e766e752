"""RetryPolicy.decide, row by row of the table in ``proxy/balance/retry.py``."""

from __future__ import annotations

import pytest

from proxy.balance import (
    DEFAULT_ROUTE,
    BudgetSettings,
    GiveUp,
    Outcome,
    Retry,
    RetryBudget,
    RetryPolicy,
    Route,
)

RETRYABLE = Route(name="get", timeout=1.0, retryable=True)
NOT_RETRYABLE = Route(name="post", timeout=None, retryable=False)


def policy(reserve_per_second: int = 10) -> RetryPolicy:
    budget = RetryBudget(BudgetSettings(min_retries_per_second=reserve_per_second))
    return RetryPolicy(budget, max_retries=2)


@pytest.mark.parametrize(
    ("route", "attempt", "outcome", "kwargs", "answer"),
    [
        pytest.param(RETRYABLE, 1, Outcome.SUCCESS, {}, GiveUp("response_succeeded"), id="success"),
        pytest.param(
            RETRYABLE, 1, Outcome.CANCELLED, {}, GiveUp("request_cancelled"), id="cancelled"
        ),
        pytest.param(
            RETRYABLE,
            1,
            Outcome.FAILURE,
            {"replayable": False},
            GiveUp("request_body_not_replayable"),
            id="body-too-large",
        ),
        pytest.param(
            RETRYABLE, 3, Outcome.FAILURE, {}, GiveUp("max_retries_reached"), id="max-retries"
        ),
        pytest.param(
            RETRYABLE,
            1,
            Outcome.CONNECT_FAILED,
            {"replayable": False},
            Retry(2),
            id="connect-failed-body-never-sent",
        ),
        pytest.param(
            RETRYABLE,
            1,
            Outcome.FAILURE,
            {"started": 9.0},
            GiveUp("route_timeout"),
            id="route-timeout-elapsed",
        ),
        pytest.param(
            NOT_RETRYABLE, 1, Outcome.FAILURE, {}, GiveUp("route_not_retryable"), id="not-retryable"
        ),
        pytest.param(
            DEFAULT_ROUTE,
            1,
            Outcome.FAILURE,
            {},
            GiveUp("route_not_retryable"),
            id="default-route-not-retryable",
        ),
        pytest.param(
            NOT_RETRYABLE, 1, Outcome.CONNECT_FAILED, {}, Retry(2), id="connect-failed-any-route"
        ),
        pytest.param(
            RETRYABLE, 1, Outcome.FAILURE, {"started": 9.5}, Retry(2), id="retryable-within-timeout"
        ),
        pytest.param(RETRYABLE, 2, Outcome.FAILURE, {}, Retry(3), id="second-retry"),
    ],
)
def test_decision_table(
    route: Route, attempt: int, outcome: Outcome, kwargs: dict[str, object], answer: object
) -> None:
    assert policy().decide(route, attempt, outcome, 10.0, **kwargs) == answer  # type: ignore[arg-type]


def test_a_spent_budget_gives_up_with_its_slug() -> None:
    p = policy(reserve_per_second=0)
    assert p.decide(RETRYABLE, 1, Outcome.FAILURE, 0.0) == GiveUp("retry_budget_exhausted")
    for _ in range(5):
        p.started(0.0)
    assert p.decide(RETRYABLE, 1, Outcome.FAILURE, 0.0) == Retry(2)
    assert p.decide(RETRYABLE, 1, Outcome.FAILURE, 0.0) == GiveUp("retry_budget_exhausted")


def test_only_retries_withdraw() -> None:
    p = policy()
    p.started(0.0)
    p.decide(RETRYABLE, 1, Outcome.SUCCESS, 0.0)
    p.decide(NOT_RETRYABLE, 1, Outcome.FAILURE, 0.0)
    assert p.budget.totals(0.0) == (1, 0)
    p.decide(RETRYABLE, 1, Outcome.FAILURE, 0.0)
    assert p.budget.totals(0.0) == (1, 1)
