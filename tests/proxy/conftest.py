"""Fixtures for the proxy's component tests: the proxy in-process on loopback with a fixed
original-destination resolver (no iptables), real backends and real clients as subprocesses."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from proxy.__main__ import ProxyAddresses, run_proxy
from proxy.context import ORIGINAL_DESTINATION, EndpointPicker, Lifecycle, ProxyContext
from proxy.metrics import Metrics
from proxy.settings import Address, ProxySettings

HERE = Path(__file__).parent
PROXY_BIN = str(Path(sys.executable).parent / "meshlet-proxy")


@dataclasses.dataclass
class RunningProxy:
    addresses: ProxyAddresses
    context: ProxyContext

    @property
    def inbound(self) -> str:
        return f"127.0.0.1:{self.addresses.inbound[1]}"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.addresses.admin[1]}"


StartProxy = Callable[..., Awaitable[RunningProxy]]


def loopback_settings(**overrides: Any) -> ProxySettings:
    return ProxySettings(
        inbound_listen=Address("127.0.0.1", 0),
        outbound_listen=Address("127.0.0.1", 0),
        admin_listen=Address("127.0.0.1", 0),
        **overrides,
    )


@pytest.fixture
async def start_proxy(nursery: trio.Nursery) -> AsyncIterator[StartProxy]:
    """``await start_proxy(("127.0.0.1", port), **settings)``: a proxy whose every connection's
    original destination is that address."""

    async def start(
        original: tuple[str, int],
        *,
        picker: EndpointPicker = ORIGINAL_DESTINATION,
        **overrides: Any,
    ) -> RunningProxy:
        settings = loopback_settings(**overrides)
        context = ProxyContext(settings, Metrics(), Lifecycle())
        addresses = await nursery.start(
            functools.partial(
                run_proxy,
                settings,
                resolver=lambda _sock: original,
                picker=picker,
                context=context,
            )
        )
        return RunningProxy(addresses, context)

    return start


def spawn_backend(*argv: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"backend {argv} did not start: {line!r}")
    return process, int(line.split()[1])


def stop(process: subprocess.Popen[str]) -> None:
    if process.stdout is not None:
        process.stdout.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def http1_backend() -> Iterator[int]:
    """Port of ``backend_http1.py`` running in its own process."""
    process, port = spawn_backend(str(HERE / "backend_http1.py"))
    try:
        yield port
    finally:
        stop(process)


async def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion (bounded), capturing its output."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False
        )


async def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return await run("curl", "--silent", "--show-error", "--max-time", "20", *args, timeout=timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: each is held until all are chosen (separate
    ``free_port`` calls may return the same port twice)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclasses.dataclass
class Nginx:
    h2c_port: int
    goaway_port: int
    big_size: int


_NGINX_CONF = """
daemon off;
worker_processes 1;
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{h2c} http2;
    location / {{ return 200 "hello h2\\n"; }}
    location /status/503 {{ return 503 "unavailable\\n"; }}
    location /big {{ alias {root}/big.bin; }}
  }}
  server {{
    listen 127.0.0.1:{goaway} http2;
    keepalive_requests 3;
    location / {{ return 200 "hello h2\\n"; }}
  }}
}}
"""


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving h2c (prior knowledge) on two loopback ports; the second one sends GOAWAY
    after every third request on a connection."""
    root = tmp_path_factory.mktemp("nginx")
    big = os.urandom(1 << 20)
    (root / "big.bin").write_bytes(big)
    ports = Nginx(free_port(), free_port(), len(big))
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        _NGINX_CONF.format(user=user, root=root, h2c=ports.h2c_port, goaway=ports.goaway_port)
    )
    process = subprocess.Popen(
        ["nginx", "-c", str(root / "nginx.conf"), "-p", str(root), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports.goaway_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((root / "error.log").read_text()) from None
                time.sleep(0.05)
        yield ports
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
