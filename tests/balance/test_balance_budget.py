"""The retry budget: ratio x deposits + reserve per sliding ttl window."""

from __future__ import annotations

import pytest

from proxy.balance import BudgetSettings, BudgetSettingsError, RetryBudget


def budget(ratio: float = 0.2, per_second: int = 10, ttl: float = 10.0) -> RetryBudget:
    return RetryBudget(
        BudgetSettings(retry_ratio=ratio, min_retries_per_second=per_second, ttl=ttl)
    )


def spend(b: RetryBudget, now: float) -> int:
    """Withdraw until refused; return how many were allowed."""
    count = 0
    while b.withdraw(now) is None:
        count += 1
    return count


def test_linkerd_defaults() -> None:
    settings = BudgetSettings()
    assert (settings.retry_ratio, settings.min_retries_per_second, settings.ttl) == (0.2, 10, 10.0)
    assert settings.reserve == 100


def test_with_no_traffic_the_reserve_is_allowed_then_refused_with_a_slug() -> None:
    b = budget()
    assert spend(b, 0.0) == 100
    assert b.can_retry(0.0) == "retry_budget_exhausted"


def test_deposits_add_the_ratio() -> None:
    b = budget(per_second=0)
    for _ in range(50):
        b.deposit(0.0)
    assert spend(b, 0.0) == 10


@pytest.mark.parametrize(
    ("deposits", "allowed"),
    [
        pytest.param(0, 0, id="none"),
        pytest.param(4, 0, id="under-one"),
        pytest.param(5, 1, id="exactly-one"),
        pytest.param(1000, 200, id="many"),
    ],
)
def test_ratio_rounds_down(deposits: int, allowed: int) -> None:
    b = budget(per_second=0)
    for _ in range(deposits):
        b.deposit(1.0)
    assert spend(b, 1.0) == allowed


def test_a_refused_withdrawal_spends_nothing() -> None:
    b = budget(per_second=0)
    assert b.withdraw(0.0) == "retry_budget_exhausted"
    assert b.totals(0.0) == (0, 0)


def test_withdrawals_expire_after_the_ttl() -> None:
    b = budget()
    assert spend(b, 0.0) == 100
    assert b.can_retry(9.9) == "retry_budget_exhausted"
    assert spend(b, 10.0) == 100


def test_deposits_expire_after_the_ttl() -> None:
    b = budget(per_second=0)
    for _ in range(10):
        b.deposit(0.0)
    assert b.can_retry(9.99) is None
    assert b.can_retry(10.0) == "retry_budget_exhausted"


def test_the_window_slides_slot_by_slot() -> None:
    b = budget(per_second=0)
    for second in range(10):
        for _ in range(5):
            b.deposit(float(second))
    assert b.totals(9.5) == (50, 0)
    assert b.totals(10.5) == (45, 0)  # second 0's slot expired, the others still count
    assert b.window_start(10.5) == pytest.approx(1.0)


def test_a_clock_going_backwards_counts_in_the_newest_slot() -> None:
    b = budget(per_second=0)
    b.deposit(5.0)
    b.deposit(4.0)
    assert b.totals(5.0) == (2, 0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"retry_ratio": -0.1}, "retry_ratio", id="negative-ratio"),
        pytest.param({"retry_ratio": 1001}, "retry_ratio", id="huge-ratio"),
        pytest.param({"min_retries_per_second": -1}, "min_retries_per_second", id="negative-min"),
        pytest.param({"ttl": 0.5}, "ttl", id="ttl-short"),
        pytest.param({"ttl": 61}, "ttl", id="ttl-long"),
    ],
)
def test_settings_out_of_range_are_refused(changes: dict[str, float], field: str) -> None:
    with pytest.raises(BudgetSettingsError, match=field):
        BudgetSettings(**changes)  # type: ignore[arg-type]
