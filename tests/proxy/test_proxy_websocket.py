"""A WebSocket (HTTP/1.1 Upgrade) through the proxy becomes a byte tunnel."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.proxy.conftest import HERE, StartProxy, run, spawn_backend, stop


@pytest.fixture(scope="module")
def ws_server() -> Iterator[int]:
    process, port = spawn_backend(str(HERE / "ws_echo.py"), "server")
    try:
        yield port
    finally:
        stop(process)


@pytest.mark.trio
async def test_websocket_echo(start_proxy: StartProxy, ws_server: int) -> None:
    proxy = await start_proxy(("127.0.0.1", ws_server))
    result = await run(sys.executable, str(HERE / "ws_echo.py"), "client", f"ws://{proxy.inbound}/")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "hello", "binary": True}
