"""A deterministic simulation: fake clock, seeded RNG, three endpoints, one slow, then one failing.

Requests arrive every 5 ms (200/s) on a retryable route. Each endpoint answers after its current
latency with its current status; responses are events on a heap, so several requests are in
flight at once and pending counts matter as they do in the proxy.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field

from proxy.balance import (
    Balancer,
    BalanceSettings,
    GiveUp,
    Key,
    NoEndpoint,
    Outcome,
    Pick,
    Retry,
    RetryPolicy,
    Route,
    classify,
    key_of,
)
from proxy.discovery import Endpoint

from .helpers import endpoints

ROUTE = Route(name="GET /items", timeout=None, retryable=True)
INTERVAL = 0.005


@dataclass
class Server:
    latency: float = 0.010
    status: int = 200


@dataclass
class Simulation:
    balancer: Balancer[Endpoint]
    retries: RetryPolicy
    servers: dict[str, Server]
    now: float = 0.0
    served: Counter[str] = field(default_factory=Counter)
    client_failures: int = 0
    retried: int = 0
    no_endpoint: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    _heap: list[tuple[float, int, Pick[Endpoint], int, frozenset[Key]]] = field(
        default_factory=list
    )
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def _send(self, attempt: int, tried: frozenset[Key] = frozenset()) -> None:
        choice = self.balancer.pick(self.now, avoid=tried)
        if isinstance(choice, NoEndpoint):
            self.no_endpoint[choice.reason] += 1
            self.client_failures += 1
            return
        server = self.servers[choice.endpoint.address]
        self.served[choice.endpoint.address] += 1
        done = self.now + server.latency
        tried = tried | {key_of(choice.endpoint)}
        heapq.heappush(self._heap, (done, next(self._order), choice, attempt, tried))

    def run_until(self, end: float) -> None:
        next_request = self.now
        while next_request < end:
            while self._heap and self._heap[0][0] <= next_request:
                self.now, _, pick, attempt, tried = heapq.heappop(self._heap)
                status = self.servers[pick.endpoint.address].status
                outcome = classify(ROUTE, status)
                self.balancer.finished(pick, self.now, outcome)
                decision = self.retries.decide(ROUTE, attempt, outcome, self.now)
                if isinstance(decision, Retry):
                    self.retried += 1
                    self._send(decision.attempt, tried)
                elif outcome is Outcome.FAILURE:
                    assert isinstance(decision, GiveUp)
                    self.gave_up[decision.reason] += 1
                    self.client_failures += 1
            self.now = next_request
            self.retries.started(self.now)
            self._send(1)
            next_request += INTERVAL

    def share(self, address: str) -> float:
        return self.served[address] / sum(self.served.values())

    def reset_counts(self) -> None:
        self.served.clear()
        self.client_failures = 0
        self.retried = 0
        self.gave_up.clear()


def simulation(seed: int = 42) -> Simulation:
    balancer: Balancer[Endpoint] = Balancer(BalanceSettings(), rng=random.Random(seed))
    balancer.update(endpoints("a", "b", "c"), 0.0)
    servers = {name: Server() for name in "abc"}
    return Simulation(balancer, RetryPolicy(), servers)


def test_traffic_spreads_evenly_over_equal_endpoints() -> None:
    sim = simulation()
    sim.run_until(10.0)
    for name in "abc":
        assert 0.25 < sim.share(name) < 0.42
    assert sim.client_failures == 0


def test_traffic_shifts_away_from_a_slow_endpoint_and_comes_back() -> None:
    sim = simulation()
    sim.run_until(5.0)
    sim.servers["c"].latency = 0.300  # 30 times slower
    sim.run_until(6.0)  # the first slow responses set the peak
    sim.reset_counts()
    sim.run_until(20.0)
    assert sim.share("c") < 0.05
    assert sim.client_failures == 0
    sim.servers["c"].latency = 0.010
    sim.reset_counts()
    sim.run_until(35.0)
    # Its 300 ms peak decays (10 s time constant) below the others' load: c is tried again,
    # answers fast, and its estimate comes down.
    assert sim.served["c"] > 0
    sim.reset_counts()
    sim.run_until(50.0)
    assert sim.share("c") > 0.25  # recovered: its share is back


def test_a_failing_endpoint_is_ejected_retried_around_and_probed_back() -> None:
    sim = simulation()
    sim.run_until(5.0)
    sim.servers["b"].status = 503
    sim.reset_counts()
    sim.run_until(6.0)
    assert sim.balancer.ejected() == [("b", 8080)]
    # Linkerd's 7 consecutive failures ejected it (one of them was sent before the counts reset),
    # and each was retried on another endpoint: the client saw none.
    assert sim.retried == 7
    assert sim.served["b"] <= 7
    assert sim.client_failures == 0

    sim.reset_counts()
    sim.run_until(30.0)  # still failing: each probe fails and the backoff doubles
    stats = {s.key[0]: s for s in sim.balancer.stats()}
    assert stats["b"].health == "ejected"
    assert 3 <= sim.served["b"] <= 6  # only probes: at about 1.x s, 2.x, 4.x, 8.x, 16.x s
    assert sim.client_failures == 0

    sim.servers["b"].status = 200
    probe_due = stats["b"].probe_at
    assert probe_due is not None
    sim.run_until(probe_due + 1.0)  # the next probe succeeds: b is healthy again
    assert sim.balancer.ejected() == []
    sim.reset_counts()
    sim.run_until(probe_due + 11.0)
    assert sim.share("b") > 0.25


def test_every_endpoint_failing_is_said_and_retries_stay_within_budget() -> None:
    sim = simulation()
    sim.run_until(2.0)
    for server in sim.servers.values():
        server.status = 500
    sim.reset_counts()
    sim.run_until(12.0)
    assert sim.no_endpoint["all_endpoints_ejected"] > 1000
    deposits, withdrawals = sim.retries.budget.totals(sim.now)
    assert withdrawals <= 0.2 * deposits + 100


def test_the_simulation_is_deterministic() -> None:
    first, second = simulation(seed=7), simulation(seed=7)
    for sim in (first, second):
        sim.servers["c"].latency = 0.050
        sim.run_until(5.0)
    assert first.served == second.served


def test_one_slow_then_one_failing_leaves_the_healthy_one_most_traffic() -> None:
    sim = simulation(seed=11)
    sim.run_until(3.0)
    sim.servers["c"].latency = 0.250
    sim.run_until(5.0)
    sim.servers["b"].status = 500
    sim.reset_counts()
    sim.run_until(15.0)
    assert sim.balancer.ejected() == [("b", 8080)]
    assert sim.share("a") > 0.9
    assert sim.client_failures == 0
    assert sim.share("c") < 0.08  # slow: tried only as its 250 ms peak decays
    assert sim.served["b"] <= 12  # failures that ejected it, then probes only
