"""Admission reviews per second and latency of ``meshlet-webhook``, over HTTPS with keep-alive.

Starts ``meshlet-webhook`` (one uvicorn worker, the default log level) on 127.0.0.1 with a
self-signed certificate, then drives it from a separate client process (plain ``ssl`` sockets,
keep-alive, certificate verified) with the realistic review in ``webhook/examples/`` (a
Deployment's pod: three containers, probes, volumes):

- paced: one connection, requests scheduled at ``--rate`` per second (default 200); latency is
  measured from each request's *scheduled* time, so a slow answer also counts against the ones
  queued behind it (no coordinated omission);
- saturation: ``--connections`` connections (default 4) sending back to back;
- reference, same run: ``GET /healthz`` at saturation (the HTTP + TLS + framework floor), and
  the injection core in process (decide, build, diff, encode), without any I/O.

Each measurement lasts ``--duration`` seconds (default 5) and is repeated ``--runs`` times
(default 3); medians are printed. ``h2load --h1`` gives an independent saturation figure when it
is installed. Usage: ``python -m bench webhook [--duration S] [--runs N] [--rate R]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any

from webhook.samples import EXAMPLES, cluster_file, sample_review

REVIEW = EXAMPLES / "review-deployment-pod.json"


# ---- client (runs in its own process) -------------------------------------------------------


def _connect(port: int, cacert: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cacert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _exchange(conn: ssl.SSLSocket, request: bytes, buffer: bytearray) -> bytes:
    conn.sendall(request)
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    head = bytes(buffer[:end]).lower()
    status = head[9:12]
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    total = end + 4 + length
    while len(buffer) < total:
        buffer += conn.recv(65536)
    body = bytes(buffer[end + 4 : total])
    del buffer[:total]
    if status != b"200":
        raise RuntimeError(f"HTTP {status.decode()}: {body[:200]!r}")
    return body


def _request(path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _client(config: dict[str, Any]) -> dict[str, Any]:
    body = Path(config["body"]).read_bytes() if config["body"] else None
    request = _request(config["path"], body)
    duration, rate = float(config["duration"]), config.get("rate")
    latencies: list[list[float]] = []
    errors: list[str] = []

    def worker() -> None:
        mine: list[float] = []
        latencies.append(mine)
        buffer = bytearray()
        try:
            conn = _connect(config["port"], config["cacert"])
            _exchange(conn, request, buffer)  # warm-up, and a check of the answer
            start = time.perf_counter()
            deadline = start + duration
            count = 0
            while True:
                if rate:
                    scheduled = start + count / rate
                    if scheduled >= deadline:
                        break
                    if (pause := scheduled - time.perf_counter()) > 0:
                        time.sleep(pause)
                else:
                    scheduled = time.perf_counter()
                    if scheduled >= deadline:
                        break
                _exchange(conn, request, buffer)
                mine.append(time.perf_counter() - scheduled)
                count += 1
            conn.close()
        except (OSError, RuntimeError, ValueError, IndexError) as error:
            errors.append(str(error))

    threads = [threading.Thread(target=worker) for _ in range(int(config["connections"]))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 30)
    elapsed = time.perf_counter() - started
    every = sorted(x for mine in latencies for x in mine)
    if not every:
        return {"errors": errors or ["no request completed"]}

    def pct(p: float) -> float:
        return every[min(len(every) - 1, int(p * len(every)))] * 1000

    return {
        "requests": len(every),
        "per_second": len(every) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": every[-1] * 1000,
        "errors": errors,
    }


def _client_main() -> None:
    print(json.dumps(_client(json.loads(sys.stdin.read()))))


# ---- driver ---------------------------------------------------------------------------------


class _Server:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.cacert = workdir / "tls" / "tls.crt"
        command = [
            sys.executable,
            "-m",
            "webhook",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--self-signed",
            str(workdir / "tls"),
            "--cluster",
            str(cluster_file()),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("meshlet-webhook exited at start")
            try:
                _connect(self.port, str(self.cacert)).close()
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise RuntimeError("meshlet-webhook did not start") from None
                time.sleep(0.1)
            else:
                return

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _measure(server: _Server, **config: Any) -> dict[str, Any]:
    config |= {"port": server.port, "cacert": str(server.cacert)}
    result = subprocess.run(
        [sys.executable, "-c", "from bench.bench_webhook import _client_main; _client_main()"],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        check=False,
        timeout=float(config["duration"]) + 60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"client failed: {result.stderr.strip()[-500:]}")
    outcome: dict[str, Any] = json.loads(result.stdout)
    if outcome.get("errors"):
        raise RuntimeError(f"client errors: {outcome['errors'][:3]}")
    return outcome


def _h2load(server: _Server, duration: float, connections: int) -> float | None:
    if shutil.which("h2load") is None:
        return None
    command = [
        "h2load",
        "--h1",
        "-D",
        str(int(duration)),
        "-c",
        str(connections),
        "-d",
        str(REVIEW),
        "-H",
        "Content-Type: application/json",
        f"https://127.0.0.1:{server.port}/inject",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=duration + 30
    )
    for line in result.stdout.splitlines():
        if line.startswith("finished in") and "req/s" in line:
            return float(line.split(",")[1].split()[0])
    return None


def _core_microseconds() -> float:
    from webhook.inject import Injector  # noqa: PLC0415 (only the driver needs it)
    from webhook.patch import Owner, encode_patch  # noqa: PLC0415
    from webhook.settings import WebhookSettings  # noqa: PLC0415

    pod = sample_review()["request"]["object"]
    injector = Injector(WebhookSettings(), created_by="bench")

    def once() -> None:
        outcome = injector.run(
            pod,
            namespace="shop",
            namespace_labels={"meshlet.io/inject": "enabled"},
            namespace_annotations={},
            owner=Owner("Deployment", "web"),
        )
        base64.b64decode(encode_patch(outcome.patch))

    number = 2000
    return min(timeit.repeat(once, number=number, repeat=3)) / number * 1e6


def run(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench webhook")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="paced reviews per second")
    parser.add_argument("--connections", type=int, default=4, help="at saturation")
    options = parser.parse_args(args)
    print(
        f"machine: {os.cpu_count()} cores, python{sys.version_info[0]}.{sys.version_info[1]}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="meshlet-bench-webhook-"))
    server = _Server(workdir)
    rows: dict[str, list[dict[str, Any]]] = {"paced": [], "saturation": [], "healthz": []}
    h2load: list[float] = []
    try:
        common = {"duration": options.duration}
        for index in range(options.runs):
            rows["paced"].append(
                _measure(
                    server,
                    path="/inject",
                    body=str(REVIEW),
                    connections=1,
                    rate=options.rate,
                    **common,
                )
            )
            rows["saturation"].append(
                _measure(
                    server,
                    path="/inject",
                    body=str(REVIEW),
                    connections=options.connections,
                    **common,
                )
            )
            rows["healthz"].append(
                _measure(
                    server, path="/healthz", body=None, connections=options.connections, **common
                )
            )
            if (figure := _h2load(server, options.duration, options.connections)) is not None:
                h2load.append(figure)
            print(f"  run {index + 1}/{options.runs} done", flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return float(statistics.median(row[key] for row in rows[name]))

    print(f"medians of {options.runs} runs of {options.duration:g} s, HTTPS keep-alive, 1 worker")
    print(
        f"  POST /inject paced {options.rate:g}/s, 1 conn:  {med('paced', 'per_second'):7.1f}/s"
        f"  p50 {med('paced', 'p50_ms'):6.2f} ms  p99 {med('paced', 'p99_ms'):6.2f} ms"
        f"  max {med('paced', 'max_ms'):6.2f} ms"
    )
    print(
        f"  POST /inject saturation, {options.connections} conns: "
        f"{med('saturation', 'per_second'):7.1f}/s  p50 {med('saturation', 'p50_ms'):6.2f} ms"
        f"  p99 {med('saturation', 'p99_ms'):6.2f} ms"
    )
    if h2load:
        print(
            f"  POST /inject saturation, h2load --h1 -c {options.connections}: "
            f"{statistics.median(h2load):7.1f}/s"
        )
    print(
        f"  reference GET /healthz saturation:    {med('healthz', 'per_second'):7.1f}/s"
        f"  p50 {med('healthz', 'p50_ms'):6.2f} ms  p99 {med('healthz', 'p99_ms'):6.2f} ms"
    )
    print(f"  reference injection core in process (no I/O): {_core_microseconds():.0f} us/review")
