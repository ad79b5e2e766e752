"""Balance: CPU cost of the per-request decisions in ``proxy/balance`` (no I/O involved).

Each case runs 20,000 requests per round, 5 rounds, and prints the median microseconds per
request:

* ``pick+finished N``: ``Balancer.pick`` then ``finished`` over N endpoints (3, 10, 100), with
  ~8 requests in flight so loads differ;
* ``facade``: ``Destination.begin`` (route match on a 10-route profile, budget deposit),
  ``Attempts.pick`` and ``Attempts.finished`` (classification, accrual, retry decision) over
  10 endpoints, every 50th response a 503 on a retryable route (so some retries happen);
* ``budget``: ``deposit`` + ``can_retry``.

Reference (same run): ``random.Random.sample(list_of_10, 2)``, the least any p2c pick pays.

    python -m bench balance [--quick]
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from proxy.balance import Balancer, Destination, Outcome, Pick, Retry, RetryBudget
from proxy.discovery import Endpoint
from proxy.discovery.state import EndpointSet

ROUNDS = 5


def _endpoint(i: int) -> Endpoint:
    return Endpoint(f"10.0.{i // 250}.{i % 250}", 8080, 10_000, None, None, MappingProxyType({}))


def _timed(requests: int, body: Callable[[int], None]) -> float:
    """Median microseconds per request over ROUNDS rounds."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        body(requests)
        samples.append((time.perf_counter() - start) / requests * 1e6)
    return statistics.median(samples)


def _pick_finished(endpoints: int) -> Callable[[int], None]:
    balancer: Balancer[Endpoint] = Balancer(rng=random.Random(1))
    balancer.update({(e.address, e.port): e for e in map(_endpoint, range(endpoints))}, 0.0)
    clock = [0.0]

    def body(requests: int) -> None:
        in_flight: deque[Pick[Endpoint]] = deque()
        now = clock[0]
        for _ in range(requests):
            now += 0.001
            choice = balancer.pick(now)
            assert isinstance(choice, Pick)
            in_flight.append(choice)
            if len(in_flight) > 8:
                balancer.finished(in_flight.popleft(), now, Outcome.SUCCESS, rtt=0.01)
        while in_flight:
            balancer.finished(in_flight.popleft(), now, Outcome.SUCCESS, rtt=0.01)
        clock[0] = now

    return body


def _profile() -> dict[str, Any]:
    routes = [
        {
            "name": f"GET /r{i}/{{id}}",
            "condition": {"all": [{"method": "GET"}, {"path_regex": rf"/r{i}/\d+"}]},
            "response_classes": [],
            "is_retryable": True,
            "timeout": "1s",
        }
        for i in range(10)
    ]
    return {"routes": routes, "retry_budget": None}


class _ProfileState:
    def __init__(self, profile: dict[str, Any]) -> None:
        self.profile = MappingProxyType(profile)
        self.version = 1


def _facade() -> Callable[[int], None]:
    destination: Destination[Endpoint] = Destination(rng=random.Random(2))
    endpoints = {(e.address, e.port): e for e in map(_endpoint, range(10))}
    destination.sync_endpoints(EndpointSet(endpoints=MappingProxyType(endpoints), version=1), 0.0)
    destination.sync_profile(_ProfileState(_profile()))
    clock = [0.0]

    def body(requests: int) -> None:
        now = clock[0]
        for n in range(requests):
            now += 0.001
            attempts = destination.begin("GET", f"/r{n % 10}/{n}", now)
            while True:
                choice = attempts.pick(now)
                assert isinstance(choice, Pick)
                status = 503 if n % 50 == 0 and attempts.attempt == 1 else 200
                if not isinstance(attempts.finished(choice, now, status=status), Retry):
                    break
        clock[0] = now

    return body


def _budget() -> Callable[[int], None]:
    budget = RetryBudget()
    clock = [0.0]

    def body(requests: int) -> None:
        now = clock[0]
        for _ in range(requests):
            now += 0.001
            budget.deposit(now)
            budget.can_retry(now)
        clock[0] = now

    return body


def _reference() -> Callable[[int], None]:
    rng = random.Random(3)
    items = list(range(10))

    def body(requests: int) -> None:
        for _ in range(requests):
            rng.sample(items, 2)

    return body


def run(args: list[str]) -> None:
    requests = 2_000 if "--quick" in args else 20_000
    cases: list[tuple[str, Callable[[int], None]]] = [
        ("reference: Random.sample(10, 2)", _reference()),
        ("pick+finished 3 endpoints", _pick_finished(3)),
        ("pick+finished 10 endpoints", _pick_finished(10)),
        ("pick+finished 100 endpoints", _pick_finished(100)),
        ("facade begin/pick/finished, 10 routes", _facade()),
        ("budget deposit+can_retry", _budget()),
    ]
    print(f"{requests} requests x {ROUNDS} rounds; median microseconds per request")
    for name, body in cases:
        print(f"  {name:<40} {_timed(requests, body):8.2f} us", flush=True)
