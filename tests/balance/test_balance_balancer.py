"""The balancer: power of two choices, the endpoint set from discovery, draining, weights."""

from __future__ import annotations

from collections import Counter

import pytest

from proxy.balance import BalanceSettings, NoEndpoint, Outcome, Pick, describe, key_of
from proxy.discovery import Endpoint

from .helpers import balancer, endpoint, endpoints


def picked(choice: Pick[Endpoint] | NoEndpoint) -> Pick[Endpoint]:
    assert isinstance(choice, Pick), choice
    return choice


def test_no_endpoints_is_said_with_a_slug() -> None:
    assert balancer().pick(0.0) == NoEndpoint("no_endpoints")
    assert describe("no_endpoints").startswith("discovery lists no endpoint")


def test_one_endpoint_is_always_picked() -> None:
    b = balancer("10.0.0.1")
    for _ in range(5):
        assert picked(b.pick(0.0)).endpoint.address == "10.0.0.1"


def test_two_idle_endpoints_both_get_traffic() -> None:
    b = balancer("10.0.0.1", "10.0.0.2")
    counts = Counter()
    for i in range(200):
        p = picked(b.pick(float(i)))
        counts[p.endpoint.address] += 1
        b.finished(p, i + 0.01, Outcome.SUCCESS)
    assert set(counts) == {"10.0.0.1", "10.0.0.2"}


def test_with_two_endpoints_the_less_loaded_one_wins() -> None:
    b = balancer("10.0.0.1", "10.0.0.2")
    first = picked(b.pick(0.0))  # now pending 1 there: the other is cheaper
    second = picked(b.pick(0.0))
    assert first.endpoint != second.endpoint
    assert {s.key: s.pending for s in b.stats()} == {("10.0.0.1", 8080): 1, ("10.0.0.2", 8080): 1}


def test_a_slow_endpoint_is_avoided_between_two() -> None:
    b = balancer("10.0.0.1", "10.0.0.2")
    p = picked(b.pick(0.0))
    b.finished(p, 2.0, Outcome.SUCCESS)  # a 2 s response: peak estimate 2 s
    slow = p.endpoint
    for t in range(10):
        q = picked(b.pick(2.0 + t * 0.01))
        assert q.endpoint != slow
        b.finished(q, 2.0 + t * 0.01 + 0.005, Outcome.SUCCESS)


def test_rtt_can_be_given_explicitly() -> None:
    b = balancer("10.0.0.1")
    p = picked(b.pick(0.0))
    b.finished(p, 100.0, Outcome.SUCCESS, rtt=0.5)
    assert b.stats()[0].rtt_estimate == 0.5


def test_a_cancelled_request_does_not_teach_an_rtt() -> None:
    b = balancer("10.0.0.1")
    p = picked(b.pick(0.0))
    b.finished(p, 5.0, Outcome.CANCELLED)
    assert b.stats()[0].pending == 0
    assert b.stats()[0].rtt_estimate == 0.030  # not 5 s: a cancellation says nothing


def test_a_removed_endpoint_is_never_picked_and_drains_its_requests() -> None:
    b = balancer("10.0.0.1", "10.0.0.2")
    in_flight = [picked(b.pick(0.0)) for _ in range(4)]
    b.update(endpoints("10.0.0.2"), 1.0)
    assert b.draining() == {("10.0.0.1", 8080): 2}
    for _ in range(20):
        assert picked(b.pick(1.0)).endpoint.address == "10.0.0.2"
    for p in in_flight:
        b.finished(p, 1.5, Outcome.SUCCESS)
    assert b.draining() == {}
    assert [s.key for s in b.stats()] == [("10.0.0.2", 8080)]


def test_a_removed_idle_endpoint_is_forgotten_at_once() -> None:
    b = balancer("10.0.0.1", "10.0.0.2")
    b.remove([("10.0.0.1", 8080)])
    assert b.draining() == {}
    assert len(b) == 1


def test_a_re_added_draining_endpoint_is_revived_with_its_state() -> None:
    b = balancer("10.0.0.1")
    p = picked(b.pick(0.0))
    b.update({}, 0.5)
    assert b.pick(0.5) == NoEndpoint("no_endpoints")
    b.add([endpoint("10.0.0.1")], 0.6)
    assert b.draining() == {}
    assert b.stats()[0].pending == 1
    b.finished(p, 1.0, Outcome.SUCCESS)
    assert b.stats()[0].pending == 0


def test_finishing_a_forgotten_endpoint_is_harmless() -> None:
    b = balancer("10.0.0.1", "10.0.0.2")
    p = picked(b.pick(0.0))
    b.update({}, 0.0)
    b.finished(p, 0.1, Outcome.SUCCESS)
    b.finished(p, 0.1, Outcome.SUCCESS)  # twice: still harmless
    assert b.stats() == []


def test_an_update_replaces_metadata_of_kept_endpoints() -> None:
    b = balancer("10.0.0.1")
    b.update({("10.0.0.1", 8080): endpoint("10.0.0.1", weight=5)}, 1.0)
    assert picked(b.pick(1.0)).endpoint.weight == 5


def test_weights_shift_the_share() -> None:
    b = balancer(seed=7)
    b.update(
        {
            ("10.0.0.1", 8080): endpoint("10.0.0.1", weight=30_000),
            ("10.0.0.2", 8080): endpoint("10.0.0.2", weight=10_000),
        },
        0.0,
    )
    counts: Counter[str] = Counter()
    in_flight: list[Pick[Endpoint]] = []
    for i in range(400):  # keep ~8 requests in flight so pending drives the choice
        in_flight.append(picked(b.pick(i * 0.001)))
        counts[in_flight[-1].endpoint.address] += 1
        if len(in_flight) > 8:
            b.finished(in_flight.pop(0), i * 0.001, Outcome.SUCCESS, rtt=0.03)
    assert counts["10.0.0.1"] > 2 * counts["10.0.0.2"]


def test_weight_zero_is_never_picked() -> None:
    b = balancer()
    b.update({("10.0.0.1", 8080): endpoint("10.0.0.1", weight=0)}, 0.0)
    assert b.pick(0.0) == NoEndpoint("no_endpoints")
    b.add([endpoint("10.0.0.2")], 0.0)
    for _ in range(10):
        assert picked(b.pick(0.0)).endpoint.address == "10.0.0.2"


def test_all_ejected_is_said_explicitly_and_the_probe_brings_one_back() -> None:
    b = balancer("10.0.0.1", "10.0.0.2", settings=BalanceSettings(failure_threshold=2, jitter=0))
    for _ in range(4):
        choice = b.pick(0.0)
        if isinstance(choice, NoEndpoint):
            break
        b.finished(choice, 0.01, Outcome.FAILURE)
    assert sorted(b.ejected()) == [("10.0.0.1", 8080), ("10.0.0.2", 8080)]
    assert b.pick(0.5) == NoEndpoint("all_endpoints_ejected")
    probe = picked(b.pick(1.01))
    assert probe.probe
    other = picked(b.pick(1.01))  # the other endpoint's probe
    assert other.probe
    assert other.endpoint != probe.endpoint
    assert b.pick(1.01) == NoEndpoint("all_endpoints_ejected")  # both probes in flight
    b.finished(probe, 1.02, Outcome.SUCCESS)
    assert b.ejected() == [key_of(other.endpoint)]  # still probing
    nxt = picked(b.pick(1.03))
    assert nxt.endpoint == probe.endpoint
    assert not nxt.probe


@pytest.mark.parametrize("seed", range(5))
def test_picks_never_leave_the_active_set(seed: int) -> None:
    b = balancer("a", "b", "c", seed=seed)
    b.remove([("b", 8080)])
    for i in range(50):
        assert picked(b.pick(float(i))).endpoint.address in {"a", "c"}


def test_a_retry_avoids_the_endpoint_it_failed_on() -> None:
    b = balancer("10.0.0.1", "10.0.0.2", "10.0.0.3")
    avoid = {("10.0.0.1", 8080), ("10.0.0.2", 8080)}
    for i in range(20):
        p = picked(b.pick(float(i), avoid=avoid))
        assert p.endpoint.address == "10.0.0.3"
        b.finished(p, i + 0.01, Outcome.SUCCESS)


def test_avoiding_every_ready_endpoint_still_picks_one() -> None:
    b = balancer("10.0.0.1")
    assert picked(b.pick(0.0, avoid={("10.0.0.1", 8080)})).endpoint.address == "10.0.0.1"


def test_a_pick_from_before_the_endpoint_was_forgotten_does_not_count_on_its_return() -> None:
    b = balancer("10.0.0.1")
    old = picked(b.pick(0.0))
    b.update({}, 0.1)
    b.finished(old, 0.2, Outcome.SUCCESS)  # drained and forgotten
    b.add([endpoint("10.0.0.1")], 0.3)
    new = picked(b.pick(0.3))
    b.finished(old, 0.4, Outcome.FAILURE)  # a duplicate, late report of the old request
    assert b.stats()[0].pending == 1
    b.finished(new, 0.5, Outcome.SUCCESS)
    assert b.stats()[0].pending == 0
