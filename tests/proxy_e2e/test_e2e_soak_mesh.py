"""Soak of the full meshed path: mTLS, discovery and per-request balancing must not grow.

    node namespace   meshlet-identity, meshlet-destination (local mode, tests/harness/mesh_node.py)
    client           meshed, ServiceAccount "client"; h2load and the churn loop run in it
    web-0, web-1     meshed, ServiceAccount "web", nginx: HTTP/1.1 on 8080, h2c on 8081
    Service web      VIP:80 -> web-0, web-1 :8080
    Service web-h2   VIP:81 -> web-0, web-1 :8081

The client's proxy picks an endpoint from discovery for every request (for h2c every stream,
``proxy/h2mux.py``) and dials it over mTLS with the server's identity. Load, all bounded in rate
and time (``MESHLET_SOAK_SECONDS``, default 30; ``tox -e soak`` runs 300), at a rate of
``MESHLET_SOAK_MESH_RPS`` (R, default 50; ``tox -e soak`` sets 800):

- HTTP/1.1 keep-alive through the VIP: ``h2load --h1``, 4 connections, R requests/s in all;
- h2c: ``h2load``, ONE connection with 16 streams, 2R requests/s (both servers answering
  proves the per-stream balancing);
- connection churn: a new HTTP/1.1 connection per request (``Connection: close``), R/5 per
  second (at most 50).

Every request must succeed; the client and both server proxies follow the soaks' growth rule
(``soak_watch.py``); the server proxies must have served at least every successful request over
mTLS from the client's identity, each server at least a tenth of them, for each protocol.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.harness.mesh import Samples as Metrics
from tests.harness.mesh import http_get, scrape
from tests.harness.mesh_node import MeshNode, MeshPod, open_mesh_node
from tests.harness.nginx import H2C_PORT, answer_server, start_h2c_nginx, write_nginx_config
from tests.proxy_e2e.soak_watch import (
    FDS_SLACK,
    Samples,
    fds,
    h2load_counts,
    loop,
    sample,
    start_h2load,
    summarize_rss,
    wait_fds_idle,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("h2load") is None or shutil.which("nginx") is None,
        reason="needs h2load (nghttp2-client) and nginx",
    ),
]

SECONDS: Final = float(os.environ.get("MESHLET_SOAK_SECONDS", "30"))
RPS: Final = int(os.environ.get("MESHLET_SOAK_MESH_RPS", "50"))
H1_CONNECTIONS: Final = 4
H2_STREAMS: Final = 16
CHURN_RPS: Final = min(50, max(1, RPS // 5))
SERVERS: Final = ("web-0", "web-1")
H1_PORT, H2_PORT = 8080, H2C_PORT  # start_h2c_nginx waits for H2C_PORT
# Longer than the proxy's outbound discovery idle timeout (5 s): once a Service is unused that
# long, its balancer and idle pooled connections are dropped.
FDS_SETTLE_SECONDS: Final = 20.0


@dataclass
class SoakMesh:
    node: MeshNode
    client: MeshPod
    servers: list[MeshPod]


def _nginx(member: MeshPod, directory: Path) -> None:
    """nginx in the pod answering with the pod's name: HTTP/1.1 on 8080, h2c on 8081. nginx
    ends a connection after ``keepalive_requests`` (with a GOAWAY that h2load counts as errored
    streams): more than the soak can send on one."""
    directory.mkdir()
    answer = f'"hello from {member.name}\\n"'
    servers = answer_server(str(H1_PORT), answer) + answer_server(f"{H2_PORT} http2", answer)
    conf = write_nginx_config(directory, servers, keepalive_requests=100_000_000)
    start_h2c_nginx(member.pod, conf, label=f"nginx in {member.name}")
    member.pod.wait_for_port(("127.0.0.1", H1_PORT))


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SoakMesh]:
    logs = tmp_path / "logs"
    logs.mkdir()
    with open_mesh_node(logs) as mesh_node:
        client = mesh_node.add_pod("client", serviceaccount="client", ports=())
        servers = [
            mesh_node.add_pod(name, serviceaccount="web", ports=(H1_PORT, H2_PORT))
            for name in SERVERS
        ]
        for member in servers:
            _nginx(member, tmp_path / f"nginx-{member.name}")
        mesh_node.add_service("web", 80, servers, target_port=H1_PORT)
        mesh_node.add_service("web-h2", 81, servers, target_port=H2_PORT)
        mesh_node.wait_ready([client, *servers])
        mesh_node.wait_discovered()
        yield SoakMesh(mesh_node, client, servers)


def _served(page: Metrics, client: MeshPod, address: tuple[str, int]) -> float:
    """Requests for the Service at ``address`` that a server proxy took over mTLS from the
    client's identity (h2load's HTTP/1.1 ``Host`` has no port, the churn's and h2c's do)."""
    vip, port = address
    return sum(
        value
        for name, labels, value in page.series
        if name == "request_total"
        and labels.get("direction") == "inbound"
        and labels.get("tls") == "true"
        and labels.get("client_id") == client.identity
        and labels.get("authority") in (vip, f"{vip}:{port}")
    )


@dataclass
class Load:
    """What the client sent: h2load's summaries and the churn loop's answers."""

    h1_output: str
    h2_output: str
    churn: dict[str, int]  # answers per server pod
    errors: list[str]
    samples: Samples


def _run_load(mesh: SoakMesh, proxies: dict[str, int]) -> Load:
    """Run the three loads for ``SECONDS`` and sample the proxies meanwhile."""
    client = mesh.client.pod
    web = mesh.node.services["web"].address
    h2 = mesh.node.services["web-h2"].address
    h1_args = ["--h1", "-c", str(H1_CONNECTIONS), "--rps", str(max(1, RPS // H1_CONNECTIONS))]
    h2_args = ["-c", "1", "-m", str(H2_STREAMS), "--rps", str(2 * RPS)]
    loads = [
        start_h2load(client, h1_args, f"http://{web[0]}:{web[1]}/", SECONDS),
        start_h2load(client, h2_args, f"http://{h2[0]}:{h2[1]}/", SECONDS),
    ]
    churn = dict.fromkeys(SERVERS, 0)
    errors: list[str] = []

    def churn_once() -> None:
        status, body = http_get(client, web, "/")
        assert status == 200, (status, body)
        churn[body.decode().removeprefix("hello from ").strip()] += 1

    until = time.monotonic() + SECONDS
    worker = threading.Thread(target=loop, args=(until, 1 / CHURN_RPS, churn_once, errors))
    try:
        worker.start()
        samples = sample(proxies, until)
        worker.join(30)
        h1_output, h2_output = (load.communicate(timeout=60)[0] for load in loads)
    finally:
        for load in loads:
            if load.poll() is None:
                load.kill()
                load.wait()
    return Load(h1_output, h2_output, churn, errors, samples)


def _warm_up(mesh: SoakMesh) -> None:
    """Certificates, discovery subscriptions and connection pools, before the measured load."""
    web = mesh.node.services["web"].address
    h2 = mesh.node.services["web-h2"].address
    for args, url in (
        (["--h1", "-c", "2"], f"http://{web[0]}:{web[1]}/"),
        (["-c", "1", "-m", "4"], f"http://{h2[0]}:{h2[1]}/"),
    ):
        done = mesh.client.pod.run_result(["h2load", "-n", "200", *args, url], timeout=60)
        assert "200 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout[-800:]


def test_soak_meshed_path(mesh: SoakMesh) -> None:
    client, servers = mesh.client, mesh.servers
    processes = {m.name: m.proxy for m in (client, *servers) if m.proxy is not None}
    assert len(processes) == 1 + len(servers)
    proxies = {name: process.pid for name, process in processes.items()}
    idle_fds = {name: fds(pid) for name, pid in proxies.items()}
    _warm_up(mesh)
    before = {member.name: scrape(member.pod) for member in servers}

    load = _run_load(mesh, proxies)

    after = {member.name: scrape(member.pod) for member in servers}
    print(
        f"meshed soak: {SECONDS:.0f} s, HTTP/1.1 {RPS}/s over {H1_CONNECTIONS} connections, "
        f"h2c {2 * RPS}/s on 1 connection x {H2_STREAMS} streams, churn {CHURN_RPS}/s"
    )
    summaries = {name: summarize_rss(series) for name, series in load.samples.rss.items()}
    for name, summary in summaries.items():
        every_10s = load.samples.rss[name][::10]
        print(f"meshed soak {name} proxy RSS: {summary}; every 10 s: {every_10s}")
        print(f"meshed soak {name} proxy fds: idle {idle_fds[name]}, peak under load "
              f"{max(load.samples.fds[name])}")  # fmt: skip

    assert load.errors == [], load.errors[:5]
    succeeded = {}
    for protocol, output, rate in (("h1", load.h1_output, RPS), ("h2", load.h2_output, 2 * RPS)):
        done, succeeded[protocol] = h2load_counts(output)
        print(f"meshed soak {protocol}: {done} done, {succeeded[protocol]} succeeded")
        assert done > SECONDS * rate / 4, output  # a quarter of the rate asked for
        assert succeeded[protocol] == done, output
    print(f"meshed soak churn answers per server: {load.churn}")
    assert sum(load.churn.values()) > SECONDS * CHURN_RPS / 4, load.churn

    # mTLS from the client's identity, and balanced: every request reached a server proxy over
    # mTLS, each server took at least a tenth of each protocol's requests.
    for protocol, service, sent in (
        ("h1", "web", succeeded["h1"] + sum(load.churn.values())),
        ("h2", "web-h2", succeeded["h2"]),
    ):
        address = mesh.node.services[service].address
        served = {
            name: _served(after[name], client, address) - _served(before[name], client, address)
            for name in SERVERS
        }
        print(f"meshed soak {protocol}: served over mTLS per server {served}, client got {sent}")
        assert sum(served.values()) >= sent, (protocol, served, sent)
        assert min(served.values()) >= sent / 10, (protocol, served, sent)

    for name, summary in summaries.items():
        assert not summary.grew, (name, str(summary), load.samples.rss[name])
    after_fds = wait_fds_idle(proxies, idle_fds, timeout=FDS_SETTLE_SECONDS)
    print(f"meshed soak fds: idle {idle_fds}, after the load {after_fds}")
    for name in proxies:
        assert after_fds[name] <= idle_fds[name] + FDS_SLACK, (name, idle_fds, after_fds)
    for name, process in processes.items():
        assert process.popen.poll() is None, f"{name}: {process.stderr_text()}"
