"""Stream readers for ``bench_destination``, in processes of their own.

Each worker process opens its share of the HTTPS streams with blocking TLS sockets (handshake,
request, read until the snapshot), then watches them all with one ``selectors`` loop and no HTTP
parsing: a stream has "got" a change when a decrypted read contains an ``add``, ``remove`` or
``snapshot`` line. Keeping the readers out of the benchmark's process, and this cheap, makes the
end-to-end figure measure the server more than the clients (they still share the machine).

Workers run at a lower priority (``nice``) by default: on this shared machine the readers would
otherwise preempt the server in the middle of a fan-out, each woken by the write that the server
just made, which the proxies (on other nodes) never do. The benchmark also runs them at the
server's priority, for comparison.

The parent (``Clients``) drives each worker over a pipe: ``("arm", indices)`` (None: all its
streams) is answered ``"armed"``; when every armed stream has got a change the worker sends the
latest ``time.perf_counter()`` among them (CLOCK_MONOTONIC: comparable across processes on
Linux), or ``None`` after ``timeout`` seconds. ``("quit", None)`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import selectors
import socket
import ssl
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

__all__ = ["MARKERS", "Clients", "got_update", "run_worker"]

MARKERS: Final = (b'"type":"add"', b'"type":"remove"', b'"type":"snapshot"')
_TAIL: Final = 24  # bytes kept from the last read, so a marker split across reads is seen


def got_update(data: bytes) -> bool:
    return any(marker in data for marker in MARKERS)


def _open(port: int, context: ssl.SSLContext, authority: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    request = f"GET /v1/endpoints?authority={authority} HTTP/1.1\r\nHost: x\r\n\r\n"
    tls.sendall(request.encode())
    seen = b""
    while not got_update(seen):
        data = tls.recv(65536)
        if not data:
            raise RuntimeError("stream ended before its snapshot")
        seen = seen[-_TAIL:] + data
    tls.setblocking(False)
    return tls


def _drain(tls: ssl.SSLSocket, tail: bytes) -> tuple[bytes, bool]:
    """Read what is there; return the new tail and whether an update line was in it."""
    found = False
    while True:
        try:
            data = tls.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return tail, found
        if not data:
            raise RuntimeError("stream ended")
        window = tail + data
        found = found or got_update(window)
        tail = window[-_TAIL:]


def run_worker(  # noqa: PLR0917 (a process target: positional arguments)
    conn: Connection, port: int, cafile: str, authorities: list[str], timeout: float, nice: int
) -> None:
    os.nice(nice)
    context = ssl.create_default_context(cafile=cafile)
    streams = [_open(port, context, authority) for authority in authorities]
    tails = [b""] * len(streams)
    selector = selectors.DefaultSelector()
    for index, tls in enumerate(streams):
        selector.register(tls, selectors.EVENT_READ, index)
    conn.send("ready")
    try:
        while True:
            command, indices = conn.recv()
            if command == "quit":
                return
            armed = set(range(len(streams)) if indices is None else indices)
            conn.send("armed")
            latest = 0.0
            deadline = time.monotonic() + timeout
            while armed and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    index = key.data
                    tails[index], found = _drain(streams[index], tails[index])
                    if found and index in armed:
                        latest = time.perf_counter()
                        armed.discard(index)
            conn.send(None if armed else latest)
    finally:
        selector.close()
        for tls in streams:
            tls.close()


class Clients:
    """The stream readers: ``WORKERS`` processes, each with its share of the streams."""

    WORKERS = 2

    def __init__(self, port: int, cafile: Path, authorities: list[str], nice: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.shares = [authorities[i :: self.WORKERS] for i in range(self.WORKERS)]
        self.conns: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for share in self.shares:
            mine, theirs = context.Pipe()
            process = context.Process(
                target=run_worker, args=(theirs, port, str(cafile), share, 30.0, nice), daemon=True
            )
            process.start()
            self.conns.append(mine)
            self.processes.append(process)

    async def _recv(self, conn: Connection) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    async def ready(self) -> None:
        for conn in self.conns:
            if await self._recv(conn) != "ready":
                raise RuntimeError("a client worker failed")

    async def arm(self, stream: int | None) -> None:
        """Wait for the next update on every stream (None) or on one."""
        for worker, conn in enumerate(self.conns):
            if stream is None:
                conn.send(("arm", None))
            else:
                mine = stream % self.WORKERS == worker
                conn.send(("arm", [stream // self.WORKERS] if mine else []))
        for conn in self.conns:
            await self._recv(conn)

    async def latest(self) -> float:
        times = [await self._recv(conn) for conn in self.conns]
        if None in times:
            raise RuntimeError("a stream did not get the update within 30 s")
        return float(max(times))

    def close(self) -> None:
        for conn, process in zip(self.conns, self.processes, strict=True):
            with contextlib.suppress(OSError):
                conn.send(("quit", None))
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
