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
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Node, Pod
from tests.harness.mesh import http_get, mesh_pod, start_app
from tests.harness.nginx import start_h2c_nginx, write_h2c_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

SECONDS = float(os.environ.get("MESHLET_SOAK_SECONDS", "30"))
RSS_ALLOWANCE_KIB = 6 * 1024
H2_RPS = 50  # per h2load connection


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _loop(until: float, interval: float, step: Callable[[], None], errors: list[str]) -> None:
    """Run ``step`` every ``interval`` seconds until ``until``, recording failures."""
    next_at = time.monotonic()
    while time.monotonic() < until:
        try:
            step()
        except Exception as exc:
            errors.append(repr(exc))
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def _h2load(client: Pod, args: list[str], url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        client.exec_argv(["h2load", *args, "-D", str(int(SECONDS)), url]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _succeeded(output: str) -> tuple[int, int]:
    match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", output)
    assert match is not None, output
    return int(match.group(2)), int(match.group(3))


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
    idle_fds = {name: _fds(pid) for name, pid in proxies.items()}
    loads = [_h2load(client.pod, ["--h1", "-c", "4", "--rps", "50"], f"http://{web.vip}/hello")]
    if have_nginx:
        h2 = node.add_service("h2", 81, [server.pod], target_port=8081)
        loads.append(
            _h2load(
                client.pod, ["-c", "2", "-m", "4", "--rps", str(H2_RPS)], f"http://{h2.vip}:81/"
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
        done, succeeded = _succeeded(output)
        assert done > 0, output
        assert succeeded == done, output
    for name, series in samples.items():
        warm = series[len(series) // 5 :]
        third = max(1, len(warm) // 3)
        early, late = max(warm[:third]), max(warm[-third:])
        allowance = max(RSS_ALLOWANCE_KIB, early // 10)
        print(f"soak {name} proxy RSS KiB: start {series[0]} early {early} late {late}")
        assert late - early <= allowance, (name, series)
    deadline = time.monotonic() + 10
    for name, pid in proxies.items():
        while _fds(pid) > idle_fds[name] + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"soak {name} proxy fds: idle {idle_fds[name]} after {_fds(pid)}")
        assert _fds(pid) <= idle_fds[name] + 2, (name, idle_fds[name], _fds(pid))
    assert client.proxy.popen.poll() is None
    assert server.proxy.popen.poll() is None


def _run_load(
    client: Pod,
    web_vip: str,
    echo_vip: str,
    proxies: dict[str, int],
    loads: list[subprocess.Popen[str]],
) -> tuple[list[str], dict[str, list[int]], dict[str, int], list[str]]:
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
        threading.Thread(target=_loop, args=(until, 0.05, churn, errors)),
        threading.Thread(target=_loop, args=(until, 0.05, echo_once, errors)),
    ]
    for worker in workers:
        worker.start()
    samples: dict[str, list[int]] = {name: [] for name in proxies}
    while time.monotonic() < until:
        for name, pid in proxies.items():
            samples[name].append(_rss_kib(pid))
        time.sleep(1)
    for worker in workers:
        worker.join(30)
    outputs = [load.communicate(timeout=60)[0] for load in loads]
    return outputs, samples, counts, errors
