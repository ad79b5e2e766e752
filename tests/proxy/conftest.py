"""Fixtures for the proxy's component tests: the proxy in-process on loopback with a fixed
original-destination resolver (no iptables), real backends and real clients as subprocesses."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from proxy.__main__ import ProxyAddresses, run_proxy
from proxy.context import Lifecycle, ProxyContext
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

    async def start(original: tuple[str, int], **overrides: Any) -> RunningProxy:
        settings = loopback_settings(**overrides)
        context = ProxyContext(settings, Metrics(), Lifecycle())
        addresses = await nursery.start(
            functools.partial(run_proxy, settings, resolver=lambda _sock: original, context=context)
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
