"""The namespace harness itself: isolated from the machine's network, and cleaned up."""

from __future__ import annotations

import os

import pytest

from tests.harness import Node, run, start_reporter

pytestmark = pytest.mark.root


def _namespaces() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line}


def test_machine_network_is_untouched() -> None:
    links_before = run(["ip", "-o", "link", "show"])
    addresses_before = run(["ip", "-o", "addr", "show"])
    routes_before = run(["ip", "route", "show", "table", "all"])
    with Node() as node:
        client = node.add_pod("client")
        server = node.add_pod("server")
        node.add_service("web", 80, [server], target_port=8080)
        start_reporter(server, "0.0.0.0:8080")
        client.connect((node.services["web"].vip, 80)).close()
        assert run(["ip", "-o", "link", "show"]) == links_before
        assert run(["ip", "-o", "addr", "show"]) == addresses_before
        assert run(["ip", "route", "show", "table", "all"]) == routes_before


def test_pods_cannot_reach_the_machine() -> None:
    """No route leads out of the node: the only networks are the pods' and the Service VIPs'."""
    with Node() as node:
        pod = node.add_pod("pod")
        assert "default via 10.244.0.1" in pod.iproute("route", "show")
        assert node.netns.iproute("route", "show").strip().splitlines() == [
            "10.244.0.0/24 dev br0 proto kernel scope link src 10.244.0.1"
        ]
        with pytest.raises(OSError):  # 192.0.2.1 (TEST-NET-1) has no route in the node
            pod.connect(("192.0.2.1", 80), timeout=1).close()


def _failing_test(node: Node, seen: dict[str, object]) -> None:
    with node:
        pod = node.add_pod("pod")
        seen["names"] = {node.netns.name, pod.name}
        seen["pid"] = start_reporter(pod, "0.0.0.0:8080").pid
        assert seen["names"] <= _namespaces()
        raise RuntimeError("test failed")


def test_close_stops_processes_and_deletes_namespaces_even_on_failure() -> None:
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="test failed"):
        _failing_test(Node(), seen)
    names = seen["names"]
    assert isinstance(names, set)
    assert len(names) == 2
    assert not names & _namespaces()
    pid = seen["pid"]
    assert isinstance(pid, int)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
