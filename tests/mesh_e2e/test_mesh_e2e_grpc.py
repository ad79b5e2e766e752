"""gRPC through two meshed proxies with mTLS (identity and destination in local mode).

    client   meshed, ServiceAccount "client": grpc_app.py call (grpcio, h2c to the VIP)
    grpc-0   meshed, ServiceAccount "grpc": grpc_app.py serve 50051
    Service grpc VIP:50051 -> grpc-0:50051, in discovery with grpc-0's identity

The client proxy picks grpc-0 from discovery and dials it over mTLS (HTTP/2 inside); the
server proxy terminates TLS and records the client's identity.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from meshlet.names import workload_identity
from tests.harness import PYTHON
from tests.harness.mesh import GRPC_APP, Samples, scrape, start_program
from tests.harness.mesh_node import MeshNode, MeshPod, open_mesh_node

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLIENT_ID = workload_identity("client", "default")
SERVER_ID = workload_identity("grpc", "default")


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshNode, MeshPod, MeshPod]]:
    logs = tmp_path_factory.mktemp("mesh-grpc-logs")
    with open_mesh_node(logs) as mesh_node:
        client = mesh_node.add_pod("client", serviceaccount="client", ports=())
        server = mesh_node.add_pod("grpc-0", serviceaccount="grpc", ports=(50051,))
        start_program(server.pod, [PYTHON, GRPC_APP, "serve", "50051"])
        mesh_node.add_service("grpc", 50051, [server], target_port=50051)
        mesh_node.wait_ready([client, server])
        mesh_node.wait_discovered()
        yield mesh_node, client, server


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def test_grpc_unary_and_streaming_with_mtls(pods: tuple[MeshNode, MeshPod, MeshPod]) -> None:
    mesh_node, client, server = pods
    host, port = mesh_node.services["grpc"].address
    before_client, before_server = scrape(client.pod), scrape(server.pod)
    answer = json.loads(client.pod.run([PYTHON, GRPC_APP, "call", host, str(port)], timeout=60))
    assert answer["unary"] == "hsem olleh"
    assert answer["unary_code"] == "OK"
    assert answer["unary_trailers"] == {"x-served-by": "server"}
    assert answer["fail_code"] == "NOT_FOUND"
    assert answer["fail_details"] == "no such thing"
    assert answer["chat"] == [f"echo:m{i}" for i in range(100)]
    assert answer["chat_code"] == "OK"
    assert answer["chat_trailers"] == {"x-count": "100"}
    after_client, after_server = scrape(client.pod), scrape(server.pod)
    # The hop between the proxies is mTLS with the identities discovery promised.
    dialed = {"direction": "outbound", "peer": "dst", "tls": "true", "server_id": SERVER_ID}
    assert _delta(before_client, after_client, "tcp_open_total", **dialed) >= 1
    accepted = {"direction": "inbound", "peer": "src", "tls": "true", "client_id": CLIENT_ID}
    assert _delta(before_server, after_server, "tcp_open_total", **accepted) >= 1
    # The three calls are counted with the client's identity (the aborted one as a failure).
    meshed = {"direction": "inbound", "tls": "true", "client_id": CLIENT_ID}
    assert _delta(before_server, after_server, "request_total", **meshed) == 3
    failed = {**meshed, "status_code": "200", "classification": "failure"}
    assert _delta(before_server, after_server, "response_total", **failed) == 1


def test_grpc_calls_are_routed_per_stream(pods: tuple[MeshNode, MeshPod, MeshPod]) -> None:
    """The client proxy terminates the channel's HTTP/2 connection and routes each call on its
    own (``proxy/h2mux.py``): every call is a request series of its own with the endpoint's
    ``dst_*`` labels and the mTLS labels of the connection to it."""
    mesh_node, client, _ = pods
    host, port = mesh_node.services["grpc"].address
    before = scrape(client.pod)
    client.pod.run([PYTHON, GRPC_APP, "call", host, str(port)], timeout=60)
    after = scrape(client.pod)
    routed = {"direction": "outbound", "dst_pod": "grpc-0", "tls": "true", "server_id": SERVER_ID}
    assert _delta(before, after, "request_total", **routed) == 3
    failed = {**routed, "status_code": "200", "classification": "failure"}
    assert _delta(before, after, "response_total", **failed) == 1  # grpc-status NOT_FOUND


def test_grpc_large_streams_cross_flow_control(pods: tuple[MeshNode, MeshPod, MeshPod]) -> None:
    """20 MiB up (client stream) and 20 MiB down (server stream) through the per-stream path:
    both proxies' windows, both directions, compared by SHA-256."""
    mesh_node, client, _ = pods
    host, port = mesh_node.services["grpc"].address
    out = client.pod.run([PYTHON, GRPC_APP, "call", host, str(port), "large"], timeout=120)
    assert json.loads(out) == {"digest_matches": True, "download_matches": True}


def test_grpc_cancel_and_deadline_reach_the_server(
    pods: tuple[MeshNode, MeshPod, MeshPod],
) -> None:
    """A cancelled server stream (RST_STREAM from the client) reaches the server through both
    proxies; an expired deadline ends the call with DEADLINE_EXCEEDED."""
    mesh_node, client, _ = pods
    host, port = mesh_node.services["grpc"].address
    answer = json.loads(
        client.pod.run([PYTHON, GRPC_APP, "call", host, str(port), "cancel"], timeout=60)
    )
    assert answer["forever_first"] == ["1", "2", "3"]
    assert answer["forever_code"] == "CANCELLED"
    assert answer["server_saw_cancel"] == "yes"
    assert answer["slow_code"] == "DEADLINE_EXCEEDED"
