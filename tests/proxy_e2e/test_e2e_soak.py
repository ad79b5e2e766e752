"""Soak: mixed load through two meshed pods; the proxies' memory and descriptors must not grow.

Load, all bounded in rate and time (``MESHLET_SOAK_SECONDS``, default 30; ``tox -e soak`` runs
300), from the client pod through both proxies:

- HTTP/1.1 keep-alive: ``h2load --h1``, 4 connections at 50 requests/s each;
- HTTP/2 cleartext: ``h2load``, 2 connections, 4 streams, 50 requests/s each (needs nginx);
- connection churn: a new HTTP/1.1 connection per request (``Connection: close``), 20/s;
- opaque TCP: a new echo connection with 16 KiB each way and a half-close, 20/s.

Every request must succeed. The proxies' resident memory is sampled each second: after a
warm-up (the first fifth), the peak of the last third may exceed the peak of the first third
only by a small allowance (allocator noise, not a leak). Open descriptors must come back to
their idle count once the load stops (a leaked connection keeps its descriptors).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness import Node, Pod
from tests.harness.mesh import http_get, mesh_pod, start_app
from tests.harness.nginx import start_h2c_nginx, write_h2c_config
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

pytestmark = [pytest.mark.root, pytest.mark.slow]

SECONDS = float(os.environ.get("MESHLET_SOAK_SECONDS", "30"))
H2_RPS = 50  # per h2load connection


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_soak_mixed_load(node: Node, tmp_path: Path) -> None:
    server = mesh_pod(node, "server", tmp_path, env={"MESHLET_PROXY_LOG_LEVEL": "info"})
    client = mesh_pod(node, "client", tmp_path, env={"MESHLET_PROXY_LOG_LEVEL": "info"})
    start_app(server.pod, "http", 8080)
    start_app(server.pod, "echo", 7000)
    web = node.add_service("web", 80, [server.pod], target_port=8080)
    echo = node.add_service("echo", 7000, [server.pod])
    have_nginx = shutil.which("nginx") is not None
    if have_nginx:
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        # nginx's GOAWAY after keepalive_requests (default 1000) refuses the streams h2load has
        # in flight, and h2load counts them as errored without retrying: allow every request
        # the soak can send on one connection.
        most = 2 * H2_RPS * int(SECONDS + 1)  # h2load's --rps is per connection
        start_h2c_nginx(server.pod, write_h2c_config(nginx_dir, keepalive_requests=most))

    proxies = {"client": client.proxy.pid, "server": server.proxy.pid}
    idle_fds = {name: fds(pid) for name, pid in proxies.items()}
    h1_args = ["--h1", "-c", "4", "--rps", "50"]
    loads = [start_h2load(client.pod, h1_args, f"http://{web.vip}/hello", SECONDS)]
    if have_nginx:
        h2 = node.add_service("h2", 81, [server.pod], target_port=8081)
        loads.append(
            start_h2load(
                client.pod,
                ["-c", "2", "-m", "4", "--rps", str(H2_RPS)],
                f"http://{h2.vip}:81/",
                SECONDS,
            )
        )
    try:
        outputs, samples, counts, errors = _run_load(client.pod, web.vip, echo.vip, proxies, loads)
    finally:
        for load in loads:
            if load.poll() is None:
                load.kill()
                load.wait()

    assert errors == [], errors[:5]
    assert min(counts.values()) > SECONDS * 5, counts  # a quarter of the 20/s asked for
    for output in outputs:
        done, succeeded = h2load_counts(output)
        assert done > 0, output
        assert succeeded == done, output
    for name, series in samples.rss.items():
        summary = summarize_rss(series)
        print(f"soak {name} proxy RSS: {summary}")
        assert not summary.grew, (name, series)
    after_fds = wait_fds_idle(proxies, idle_fds, timeout=10)
    for name in proxies:
        print(f"soak {name} proxy fds: idle {idle_fds[name]} after {after_fds[name]}")
        assert after_fds[name] <= idle_fds[name] + FDS_SLACK, (name, idle_fds[name], after_fds)
    assert client.proxy.popen.poll() is None
    assert server.proxy.popen.poll() is None


def _run_load(
    client: Pod,
    web_vip: str,
    echo_vip: str,
    proxies: dict[str, int],
    loads: list[subprocess.Popen[str]],
) -> tuple[list[str], Samples, dict[str, int], list[str]]:
    """Drive the churn and echo loops and sample RSS until the soak ends."""
    until = time.monotonic() + SECONDS
    errors: list[str] = []
    counts = {"churn": 0, "echo": 0}
    payload = os.urandom(16 * 1024)

    def churn() -> None:
        status, body = http_get(client, (web_vip, 80), "/hello")
        assert (status, body) == (200, b"hello from the server pod\n")
        counts["churn"] += 1

    def echo_once() -> None:
        with client.connect((echo_vip, 7000), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received == payload
        counts["echo"] += 1

    workers = [
        threading.Thread(target=loop, args=(until, 0.05, churn, errors)),
        threading.Thread(target=loop, args=(until, 0.05, echo_once, errors)),
    ]
    for worker in workers:
        worker.start()
    samples = sample(proxies, until)
    for worker in workers:
        worker.join(30)
    outputs = [load.communicate(timeout=60)[0] for load in loads]
    return outputs, samples, counts, errors
