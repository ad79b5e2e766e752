"""HTTP/2 balanced per request through the mesh: ONE h2c app connection, many pods.

    client     meshed, ServiceAccount "client"; the load is one h2c connection from inside it
    web-0..2   meshed, ServiceAccount "web", h2_app.py (h2c) on 8082
    Service web-h2  VIP:82 -> web-0..2 :8082 (profile: GET retryable)
    churn-0..2 (the churn test's own pods, h2_app.py on 8082)
    Service churn-h2 VIP:82 -> churn-0..2 :8082 (profile: GET retryable)

The client's proxy terminates the app's HTTP/2 connection and sends each stream to an endpoint of
its own (``proxy/h2mux.py``), over mTLS to the server pods' proxies.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from meshlet.names import workload_identity
from tests.harness import PYTHON
from tests.harness.mesh import scrape
from tests.harness.mesh_node import MeshNode, MeshPod, open_mesh_node
from tests.mesh_e2e.h2_load import H2Load, H2Outcome

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLIENT_ID = workload_identity("client", "default")
H2_APP: Final = str(Path(__file__).with_name("h2_app.py"))
PORT: Final = 8082
RETRY_GETS = [
    {"name": "GET /", "condition": {"method": "GET", "pathRegex": "/.*"}, "isRetryable": True}
]


def _start_h2_app(member: MeshPod) -> None:
    process = member.pod.spawn([PYTHON, H2_APP, member.name, str(PORT)], label=f"{member.name}: h2")
    line = process.read_line(timeout=20)
    assert line == "ready", f"{process.label} said {line!r}: {process.stderr_text()}"
    member.apps.append(process)


@dataclass
class H2Mesh:
    node: MeshNode
    client: MeshPod
    web: list[MeshPod]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Mesh]:
    logs = tmp_path_factory.mktemp("mesh-h2-logs")
    with open_mesh_node(logs) as mesh_node:
        client = mesh_node.add_pod("client", serviceaccount="client", ports=())
        web = [mesh_node.add_pod(f"web-{i}", serviceaccount="web", ports=(PORT,)) for i in range(3)]
        for member in web:
            _start_h2_app(member)
        mesh_node.add_service("web-h2", 82, web, target_port=PORT, profile_routes=RETRY_GETS)
        mesh_node.wait_ready([client, *web])
        mesh_node.wait_discovered()
        yield H2Mesh(mesh_node, client, web)


def _failures(outcomes: list[H2Outcome]) -> list[H2Outcome]:
    return [o for o in outcomes if o.status != 200]


def test_one_h2_connection_is_balanced_per_request_over_mtls(mesh: H2Mesh) -> None:
    address = mesh.node.services["web-h2"].address
    before = scrape(mesh.client.pod)
    with H2Load(mesh.client.pod, address, concurrency=4) as load:
        time.sleep(2)
    outcomes = load.stop()
    assert _failures(outcomes) == [], _failures(outcomes)[:5]
    assert len(outcomes) > 50
    assert {o.client_id for o in outcomes} == {CLIENT_ID}  # every stream crossed mTLS
    served = Counter(o.pod for o in outcomes)
    assert set(served) == {"web-0", "web-1", "web-2"}, served
    after = scrape(mesh.client.pod)
    for member in mesh.web:
        labels = {"direction": "outbound", "dst_pod": member.name, "tls": "true"}
        counted = after.total("request_total", **labels) - before.total("request_total", **labels)
        assert counted == served[member.name]


def test_h2_traffic_shifts_away_from_a_slow_pod(mesh: H2Mesh) -> None:
    slow = mesh.web[1]
    os.kill(slow.apps[0].pid, signal.SIGUSR1)
    try:
        address = mesh.node.services["web-h2"].address
        with H2Load(mesh.client.pod, address, concurrency=4) as load:
            time.sleep(3)  # peak-EWMA learns the latency
            measured = time.monotonic()
            time.sleep(5)
            outcomes = load.since(measured)
    finally:
        os.kill(slow.apps[0].pid, signal.SIGUSR2)
    assert _failures(outcomes) == [], _failures(outcomes)[:5]
    served = Counter(o.pod for o in outcomes)
    # Unbalanced, the slow pod would get a third of the streams.
    assert served[slow.name] < 0.1 * len(outcomes), served
    assert served["web-0"] > 0, served
    assert served["web-2"] > 0, served


def test_h2_endpoint_removed_then_pod_killed_under_load(mesh: H2Mesh) -> None:
    node = mesh.node
    churn = [node.add_pod(f"churn-{i}", serviceaccount="churn", ports=(PORT,)) for i in range(3)]
    for member in churn:
        _start_h2_app(member)
    service = node.add_service("churn-h2", 82, churn, target_port=PORT, profile_routes=RETRY_GETS)
    node.wait_ready(churn)
    node.wait_discovered()
    with H2Load(mesh.client.pod, service.address, concurrency=4) as load:
        time.sleep(2)
        service.endpoints.remove(churn[0])
        node.publish()
        removed = time.monotonic()
        time.sleep(3)
        node.kill_pod(churn[1])
        killed = time.monotonic()
        time.sleep(4)
        outcomes = load.stop()
    # Draining and retries absorb both: not one stream of the connection failed.
    assert _failures(outcomes) == [], _failures(outcomes)[:5]
    assert len(outcomes) > 200
    served_before = Counter(o.pod for o in outcomes if o.started < removed)
    assert set(served_before) == {"churn-0", "churn-1", "churn-2"}, served_before
    late = Counter(o.pod for o in outcomes if o.started > removed + 1)
    assert "churn-0" not in late, late
    after_kill = Counter(o.pod for o in outcomes if o.started > killed + 1)
    assert set(after_kill) == {"churn-2"}, after_kill
