"""Destination: the time from an EndpointSlice change (as the watch delivers it) to the update
being written on every subscribed stream, and the memory this takes.

Two measurements, each repeated in 3 rounds (medians printed):

* ``in-process``: the hub alone, 1,000 services x 10 endpoints. A slice change is applied as the
  watch would deliver it; the clock stops when every subscribed stream has yielded its line.
  "fan-out": all streams on one service; "spread": one stream per service.
* ``process``: a real ``meshlet-destination`` watching a fake API server (the test suite's, with
  the same data) through a kubeconfig, with N real HTTPS streams all on one service, read by
  asyncio clients in this process. The clock runs from the fake API server emitting the watch
  event to the last client reading the line. Memory is the server process's RSS.

Reference (same run): asyncio itself waking N tasks blocked on one Event.

    python -m bench destination [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from destination.authority import ServiceTarget
from destination.endpoints import identity_function
from destination.events import KINDS, Changed, Relisted
from destination.hub import Hub
from destination.index import ClusterState
from destination.metrics import DestinationMetrics
from meshlet.devcert import write_self_signed

ROUNDS = 3


def _objects(services: int, endpoints: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for s in range(services):
        name = f"svc-{s}"
        meta = {"name": name, "namespace": "bench"}
        out["Service"].append(
            {
                "metadata": meta,
                "spec": {
                    "clusterIP": f"10.96.{s // 250}.{s % 250 + 1}",
                    "ports": [{"name": "http", "port": 80}],
                },
            }
        )
        out["EndpointSlice"].append(_slice(s, endpoints, 0))
        for e in range(endpoints):
            out["Pod"].append(
                {
                    "metadata": {
                        "name": f"{name}-{e}",
                        "namespace": "bench",
                        "labels": {
                            "meshlet.io/control-plane-ns": "meshlet",
                            "meshlet.io/proxy-deployment": name,
                        },
                    },
                    "spec": {"serviceAccountName": name},
                    "status": {"phase": "Running", "podIP": _ip(s, e)},
                }
            )
    return out


def _ip(service: int, endpoint: int) -> str:
    n = service * 64 + endpoint
    return f"10.{64 + n // 65536}.{n // 256 % 256}.{n % 256}"


def _slice(service: int, endpoints: int, generation: int) -> dict[str, Any]:
    """The service's slice; odd generations drop the last endpoint (one remove line)."""
    count = endpoints - (generation % 2)
    return {
        "metadata": {
            "name": f"svc-{service}-a",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": f"svc-{service}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {
                "addresses": [_ip(service, e)],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": f"svc-{service}-{e}"},
            }
            for e in range(count)
        ],
    }


def _rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pcts(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def _reference(streams: int, changes: int) -> list[float]:
    samples = []
    for _ in range(changes):
        event = asyncio.Event()
        done = asyncio.Event()
        woken = [0]

        async def waiter(event: asyncio.Event, done: asyncio.Event, woken: list[int]) -> None:
            await event.wait()
            woken[0] += 1
            if woken[0] == streams:
                done.set()

        tasks = [asyncio.create_task(waiter(event, done, woken)) for _ in range(streams)]
        await asyncio.sleep(0)
        start = time.perf_counter()
        event.set()
        await done.wait()
        samples.append(time.perf_counter() - start)
        await asyncio.gather(*tasks)
    return samples


async def _in_process(
    services: int,
    endpoints: int,
    streams: int,
    changes: int,
    fan_out: bool,
    *,
    traced: bool = False,
) -> tuple[list[float], float]:
    if traced:
        tracemalloc.start()
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    hub = Hub(
        ClusterState(cluster_domain="cluster.local", identity_for=identity),
        DestinationMetrics(),
        keepalive_interval=600,
    )
    for kind, objects in _objects(services, endpoints).items():
        hub.apply(Relisted(kind, tuple(objects)))  # type: ignore[arg-type]
    received = 0
    all_in = asyncio.Event()

    async def reader(service: int) -> None:
        nonlocal received
        async for _ in hub.endpoint_lines(ServiceTarget("bench", f"svc-{service}", 80)):
            received += 1
            if received == expected:
                all_in.set()

    expected = streams
    tasks = [asyncio.create_task(reader(0 if fan_out else i % services)) for i in range(streams)]
    await all_in.wait()  # every snapshot
    memory = 0.0
    if traced:
        memory = tracemalloc.get_traced_memory()[0] / 1024 / 1024
        tracemalloc.stop()
        changes = 0
    samples = []
    for generation in range(1, changes + 1):
        service = 0 if fan_out else generation % min(streams, services)
        expected = received + (streams if fan_out else 1)
        all_in.clear()
        start = time.perf_counter()
        # Spread: each service changes once (generation 1 differs from the initial slice).
        slice_generation = generation if fan_out else 1
        hub.apply(
            Changed("EndpointSlice", "MODIFIED", _slice(service, endpoints, slice_generation))
        )
        await all_in.wait()
        samples.append(time.perf_counter() - start)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples, memory


async def _wait_ready(port: int, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
            )
            w.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ready = (await r.read()).startswith(b"HTTP/1.1 200")
            w.close()
            if ready:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("destination did not become ready")


async def _open_streams(
    port: int, context: ssl.SSLContext, authorities: list[str]
) -> tuple[list[asyncio.StreamReader], list[asyncio.StreamWriter]]:
    readers, writers = [], []
    for authority in authorities:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        w.write(f"GET /v1/endpoints?authority={authority} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        readers.append(r)
        writers.append(w)
    await asyncio.gather(*(_next_update(r) for r in readers))  # the snapshots
    return readers, writers


async def _next_update(reader: asyncio.StreamReader) -> float:
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError("stream ended")
        if line.startswith(b"{") and b'"keepalive"' not in line:
            return time.perf_counter()


def _start_server(
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
    argv += ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    argv += ["--listen-addr", f"127.0.0.1:{port}", "--max-streams", str(streams + 10)]
    argv += ["--log-level", "warn"]
    return subprocess.Popen(argv, env=env), port, files.cert


async def _process(
    services: int, endpoints: int, streams: int, changes: int
) -> tuple[list[list[float]], list[list[float]], float, float]:
    from tests.destination.dst_fakeapi import FakeApi  # noqa: PLC0415 (the test suite's fake)

    fake = FakeApi()
    for kind, objects in _objects(services, endpoints).items():
        for obj in objects:
            fake.apply(kind, "ADDED", obj)
    fake.history.clear()
    await fake.start()
    directory = Path(tempfile.mkdtemp(prefix="bench-destination-"))
    server, port, ca = _start_server(directory, fake.url, streams)
    context = ssl.create_default_context(cafile=str(ca))
    writers: list[asyncio.StreamWriter] = []
    try:
        await _wait_ready(port, context)
        ready_memory = _rss_mb(server.pid)
        # Fan-out: every stream on svc-0; a change must reach all of them.
        readers, writers = await _open_streams(
            port, context, ["svc-0.bench.svc.cluster.local:80"] * streams
        )
        memory = _rss_mb(server.pid)
        fan_out: list[list[float]] = []
        generations = [0] * services
        for _ in range(ROUNDS):
            samples = []
            for _ in range(changes):
                generations[0] += 1
                pending = [asyncio.create_task(_next_update(r)) for r in readers]
                await asyncio.sleep(0)
                start = time.perf_counter()
                fake.apply("EndpointSlice", "MODIFIED", _slice(0, endpoints, generations[0]))
                samples.append(max(await asyncio.gather(*pending)) - start)
            fan_out.append(samples)
        # Spread: the same number of streams, one per service; a change reaches one stream.
        for w in writers:
            w.close()
        authorities = [f"svc-{i % services}.bench.svc.cluster.local:80" for i in range(streams)]
        readers, writers = await _open_streams(port, context, authorities)
        spread: list[list[float]] = []
        for round_ in range(ROUNDS):
            samples = []
            for change in range(changes):
                index = (round_ * changes + change) % min(streams, services)
                generations[index] += 1
                one = asyncio.create_task(_next_update(readers[index]))
                await asyncio.sleep(0)
                start = time.perf_counter()
                changed = _slice(index, endpoints, generations[index])
                fake.apply("EndpointSlice", "MODIFIED", changed)
                samples.append(await one - start)
            spread.append(samples)
        return fan_out, spread, ready_memory, memory
    finally:
        for w in writers:
            w.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        await fake.stop()


def _show(label: str, rounds: list[list[float]]) -> None:
    p50s, p99s = zip(*(_pcts(r) for r in rounds), strict=True)
    p50, p99 = statistics.median(p50s), statistics.median(p99s)
    print(f"  {label:<52} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")


def run(args: list[str]) -> None:
    quick = "--quick" in args
    services, endpoints = (100, 10) if quick else (1000, 10)
    streams = 100 if quick else 1000
    changes = 10 if quick else 30
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    print(f"2 cores, {version}; {services} services x {endpoints} endpoints, {streams} streams")
    print(f"  {changes} changes per round, medians of {ROUNDS} rounds")
    reference = [asyncio.run(_reference(streams, changes)) for _ in range(ROUNDS)]
    _show(f"reference: asyncio wakes {streams} tasks", reference)
    for fan_out in (True, False):
        results = [
            asyncio.run(_in_process(services, endpoints, streams, changes, fan_out))
            for _ in range(ROUNDS)
        ]
        what = "fan-out: change -> all streams" if fan_out else "spread: change -> its stream"
        _show(f"in-process {what}", [samples for samples, _ in results])
        _, memory = asyncio.run(_in_process(services, endpoints, streams, 0, fan_out, traced=True))
        print(f"  {'':<52} Python heap, state + {streams} streams: {memory:.1f} MB")
    rounds, spread, synced, with_streams = asyncio.run(
        _process(services, endpoints, streams, changes)
    )
    _show(f"process fan-out: watch event -> {streams} HTTPS streams", rounds)
    _show(f"process spread: watch event -> its HTTPS stream ({streams} open)", spread)
    print(f"  {'':<52} server RSS {synced:.0f} MB synced, {with_streams:.0f} MB with streams")
