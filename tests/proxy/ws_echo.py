"""A WebSocket echo server and client (the ``websockets`` library) for the proxy's tests.

``python tests/proxy/ws_echo.py server`` prints ``PORT <n>``; ``... client ws://host:port/``
sends text and binary messages, prints one JSON object with what came back.
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve


async def _echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


async def server() -> None:
    async with serve(_echo, "127.0.0.1", 0) as running:
        port = next(iter(running.sockets)).getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


async def client(uri: str) -> None:
    async with connect(uri, open_timeout=10) as connection:
        await connection.send("hello")
        text = await connection.recv()
        payload = bytes(range(256)) * 1000
        await connection.send(payload)
        binary = await connection.recv()
    print(json.dumps({"text": text, "binary": binary == payload}))


if __name__ == "__main__":
    asyncio.run(server() if sys.argv[1] == "server" else client(sys.argv[2]))
