"""The sans-IO tap hub: filters, rate limits, bounded buffers, and no work when nobody taps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.tap import (
    TapEnd,
    TapFilter,
    TapHub,
    TapLimitError,
    TapRequest,
    TapResponse,
    TapStream,
    TokenBucket,
    encode_event,
)


class Clock:
    """A clock the test moves by hand; counts how often it is read."""

    def __init__(self) -> None:
        self.now = 100.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def start(hub: TapHub, stream: int = 1, **overrides: Any) -> TapStream | None:
    fields: dict[str, Any] = {
        "conn": 7,
        "stream": stream,
        "direction": "inbound",
        "method": b"GET",
        "authority": b"web.default:80",
        "path": b"/api/items?x=1",
        "src": ("10.0.0.9", 41000),
        "dst": ("127.0.0.1", 8080),
    }
    fields.update(overrides)
    return hub.request_start(**fields)


def test_no_subscriber_no_work() -> None:
    clock = Clock()
    hub = TapHub(clock=clock)
    assert not hub.active
    assert start(hub) is None
    assert clock.reads == 0  # not even the clock is read on the request path


def test_a_full_exchange() -> None:
    clock = Clock()
    hub = TapHub(clock=clock)
    sub = hub.subscribe(TapFilter())
    tapped = start(hub, tls="true", client_id="client.ns.serviceaccount.identity.meshlet")
    assert tapped is not None
    clock.now += 0.0015
    tapped.response_start(200)
    clock.now += 0.001
    tapped.response_bytes += 10
    tapped.response_bytes += 2
    tapped.end(grpc_status=0)
    request, response, end = sub.take()
    assert isinstance(request, TapRequest)
    assert request.id == "7:1"
    assert (request.method, request.authority, request.path) == (
        "GET",
        "web.default:80",
        "/api/items?x=1",
    )
    assert (request.src, request.dst, request.tls) == ("10.0.0.9:41000", "127.0.0.1:8080", "true")
    assert isinstance(response, TapResponse)
    assert (response.status, response.latency_us) == (200, 1500)
    assert isinstance(end, TapEnd)
    assert (end.duration_us, end.response_bytes, end.grpc_status, end.error) == (2500, 12, 0, "")
    assert sub.take() == []
    lines = [json.loads(encode_event(event)) for event in (request, response, end)]
    assert [line["event"] for line in lines] == ["request", "response", "end"]
    assert lines[0]["client_id"] == "client.ns.serviceaccount.identity.meshlet"
    assert lines[1]["latency_us"] == 1500
    assert lines[2]["response_bytes"] == 12


def test_ipv6_addresses_are_bracketed() -> None:
    hub = TapHub(clock=Clock())
    hub.subscribe(TapFilter())
    tapped = start(hub, src=("fd00::1", 5000), dst="already:formatted")
    assert tapped is not None
    assert (tapped.request.src, tapped.request.dst) == ("[fd00::1]:5000", "already:formatted")


FILTERS = [
    pytest.param(TapFilter(direction="inbound"), True, id="direction-match"),
    pytest.param(TapFilter(direction="outbound"), False, id="direction-other"),
    pytest.param(TapFilter(authority=b"web.default:80"), True, id="authority-exact"),
    pytest.param(TapFilter(authority=b"web.default"), False, id="authority-not-prefix"),
    pytest.param(TapFilter(path_prefix=b"/api"), True, id="path-prefix"),
    pytest.param(TapFilter(path_prefix=b"/apx"), False, id="path-other"),
    pytest.param(TapFilter(method=b"GET"), True, id="method"),
    pytest.param(TapFilter(method=b"POST"), False, id="method-other"),
    pytest.param(TapFilter(direction="inbound", method=b"POST"), False, id="all-must-match"),
]


@pytest.mark.parametrize(("tap_filter", "wanted"), FILTERS)
def test_request_filters(tap_filter: TapFilter, wanted: bool) -> None:
    hub = TapHub(clock=Clock())
    sub = hub.subscribe(tap_filter)
    tapped = start(hub, authority=b"Web.Default:80", method=b"get")
    assert (tapped is not None) == wanted
    assert len(sub) == int(wanted)


def test_each_subscriber_gets_what_it_asked_for() -> None:
    hub = TapHub(clock=Clock())
    inbound = hub.subscribe(TapFilter(direction="inbound"))
    outbound = hub.subscribe(TapFilter(direction="outbound"))
    for stream, direction in enumerate(["inbound", "outbound", "inbound"]):
        tapped = start(hub, stream, direction=direction)
        assert tapped is not None
        tapped.response_start(204)
        tapped.end(response_bytes=0)
    assert [e.request.id for e in inbound.take() if isinstance(e, TapEnd)] == ["7:0", "7:2"]
    assert [e.request.id for e in outbound.take() if isinstance(e, TapEnd)] == ["7:1"]


def test_status_class_holds_the_request_until_the_status_is_known() -> None:
    hub = TapHub(clock=Clock())
    errors = hub.subscribe(TapFilter(status_class=5))
    ok = start(hub, 1)
    failed = start(hub, 2)
    never = start(hub, 3)
    assert ok is not None
    assert failed is not None
    assert never is not None
    assert len(errors) == 0  # nothing yet: the status decides
    ok.response_start(200)
    ok.end(response_bytes=5)
    failed.response_start(503)
    failed.end(response_bytes=0, error="")
    never.end(error="reset")  # reset before any response: cannot be a 5xx
    events = errors.take()
    assert [type(e).__name__ for e in events] == ["TapRequest", "TapResponse", "TapEnd"]
    assert all((e if isinstance(e, TapRequest) else e.request).id == "7:2" for e in events)


def test_slow_subscriber_drops_and_counts_without_growing() -> None:
    hub = TapHub(clock=Clock(), buffer_events=4)
    slow = hub.subscribe(TapFilter(), max_rps=1000)
    fast = hub.subscribe(TapFilter(), max_rps=1000)
    for stream in range(10):
        tapped = start(hub, stream)
        assert tapped is not None
        tapped.response_start(200)
        tapped.end(response_bytes=1)
        fast.take()
        assert len(slow) <= 4
    events = slow.take()
    # The first exchange fits whole; the second is cut after its request; then no room at all.
    assert [type(e).__name__ for e in events] == [
        "TapRequest",
        "TapResponse",
        "TapEnd",
        "TapRequest",
    ]
    assert slow.dropped == 9  # nine exchanges cut short, each counted once
    assert fast.dropped == 0
    # Once read, the buffer takes events again.
    tapped = start(hub, 99)
    assert tapped is not None
    assert len(slow.take()) == 1


def test_rate_limit_per_subscriber() -> None:
    clock = Clock()
    hub = TapHub(clock=clock)
    limited = hub.subscribe(TapFilter(), max_rps=2)
    generous = hub.subscribe(TapFilter(), max_rps=100)
    for stream in range(5):
        start(hub, stream)
    assert len(limited.take()) == 2  # a burst of one second's worth
    assert limited.rate_limited == 3
    assert len(generous.take()) == 5
    clock.now += 0.5  # half a second: one more token
    for stream in range(5, 8):
        start(hub, stream)
    assert len(limited.take()) == 1
    assert limited.rate_limited == 5


def test_rate_limited_stream_sends_nothing_later() -> None:
    clock = Clock()
    hub = TapHub(clock=clock)
    sub = hub.subscribe(TapFilter(), max_rps=1)
    first = start(hub, 1)
    second = start(hub, 2)
    assert first is not None
    assert second is None
    first.response_start(200)
    first.end(response_bytes=0)
    assert len(sub.take()) == 3


def test_token_bucket() -> None:
    bucket = TokenBucket(10, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(20)) == 10
    assert not bucket.take(0.05)
    assert bucket.take(0.1)
    assert sum(bucket.take(100.0) for _ in range(20)) == 10  # never more than the burst
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, now=0.0)


def test_unsubscribe_stops_delivery_and_work() -> None:
    clock = Clock()
    hub = TapHub(clock=clock)
    sub = hub.subscribe(TapFilter())
    woken: list[int] = []
    sub.notify = lambda: woken.append(1)
    tapped = start(hub)
    assert tapped is not None
    assert woken == [1]
    hub.unsubscribe(sub)
    assert not hub.active
    tapped.response_start(200)
    tapped.end(response_bytes=0)
    assert len(sub.take()) == 1  # only what came before
    reads = clock.reads
    assert start(hub) is None
    assert clock.reads == reads


def test_notify_once_per_batch() -> None:
    hub = TapHub(clock=Clock())
    sub = hub.subscribe(TapFilter())
    woken: list[int] = []
    sub.notify = lambda: woken.append(1)
    for stream in range(3):
        start(hub, stream)
    assert woken == [1]  # the writer is woken when the buffer stops being empty
    sub.take()
    start(hub, 9)
    assert woken == [1, 1]


def test_subscriber_limit_and_rate_bounds() -> None:
    hub = TapHub(clock=Clock(), max_subscribers=2)
    hub.subscribe(TapFilter())
    hub.subscribe(TapFilter())
    with pytest.raises(TapLimitError, match="2 tap sessions"):
        hub.subscribe(TapFilter())
    with pytest.raises(ValueError, match="max_rps"):
        TapHub().subscribe(TapFilter(), max_rps=0)


def test_one_response_per_stream() -> None:
    hub = TapHub(clock=Clock())
    sub = hub.subscribe(TapFilter())
    tapped = start(hub)
    assert tapped is not None
    tapped.response_start(200)
    tapped.response_start(500)  # a confused shell must not invent a second response
    tapped.end(response_bytes=0)
    tapped.end(response_bytes=0)
    assert [type(e).__name__ for e in sub.take()] == ["TapRequest", "TapResponse", "TapEnd"]


def test_nonmatching_subscriber_costs_no_stream() -> None:
    hub = TapHub(clock=Clock())
    sub = hub.subscribe(TapFilter(direction="outbound"))
    assert start(hub) is None
    assert len(sub) == 0
    assert sub.rate_limited == 0
