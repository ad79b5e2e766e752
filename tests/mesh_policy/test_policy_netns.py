"""The inbound policy end to end: real pods (network namespaces, iptables), real mTLS, curl.

    node:      meshlet-identity, meshlet-destination (local mode; tests/harness/mesh_node.py)
    client     meshed, ServiceAccount "client"
    server     meshed, ServiceAccount "server", annotated
               config.meshlet.io/default-inbound-policy: all-authenticated (its proxy runs with
               the variable the injector writes for that annotation); mesh_app.py on 8080 and
               an opaque TCP echo on 3306 (a default opaque port)
    outside    not meshed

    Service web VIP:80   -> server:8080
    Service db  VIP:3306 -> server:3306

The unmeshed pod is refused (HTTP 403 with ``meshlet-proxy-error: unauthorized``, TCP closed)
while the meshed client gets through, over mTLS, on both ports.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshlet.names import PROXY_UID, workload_identity
from tests.harness.mesh import PROXY, Samples, scrape, start_app
from tests.harness.mesh_node import MeshNode, MeshPod, open_mesh_node
from webhook.config import ProxyConfig, resolve_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLIENT_ID = workload_identity("client", "default")
ANNOTATION = {"config.meshlet.io/default-inbound-policy": "all-authenticated"}


@dataclass
class PolicyMesh:
    node: MeshNode
    client: MeshPod
    server: MeshPod
    outside: MeshPod


def _apply_policy_annotation(mesh_node: MeshNode, member: MeshPod) -> None:
    """Restart the pod's proxy with the variable the injector derives from ``ANNOTATION``
    (the harness injects pods without annotations)."""
    config, warnings, _ = resolve_config(ProxyConfig(), {}, ANNOTATION)
    assert warnings == []
    env = {**member.env, "MESHLET_PROXY_DEFAULT_INBOUND_POLICY": config.default_inbound_policy}
    assert member.proxy is not None
    member.proxy.stop()
    member.proxy = member.pod.spawn(
        [PROXY],
        uid=PROXY_UID,
        env=env,
        capture=False,
        log_path=mesh_node.log_dir / f"proxy-{member.name}-policy.log",
        label=f"meshlet-proxy in {member.name} (all-authenticated)",
    )
    member.env = env


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyMesh]:
    logs = tmp_path_factory.mktemp("policy-logs")
    with open_mesh_node(logs) as mesh_node:
        client = mesh_node.add_pod("client", serviceaccount="client")
        server = mesh_node.add_pod("server", serviceaccount="server", ports=(8080, 3306))
        outside = mesh_node.add_pod("outside", meshed=False)
        _apply_policy_annotation(mesh_node, server)
        mesh_node.start_app(server)
        start_app(server.pod, "echo", 3306)
        mesh_node.add_service("web", 80, [server])
        mesh_node.add_service("db", 3306, [server], target_port=3306)
        mesh_node.wait_ready([client, server])
        mesh_node.wait_discovered()
        yield PolicyMesh(mesh_node, client, server, outside)


def _curl(member: MeshPod, url: str) -> tuple[int, dict[str, str], str]:
    result = member.pod.run_result(
        ["curl", "--silent", "--show-error", "--max-time", "10", "--include", url]
    )
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    return int(lines[0].split()[1]), headers, body


def _echo(member: MeshPod, address: tuple[str, int]) -> bytes:
    """Send a line and half-close; everything read back until the connection ends (a refused
    connection may already be closed, even reset, when the line is sent)."""
    received = b""
    with member.pod.connect(address, timeout=10) as sock:
        try:
            sock.sendall(b"ping over tcp\n")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
    return received


def test_unmeshed_pod_gets_403_for_http(mesh: PolicyMesh) -> None:
    for address in (mesh.node.services["web"].address, (mesh.server.pod.ip, 8080)):
        status, headers, body = _curl(mesh.outside, f"http://{address[0]}:{address[1]}/x")
        assert status == 403, body
        assert headers["meshlet-proxy-error"] == "unauthorized"
        assert "requires a mesh identity" in body
    samples = scrape(mesh.server.pod)
    assert (
        samples.total(
            "inbound_http_authz_deny_total", policy="all-authenticated", reason="unauthenticated"
        )
        >= 2
    )


def test_meshed_client_is_admitted_over_mtls(mesh: PolicyMesh) -> None:
    vip, port = mesh.node.services["web"].address
    status, _, body = _curl(mesh.client, f"http://{vip}:{port}/who")
    assert status == 200, body
    answer = json.loads(body)
    assert (answer["pod"], answer["client_id"]) == ("server", CLIENT_ID)


def test_unmeshed_pod_tcp_is_closed(mesh: PolicyMesh) -> None:
    before = scrape(mesh.server.pod)
    assert _echo(mesh.outside, mesh.node.services["db"].address) == b""
    after = scrape(mesh.server.pod)
    assert _deny_delta(before, after, "inbound_tcp_authz_deny_total") == 1


def test_meshed_client_tcp_goes_through(mesh: PolicyMesh) -> None:
    assert _echo(mesh.client, mesh.node.services["db"].address) == b"ping over tcp\n"


def _deny_delta(before: Samples, after: Samples, name: str) -> float:
    labels = {"policy": "all-authenticated", "reason": "unauthenticated"}
    return after.total(name, **labels) - before.total(name, **labels)
