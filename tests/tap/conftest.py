"""Fixtures for the tap tests: a tap server in-process on loopback, and line-reading clients."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from proxy.settings import Address
from proxy.tap import TapHub, TapStream
from proxy.tapserver import TapSettings, serve_tap

MESHLET = str(Path(sys.executable).parent / "meshlet")


@dataclasses.dataclass
class RunningTap:
    hub: TapHub
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_subscribers(self, count: int = 1) -> None:
        """Until ``count`` sessions are subscribed (the client's request has been served)."""
        with trio.fail_after(10):
            while len(self.hub._subscribers) != count:
                await trio.sleep(0.01)

    def exchange(self, stream: int, path: bytes = b"/api/items", status: int = 200) -> None:
        """Publish one whole exchange, as the proxy's HTTP shells would."""
        tapped = publish_request(self.hub, stream, path=path)
        if tapped is not None:
            tapped.response_start(status)
            tapped.end(response_bytes=12)


def publish_request(hub: TapHub, stream: int, **overrides: Any) -> TapStream | None:
    fields: dict[str, Any] = {
        "conn": 3,
        "stream": stream,
        "direction": "inbound",
        "method": b"GET",
        "authority": b"web.default:80",
        "path": b"/api/items",
        "src": ("10.0.0.9", 41000),
        "dst": ("127.0.0.1", 8080),
        "tls": "true",
    }
    fields.update(overrides)
    return hub.request_start(**fields)


@pytest.fixture
async def tap_server(nursery: trio.Nursery) -> RunningTap:
    hub = TapHub(max_subscribers=2, buffer_events=16)
    settings = TapSettings(listen=Address("127.0.0.1", 0), request_timeout=5.0)
    _, port = await nursery.start(serve_tap, hub, settings)
    return RunningTap(hub, port)


class Lines:
    """Lines from a byte stream (a subprocess's stdout or a socket), each within a timeout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self, timeout: float = 10.0) -> bytes:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"stream ended; unterminated: {self.buffer!r}")
                self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


@pytest.fixture
async def spawn(nursery: trio.Nursery) -> AsyncIterator[Any]:
    """``await spawn(argv)`` → (process, Lines of its stdout); every process is killed (by its
    own handle) when the test ends, pass or fail."""
    processes: list[trio.Process] = []

    async def start(argv: list[str]) -> tuple[trio.Process, Lines]:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        processes.append(process)
        assert process.stdout is not None
        return process, Lines(process.stdout)

    try:
        yield start
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
