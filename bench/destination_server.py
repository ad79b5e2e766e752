"""The real ``meshlet-destination`` under ``bench_destination``: started on a kubeconfig that
points at the fake API server, asked for readiness and ``/metrics`` over TLS, and measured from
``/proc`` (memory, CPU time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from meshlet.devcert import write_self_signed

__all__ = ["Metrics", "cpu_seconds", "rss_mb", "start_server", "wait_ready"]


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (clock ticks, 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _https_get(port: int, context: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def wait_ready(port: int, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if (await _https_get(port, context, "/readyz"))[0] == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("destination did not become ready")


class Metrics:
    """``/metrics`` over one kept-alive HTTPS connection (no handshake per reading)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port, self.context = port, context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def text(self) -> str:
        try:
            return await self._get()
        except (asyncio.IncompleteReadError, ConnectionError):  # uvicorn's 5 s idle timeout
            self.close()
            self.reader = self.writer = None
            return await self._get()

    async def _get(self) -> str:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.context, server_hostname="127.0.0.1"
            )
        self.writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return (await self.reader.readexactly(length)).decode()

    async def fanout_clock(self) -> tuple[float, float]:
        """``destination_fanout_seconds`` (sum, count)."""
        values = {}
        for line in (await self.text()).splitlines():
            name, _, value = line.partition(" ")
            if name in ("destination_fanout_seconds_sum", "destination_fanout_seconds_count"):
                values[name] = float(value)
        return values["destination_fanout_seconds_sum"], values["destination_fanout_seconds_count"]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def start_server(
    directory: Path, api_url: str, streams: int
) -> tuple[subprocess.Popen[bytes], int, Path]:
    files = write_self_signed(directory, ["127.0.0.1"])
    kubeconfig = directory / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": api_url}}],
        "users": [{"name": "bench", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bench"}}],
        "current-context": "fake",
    }
    kubeconfig.write_text(json.dumps(config))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHLET_")}
    env["KUBECONFIG"] = str(kubeconfig)
    argv = [sys.executable, "-m", "destination", "--source", "kubernetes"]
    argv += ["--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key)]
    argv += ["--listen-addr", f"127.0.0.1:{port}", "--max-streams", str(streams + 10)]
    argv += ["--log-level", "warn"]
    return subprocess.Popen(argv, env=env), port, files.cert
