"""The balancer driven by discovery's own sans-IO tracker, line by line as the wire sends them."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from proxy.balance import Balancer, NoEndpoint, Outcome, Pick
from proxy.discovery import Endpoint
from proxy.discovery.state import EndpointTracker, parse_line


def feed(tracker: EndpointTracker, balancer: Balancer[Endpoint], line: dict[str, object]) -> None:
    if tracker.apply(parse_line(json.dumps(line).encode())):
        balancer.update(tracker.current.endpoints, 0.0)


def ep(address: str, weight: int = 10000) -> dict[str, object]:
    return {"address": address, "port": 8080, "weight": weight, "identity": None, "labels": {}}


def test_snapshot_add_remove_lines_drive_the_set() -> None:
    tracker, b = EndpointTracker(), Balancer[Endpoint](rng=random.Random(3))
    feed(tracker, b, {"type": "snapshot", "exists": True, "endpoints": [ep("10.1.0.1")]})
    first = b.pick(0.0)
    assert isinstance(first, Pick)
    feed(tracker, b, {"type": "add", "endpoints": [ep("10.1.0.2"), ep("10.1.0.3", weight=0)]})
    assert len(b) == 3
    feed(tracker, b, {"type": "remove", "endpoints": [{"address": "10.1.0.1", "port": 8080}]})
    assert b.draining() == {("10.1.0.1", 8080): 1}  # its request is still in flight
    for _ in range(10):
        choice = b.pick(0.0)
        assert isinstance(choice, Pick)
        assert choice.endpoint.address == "10.1.0.2"  # weight 0 is never picked
        b.finished(choice, 0.01, Outcome.SUCCESS)
    b.finished(first, 0.5, Outcome.SUCCESS)
    assert b.draining() == {}
    feed(tracker, b, {"type": "keepalive"})
    feed(tracker, b, {"type": "snapshot", "exists": False, "endpoints": []})
    assert b.pick(1.0) == NoEndpoint("no_endpoints")


def test_the_package_imports_neither_trio_nor_socket() -> None:
    code = "import sys, proxy.balance; print(sorted({'trio', 'socket'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
