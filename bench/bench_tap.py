"""What the tap costs on the proxy's request path (``proxy/tap.py``), in process, no I/O.

Each line times the publish calls one HTTP exchange makes (``request_start``, and when tapped
``response_start`` and ``end``), with the exact arguments the HTTP/1 shell would pass:

- reference, same run: an empty method taking the same keyword arguments (the floor of any call);
- nobody subscribed (the normal state of a proxy: must stay at the reference);
- one subscriber whose filter does not match (the cost every request pays while someone taps
  other traffic);
- one subscriber taking every exchange (its buffer drained every 100 exchanges, as the server's
  writer would);
- eight subscribers (the default session limit) taking every exchange.

Medians of ``--runs`` (default 5) repeats of ``--number`` (default 200000) exchanges.
Usage: ``python -m bench tap [--runs N] [--number N]``.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

from proxy.tap import Address, TapFilter, TapHub, TapStream


class _Reference:
    def request_start(
        self,
        *,
        conn: int,
        stream: int,
        direction: str,
        method: bytes,
        authority: bytes,
        path: bytes,
        src: Address,
        dst: Address,
        scheme: bytes = b"http",
        tls: str = "no_identity",
        client_id: str = "",
        server_id: str = "",
    ) -> TapStream | None:
        return None


def _exchange(
    publish: Callable[..., TapStream | None], drain: Callable[[], None]
) -> Callable[[], None]:
    count = 0

    def once() -> None:
        nonlocal count
        tapped = publish(
            conn=12,
            stream=3,
            direction="inbound",
            method=b"GET",
            authority=b"web.default.svc.cluster.local:8080",
            path=b"/api/v1/items?page=2",
            src=("10.42.0.17", 51234),
            dst=("127.0.0.1", 8080),
        )
        if tapped is not None:
            tapped.response_start(200)
            tapped.end(response_bytes=1234)
        count += 1
        if count % 100 == 0:
            drain()

    return once


def _hub(subscribers: int, tap_filter: TapFilter) -> tuple[TapHub, Callable[[], None]]:
    hub = TapHub(max_subscribers=max(subscribers, 1), buffer_events=1024)
    subs = [hub.subscribe(tap_filter, max_rps=10_000) for _ in range(subscribers)]

    def drain() -> None:
        for sub in subs:
            sub.take()
            sub.bucket._tokens = sub.bucket.burst  # measure publishing, not the rate limit

    return hub, drain


def run(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench tap")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=200_000)
    options = parser.parse_args(args)

    def nothing() -> None:
        return None

    cases: list[tuple[str, Callable[[], None]]] = [
        ("reference: empty call, same arguments", _exchange(_Reference().request_start, nothing))
    ]
    hub, drain = _hub(0, TapFilter())
    cases.append(("nobody subscribed", _exchange(hub.request_start, drain)))
    hub, drain = _hub(1, TapFilter(direction="outbound"))
    cases.append(("1 subscriber, filter does not match", _exchange(hub.request_start, drain)))
    hub, drain = _hub(1, TapFilter())
    cases.append(("1 subscriber, every exchange tapped", _exchange(hub.request_start, drain)))
    hub, drain = _hub(8, TapFilter())
    cases.append(("8 subscribers, every exchange tapped", _exchange(hub.request_start, drain)))
    print(f"{'case':<40} {'ns per exchange (median of ' + str(options.runs) + ')':>34}")
    for name, once in cases:
        times = timeit.repeat(once, number=options.number, repeat=options.runs)
        per = statistics.median(times) / options.number * 1e9
        print(f"{name:<40} {per:>34.0f}", flush=True)
