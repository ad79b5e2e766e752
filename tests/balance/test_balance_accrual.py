"""Failure accrual, state by state (see the table in ``proxy/balance/accrual.py``)."""

from __future__ import annotations

import random

import pytest

from proxy.balance import BalanceSettings, BalanceSettingsError, Outcome
from proxy.balance.accrual import Accrual, Health

SETTINGS = BalanceSettings(failure_threshold=3, min_backoff=1.0, max_backoff=8.0, jitter=0.5)


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def accrual(jitter_draw: float = 0.0) -> Accrual:
    return Accrual(SETTINGS, FixedRandom(jitter_draw))


def fail(a: Accrual, times: int, now: float = 0.0, *, probe: bool = False) -> None:
    for _ in range(times):
        a.finished(Outcome.FAILURE, now, probe=probe)


def test_fewer_consecutive_failures_than_the_threshold_keep_it_healthy() -> None:
    a = accrual()
    fail(a, 2)
    assert a.health is Health.HEALTHY
    assert a.available(0.0)


def test_a_success_resets_the_count() -> None:
    a = accrual()
    fail(a, 2)
    a.finished(Outcome.SUCCESS, 0.0, probe=False)
    fail(a, 2)
    assert a.health is Health.HEALTHY


def test_connect_failures_count_and_cancellations_do_not() -> None:
    a = accrual()
    a.finished(Outcome.CONNECT_FAILED, 0.0, probe=False)
    a.finished(Outcome.CANCELLED, 0.0, probe=False)
    a.finished(Outcome.CONNECT_FAILED, 0.0, probe=False)
    assert a.failures == 2


def test_threshold_failures_eject_for_the_minimum_backoff() -> None:
    a = accrual()
    fail(a, 3, now=10.0)
    assert a.health is Health.EJECTED
    assert a.backoff == 1.0
    assert not a.available(10.999)


def test_after_the_backoff_exactly_one_probe_is_let_through() -> None:
    a = accrual()
    fail(a, 3, now=10.0)
    assert a.available(11.0)
    assert a.health is Health.PROBING
    assert a.sent() is True
    assert not a.available(11.0)  # the probe is in flight: nothing else
    assert a.sent() is False


def test_a_successful_probe_restores_it_and_resets_the_backoff() -> None:
    a = accrual()
    fail(a, 3, now=0.0)
    a.available(1.0)
    a.sent()
    a.finished(Outcome.SUCCESS, 1.1, probe=True)
    assert a.health is Health.HEALTHY
    fail(a, 3, now=2.0)
    assert a.backoff == 1.0


@pytest.mark.parametrize(
    ("failed_probes", "backoff"),
    [
        pytest.param(0, 1.0, id="first-ejection"),
        pytest.param(1, 2.0, id="one-failed-probe"),
        pytest.param(2, 4.0, id="two-failed-probes"),
        pytest.param(3, 8.0, id="capped"),
        pytest.param(6, 8.0, id="stays-capped"),
    ],
)
def test_each_failed_probe_doubles_the_backoff_up_to_the_cap(
    failed_probes: int, backoff: float
) -> None:
    a = accrual()
    now = 0.0
    fail(a, 3, now=now)
    for _ in range(failed_probes):
        now = a.ejected_until
        assert a.available(now)
        assert a.sent()
        a.finished(Outcome.FAILURE, now, probe=True)
    assert a.health is Health.EJECTED
    assert a.backoff == backoff


def test_jitter_adds_up_to_the_ratio_and_never_passes_the_cap() -> None:
    a = accrual(jitter_draw=0.999)
    fail(a, 3)
    assert a.backoff == pytest.approx(1.0 * (1 + 0.5 * 0.999))
    for _ in range(5):
        now = a.ejected_until
        a.available(now)
        a.sent()
        a.finished(Outcome.FAILURE, now, probe=True)
    assert a.backoff == 8.0


def test_outcomes_of_requests_sent_before_the_ejection_are_ignored() -> None:
    a = accrual()
    fail(a, 3, now=0.0)
    a.finished(Outcome.SUCCESS, 0.5, probe=False)
    assert a.health is Health.EJECTED
    a.available(1.0)
    a.sent()
    a.finished(Outcome.SUCCESS, 1.0, probe=False)  # a late one, not the probe
    assert a.health is Health.PROBING


def test_a_cancelled_probe_frees_the_slot_for_another() -> None:
    a = accrual()
    fail(a, 3, now=0.0)
    a.available(1.0)
    a.sent()
    a.finished(Outcome.CANCELLED, 1.2, probe=True)
    assert a.health is Health.PROBING
    assert a.available(1.2)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"default_rtt": 0}, id="default_rtt"),
        pytest.param({"decay": -1}, id="decay"),
        pytest.param({"failure_threshold": 0}, id="threshold"),
        pytest.param({"min_backoff": 2, "max_backoff": 1}, id="max-below-min"),
        pytest.param({"jitter": 1.5}, id="jitter"),
    ],
)
def test_settings_out_of_range_are_refused_naming_the_field(changes: dict[str, float]) -> None:
    with pytest.raises(BalanceSettingsError, match=next(iter(changes))):
        BalanceSettings(**changes)  # type: ignore[arg-type]
