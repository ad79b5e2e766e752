"""Peak-EWMA: peaks are taken at once, lower RTTs decay in, idle decays toward zero."""

from __future__ import annotations

import math

import pytest

from proxy.balance.ewma import PeakEwma


def ewma(now: float = 0.0) -> PeakEwma:
    return PeakEwma(default_rtt=0.030, decay=10.0, now=now)


def test_starts_at_the_default_rtt() -> None:
    assert ewma().estimate == 0.030


def test_a_higher_rtt_is_the_new_peak_at_once() -> None:
    e = ewma()
    assert e.observe(0.5, 0.001) == 0.5


def test_a_lower_rtt_decays_in_by_elapsed_time() -> None:
    e = ewma()
    e.observe(0.5, 0.0)
    weight = math.exp(-10.0 / 10.0)
    assert e.observe(0.1, 10.0) == pytest.approx(0.5 * weight + 0.1 * (1 - weight))


def test_a_lower_rtt_observed_at_the_same_instant_changes_nothing() -> None:
    e = ewma()
    e.observe(0.5, 1.0)
    assert e.observe(0.001, 1.0) == 0.5


@pytest.mark.parametrize(
    ("pending", "expected"),
    [
        pytest.param(0, 0.030, id="idle"),
        pytest.param(1, 0.060, id="one-pending"),
        pytest.param(9, 0.300, id="nine-pending"),
    ],
)
def test_load_is_estimate_times_pending_plus_one(pending: int, expected: float) -> None:
    assert ewma().load(pending, 0.0) == pytest.approx(expected)


def test_load_decays_toward_zero_when_idle() -> None:
    e = ewma()
    e.observe(1.0, 0.0)
    assert e.load(0, 10.0) == pytest.approx(math.exp(-1.0))
    assert e.load(0, 20.0) == pytest.approx(math.exp(-2.0))


def test_pending_still_counts_after_a_long_idle_time() -> None:
    e = ewma()
    assert e.load(5, 1e6) > e.load(0, 1e6) > 0


def test_a_clock_going_backwards_does_not_raise_the_estimate() -> None:
    e = ewma(now=5.0)
    assert e.observe(0.010, 1.0) == pytest.approx(0.030)
