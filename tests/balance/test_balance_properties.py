"""Properties: the picker never returns a removed or ejected endpoint; budgets never overspend."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.balance import BalanceSettings, BudgetSettings, NoEndpoint, Outcome, Pick, RetryBudget
from proxy.balance.balancer import Balancer
from proxy.discovery import Endpoint

from .helpers import endpoint

ADDRESSES = [f"10.0.0.{i}" for i in range(1, 4)]

# Picks and finishes outnumber discovery changes, and failures are likely, so that ejections,
# probes and drains all happen within a few dozen steps.
_pick = st.tuples(
    st.just("pick"),
    st.sampled_from([0.0, 0.1, 0.7, 2.5]),
    st.sampled_from([(), (), ("10.0.0.1",), ("10.0.0.1", "10.0.0.2")]),  # a retry's avoid set
)
_finish = st.tuples(
    st.just("finish"),
    st.sampled_from([Outcome.FAILURE, Outcome.FAILURE, Outcome.CONNECT_FAILED, *Outcome]),
    st.sampled_from([0.0, 0.05, 1.0]),
)
actions = st.lists(
    st.one_of(
        _pick,
        _finish,
        _pick,
        _finish,
        st.tuples(st.just("add"), st.sampled_from(ADDRESSES)),
        st.tuples(st.just("remove"), st.sampled_from(ADDRESSES)),
    ),
    max_size=150,
)


@settings(max_examples=400, deadline=None)
@given(actions=actions, seed=st.integers(0, 2**32 - 1), threshold=st.integers(1, 2))
def test_the_picker_never_returns_a_removed_or_ejected_endpoint(
    actions: list[tuple[object, ...]], seed: int, threshold: int
) -> None:
    rng = random.Random(seed)
    settings_ = BalanceSettings(failure_threshold=threshold, min_backoff=3.0)
    b: Balancer[Endpoint] = Balancer(settings_, rng=rng)
    b.add(map(endpoint, ADDRESSES), 0.0)
    listed = set(ADDRESSES)
    in_flight: list[Pick[Endpoint]] = []
    now = 0.0
    for action in actions:
        kind = action[0]
        if kind == "pick":
            now += float(action[1])  # type: ignore[arg-type]
            ejected_before = set(b.ejected())
            probe_at = {s.key: s.probe_at for s in b.stats() if s.probe_at is not None}
            avoid = {(address, 8080) for address in action[2]}  # type: ignore[attr-defined]
            choice = b.pick(now, avoid=avoid)
            if isinstance(choice, NoEndpoint):
                assert choice.reason in {"no_endpoints", "all_endpoints_ejected"}
                assert choice.reason != "no_endpoints" or not listed
                continue
            address = choice.endpoint.address
            assert address in listed, "picked an endpoint discovery does not list"
            key = (address, 8080)
            assert key not in probe_at or now >= probe_at[key], "picked during its backoff"
            if key in ejected_before:  # only the single probe of an endpoint whose backoff ran out
                assert choice.probe, "picked an ejected endpoint outside its single probe"
            if choice.probe:
                probing = [p for p in in_flight if p.probe and p.endpoint.address == address]
                assert not probing, "a second probe while one is in flight"
            in_flight.append(choice)
        elif kind == "finish" and in_flight:
            now += float(action[2])  # type: ignore[arg-type]
            b.finished(in_flight.pop(rng.randrange(len(in_flight))), now, action[1])  # type: ignore[arg-type]
        elif kind == "add":
            listed.add(str(action[1]))
            b.add([endpoint(str(action[1]))], now)
        elif kind == "remove":
            listed.discard(str(action[1]))
            b.remove([(str(action[1]), 8080)])
        # Drained endpoints are tracked until their last request ends, never longer.
        pending = {p.endpoint.address for p in in_flight}
        for key, count in b.draining().items():
            assert key[0] not in listed
            assert key[0] in pending
            assert count > 0
    for pick in in_flight:
        b.finished(pick, now, Outcome.SUCCESS)
    assert b.draining() == {}


events = st.lists(st.tuples(st.sampled_from(["request", "retry"]), st.floats(0, 3.0)), max_size=400)


@settings(max_examples=150, deadline=None)
@given(
    events=events,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 1.0]),
    per_second=st.integers(0, 3),
    ttl=st.sampled_from([1.0, 2.0, 10.0]),
)
def test_the_budget_never_allows_more_than_ratio_times_requests_plus_reserve(
    events: list[tuple[str, float]], ratio: float, per_second: int, ttl: float
) -> None:
    settings_ = BudgetSettings(retry_ratio=ratio, min_retries_per_second=per_second, ttl=ttl)
    budget = RetryBudget(settings_)
    now = 0.0
    deposits: list[float] = []
    withdrawals: list[float] = []
    for kind, step in events:
        now += step
        if kind == "request":
            budget.deposit(now)
            deposits.append(now)
        elif budget.withdraw(now) is None:
            withdrawals.append(now)
            start = budget.window_start(now)
            assert start > now - ttl - 1e-9  # the window is never longer than the ttl
            in_window = sum(1 for t in deposits if t >= start)
            spent = sum(1 for t in withdrawals if t >= start)
            assert spent <= ratio * in_window + per_second * ttl
