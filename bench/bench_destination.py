"""Destination: the time from an EndpointSlice change (as the watch delivers it) to the update
being written on every subscribed stream, and the memory this takes.

Measurements, each repeated in 3 rounds (medians printed):

* ``in-process``: the hub alone, 1,000 services x 10 endpoints. A slice change is applied as the
  watch would deliver it; the clock stops when every subscribed stream has its line: written to
  its sink by the hub itself ("direct", what uvicorn streams get), or yielded by each stream's
  own generator ("tasks", the path of a stream that is behind). "fan-out": all streams on one
  service; "spread": one stream per service.
* ``process``: a real ``meshlet-destination`` watching a fake API server (the test suite's, with
  the same data) through a kubeconfig, with N real HTTPS streams. Two clocks per change:
  - server: the service's own ``destination_fanout_seconds`` (from the hub receiving the watch
    event to the update handed to the last stream's socket), read from ``/metrics`` after each
    change (its sum and count move by exactly that one fan-out);
  - end to end: from the fake API server emitting the watch event to the last client having
    read the line. The clients are raw TLS sockets in 2 processes of their own
    (``destination_clients.py``), on the same 2 cores as the server.
  Memory is the server process's RSS.

Reference (same run): asyncio itself waking N tasks blocked on one Event.

    python -m bench destination [--quick]
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
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

from .destination_clients import Clients
from .destination_server import Metrics, cpu_seconds, rss_mb, start_server, wait_ready

ROUNDS = 3
CLIENT_NICE = 10  # the stream readers' priority below the server's (destination_clients.py)


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


class _Sink:
    """A connection that is never behind; counts what the hub writes to it."""

    def __init__(self, counter: list[int], done: asyncio.Event, expected: list[int]) -> None:
        self.counter, self.done, self.expected = counter, done, expected

    def ready(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.counter[0] += 1
        if self.counter[0] == self.expected[0]:
            self.done.set()


async def _in_process(
    services: int,
    endpoints: int,
    streams: int,
    changes: int,
    *,
    fan_out: bool,
    direct: bool,
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
    received = [0]  # lines yielded, plus frames written to sinks
    all_in = asyncio.Event()
    expected = [streams]

    async def reader(service: int) -> None:
        sink = _Sink(received, all_in, expected) if direct else None
        target = ServiceTarget("bench", f"svc-{service}", 80)
        async for _ in hub.endpoint_lines(target, sink):
            received[0] += 1
            if received[0] == expected[0]:
                all_in.set()

    tasks = [asyncio.create_task(reader(0 if fan_out else i % services)) for i in range(streams)]
    await all_in.wait()  # every snapshot
    await asyncio.sleep(0)  # every generator back to waiting
    memory = 0.0
    if traced:
        memory = tracemalloc.get_traced_memory()[0] / 1024 / 1024
        tracemalloc.stop()
        changes = 0
    samples = []
    for generation in range(1, changes + 1):
        service = 0 if fan_out else generation % min(streams, services)
        expected[0] = received[0] + (streams if fan_out else 1)
        all_in.clear()
        start = time.perf_counter()
        # Spread: each service changes once (generation 1 differs from the initial slice).
        slice_generation = generation if fan_out else 1
        hub.apply(
            Changed("EndpointSlice", "MODIFIED", _slice(service, endpoints, slice_generation))
        )
        await all_in.wait()
        samples.append(time.perf_counter() - start)
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples, memory


async def _changes(
    clients: Clients,
    fake: Any,
    metrics: Metrics,
    changes: list[tuple[int, dict[str, Any]]],
    *,
    one_stream: bool,
) -> tuple[list[float], list[float]]:
    """Apply each (stream, slice) change; (end-to-end, server) seconds for each."""
    end_to_end, own = [], []
    clock = await metrics.fanout_clock()
    for stream, changed in changes:
        await clients.arm(stream if one_stream else None)
        start = time.perf_counter()
        fake.apply("EndpointSlice", "MODIFIED", changed)
        end_to_end.append(await clients.latest() - start)
        before, clock = clock, await metrics.fanout_clock()
        if clock[1] - before[1] != 1:
            raise RuntimeError(f"expected one fan-out per change, got {clock[1] - before[1]}")
        own.append(clock[0] - before[0])
    return end_to_end, own


async def _process(
    services: int, endpoints: int, streams: int, changes: int
) -> tuple[dict[str, list[list[float]]], float, float, str]:
    from tests.destination.dst_fakeapi import FakeApi  # noqa: PLC0415 (the test suite's fake)

    fake = FakeApi()
    for kind, objects in _objects(services, endpoints).items():
        for obj in objects:
            fake.apply(kind, "ADDED", obj)
    fake.history.clear()
    await fake.start()
    directory = Path(tempfile.mkdtemp(prefix="bench-destination-"))
    server, port, ca = start_server(directory, fake.url, streams)
    context = ssl.create_default_context(cafile=str(ca))
    results: dict[str, list[list[float]]] = {}
    clients: Clients | None = None
    metrics = Metrics(port, context)
    try:
        await wait_ready(port, context)
        ready_memory = rss_mb(server.pid)
        # Fan-out: every stream on svc-0; a change must reach all of them. Readers below the
        # server's priority, then at the same priority.
        generations = [0] * services
        memory = 0.0
        for phase, nice in (("fan-out", CLIENT_NICE), ("fan-out same priority", 0)):
            clients = Clients(port, ca, ["svc-0.bench.svc.cluster.local:80"] * streams, nice)
            await clients.ready()
            memory = max(memory, rss_mb(server.pid))
            for _ in range(ROUNDS):
                batch = []
                for _ in range(changes):
                    generations[0] += 1
                    batch.append((0, _slice(0, endpoints, generations[0])))
                cpu = cpu_seconds(server.pid)
                e2e, own = await _changes(clients, fake, metrics, batch, one_stream=False)
                # per change; includes the watch event and one /metrics request
                cpu = (cpu_seconds(server.pid) - cpu) / changes
                results.setdefault(f"{phase} cpu", []).append([cpu])
                results.setdefault(f"{phase} e2e", []).append(e2e)
                results.setdefault(f"{phase} server", []).append(own)
            clients.close()
        # Spread: the same number of streams, one per service; a change reaches one stream.
        authorities = [f"svc-{i % services}.bench.svc.cluster.local:80" for i in range(streams)]
        clients = Clients(port, ca, authorities, CLIENT_NICE)
        await clients.ready()
        for round_ in range(ROUNDS):
            batch = []
            for change in range(changes):
                index = (round_ * changes + change) % min(streams, services)
                generations[index] += 1
                batch.append((index, _slice(index, endpoints, generations[index])))
            e2e, own = await _changes(clients, fake, metrics, batch, one_stream=True)
            results.setdefault("spread e2e", []).append(e2e)
            results.setdefault("spread server", []).append(own)
        paths = [
            line
            for line in (await metrics.text()).splitlines()
            if line.startswith(
                ("destination_updates_coalesced_total", "destination_fanout_streams_total")
            )
        ]
        return results, ready_memory, memory, "; ".join(paths)
    finally:
        metrics.close()
        if clients is not None:
            clients.close()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=20)
            if code != 0:
                print(f"  (the server exited with status {code} after SIGTERM)")
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        await fake.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _loop_name() -> str:
    """The server's event loop (``meshlet-destination`` runs on uvloop when it is installed)."""
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _show(label: str, rounds: list[list[float]]) -> None:
    p50s, p99s = zip(*(_pcts(r) for r in rounds), strict=True)
    p50, p99 = statistics.median(p50s), statistics.median(p99s)
    print(f"  {label:<56} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")


def run(args: list[str]) -> None:
    quick = "--quick" in args
    services, endpoints = (100, 10) if quick else (1000, 10)
    streams = 100 if quick else 1000
    changes = 10 if quick else 30
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"2 cores, {version}, event loop {_loop_name()}, load average {load}")
    print(f"  {services} services x {endpoints} endpoints, {streams} streams")
    print(f"  {changes} changes per round, medians of {ROUNDS} rounds")
    reference = [asyncio.run(_reference(streams, changes)) for _ in range(ROUNDS)]
    _show(f"reference: asyncio wakes {streams} tasks", reference)
    for fan_out, direct in ((True, True), (True, False), (False, True)):
        runs = [
            asyncio.run(
                _in_process(services, endpoints, streams, changes, fan_out=fan_out, direct=direct)
            )
            for _ in range(ROUNDS)
        ]
        what = "fan-out: change -> all streams" if fan_out else "spread: change -> its stream"
        _show(f"in-process {what} ({'direct' if direct else 'tasks'})", [r for r, _ in runs])
    _, memory = asyncio.run(
        _in_process(services, endpoints, streams, 0, fan_out=True, direct=True, traced=True)
    )
    print(f"  {'':<56} Python heap, state + {streams} streams: {memory:.1f} MB")
    results, synced, with_streams, paths = asyncio.run(
        _process(services, endpoints, streams, changes)
    )
    for phase in ("fan-out", "fan-out same priority"):
        readers = "readers at nice 0" if phase.endswith("priority") else f"nice {CLIENT_NICE}"
        print(f"  process {phase.removesuffix(' same priority')}, {readers}:")
        _show(f"  server: watch event -> written on {streams} streams", results[f"{phase} server"])
        _show(f"  end to end: API server -> read by {streams} clients", results[f"{phase} e2e"])
        cpu = statistics.median(r[0] for r in results[f"{phase} cpu"]) * 1000
        print(f"  {'':<56} server CPU per change: {cpu:.1f} ms")
    print(f"  process spread (readers at nice {CLIENT_NICE}):")
    _show(
        f"  server: watch event -> written on its stream ({streams} open)", results["spread server"]
    )
    _show("  end to end: API server -> read by its client", results["spread e2e"])
    print(f"  {'':<56} server RSS {synced:.0f} MB synced, {with_streams:.0f} MB with streams")
    print(f"  {paths}")
